"""The PostgreSQL backend's SQL, loaded once: the named statements of ``queries.sql``.

Shared by the outbox, its receipts and the migration runner (kept apart from them so
each can import it); the migration files are read by :mod:`.migrate`.
"""

from __future__ import annotations

from typing import Final

from capirelay.outbox import _sql

__all__ = ["CHANNEL", "QUERIES", "load_queries"]

# The NOTIFY channel; the payload is the pixel id that has new events.
CHANNEL: Final = "capirelay_work"


def load_queries(text: str | None = None) -> dict[str, str]:
    """``{name: statement}`` of ``queries.sql`` (or of ``text``), split at ``-- name:`` lines."""
    if text is not None:
        return _sql.split_queries(text)
    return _sql.load_queries("capirelay.outbox.postgres", {"channel": CHANNEL})


QUERIES: Final = load_queries()
