"""The in-memory outbox: the :class:`~capirelay.outbox.base.Outbox` contract in plain Python.

What it is for: tests and tools that need an outbox but not a database, the way
httpx's ``MockTransport`` stands behind the same interface as its real
transports.  It passes the same contract suite as SQLite and PostgreSQL
(``tests/outbox/test_outbox_contract.py``): dedup (48 h window, keys pinned while
queued), the order ledger, leases that expire and are named by a lease id,
settle calls that touch only rows still held under that id, the attempt log
bound, the DLQ with its filters, requeue and purge.  Dashboard sessions and the
audit log are kept too, and the dashboard views; receipts are not (the
:class:`~capirelay.outbox.base.ReceiptStore` defaults apply).

What it is not: durable.  Everything is lost with the process, so it is never
what a ``storage`` URL opens.  All state lives in one event loop's memory and
every method runs without awaiting in between, so each call is atomic like one
database transaction.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from capirelay.orders import UNVERIFIED_ID_PREFIX, public_event_id
from capirelay.outbox._rows import (
    DLQ_FILTER_FIELDS,
    dlq_filter_values,
    queue_stats,
    require_purge_target,
)
from capirelay.outbox.base import (
    ATTEMPT_LOG_LIMIT,
    DEDUP_WINDOW_SECONDS,
    Attempt,
    AuditRecord,
    DeadLetter,
    DeadLetterReason,
    DLQFilter,
    DLQGroup,
    EnqueueStatus,
    LeasedEvent,
    NewEvent,
    Outbox,
    OutboxViews,
    QueueGroup,
    QueueStats,
    RequeueResult,
    StorageUnavailable,
)
from capirelay.outbox.receipts import MetaAnswer
from capirelay.outbox.views import ScanViews

__all__ = ["InMemoryOutbox"]

Key = tuple[str, str, str]

_READY, _WAITING, _LEASED = 0, 1, 2


@dataclass(slots=True)
class _Row:
    id: int
    event: NewEvent
    queued_at: float
    state: int = _READY
    available_at: float = 0.0
    attempts: int = 0
    attempt_log: list[dict[str, Any]] = field(default_factory=list)
    lease_id: str = ""

    @property
    def key(self) -> Key:
        return (self.event.pixel_id, self.event.event_name, self.event.event_id)

    def due(self, now: float) -> bool:
        return self.state == _READY or self.available_at <= now

    def leased_event(self) -> LeasedEvent:
        e = self.event
        return LeasedEvent(
            id=self.id,
            pixel_id=e.pixel_id,
            event_name=e.event_name,
            event_id=e.event_id,
            payload=e.payload,
            event_time=e.event_time,
            deadline=e.deadline,
            attempts=self.attempts,
            test_event_code=e.test_event_code,
            queued_at=self.queued_at,
            lease_id=self.lease_id,
        )


@dataclass(slots=True)
class _Letter:
    letter: DeadLetter
    event: NewEvent
    attempt_log: list[dict[str, Any]]


def _appended(log: list[dict[str, Any]], attempt: Attempt) -> list[dict[str, Any]]:
    """The attempt log with ``attempt`` added, the oldest dropped past the limit."""
    kept = log[1:] if len(log) >= ATTEMPT_LOG_LIMIT else log
    return [*kept, attempt.to_dict()]


class InMemoryOutbox(Outbox, OutboxViews):
    """The outbox contract in process memory (not durable; see the module docstring)."""

    def __init__(self) -> None:
        self._open = False
        self._queue: dict[int, _Row] = {}
        self._dedup: dict[Key, tuple[float, bool]] = {}  # key -> (seen_at, queued)
        self._ledger: dict[bytes, float] = {}
        self._letters: dict[int, _Letter] = {}
        self._revoked: dict[str, float] = {}
        self._audit: list[AuditRecord] = []
        self._ids = itertools.count(1)
        self._letter_ids = itertools.count(1)

    # ------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def ping(self) -> bool:
        return self._open

    def _check_open(self) -> None:
        if not self._open:
            raise StorageUnavailable("the outbox is not open")

    # ----------------------------------------------------------------- queue

    def _claim(self, key: Key, now: float) -> bool:
        """Claim a dedup key as enqueue does: new, or remembered past the window and no
        longer queued."""
        known = self._dedup.get(key)
        if known is not None and (known[0] > now - DEDUP_WINDOW_SECONDS or known[1]):
            return False
        self._dedup[key] = (now, True)
        return True

    async def enqueue(self, events: Sequence[NewEvent], *, now: float) -> list[EnqueueStatus]:
        self._check_open()
        new_orders: set[bytes] = set()
        for order_key in dict.fromkeys(e.order_key for e in events if e.order_key is not None):
            if order_key not in self._ledger:
                self._ledger[order_key] = now
                new_orders.add(order_key)
        statuses: list[EnqueueStatus] = []
        for event in events:
            if event.order_key is not None:
                if event.order_key not in new_orders:
                    statuses.append(EnqueueStatus.DUPLICATE)
                    continue
                new_orders.discard(event.order_key)  # a repeated key: first place only
            key = (event.pixel_id, event.event_name, event.event_id)
            if not self._claim(key, now):
                statuses.append(EnqueueStatus.DUPLICATE)
                continue
            row_id = next(self._ids)
            self._queue[row_id] = _Row(row_id, event, queued_at=now, available_at=now)
            statuses.append(EnqueueStatus.QUEUED)
        return statuses

    async def holds_claim(self, event: NewEvent, *, now: float) -> bool:
        self._check_open()
        if event.order_key is not None and event.order_key in self._ledger:
            return True
        known = self._dedup.get((event.pixel_id, event.event_name, event.event_id))
        return known is not None and (known[0] > now - DEDUP_WINDOW_SECONDS or known[1])

    async def lease(
        self, pixel_id: str, *, limit: int, lease_seconds: float, now: float
    ) -> list[LeasedEvent]:
        self._check_open()
        if limit <= 0:
            return []
        due = [r for r in self._queue.values() if r.event.pixel_id == pixel_id and r.due(now)]
        due.sort(key=lambda r: (r.event.deadline, r.id))
        lease_id = uuid.uuid4().hex
        for row in due[:limit]:
            row.state, row.available_at, row.lease_id = _LEASED, now + lease_seconds, lease_id
        return [row.leased_event() for row in due[:limit]]

    def _held(self, ids: Sequence[int], lease_id: str) -> list[_Row]:
        rows = (self._queue.get(int(i)) for i in dict.fromkeys(ids))
        return [r for r in rows if r is not None and lease_id and r.lease_id == lease_id]

    async def extend_lease(
        self, ids: Sequence[int], *, until: float, now: float, lease_id: str
    ) -> list[int]:
        if until <= now:
            raise ValueError("a lease extension must end after now")
        self._check_open()
        held = self._held(ids, lease_id)
        for row in held:
            row.state, row.available_at = _LEASED, max(row.available_at, until)
        return sorted(row.id for row in held)

    async def ack(self, ids: Sequence[int], *, now: float, lease_id: str) -> None:
        self._check_open()
        for row in self._held(ids, lease_id):
            seen_at, _ = self._dedup.get(row.key, (now, True))
            self._dedup[row.key] = (seen_at, False)
            del self._queue[row.id]

    async def ack_delivered(
        self,
        ids: Sequence[int],
        *,
        now: float,
        lease_id: str,
        answer: MetaAnswer | None = None,
    ) -> None:
        await self.ack(ids, now=now, lease_id=lease_id)

    async def reschedule(
        self,
        ids: Sequence[int],
        *,
        next_attempt_at: float,
        attempt: Attempt,
        lease_id: str,
    ) -> None:
        self._check_open()
        for row in self._held(ids, lease_id):
            row.state, row.available_at, row.lease_id = _WAITING, next_attempt_at, ""
            row.attempts += 1
            row.attempt_log = _appended(row.attempt_log, attempt)

    async def release(self, ids: Sequence[int], *, lease_id: str) -> None:
        self._check_open()
        for row in self._held(ids, lease_id):
            if row.state == _LEASED:
                row.state, row.lease_id = _READY, ""

    async def dead_letter(
        self,
        ids: Sequence[int],
        *,
        reason: DeadLetterReason,
        attempt: Attempt | None,
        now: float,
        lease_id: str,
    ) -> None:
        self._check_open()
        for row in self._held(ids, lease_id):
            log = _appended(row.attempt_log, attempt) if attempt else list(row.attempt_log)
            letter_id = next(self._letter_ids)
            e = row.event
            letter = DeadLetter(
                id=letter_id,
                pixel_id=e.pixel_id,
                event_name=e.event_name,
                event_id=public_event_id(e.event_id),
                payload=e.payload,
                event_time=e.event_time,
                deadline=e.deadline,
                reason=str(reason),
                error=attempt.to_dict() if attempt else None,
                attempts=list(log),
                test_event_code=e.test_event_code,
                queued_at=row.queued_at,
                dead_at=now,
                unverified=e.event_id.startswith(UNVERIFIED_ID_PREFIX),
            )
            self._letters[letter_id] = _Letter(letter, e, log)
            self._dedup.pop(row.key, None)
            del self._queue[row.id]

    async def due_pixels(self, *, now: float) -> list[str]:
        self._check_open()
        return sorted({r.event.pixel_id for r in self._queue.values() if r.due(now)})

    async def next_due_at(self, pixel_id: str | None = None) -> float | None:
        self._check_open()
        times = [
            r.queued_at if r.state == _READY else r.available_at
            for r in self._queue.values()
            if pixel_id is None or r.event.pixel_id == pixel_id
        ]
        return min(times) if times else None

    async def stats(self, *, now: float, max_age: float = 0.0) -> QueueStats:
        self._check_open()
        by_pixel: dict[str, list[_Row]] = {}
        for row in self._queue.values():
            by_pixel.setdefault(row.event.pixel_id, []).append(row)
        pixel_rows = [
            (
                pixel,
                len(rows),
                sum(r.state == _LEASED for r in rows),
                min(r.event.deadline for r in rows),
            )
            for pixel, rows in sorted(by_pixel.items())
        ]
        oldest = self._queue[min(self._queue)].queued_at if self._queue else None
        reasons: dict[str, int] = {}
        for held in self._letters.values():
            reasons[held.letter.reason] = reasons.get(held.letter.reason, 0) + 1
        return queue_stats(pixel_rows, oldest, reasons.items())

    async def expire_dedup(self, *, now: float) -> int:
        self._check_open()
        cutoff = now - DEDUP_WINDOW_SECONDS
        gone = [
            k for k, (seen_at, queued) in self._dedup.items() if seen_at <= cutoff and not queued
        ]
        for key in gone:
            del self._dedup[key]
        return len(gone)

    async def prune_order_ledger(
        self, *, now: float, retention_seconds: float, max_entries: int
    ) -> int:
        self._check_open()
        cutoff = now - retention_seconds
        newest_first = sorted(self._ledger.values(), reverse=True)
        if len(newest_first) > max(0, max_entries):
            cutoff = max(cutoff, newest_first[max(0, max_entries)])
        gone = [key for key, seen_at in self._ledger.items() if seen_at <= cutoff]
        for key in gone:
            del self._ledger[key]
        return len(gone)

    async def order_ledger_size(self) -> int:
        self._check_open()
        return len(self._ledger)

    # ------------------------------------------------------------ dead letters

    def _matching(self, flt: DLQFilter | None) -> list[DeadLetter]:
        values = dlq_filter_values(flt)
        comparisons = {
            "=": lambda a, b: a == b,
            ">=": lambda a, b: a >= b,
            "<": lambda a, b: a < b,
        }
        return [
            held.letter
            for held in self._letters.values()
            if all(
                comparisons[op](getattr(held.letter, column), values[name])
                for name, column, op in DLQ_FILTER_FIELDS
                if values[name] is not None
            )
        ]

    async def dlq_list(
        self, flt: DLQFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        self._check_open()
        letters = sorted(self._matching(flt), key=lambda d: (d.dead_at, d.id), reverse=True)
        return letters[offset : offset + limit]

    async def dlq_get(self, dlq_id: int) -> DeadLetter | None:
        self._check_open()
        held = self._letters.get(int(dlq_id))
        return held.letter if held else None

    async def dlq_requeue(self, ids: Sequence[int], *, now: float) -> RequeueResult:
        self._check_open()
        result = RequeueResult()
        for letter_id in sorted({int(i) for i in ids if int(i) in self._letters}):
            held = self._letters[letter_id]
            d = held.letter
            if not self._claim((d.pixel_id, d.event_name, d.event_id), now):
                result.duplicate.append(letter_id)
                continue
            row_id = next(self._ids)
            self._queue[row_id] = _Row(
                row_id, held.event, queued_at=now, available_at=now, attempt_log=held.attempt_log
            )
            del self._letters[letter_id]
            result.requeued.append(letter_id)
        return result

    async def dlq_purge(
        self, ids: Sequence[int] | None = None, flt: DLQFilter | None = None
    ) -> int:
        require_purge_target(ids, flt)
        self._check_open()
        if ids is not None:
            gone = [int(i) for i in dict.fromkeys(ids) if int(i) in self._letters]
        else:
            gone = [d.id for d in self._matching(flt)]
        for letter_id in gone:
            del self._letters[letter_id]
        return len(gone)

    # ------------------------------------------------------- dashboard views

    async def queue_breakdown(self, *, now: float) -> list[QueueGroup]:
        self._check_open()
        groups: dict[tuple[str, str], list[_Row]] = {}
        for row in self._queue.values():
            groups.setdefault((row.event.pixel_id, row.event.event_name), []).append(row)
        return [
            QueueGroup(
                pixel,
                name,
                len(rows),
                min(r.queued_at for r in rows),
                min(r.event.deadline for r in rows),
            )
            for (pixel, name), rows in sorted(groups.items())
        ]

    async def dlq_breakdown(self, *, scan_limit: int = 100_000) -> list[DLQGroup]:
        return await ScanViews(self).dlq_breakdown(scan_limit=scan_limit)

    async def queue_sample(self, *, limit: int) -> list[LeasedEvent]:
        self._check_open()
        newest = sorted(self._queue, reverse=True)[: max(0, limit)]
        return [replace(self._queue[i].leased_event(), lease_id="") for i in newest]

    # ------------------------------------------------------ operator records

    async def revoke_session(self, session_hash: str, *, expires_at: float, now: float) -> None:
        self._check_open()
        self._revoked = {h: t for h, t in self._revoked.items() if t > now}
        self._revoked[session_hash] = expires_at

    async def session_revoked(self, session_hash: str) -> bool:
        self._check_open()
        return session_hash in self._revoked

    async def record_audit(
        self, *, at: float, actor: str, action: str, target: str, count: int, origin: str
    ) -> None:
        self._check_open()
        record = AuditRecord(len(self._audit) + 1, at, actor, action, target, count, origin)
        self._audit.append(record)

    async def audit_log(self, *, limit: int = 100) -> list[AuditRecord]:
        self._check_open()
        return list(reversed(self._audit))[: max(0, limit)]
