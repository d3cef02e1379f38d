"""The outbox contract: durable queue, dedup store and dead-letter store behind one interface.

The delivery engine, the ingest path and the CLI are written against
:class:`Outbox` only; :mod:`capirelay.outbox.sqlite` (embedded default),
:mod:`capirelay.outbox.postgres` (shared by replicas) and
:mod:`capirelay.outbox.memory` (in-process, for tests and tools) implement it, and
one contract suite (``tests/outbox/test_outbox_contract.py``) runs on all three.
:class:`OutboxCore` is what each must do; :class:`Outbox` adds the optional
stores (:class:`ReplicaHooks`, :class:`OperatorRecords`, :class:`ReceiptStore`);
:class:`OutboxViews` are the dashboard-only reads and :class:`ErasureStore` the
erasure of identifiers, two capabilities a caller checks with ``isinstance``.  The
outbox only ever holds wire-ready, hashed events (``payload`` is the orjson encoding
of the wire event), so raw PII never reaches disk.

Lifecycle of a row::

    enqueue ──► queued ──lease──► leased ──ack──────────► (gone; counted as sent)
                  ▲                  │ ──reschedule──► queued (attempts+1, next_attempt_at later)
                  │                  │ ──release─────► queued (no attempt counted)
                  │                  └─dead_letter───► dead-letter store
                  └──────────── dlq_requeue ◄─────────────┘

Dedup: ``(pixel_id, event_name, event_id)`` is remembered for
:data:`DEDUP_WINDOW_SECONDS` (Meta's 48 hours), and for as long as an event
with that key is still in the queue (an open breaker can hold events for days;
a client retry must not queue a second copy meanwhile).  ``enqueue`` answers
``DUPLICATE`` for a key it cannot claim and stores nothing.  Dead-lettering an
event forgets its key (Meta never accepted it, so a corrected resend with the
same id must get through); ``dlq_requeue`` claims it again exactly like
``enqueue``, so a letter whose key is held meanwhile stays in the DLQ and is
reported as a duplicate instead of being sent twice.

Order ledger: an event with an ``order_key`` (see :mod:`capirelay.orders`) is
also checked against the order ledger at ``enqueue``: a key already there is a
``DUPLICATE`` however old its dedup row, and a queued event's key is written in
the same transaction.  Dead-lettering keeps the entry and ``dlq_requeue`` ignores
the ledger (a replay is the one way to resend an order).  Entries are pruned by
:meth:`Outbox.prune_order_ledger` after the retention, oldest first past a cap.

Leases: every :meth:`Outbox.lease` call stamps its rows with a fresh random
lease id, carried by each :class:`LeasedEvent`.  A lease expires after
``lease_seconds``; the rows are then leased again (to this process or another
replica) under a new lease id.  The settle methods (``ack``, ``reschedule``,
``release``, ``dead_letter``, ``ack_delivered``) and :meth:`Outbox.extend_lease` take
ids plus the required ``lease_id`` of the lease that handed them out: they touch
only rows still carrying that lease id, so a worker whose lease ran out can
neither delete nor reschedule rows someone else is now sending.  This holds
across replicas because the check is in the database, not in process memory.  A
worker calls ``extend_lease`` (a heartbeat) while a batch is still in flight.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol, runtime_checkable

from capirelay.meta_facts import DEDUP_WINDOW_SECONDS as DEDUP_WINDOW_SECONDS
from capirelay.orders import UNVERIFIED_ID_PREFIX, unverified_order_key
from capirelay.outbox.receipts import ErasureResult, MetaAnswer, Receipt, TraceRecord

# Contract constants every backend shares.
# Most attempts kept per event; a week of hourly retries must not grow a row without bound.
ATTEMPT_LOG_LIMIT: Final = 20
# Rows removed per transaction by expire_dedup and prune_order_ledger: a large expiry
# never holds the writer (and ingest) or many row locks for long.
DEDUP_EXPIRY_CHUNK: Final = 10_000
# Due rows promoted per lease, as a multiple of the lease size: after an outage hundreds
# of thousands of rows can come due at once; promoting at least ``limit`` keeps leases full.
PROMOTE_FACTOR: Final = 2


class EnqueueStatus(StrEnum):
    QUEUED = "queued"
    DUPLICATE = "duplicate"
    # The backend cannot store this event's values (PostgreSQL: a data exception such as
    # U+0000 in text, or a key beyond an index's size).  Ingest's limits
    # (capirelay.limits) keep such events out; this is the backend's own safety net, so
    # one bad row costs only itself and never reads as "storage unavailable".
    REJECTED = "rejected"


class DeadLetterReason(StrEnum):
    INVALID = "invalid"  # Meta rejected the event itself (code 100 family), isolated by bisection
    EXPIRED = "expired"  # its deadline passed before Meta accepted it
    CONFIG = "config"  # Meta refused for a setup reason a retry cannot fix (pixel, version, LDU)
    REJECTED = "rejected"  # failed local re-validation (e.g. on replay)


class StorageUnavailable(RuntimeError):
    """The outbox could not durably store or read data (disk full, database down).

    Ingest turns this into HTTP 503 and acknowledges nothing.
    """


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event accepted by ingest, ready to queue."""

    pixel_id: str
    event_name: str
    event_id: str
    payload: bytes  # orjson-encoded wire event (normalized + hashed)
    event_time: int
    deadline: float  # unix seconds; see capirelay.validate.deadline
    test_event_code: str | None = None
    source: str = "api"
    # Order ledger key (capirelay.orders.order_key): set for order events, which are then
    # refused as duplicates for the ledger's retention, not only for the 48 h dedup window.
    order_key: bytes | None = None


