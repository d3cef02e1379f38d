"""Line numbers for TOML key paths, so mapping errors can point at ``FILE:LINE``.

:mod:`tomllib` parses into plain dicts and keeps no positions.  This scanner
reads the same text line by line and records where each table header and each
``key = value`` line puts its key path, with array-of-tables elements counted
the way TOML counts them (``[[event]]`` twice gives ``("event", 0)`` and
``("event", 1)``; a later ``[event.map]`` belongs to the last one).  It only
needs to be right for files ``tomllib`` accepted, and only about *where* a key
is, so it ignores values except to skip multi-line strings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["KeyLines", "KeyPath"]

KeyPath = tuple[str | int, ...]

_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED_KEY = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_ARRAY_HEADER = re.compile(rf"^\[\[\s*({_DOTTED_KEY})\s*\]\]")
_TABLE_HEADER = re.compile(rf"^\[\s*({_DOTTED_KEY})\s*\]")
_KEY_VALUE = re.compile(rf"^({_DOTTED_KEY})\s*=\s*(.*)$")
_PART = re.compile(_KEY_PART)


def _split_key(dotted: str) -> list[str]:
    parts = []
    for match in _PART.finditer(dotted):
        part = match.group(0)
        if part[0] in "\"'":
            part = part[1:-1]
        parts.append(part)
    return parts


def _opens_multiline_string(value: str) -> str | None:
    """The delimiter of a multi-line string that starts in ``value`` and stays open."""
    for delimiter in ('"""', "'''"):
        if value.startswith(delimiter) and value.count(delimiter) == 1:
            return delimiter
    return None


class KeyLines:
    """Where each key path of one TOML document is written."""

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        self._arrays: dict[KeyPath, int] = {}
        self._scan(text)

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """The line of ``path``, or of its nearest written ancestor; ``None`` if none is."""
        key = tuple(path)
        while key:
            if key in self._lines:
                return self._lines[key]
            key = key[:-1]
        return None

    def exact_line(self, path: Sequence[str | int]) -> int | None:
        """The line where exactly ``path`` is written (no ancestor fallback)."""
        return self._lines.get(tuple(path))

    def _with_indices(self, names: Sequence[str]) -> KeyPath:
        path: KeyPath = ()
        for name in names:
            path = (*path, name)
            if path in self._arrays:
                path = (*path, self._arrays[path] - 1)
        return path

    def _record(self, path: KeyPath, line: int) -> None:
        self._lines.setdefault(path, line)

    def _scan(self, text: str) -> None:
        current: KeyPath = ()
        open_string: str | None = None
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if open_string is not None:
                if open_string in line:
                    open_string = None
                continue
            if not line or line.startswith("#"):
                continue
            if match := _ARRAY_HEADER.match(line):
                names = _split_key(match.group(1))
                array = (*self._with_indices(names[:-1]), names[-1])
                self._arrays[array] = self._arrays.get(array, 0) + 1
                current = (*array, self._arrays[array] - 1)
                self._record(array, number)
                self._record(current, number)
            elif match := _TABLE_HEADER.match(line):
                current = self._with_indices(_split_key(match.group(1)))
                self._record(current, number)
            elif match := _KEY_VALUE.match(line):
                self._record((*current, *_split_key(match.group(1))), number)
                open_string = _opens_multiline_string(match.group(2).strip())
