"""The PostgreSQL backend's SQL, loaded once: the named statements of ``queries.sql``.

Shared by the outbox, its receipts and the migration runner (kept apart from them so
each can import it); the migration files are read by :mod:`.migrate`.
"""

from __future__ import annotations

from typing import Final

from capirelay.outbox import _sql

__all__ = ["ARBITRATES", "CHANNEL", "FRESH", "QUERIES", "load_queries", "without_lines_marked"]

# The NOTIFY channel; the payload is the pixel id that has new events.
CHANNEL: Final = "capirelay_work"


def load_queries(text: str | None = None) -> dict[str, str]:
    """``{name: statement}`` of ``queries.sql`` (or of ``text``), split at ``-- name:`` lines."""
    if text is not None:
        return _sql.split_queries(text)
    return _sql.load_queries("capirelay.outbox.postgres", {"channel": CHANNEL})


# The `enqueue` block of queries.sql is two statements: a line ending in ARBITRATES
# belongs to `enqueue` only (its ON CONFLICT clauses, its per-event answer), one ending
# in FRESH to `enqueue_fresh` only.
ARBITRATES: Final = "-- arbitrates"
FRESH: Final = "-- fresh"


def without_lines_marked(statement: str, marker: str) -> str:
    """``statement`` without its lines that end in ``marker``."""
    lines = statement.splitlines()
    kept = [line for line in lines if not line.rstrip().endswith(marker)]
    if len(kept) == len(lines):
        raise ValueError("the statement has no line marked " + marker)
    return "\n".join(kept)


def _with_fresh_enqueue(queries: dict[str, str]) -> dict[str, str]:
    both = queries["enqueue"]
    queries["enqueue"] = without_lines_marked(both, FRESH)
    queries["enqueue_fresh"] = without_lines_marked(both, ARBITRATES)
    return queries


QUERIES: Final = _with_fresh_enqueue(load_queries())