def unverified_claim(event: NewEvent) -> NewEvent:
    """``event`` with its dedup and order-ledger keys moved to the unverified namespace
    (:data:`capirelay.orders.UNVERIFIED_ID_PREFIX` says why): its queue row and dedup row
    carry the prefixed event_id, its wire payload the real one."""
    order = event.order_key
    return dataclasses.replace(
        event,
        event_id=UNVERIFIED_ID_PREFIX + event.event_id,
        order_key=None if order is None else unverified_order_key(order),
    )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt's outcome, kept with the event (and in the DLQ)."""

    at: float
    status: int | None
    code: int | None = None
    subcode: int | None = None
    message: str | None = None
    fbtrace_id: str | None = None
    retry_class: str | None = None
    # Meta's error_user_title / error_user_msg: where Meta names the refused event's index
    # and field.  Kept in the stored dict only when Meta sent them.
    user_title: str | None = None
    user_msg: str | None = None

    def to_dict(self) -> dict[str, Any]:
        stored: dict[str, Any] = {
            "at": self.at,
            "status": self.status,
            "code": self.code,
            "subcode": self.subcode,
            "message": self.message,
            "fbtrace_id": self.fbtrace_id,
            "retry_class": self.retry_class,
        }
        if self.user_title:
            stored["user_title"] = self.user_title
        if self.user_msg:
            stored["user_msg"] = self.user_msg
        return stored


@dataclass(frozen=True, slots=True)
class LeasedEvent:
    """A queued event handed to a worker; ``lease_id`` names the lease it came with
    (empty for events read without leasing, e.g. :meth:`OutboxViews.queue_sample`)."""

    id: int
    pixel_id: str
    event_name: str
    event_id: str
    payload: bytes
    event_time: int
    deadline: float
    attempts: int
    test_event_code: str | None
    queued_at: float
    lease_id: str = ""


