"""The durable commit every ingest route ends with: queue what was accepted, or answer 503.

``/v1/events``, ``/v1/collect`` and the webhook routes each prepare events their own
way, then store them the same way: one ``enqueue`` (one durable commit) for the
accepted events, nothing acknowledged when storage is down, the delivery engine
woken for the pixel, and one status per prepared event in request order.  :func:`commit_events` adds
the counting every route does after it (accepted, duplicates, rejected), and
:func:`problems_json` the problems' shape in every route's answer.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.datastructures import State

from capirelay.ingest import PreparedEvent
from capirelay.metrics import Metrics
from capirelay.outbox.base import EnqueueStatus, NewEvent, Outbox, StorageUnavailable
from capirelay.problems import Problem, error
from capirelay.server._receipts import record_duplicates
from capirelay.server.http import ApiError

__all__ = [
    "STORAGE_RETRY_AFTER_SECONDS",
    "WRITE_FAILURE_NOT_READY_SECONDS",
    "Committed",
    "commit_events",
    "commit_prepared",
    "problems_json",
    "recent_write_failure",
]

# What a 503 asks the client (or webhook vendor) to wait before retrying.
STORAGE_RETRY_AFTER_SECONDS = 5
# How long /readyz reports "not ready" after a write was refused (disk full, database
# down), unless a later write succeeds first.  Reads may still work then, so a ping
# alone would keep the load balancer sending traffic that is bound to get 503s; after
# this window readiness is retried.
WRITE_FAILURE_NOT_READY_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Committed:
    accepted: list[NewEvent]  # the events handed to the outbox, in order
    enqueued: list[EnqueueStatus]  # the outbox's answer for each accepted event
    statuses: list[str]  # one per prepared event: queued, duplicate or rejected


async def commit_prepared(
    state: State, pixel_id: str, prepared: Sequence[PreparedEvent], *, now: float
) -> Committed:
    """Enqueue the accepted events in one durable commit and wake delivery for ``pixel_id``.

    Raises the 503 :class:`ApiError` when storage is unavailable: nothing was accepted.
    """
    outbox: Outbox = state.outbox
    accepted: list[NewEvent] = []
    with_problems = False
    for item in prepared:
        if item.new_event is not None:
            accepted.append(item.new_event)
        if item.problems:
            with_problems = True
    if with_problems:
        _count_pii(state.metrics, pixel_id, prepared)
    enqueued: list[EnqueueStatus] = []
    if accepted:
        try:
            enqueued = await outbox.enqueue(accepted, now=now)
        except StorageUnavailable:
            raise storage_unavailable(state) from None
        state.last_write_failure = None  # storage takes writes again
        if len(accepted) == len(prepared) and all(e is _QUEUED for e in enqueued):
            # The common case: every event accepted and new.
            state.engine.notify(pixel_id)
            return Committed(accepted, enqueued, [_QUEUED_TEXT] * len(prepared))
        if EnqueueStatus.DUPLICATE in enqueued:
            await record_duplicates(outbox, accepted, enqueued, now=now)
    if EnqueueStatus.QUEUED in enqueued:
        state.engine.notify(pixel_id)
    answers = iter(enqueued)
    statuses: list[str] = []
    for item in prepared:
        status = "rejected" if item.new_event is None else str(next(answers))
        if item.new_event is not None and status == EnqueueStatus.REJECTED:
            # The backend refused this row's values (limits should have caught them first):
            # the event's problem, reported with it; storage stays ready.
            item.problems.append(_UNSTORABLE)
        statuses.append(status)
    return Committed(accepted, enqueued, statuses)


_QUEUED = EnqueueStatus.QUEUED
_QUEUED_TEXT = str(EnqueueStatus.QUEUED)


async def commit_events(
    state: State,
    pixel_id: str,
    prepared: Sequence[PreparedEvent],
    *,
    now: float,
    source: str,
) -> list[str]:
    """:func:`commit_prepared`, then count the outcome; one status per prepared event."""
    committed = await commit_prepared(state, pixel_id, prepared, now=now)
    metrics: Metrics = state.metrics
    _count(metrics, pixel_id, source, committed.accepted, committed.enqueued, prepared)
    return committed.statuses


def storage_unavailable(state: State) -> ApiError:
    """The 503 for a write storage refused (nothing accepted, retry later), the failure
    noted for ``/readyz`` (:func:`recent_write_failure`)."""
    state.last_write_failure = time.monotonic()
    return ApiError(
        503,
        "storage_unavailable",
        "the gateway cannot store events right now; nothing was accepted, retry later",
        headers={"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)},
    )


def problems_json(problems: Sequence[Problem]) -> list[dict[str, str | int]]:
    """Problems as the ingest routes answer them: :meth:`Problem.to_dict`'s shape, ``count``
    only on a problem that covers more than one value."""
    # Built by hand: dataclasses.asdict (Problem.to_dict) deep-copies and costs ~5x more,
    # which shows at 1,000 results per response.
    return [
        {"code": p.code, "field": p.field, "severity": p.severity.value, "message": p.message}
        if p.count == 1
        else {
            "code": p.code,
            "field": p.field,
            "severity": p.severity.value,
            "message": p.message,
            "count": p.count,
        }
        for p in problems
    ]


def _count(
    metrics: Metrics,
    pixel_id: str,
    source: str,
    accepted: Sequence[NewEvent],
    enqueued: Sequence[EnqueueStatus],
    prepared: Sequence[PreparedEvent],
) -> None:
    """Aggregate first: one ``inc(n)`` per label set, not one per event."""
    if len(accepted) == 1 == len(prepared) and enqueued[0] is _QUEUED:  # one new event
        metrics.count_accepted(pixel_id, accepted[0].event_name, source, 1)
        return
    queued: Counter[str] = Counter()
    duplicate: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for event, status in zip(accepted, enqueued, strict=True):
        if status is EnqueueStatus.REJECTED:
            rejected["unstorable_value"] += 1
            continue
        (queued if status is EnqueueStatus.QUEUED else duplicate)[event.event_name] += 1
    if len(accepted) < len(prepared):
        for item in prepared:
            if item.new_event is None:
                rejected.update({problem.code for problem in item.problems if problem.is_error})
    for event_name, n in queued.items():
        metrics.count_accepted(pixel_id, event_name, source, n)
    for event_name, n in duplicate.items():
        metrics.duplicates.labels(pixel_id, metrics.event_label(event_name)).inc(n)
    for code, n in rejected.items():
        metrics.rejected.labels(pixel_id, code).inc(n)


_UNSTORABLE: Problem = error(
    "unstorable_value",
    "event",
    "the storage refused one of this event's values (a control character or an oversized "
    "field); check event_id, event_name and custom_data against the limits in "
    "docs/reliability.md",
)


def _count_pii(metrics: Metrics, pixel_id: str, prepared: Sequence[PreparedEvent]) -> None:
    """Personal data found at ingest (capirelay.pii_scrub), counted once per request."""
    found = Counter(
        _PII_ACTIONS[problem.code]
        for item in prepared
        for problem in item.problems
        if problem.code in _PII_ACTIONS
    )
    for action, n in found.items():
        metrics.pii_found.labels(pixel_id, action).inc(n)


_PII_ACTIONS = {"pii_removed": "removed", "pii_in_event": "rejected"}


def recent_write_failure(state: object) -> float | None:
    """Seconds since storage last refused a write, if that is within the not-ready window."""
    failed_at = getattr(state, "last_write_failure", None)
    if failed_at is None:
        return None
    age = time.monotonic() - failed_at
    return age if age < WRITE_FAILURE_NOT_READY_SECONDS else None
