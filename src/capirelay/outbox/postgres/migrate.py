"""PostgreSQL schema migrations: numbered ``migrations/NNNN_*.sql`` files, applied once, in order.

Several gateway replicas usually start at the same moment (a deployment rolls
out N pods), and each one migrates on start.  The whole run therefore happens
under a session-level ``pg_advisory_lock``: the first replica applies what is
missing while the others wait on the lock, then find every version recorded
in ``capirelay_migrations`` and apply nothing.  Each file runs in its own
transaction together with the row that records it, so a failed step leaves the
previous version intact and a re-run starts again at that step.

The lock key is the pair (``MIGRATION_LOCK_CLASS``, hash of the current
schema), so databases holding several capirelay schemas (one per test run,
or per environment) migrate independently.
"""

from __future__ import annotations

import logging
from typing import Final

import psycopg
from psycopg import AsyncConnection

from capirelay.outbox._sql import Migration
from capirelay.outbox._sql import load_migrations as _load_migrations
from capirelay.outbox.base import StorageUnavailable
from capirelay.outbox.postgres._statements import QUERIES

__all__ = [
    "MIGRATIONS",
    "MIGRATION_LOCK_CLASS",
    "Migration",
    "applied_versions",
    "load_migrations",
    "migrate",
    "migrate_url",
]

log = logging.getLogger("capirelay.outbox")

# "capi" in ASCII: the first half of the two-key advisory lock, the schema hash is the second.
MIGRATION_LOCK_CLASS: Final = 0x63617069

_LOCK: Final = {"lock_class": MIGRATION_LOCK_CLASS}


def load_migrations() -> tuple[Migration, ...]:
    """The packaged PostgreSQL migration files, by version (see :mod:`capirelay.outbox._sql`)."""
    return _load_migrations("capirelay.outbox.postgres")


MIGRATIONS: Final = load_migrations()


async def applied_versions(conn: AsyncConnection) -> list[int]:
    """Versions recorded in ``capirelay_migrations`` (empty for a fresh database)."""
    exists = await conn.execute(QUERIES["migrations_table_exists"])
    row = await exists.fetchone()
    if not row or not row[0]:
        return []
    cur = await conn.execute(QUERIES["applied_migrations"])
    return [r[0] for r in await cur.fetchall()]


async def migrate(
    conn: AsyncConnection, migrations: tuple[Migration, ...] = MIGRATIONS
) -> list[int]:
    """Apply the missing steps under the advisory lock; returns the versions applied now.

    ``conn`` must be in autocommit mode (the lock is held by the session across the
    per-step transactions).
    """
    if not conn.autocommit:
        raise ValueError("migrate() needs an autocommit connection")
    await conn.execute(QUERIES["migration_lock"], _LOCK)
    try:
        await conn.execute(QUERIES["create_migrations_table"])
        done = set(await applied_versions(conn))
        latest = migrations[-1].version if migrations else 0
        if done and max(done) > latest:
            raise StorageUnavailable(
                f"outbox schema version {max(done)} is newer than this capirelay knows "
                f"({latest}); upgrade capirelay or point storage at another database"
            )
        applied: list[int] = []
        for step in migrations:
            if step.version in done:
                continue
            async with conn.transaction():
                await conn.execute(step.script.encode())
                await conn.execute(
                    QUERIES["record_migration"], {"version": step.version, "name": step.name}
                )
            log.info("outbox schema migrated to version %d (%s)", step.version, step.name)
            applied.append(step.version)
        return applied
    finally:
        await conn.execute(QUERIES["migration_unlock"], _LOCK)


async def migrate_url(url: str, *, connect_timeout: float = 10.0) -> list[int]:
    """Connect to ``url``, migrate, disconnect; what ``capirelay migrate`` runs."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=max(1, int(connect_timeout))
        )
    except psycopg.OperationalError as exc:
        raise StorageUnavailable(f"PostgreSQL unreachable: {_first_line(exc)}") from exc
    async with conn:
        return await migrate(conn)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
