"""Dashboard views, shared pixel holds and operator records of the PostgreSQL outbox.

A mixin of :class:`~capirelay.outbox.postgres.outbox.PostgresOutbox` (kept apart so the
queue's own module stays readable): every statement is a named query of
``queries.sql``, run through the outbox's pool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from psycopg import AsyncConnection

from capirelay.outbox._rows import dlq_group, leased_from_row
from capirelay.outbox.base import AuditRecord, DLQGroup, LeasedEvent, QueueGroup

__all__ = ["PostgresOperatorRecords"]


class PostgresOperatorRecords:
    """Views (:class:`~capirelay.outbox.base.OutboxViews`), holds and operator records."""

    _in_transaction: Callable[[Callable[[AsyncConnection[Any]], Awaitable[Any]]], Awaitable[Any]]
    _run: Callable[[str, Mapping[str, Any]], Awaitable[list[tuple[Any, ...]]]]

    # ------------------------------------------------------- dashboard views

    async def queue_breakdown(self, *, now: float) -> list[QueueGroup]:
        return [QueueGroup(*row) for row in await self._run("queue_breakdown", {})]

    async def dlq_breakdown(self, *, scan_limit: int = 100_000) -> list[DLQGroup]:
        return [dlq_group(*row) for row in await self._run("dlq_breakdown", {})]

    async def queue_sample(self, *, limit: int) -> list[LeasedEvent]:
        return [leased_from_row(row) for row in await self._run("queue_sample", {"limit": limit})]

    # ------------------------------------------------- shared pixel holds

    async def hold_pixel(
        self,
        pixel_id: str,
        *,
        until: float,
        reason: str,
        now: float,
        code: int | None = None,
        subcode: int | None = None,
    ) -> None:
        await self._run(
            "hold_pixel",
            {
                "pixel_id": pixel_id,
                "until": until,
                "reason": reason,
                "code": code,
                "subcode": subcode,
                "now": now,
            },
        )

    async def unhold_pixel(self, pixel_id: str) -> None:
        await self._run("unhold_pixel", {"pixel_id": pixel_id})

    # ------------------------------------------------------ operator records

    async def revoke_session(self, session_hash: str, *, expires_at: float, now: float) -> None:
        await self._run(
            "revoke_session", {"hash": session_hash, "expires_at": expires_at, "now": now}
        )

    async def session_revoked(self, session_hash: str) -> bool:
        rows = await self._run("session_revoked", {"hash": session_hash})
        return bool(rows)

    async def record_audit(
        self, *, at: float, actor: str, action: str, target: str, count: int, origin: str
    ) -> None:
        await self._run(
            "record_audit",
            {"at": at, "actor": actor, "action": action, "target": target, "count": count,
             "origin": origin},
        )  # fmt: skip

    async def audit_log(self, *, limit: int = 100) -> list[AuditRecord]:
        rows = await self._run("audit_log", {"limit": limit})
        return [AuditRecord(*row) for row in rows]
