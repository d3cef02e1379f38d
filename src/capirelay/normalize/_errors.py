"""The one exception normalization raises for a value it cannot use."""

from __future__ import annotations


class NormalizationError(ValueError):
    """A value for ``field`` cannot be turned into what Meta matches on.

    ``field`` is the wire key (``em``, ``ph`` ...). ``reason`` describes the
    *shape* of the problem and never quotes the value: these messages travel
    into logs, HTTP responses and the dashboard, and the value is personal data.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[type[NormalizationError], tuple[str, str]]:
        return (type(self), (self.field, self.reason))