@dataclass(frozen=True, slots=True)
class RequeueResult:
    """What :meth:`Outbox.dlq_requeue` did: letters moved back to the queue, and letters
    left in the DLQ because their dedup key is held (by a queued or recently sent event,
    or by another letter of the same call).  Ids that matched no letter are in neither."""

    requeued: list[int] = field(default_factory=list)
    duplicate: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    pixel_id: str
    event_name: str
    event_id: str
    payload: bytes
    event_time: int
    deadline: float
    reason: str
    error: dict[str, Any] | None
    attempts: list[dict[str, Any]]
    test_event_code: str | None
    queued_at: float
    dead_at: float
    # Claimed by an unverified beacon (its stored id carries capirelay.orders'
    # UNVERIFIED_ID_PREFIX; ``event_id`` is shown without it): its dedup key is not an
    # authenticated letter's of the same id.
    unverified: bool = False


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One operator action on the dead-letter queue: who, when, what, how many.

    ``actor`` names the credential (``admin token``, ``basic:<user>``, ``session <id>``,
    ``cli:<os user>``), ``action`` is ``replay`` or ``purge``, ``target`` the filter or
    ids it was given, ``origin`` where it came from (``dashboard`` or ``cli``).
    """

    id: int
    at: float
    actor: str
    action: str
    target: str
    count: int
    origin: str


@dataclass(frozen=True, slots=True)
class DLQFilter:
    pixel_id: str | None = None
    event_name: str | None = None
    reason: str | None = None
    since: float | None = None  # dead_at >= since
    until: float | None = None  # dead_at < until


@dataclass(slots=True)
class QueueStats:
    depth: int = 0  # queued + leased
    leased: int = 0
    oldest_queued_at: float | None = None
    earliest_deadline: float | None = None
    dlq_size: int = 0
    depth_by_pixel: dict[str, int] = field(default_factory=dict)
    dlq_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueueGroup:
    """Queued (and leased) events of one pixel and event name, for the dashboard."""

    pixel_id: str
    event_name: str
    depth: int
    oldest_queued_at: float | None
    earliest_deadline: float | None


@dataclass(frozen=True, slots=True)
class DLQGroup:
    """Dead letters sharing pixel, event name, reason and Meta's code/subcode.

    ``message`` and ``fbtrace_id`` are those of the group's most recent letter.
    """

    pixel_id: str
    event_name: str
    reason: str
    code: int | None
    subcode: int | None
    count: int
    last_dead_at: float
    message: str | None
    fbtrace_id: str | None


class OutboxCore(abc.ABC):
    """The core contract: durable queue + dedup store + leases + dead-letter store + order
    ledger, and the settle calls of delivery.  :class:`~capirelay.outbox.memory.InMemoryOutbox`,
    SQLite and PostgreSQL implement it and pass one contract suite
    (``tests/outbox/test_outbox_contract.py``).

    :class:`Outbox` adds the optional stores, grouped below as named contracts with
    defaults that work on any backend: :class:`ReplicaHooks` (coordination between processes),
    :class:`OperatorRecords` (dashboard sessions, DLQ audit; abstract, every outbox keeps
    them) and :class:`ReceiptStore` (receipts, traces); the dashboard-only reads are
    :class:`OutboxViews` and erasure is :class:`ErasureStore`, both checked with isinstance.
    Meta diagnostics live in :mod:`capirelay.ops.meta_store`.

    Every method that changes state has committed durably when it returns.
    Implementations raise :class:`StorageUnavailable` when they cannot.
    """

    @abc.abstractmethod
    async def open(self) -> None:
        """Create/migrate the schema and start background machinery."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush pending writes and release resources."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when storage answers (used by /readyz)."""

    @abc.abstractmethod
    async def enqueue(self, events: Sequence[NewEvent], *, now: float) -> list[EnqueueStatus]:
        """Dedup and store; one status per input event, in order.

        Two events with the same key in one call: the first is queued, the
        second is a duplicate.
        """

    @abc.abstractmethod
    async def holds_claim(self, event: NewEvent, *, now: float) -> bool:
        """Whether ``enqueue`` would answer ``DUPLICATE`` for ``event`` because of a claim
        already stored: its dedup key remembered (inside the window, or its event still
        queued) or its ``order_key`` in the order ledger.  Reads only; the unverified beacon
        path asks it about the authenticated keys of its event (:func:`unverified_claim`).
        """

    @abc.abstractmethod
    async def lease(
        self, pixel_id: str, *, limit: int, lease_seconds: float, now: float
    ) -> list[LeasedEvent]:
        """Lease up to ``limit`` due events of one pixel, earliest deadline first.

        Due means ``next_attempt_at <= now`` and not leased (or the lease has
        expired, which is how a crashed worker's events come back).

        A backend may let an event given back (released, or retried) while other leases
        of the pixel are in flight wait until those settle, as PostgreSQL does (migration
        0013: reading past the rows in flight cost each lease a heap visit per row).  It
        is never starved: it is leased in deadline order again once those leases settle
        or nothing else is due, and first of all once its deadline is within the hour.
        """

    @abc.abstractmethod
    async def extend_lease(
        self, ids: Sequence[int], *, until: float, now: float, lease_id: str
    ) -> list[int]:
        """Heartbeat: the lease of these events now ends at ``until``.

        Only rows still carrying ``lease_id`` are extended (even if the lease ran out,
        as long as nobody leased them since).  Returns the ids extended; an id missing
        from the answer was lost and must not be settled.  ``until`` must lie after
        ``now``.
        """

    @abc.abstractmethod
    async def ack(self, ids: Sequence[int], *, now: float, lease_id: str) -> None:
        """The events were accepted by Meta: remove them from the queue.

        Only rows still held under ``lease_id`` (see module docstring).
        """

    @abc.abstractmethod
    async def ack_delivered(
        self,
        ids: Sequence[int],
        *,
        now: float,
        lease_id: str,
        answer: MetaAnswer | None = None,
    ) -> None:
        """:meth:`ack`, writing each event's receipt (with Meta's ``answer``) in the same
        commit where the backend keeps receipts (:class:`ReceiptStore`)."""

    @abc.abstractmethod
    async def reschedule(
        self,
        ids: Sequence[int],
        *,
        next_attempt_at: float,
        attempt: Attempt,
        lease_id: str,
    ) -> None:
        """A failed attempt: record it, count it and make the events due later.

        Only rows still held under ``lease_id``.
        """

    @abc.abstractmethod
    async def release(self, ids: Sequence[int], *, lease_id: str) -> None:
        """Give leased events back untouched (shutdown, open breaker).

        Only rows still held under ``lease_id``.
        """

    @abc.abstractmethod
    async def dead_letter(
        self,
        ids: Sequence[int],
        *,
        reason: DeadLetterReason,
        attempt: Attempt | None,
        now: float,
        lease_id: str,
    ) -> None:
        """Move events to the dead-letter store and forget their dedup keys.

        Only rows still held under ``lease_id``.
        """

    @abc.abstractmethod
    async def due_pixels(self, *, now: float) -> list[str]:
        """Pixels that have at least one due, unleased event."""

    @abc.abstractmethod
    async def next_due_at(self, pixel_id: str | None = None) -> float | None:
        """When the next queued event (of a pixel, or of any) becomes due."""

    @abc.abstractmethod
    async def stats(self, *, now: float, max_age: float = 0.0) -> QueueStats:
        """Queue depth, ages and DLQ size for /metrics, /readyz and the dashboard.

        ``max_age`` (seconds): figures that old will do, e.g. for gauges refreshed on an
        interval.  A backend shared by replicas (PostgreSQL) then computes them on one
        replica at a time and shares them; the others count their own queue each time.
        0 (the default) asks for figures as of now."""

    @abc.abstractmethod
    async def expire_dedup(self, *, now: float) -> int:
        """Forget dedup keys older than the window whose event is no longer queued
        (queued or leased keys are kept however old); returns how many."""

    @abc.abstractmethod
    async def dlq_list(
        self, flt: DLQFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        """Dead letters matching the filter, newest first."""

    @abc.abstractmethod
    async def dlq_get(self, dlq_id: int) -> DeadLetter | None: ...

    @abc.abstractmethod
    async def dlq_requeue(self, ids: Sequence[int], *, now: float) -> RequeueResult:
        """Move dead letters back to the queue (attempts reset, due now).

        The caller has re-validated them and checked their deadline.  Each letter
        claims its dedup key exactly as :meth:`enqueue` does; a letter whose key is
        held stays in the DLQ and is reported in ``duplicate``.  Several letters of
        one call sharing a key: the lowest id is re-queued, the others are duplicates.
        """

    @abc.abstractmethod
    async def dlq_purge(
        self, ids: Sequence[int] | None = None, flt: DLQFilter | None = None
    ) -> int:
        """Delete dead letters by id or by filter; returns how many."""

    @abc.abstractmethod
    async def prune_order_ledger(
        self, *, now: float, retention_seconds: float, max_entries: int
    ) -> int:
        """Forget order-ledger entries older than ``retention_seconds``, and the oldest ones
        beyond ``max_entries``; returns how many."""

    @abc.abstractmethod
    async def order_ledger_size(self) -> int:
        """How many order-ledger entries are kept."""


class ReplicaHooks:
    """Hooks for backends shared by several processes (PostgreSQL).  The defaults are
    what one process with an embedded store needs: nothing."""

    async def wait_for_work(self, timeout: float) -> set[str]:
        """Wait until another process announces queued events; the pixels it named.

        Returns an empty set when ``timeout`` passed first.  The default has no
        cross-process signal and just sleeps: the engine's polling finds the work.
        """
        await asyncio.sleep(max(timeout, 0.0))
        return set()

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
        """Ask every process sharing this outbox to lease nothing of ``pixel_id`` before
        ``until`` (its breaker opened, or Meta throttled it).  Default: no-op, the one
        process's own breaker and pause already do it."""
        return None

    async def unhold_pixel(self, pixel_id: str) -> None:
        """Lift a hold (the breaker closed again).  Default: no-op."""


