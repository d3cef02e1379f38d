"""The durable outbox: one interface (:class:`Outbox`) and the backends behind it.

``open_outbox(url)`` picks the backend from the ``storage`` URL of the settings:

* ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db``: :class:`SQLiteOutbox`
* ``postgresql://...``: the PostgreSQL backend (not available yet)

An in-memory SQLite database is refused: the outbox exists to survive a crash.
"""

from __future__ import annotations

from typing import Any

from capirelay.outbox.base import (
    DEDUP_WINDOW_SECONDS,
    Attempt,
    DeadLetter,
    DeadLetterReason,
    DLQFilter,
    EnqueueStatus,
    LeasedEvent,
    NewEvent,
    Outbox,
    QueueStats,
    StorageUnavailable,
)
from capirelay.outbox.sqlite import SQLiteOutbox

__all__ = [
    "DEDUP_WINDOW_SECONDS",
    "Attempt",
    "DLQFilter",
    "DeadLetter",
    "DeadLetterReason",
    "EnqueueStatus",
    "LeasedEvent",
    "NewEvent",
    "Outbox",
    "QueueStats",
    "SQLiteOutbox",
    "StorageUnavailable",
    "open_outbox",
    "sqlite_path_from_url",
]

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_PREFIXES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def sqlite_path_from_url(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    if not url.startswith(_SQLITE_PREFIX):
        raise ValueError("a SQLite storage URL looks like sqlite:///path/to/capirelay.db")
    path = url[len(_SQLITE_PREFIX) :].split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        raise ValueError(
            "storage must be a file (sqlite:///capirelay.db or sqlite:////abs/path.db): "
            "an in-memory database loses every queued event on restart"
        )
    return path


def open_outbox(url: str, **kwargs: Any) -> Outbox:
    """Build (not yet open) the outbox named by a storage URL; ``await outbox.open()`` next.

    ``kwargs`` go to the backend (for SQLite: ``synchronous``, ``busy_timeout``,
    ``max_bytes``).
    """
    if url.startswith(_SQLITE_PREFIX):
        return SQLiteOutbox(sqlite_path_from_url(url), **kwargs)
    if url.startswith(_POSTGRES_PREFIXES):
        raise ValueError(
            "the PostgreSQL outbox is not available yet; use storage = "
            '"sqlite:///capirelay.db" for now'
        )
    scheme = url.split(":", 1)[0] if ":" in url else "(none)"
    raise ValueError(f"unknown storage URL scheme {scheme!r}: use sqlite:///path/to/capirelay.db")
