"""The embedded SQLite backend: one file in WAL mode, written by one group-committing thread.

* :mod:`.outbox`: :class:`SQLiteOutbox` (queue, dedup, leases, DLQ, order ledger,
  operator records, views) and its migration runner;
* :mod:`.receipts`: its receipts, traces and erasure;
* ``queries.sql``: every statement it runs, by name; ``migrations/NNNN_*.sql``: the schema.

Both SQL kinds are read by the shared loader :mod:`capirelay.outbox._sql`.
"""

from capirelay.outbox.sqlite.outbox import MIGRATIONS, QUERIES, SQLiteOutbox, migrate

__all__ = ["MIGRATIONS", "QUERIES", "SQLiteOutbox", "migrate"]