class OperatorRecords(abc.ABC):
    """Dashboard sessions and the DLQ audit: shared by every process using this storage,
    so a logout or an audit entry holds on every replica.  Part of every outbox's
    contract: both database backends and the in-memory outbox implement it."""

    @abc.abstractmethod
    async def revoke_session(self, session_hash: str, *, expires_at: float, now: float) -> None:
        """Remember that the dashboard session ``session_hash`` ended (until ``expires_at``);
        forgets revocations whose cookies have expired meanwhile."""

    @abc.abstractmethod
    async def session_revoked(self, session_hash: str) -> bool:
        """True when the session was ended by :meth:`revoke_session`."""

    @abc.abstractmethod
    async def record_audit(
        self, *, at: float, actor: str, action: str, target: str, count: int, origin: str
    ) -> None:
        """Append one :class:`AuditRecord`."""

    @abc.abstractmethod
    async def audit_log(self, *, limit: int = 100) -> list[AuditRecord]:
        """The latest audit records, newest first."""


class ReceiptStore:
    """Receipts and traces (:mod:`capirelay.outbox.receipts`).  Both database backends
    implement it (``Outbox.ack_delivered`` writes the delivered receipts); the defaults
    are a backend without receipts (nothing recorded, every trace empty).  Erasure is
    :class:`ErasureStore`."""

    async def record_receipts(self, receipts: Sequence[Receipt]) -> None:
        """Store receipts of events that never reached the queue (duplicates, drops).
        A duplicate of a key that already has a duplicate receipt bumps its count."""
        return None

    async def trace(self, event_id: str, *, pixel_id: str | None = None) -> TraceRecord:
        """Receipts, queued rows and dead letters of one ``event_id``."""
        return TraceRecord(event_id)

    async def event_ids_for_order(
        self, order_id: str, *, pixel_id: str | None = None, limit: int = 20
    ) -> list[str]:
        """Event ids whose receipts carry this ``custom_data.order_id``, newest first."""
        return []

    async def prune_receipts(
        self, *, now: float, retention_seconds: float, cap: int, chunk: int = 10_000
    ) -> int:
        """Delete receipts older than the retention and beyond the cap; how many."""
        return 0


