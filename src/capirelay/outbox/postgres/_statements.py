"""The PostgreSQL backend's SQL, loaded once: the named statements of ``queries.sql``.

Shared by the outbox, its receipts and the migration runner (kept apart from them so
each can import it); the migration files are read by :mod:`.migrate`.
"""

from __future__ import annotations

from typing import Final

from capirelay.outbox import _sql

__all__ = ["ARBITRATES", "CHANNEL", "QUERIES", "load_queries", "without_arbitration"]

# The NOTIFY channel; the payload is the pixel id that has new events.
CHANNEL: Final = "capirelay_work"


def load_queries(text: str | None = None) -> dict[str, str]:
    """``{name: statement}`` of ``queries.sql`` (or of ``text``), split at ``-- name:`` lines."""
    if text is not None:
        return _sql.split_queries(text)
    return _sql.load_queries("capirelay.outbox.postgres", {"channel": CHANNEL})


# The end of each line of the `enqueue` statement that only arbitrates between a new key
# and one the tables already hold (its ON CONFLICT clauses).
ARBITRATES: Final = "-- arbitrates"


def without_arbitration(statement: str) -> str:
    """``statement`` without its lines that end in :data:`ARBITRATES`: plain inserts."""
    lines = statement.splitlines()
    kept = [line for line in lines if not line.rstrip().endswith(ARBITRATES)]
    if len(kept) == len(lines):
        raise ValueError("the statement has no line marked " + ARBITRATES)
    return "\n".join(kept)


def _with_fresh_enqueue(queries: dict[str, str]) -> dict[str, str]:
    queries["enqueue_fresh"] = without_arbitration(queries["enqueue"])
    return queries


QUERIES: Final = _with_fresh_enqueue(load_queries())
