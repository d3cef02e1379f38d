"""The PostgreSQL backend: one database shared by any number of gateway replicas.

* :mod:`.outbox`: :class:`PostgresOutbox` (queue, dedup, leases, DLQ, order ledger,
  operator records, views);
* :mod:`._enqueue`: the enqueue path (order-ledger claim, dedup and queue in one statement);
* :mod:`.receipts`: its receipts, traces and erasure; :mod:`._batches`: delivered
  events' receipts, one row per acked batch;
* :mod:`.migrate`: the advisory-locked migration runner behind ``capirelay migrate``;
* ``queries.sql``: every statement it runs, by name; ``migrations/NNNN_*.sql``: the schema.

Both SQL kinds are read by the shared loader :mod:`capirelay.outbox._sql`.
"""

from capirelay.outbox.postgres.outbox import (
    CHANNEL,
    QUERIES,
    PostgresOutbox,
    error_kind,
    load_queries,
    postgres_conninfo,
    postgres_refusal,
)

__all__ = [
    "CHANNEL",
    "QUERIES",
    "PostgresOutbox",
    "error_kind",
    "load_queries",
    "postgres_conninfo",
    "postgres_refusal",
]
