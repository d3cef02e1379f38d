"""The durable outbox: one contract (:mod:`.base`) and the backends behind it.

* :mod:`.base`: :class:`Outbox` (the core contract plus its named optional stores),
  :class:`OutboxViews` (dashboard-only reads) and the shared contract constants;
* :mod:`.memory`: :class:`~capirelay.outbox.memory.InMemoryOutbox`, the in-process twin
  for tests and tools (not durable, never a ``storage`` URL);
* :mod:`.sqlite` and :mod:`.postgres`: the two database backends, each a package with
  its named queries (``queries.sql``) and numbered migrations (``migrations/``), read
  by the one loader :mod:`._sql`.

``open_outbox(url)`` picks the backend from the ``storage`` URL of the settings:

* ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db``: :class:`SQLiteOutbox`
* ``postgresql://...``: :class:`~capirelay.outbox.postgres.PostgresOutbox` (shared by replicas)

An in-memory SQLite database is refused: the outbox exists to survive a crash.
"""

from __future__ import annotations

from typing import Any

from capirelay.outbox.base import (
    DEDUP_WINDOW_SECONDS,
    Attempt,
    AuditRecord,
    DeadLetter,
    DeadLetterReason,
    DLQFilter,
    EnqueueStatus,
    ErasureStore,
    LeasedEvent,
    NewEvent,
    Outbox,
    OutboxCore,
    OutboxViews,
    QueueStats,
    RequeueResult,
    StorageUnavailable,
)
from capirelay.outbox.sqlite import SQLiteOutbox

__all__ = [
    "DEDUP_WINDOW_SECONDS",
    "Attempt",
    "AuditRecord",
    "DLQFilter",
    "DeadLetter",
    "DeadLetterReason",
    "EnqueueStatus",
    "ErasureStore",
    "LeasedEvent",
    "NewEvent",
    "Outbox",
    "OutboxCore",
    "OutboxViews",
    "QueueStats",
    "RequeueResult",
    "SQLiteOutbox",
    "StorageUnavailable",
    "open_outbox",
    "sqlite_path_from_url",
]

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_PREFIXES = ("postgresql://", "postgres://", "postgresql+psycopg://")
# The caller (the server) passes every backend's options; each backend takes its own.
_SQLITE_ONLY_OPTIONS = frozenset({"synchronous", "busy_timeout", "max_bytes", "max_group"})
_POSTGRES_ONLY_OPTIONS = frozenset({"pool_size", "connect_timeout", "migrate", "listen"})


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
    ``max_bytes``; for PostgreSQL: ``pool_size``, ``connect_timeout``, ``migrate``,
    ``listen``); options of the other backend are ignored.
    """
    if url.startswith(_SQLITE_PREFIX):
        options = {k: v for k, v in kwargs.items() if k not in _POSTGRES_ONLY_OPTIONS}
        return SQLiteOutbox(sqlite_path_from_url(url), **options)
    if url.startswith(_POSTGRES_PREFIXES):
        # Imported here so that SQLite-only deployments never load psycopg.
        from capirelay.outbox.postgres import PostgresOutbox

        options = {k: v for k, v in kwargs.items() if k not in _SQLITE_ONLY_OPTIONS}
        return PostgresOutbox(url, **options)
    scheme = url.split(":", 1)[0] if ":" in url else "(none)"
    raise ValueError(f"unknown storage URL scheme {scheme!r}: use sqlite:///path/to/capirelay.db")