class Outbox(OutboxCore, ReplicaHooks, OperatorRecords, ReceiptStore):
    """What the gateway is written against: the core contract (:class:`OutboxCore`) plus
    the optional stores, each with working defaults.  Backends subclass this and
    override the stores they keep."""


@runtime_checkable
class ErasureStore(Protocol):
    """Erasure of one person's identifiers (``capirelay erase``): the database backends
    implement it (their rows and receipts are what outlive a process); the in-memory
    outbox keeps nothing past its process and does not.  Callers check
    ``isinstance(outbox, ErasureStore)``."""

    async def erase(
        self,
        hashes: Mapping[str, set[str]],
        *,
        pixel_id: str | None,
        now: float,
        audit: Sequence[tuple[str, str]],
    ) -> ErasureResult:
        """Remove queued and dead-lettered events and receipts carrying one of ``hashes``,
        and record the request (``audit``: (field, value digest) pairs) in the same
        transaction."""
        ...

    async def erasure_log(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """The latest erasure requests (field, identifier SHA-256, time, counts)."""
        ...


@runtime_checkable
class OutboxViews(Protocol):
    """Read-only aggregates for the dashboard and ``capirelay doctor`` (full scans, run on
    page views only, never on the delivery path).  Every backend implements them with
    one query each; :func:`capirelay.outbox.views.views_of` falls back to its
    ``ScanViews`` for one that does not."""

    async def queue_breakdown(self, *, now: float) -> list[QueueGroup]:
        """Queue depth, oldest entry and earliest deadline per (pixel, event name)."""
        ...

    async def dlq_breakdown(self, *, scan_limit: int = 100_000) -> list[DLQGroup]:
        """Dead letters grouped by (pixel, event name, reason, code, subcode), largest
        first; ``message`` and ``fbtrace_id`` of each group's latest letter."""
        ...

    async def queue_sample(self, *, limit: int) -> list[LeasedEvent]:
        """Up to ``limit`` of the most recently queued events, without leasing them."""
        ...
