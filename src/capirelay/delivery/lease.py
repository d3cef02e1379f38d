"""A batch is handled only while its lease holds: the lease budget and its heartbeat.

Each request of a batch is capped so that it ends with a safety margin before the
lease expires (the margin is kept free for recording outcomes).  While bisection
runs, the lease is extended when the outbox can do that (``extend_lease``); rows
the outbox does not extend are no longer ours, and the undecided remainder is
given back rather than sent after another worker could have leased the same rows.
:class:`LeaseRunningOut` is how a batch learns it must stop.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Final

from capirelay.clock import Clock
from capirelay.graph import GraphError
from capirelay.graph.errors import dead_letter_kind
from capirelay.outbox import Attempt, DeadLetterReason, LeasedEvent, Outbox, StorageUnavailable
from capirelay.outbox.receipts import MetaAnswer

# Part of each lease kept free for recording outcomes after the last request ends.
LEASE_MARGIN_SHARE: Final = 0.25
LEASE_MARGIN_MAX_SECONDS: Final = 10.0
# httpx applies request_timeout per phase (connect, write, read), so one request may take a
# few timeouts; the worker caps the whole request at this many, and never past the lease.
REQUEST_CAP_TIMEOUTS: Final = 3.0


class LeaseRunningOut(Exception):
    """Too little of the batch's lease is left to send another request and record it."""


def by_lease(events: Iterable[LeasedEvent]) -> dict[str, list[int]]:
    """Event ids grouped by the lease that handed them out (settling is per lease)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for event in events:
        groups[event.lease_id].append(event.id)
    return groups


def dead_letter_reason(err: GraphError) -> DeadLetterReason:
    """Why an event Meta refused alone goes to the DLQ (100/2804003: Meta's clock says
    the 7/62-day window has passed, so ``expired``); from the table in graph.errors."""
    return DeadLetterReason(dead_letter_kind(err))


def attempt_from(err: GraphError, now: float) -> Attempt:
    return Attempt(
        at=now,
        status=err.status,
        code=err.code,
        subcode=err.subcode,
        message=err.message,
        fbtrace_id=err.fbtrace_id,
        retry_class=str(err.retry_class),
        user_title=err.user_title,
        user_msg=err.user_msg,
    )


class LeaseBudget:
    """One pixel's leased rows not yet settled, how long each request may take, and the
    outbox calls that settle rows (ack, release, reschedule, dead-letter) and so end
    their lease here.

    Expiry times are wall time (the outbox's clock), read from the injected ``clock``.
    """

    def __init__(
        self,
        outbox: Outbox,
        clock: Clock,
        *,
        lease_seconds: float,
        request_timeout: float,
    ) -> None:
        self._outbox = outbox
        self._clock = clock
        self.lease_seconds = lease_seconds
        self.margin = min(lease_seconds * LEASE_MARGIN_SHARE, LEASE_MARGIN_MAX_SECONDS)
        self.request_cap = min(
            REQUEST_CAP_TIMEOUTS * request_timeout, (lease_seconds - self.margin) / 2
        )
        # Leased rows not yet settled -> when their lease expires (outbox clock).
        self._leased_until: dict[int, float] = {}

    def leased(self, events: Iterable[LeasedEvent], until: float) -> None:
        """``events`` were just leased until ``until``."""
        self._leased_until.update((e.id, until) for e in events)

    def settled(self, ids: Iterable[int]) -> None:
        for event_id in ids:
            self._leased_until.pop(event_id, None)

    async def ack(
        self, events: Sequence[LeasedEvent], now: float, answer: MetaAnswer | None
    ) -> None:
        for lease_id, ids in by_lease(events).items():
            await self._outbox.ack_delivered(ids, now=now, lease_id=lease_id, answer=answer)
            self.settled(ids)

    async def release(self, events: Sequence[LeasedEvent]) -> None:
        for lease_id, ids in by_lease(events).items():
            await self._outbox.release(ids, lease_id=lease_id)
            self.settled(ids)

    async def reschedule(
        self, ids: list[int], when: float, attempt: Attempt, lease_id: str
    ) -> None:
        await self._outbox.reschedule(ids, next_attempt_at=when, attempt=attempt, lease_id=lease_id)
        self.settled(ids)

    async def dead_letter(
        self,
        events: Sequence[LeasedEvent],
        reason: DeadLetterReason,
        attempt: Attempt | None,
        now: float,
    ) -> None:
        for lease_id, ids in by_lease(events).items():
            await self._outbox.dead_letter(
                ids, reason=reason, attempt=attempt, now=now, lease_id=lease_id
            )
            self.settled(ids)

    def unsettled(self, events: Sequence[LeasedEvent]) -> list[LeasedEvent]:
        return [e for e in events if e.id in self._leased_until]

    async def request_budget(self, events: Sequence[LeasedEvent], sends: int) -> float:
        """Seconds the next request of a batch may take, or :class:`LeaseRunningOut`.

        The batch's first request (``sends == 0``) only needs some lease left; a later
        one (bisection) needs room for a whole capped request, after trying to extend
        the lease.
        """
        needed = 0.0 if sends == 0 else self.request_cap
        left = self.left(events)
        if sends and left < max(needed, self.lease_seconds / 2):
            await self.extend(events)
            left = self.left(events)
        if left <= 0 or left < needed:
            raise LeaseRunningOut
        return min(self.request_cap, left)

    def left(self, events: Sequence[LeasedEvent]) -> float:
        """Lease time left for the unsettled ``events``, less the settling margin."""
        expiries = [self._leased_until[e.id] for e in events if e.id in self._leased_until]
        if not expiries:
            return 0.0
        return min(expiries) - self._clock.time() - self.margin

    async def extend(self, events: Sequence[LeasedEvent]) -> None:
        """Heartbeat for a long bisection: extend the lease of the unsettled ``events``.

        Rows the outbox does not extend are no longer ours (their lease lapsed and
        another worker took them): they count as settled here and the batch stops
        (:class:`LeaseRunningOut`), giving back only what this lease still holds.
        """
        now = self._clock.time()
        until = now + self.lease_seconds
        lost: list[int] = []
        for lease_id, ids in by_lease(self.unsettled(events)).items():
            try:
                extended = set(
                    await self._outbox.extend_lease(ids, until=until, now=now, lease_id=lease_id)
                )
            except StorageUnavailable:
                return  # keep the old expiry; the batch gives its rows back in time
            for event_id in ids:
                if event_id in extended:
                    self._leased_until[event_id] = until
                else:
                    lost.append(event_id)
        if lost:
            self.settled(lost)
            raise LeaseRunningOut
