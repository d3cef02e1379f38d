"""The one loader of the backends' packaged SQL: named queries and numbered migrations.

Each database backend is a package (``capirelay.outbox.sqlite``,
``capirelay.outbox.postgres``) holding the same two things:

* ``queries.sql``: every statement the backend runs, each under a ``-- name: x``
  line (the comment lines after it explain the statement; lines that are only a
  comment are left out of the text the database is sent, see :func:`split_queries`);
* ``migrations/NNNN_name.sql``: the schema, one numbered step per file, applied
  once and in order (SQLite records the last in ``PRAGMA user_version``,
  PostgreSQL in ``capirelay_migrations``).

Both are read with :mod:`importlib.resources`, so they work from a wheel as from a
source tree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

__all__ = ["Migration", "load_migrations", "load_queries", "split_queries"]

_NAME_LINE = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema step, read from ``<backend>/migrations/NNNN_name.sql``."""

    version: int
    name: str
    script: str


def split_queries(text: str) -> dict[str, str]:
    """``{name: statement}`` from a text of ``-- name:`` blocks (trailing ``;`` dropped),
    without the lines that are only a comment.

    The comments are for the reader of ``queries.sql``; sent along, they made the
    longest statements (``lease`` 8.5 KB, ``enqueue``, ``due_pixels``) longer than
    what psycopg caches the parsing of (4 KB), so the client split and converted
    those statements' text again on every execution (about 40 us an enqueue of one
    event, measured).  A comment after SQL on the same line stays."""
    parts = _NAME_LINE.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


def load_queries(package: str, constants: Mapping[str, object] | None = None) -> dict[str, str]:
    """The named statements of ``package``'s ``queries.sql``; each ``{name}`` token of
    ``constants`` is replaced by its value (a module constant, never user data)."""
    text = resources.files(package).joinpath("queries.sql").read_text(encoding="utf-8")
    for name, value in (constants or {}).items():
        text = text.replace("{" + name + "}", str(value))
    return split_queries(text)


def load_migrations(package: str) -> tuple[Migration, ...]:
    """``package``'s migration files, by version; refuses gaps and duplicates."""
    steps: list[Migration] = []
    for entry in resources.files(package).joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            steps.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    steps.sort(key=lambda m: m.version)
    expected = list(range(1, len(steps) + 1))
    if [m.version for m in steps] != expected:
        raise RuntimeError(f"migration files must be numbered 0001.. without gaps: {steps!r}")
    return tuple(steps)
