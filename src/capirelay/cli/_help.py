"""Help screens that read well at 80 columns.

Typer 0.29 with Click 8.5 prints a type column for every option, flags
included: ``--help <bool>``, ``--yes <bool>``.  A flag takes no value, so that
column is left empty for flags here; options that take a value keep their
type (``<int>``, ``<path>``).  Applied once when the CLI is imported; a Typer
without ``display_type_rich`` is left alone.
"""

from __future__ import annotations

from typing import Any

__all__ = ["quiet_flag_types"]


def quiet_flag_types() -> None:
    from typer import core

    option = getattr(core, "TyperOption", None)
    original = getattr(option, "display_type_rich", None)
    if option is None or original is None or getattr(original, "_capirelay", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        result: str | None = original(self, ctx)
        return result

    display_type_rich._capirelay = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich
