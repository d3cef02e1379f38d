"""The one shape every user-caused issue takes: a :class:`Problem`.

Normalization, validation, the gateway's ingest and the emulator all report
what is wrong with an event as a list of problems.  A problem names the field
(dotted path into the wire event, e.g. ``user_data.ph`` or
``custom_data.currency``), says what is wrong and how to fix it, and carries a
severity: an ``error`` blocks the event, a ``warning`` travels with it.

Messages never contain the raw value of an identifier: they may be shown in
logs, HTTP responses and the dashboard.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an event.

    ``code`` is a stable machine-readable identifier (``missing_field``,
    ``invalid_phone``, ``event_too_old`` ...), ``field`` the dotted wire path,
    ``message`` a sentence a marketer's engineer can act on (what is wrong and
    the fix).  ``count`` is how many values of the field the problem covers: a
    field whose values were dropped for one reason is told once, with their
    count in ``count`` and in the message, rather than once per value.
    """

    code: str
    field: str
    severity: Severity
    message: str
    count: int = 1

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def to_dict(self) -> dict[str, Any]:
        """``code``, ``field``, ``severity`` and ``message``, and ``count`` when it is more
        than one (the shape of a problem in the gateway's answers)."""
        data = asdict(self)
        data["severity"] = str(self.severity)
        if self.count == 1:
            del data["count"]
        return data


def error(code: str, field: str, message: str, *, count: int = 1) -> Problem:
    return Problem(code, field, Severity.ERROR, message, count)


def warning(code: str, field: str, message: str, *, count: int = 1) -> Problem:
    return Problem(code, field, Severity.WARNING, message, count)


def has_errors(problems: list[Problem]) -> bool:
    return any(p.is_error for p in problems)
