"""Settling under a lease on PostgreSQL (migration 0010: leases are rows of their own).

A lease is one row of ``capirelay_leases`` naming the queue ids it holds; the queue rows
themselves are not written when they are leased.  Every call that settles or extends a
lease first locks its lease row (``lock_lease``); a lease that takes rows from a lease
that ran out locks that row too (``lock_lapsed_leases``), so "which lease holds this id"
is decided by one transaction at a time, and settles of different leases never wait
for each other.  A settle then removes its ids from the lease (``unlease``).
The three statements go out pipelined: one round trip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection

from capirelay.outbox.postgres._statements import QUERIES

__all__ = ["lock_lease", "settle", "unlease"]


async def settle(
    conn: AsyncConnection[Any],
    lease_id: str,
    ids: Sequence[int],
    name: str | None,
    params: Mapping[str, Any],
    *,
    binary: bool = False,
) -> list[tuple[Any, ...]]:
    """Run the settle statement ``name`` (None: nothing but giving the ids back) on the
    rows ``lease_id`` still holds, under its lease lock, then take them off the lease.
    The statement's rows, if it returns any."""
    async with conn.pipeline():
        await lock_lease(conn, lease_id)
        cur = await conn.execute(QUERIES[name], params, binary=binary) if name else None
        await unlease(conn, lease_id, ids)
    if cur is None or cur.description is None:
        return []
    return await cur.fetchall()


async def lock_lease(conn: AsyncConnection[Any], lease_id: str) -> None:
    await conn.execute(QUERIES["lock_lease"], {"lease_id": lease_id})


async def unlease(conn: AsyncConnection[Any], lease_id: str, ids: Sequence[int]) -> None:
    await conn.execute(QUERIES["unlease"], {"ids": sorted(set(ids)), "lease_id": lease_id})
