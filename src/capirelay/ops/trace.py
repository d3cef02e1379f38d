"""One event's story, from storage: received → attempts (with Meta's answers) → outcome.

Shared by ``capirelay trace``, the dashboard's search box and
``GET /v1/events/{event_id}``, so all three tell the same story.  The input is a
:class:`~capirelay.outbox.receipts.TraceRecord` (receipts, plus the event's row in
the queue or the dead-letter store if it is still there); nothing here reads a
payload, so nothing here can show an identifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from capirelay.delivery.status import BreakerState, PixelStatus
from capirelay.graph.errors import code_label, explain, meta_says_of
from capirelay.outbox.receipts import Outcome, Receipt, TracedEvent, TraceRecord
from capirelay.wording import counted

__all__ = ["Step", "pauses_of", "status_of", "story", "trace_json"]


@dataclass(frozen=True, slots=True)
class Step:
    at: float | None
    what: str  # received, attempt, delivered, dead_lettered, duplicate, dropped, rejected,
    # queued, waiting, paused, in_dlq
    detail: str
    pixel_id: str
    event_name: str
    fbtrace_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "at_iso": iso(self.at),
            "what": self.what,
            "detail": self.detail,
            "pixel_id": self.pixel_id,
            "event_name": self.event_name,
            "fbtrace_id": self.fbtrace_id,
        }


def iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_of(record: TraceRecord) -> str:
    """One word: delivered, queued, dead_lettered, duplicate, dropped (by the consent or
    bot policy), rejected (failed validation at ingest: a webhook's event, whose receipt
    is a ``dropped`` one with the problems that rejected it) or unknown."""
    if record.delivered:
        return "delivered"
    if any(p.where == "queue" for p in record.pending):
        return "queued"
    if any(p.where == "dead_letters" for p in record.pending):
        return "dead_lettered"
    if record.receipts:
        last = record.receipts[-1]
        return "rejected" if last.rejected_at_ingest else str(last.outcome)
    return "unknown"


def _attempt_detail(attempt: dict[str, Any]) -> str:
    parts = []
    if attempt.get("status") is not None:
        parts.append(f"HTTP {attempt['status']}")
    else:
        parts.append("no answer")
    code, subcode = attempt.get("code"), attempt.get("subcode")
    if code is not None:
        parts.append(f"code {code_label(code, subcode)}")
    if attempt.get("retry_class"):
        parts.append(str(attempt["retry_class"]))
    said = meta_says_of(attempt)
    if said:
        parts.append(said)
    return ", ".join(parts)


class _Told:
    """The attempts the story has told of one (pixel, event name) so far.

    A dead letter replayed to the queue keeps its attempt log, so the receipt of its
    next outcome (and its queue row) repeats attempts an earlier receipt told: told once,
    the new ones are numbered on from the count told so far, and the arrival is called
    a replay.  A corrected event sent again under a freed id has a log of its own:
    numbered from 1.  Logs keep their last 20 attempts (``ATTEMPT_LOG_LIMIT``), so the
    numbers continue from the count told, not from the overlap, which shrinks as old
    entries fall off; after 20 or more failures since a replay its log shares nothing
    with the story's, and it is told as a send of its own.
    """

    def __init__(self) -> None:
        self.attempts: set[tuple[Any, ...]] = set()
        self.count = 0

    def split(self, log: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """The attempts of ``log`` not told yet, and the number the first of them follows
        (0 for a send of its own: nothing in ``log`` was told)."""
        fresh, overlap = [], 0
        for attempt in log:
            key = (attempt.get("at"), attempt.get("fbtrace_id"), attempt.get("status"),
                   attempt.get("code"), attempt.get("subcode"))  # fmt: skip
            if key in self.attempts:
                overlap += 1
            else:
                self.attempts.add(key)
                fresh.append(attempt)
        offset = self.count if overlap else 0
        self.count = offset + len(fresh)
        return fresh, offset


def _arrival(source: str, replayed: bool) -> str:
    return "replayed from the dead-letter queue" if replayed else f"queued from {source}"


def _attempt_steps(
    log: list[dict[str, Any]], pixel_id: str, event_name: str, offset: int = 0
) -> list[Step]:
    return [
        Step(
            a.get("at"),
            "attempt",
            f"attempt {offset + n} refused: {_attempt_detail(a)}",
            pixel_id,
            event_name,
            a.get("fbtrace_id"),
        )
        for n, a in enumerate(log, start=1)
    ]


def _rejection(r: Receipt) -> str:
    """``(codes): first message`` of a rejection at ingest, from its stored problems; for
    one written without them (an older replica's, whose codes are read from its reason,
    see :attr:`Receipt.problem_codes`) the message is the reason's own, after its codes."""
    codes = ", ".join(dict.fromkeys(r.problem_codes))
    first = next((str(p.get("message") or "") for p in r.problems if isinstance(p, dict)), "")
    if not r.problems and r.reason:
        first = r.reason.partition("): ")[2]
    return f"({codes}): {first}" if first else f"({codes})"


def _too_old_resend(r: Receipt, delivered_at: float | None) -> str | None:
    """The story of a webhook's event refused as too old after the same event had been
    delivered: the vendor sent a delivered order again past Meta's window.  Nothing is
    lost and nothing is to be resent; ``None`` for any other rejection.  Decided by the
    receipt's problem codes, not by its ``reason`` text."""
    if delivered_at is None or "event_too_old" not in r.problem_codes:
        return None
    what = "order" if r.order_key else "event"
    return (
        f"sent again by {r.source} and rejected at ingest {_rejection(r).partition(';')[0]}; "
        f"the {what} was already delivered to Meta at {iso(delivered_at)}: only this late "
        "resend was refused, nothing to do"
    )


def _receipt_steps(r: Receipt, told: _Told, delivered_at: float | None = None) -> list[Step]:
    """``delivered_at``: when an earlier receipt of the same pixel and event name says
    the event was delivered (``None`` if none does)."""
    p, n = r.pixel_id, r.event_name
    steps: list[Step] = []
    if r.outcome in (Outcome.DELIVERED, Outcome.DEAD_LETTERED):
        fresh, offset = told.split(r.attempt_log)
        steps.append(Step(r.received_at, "received", _arrival(r.source, offset > 0), p, n))
        total = offset + len(fresh)
        if r.outcome == Outcome.DELIVERED:
            steps += _attempt_steps(fresh, p, n, offset)
            received = "" if r.events_received is None else f", events_received={r.events_received}"
            test = f", test_event_code={r.test_event_code}" if r.test_event_code else ""
            steps.append(
                Step(
                    r.last_attempt_at,
                    "delivered",
                    f"accepted by Meta on attempt {max(total + 1, r.attempts)}{received}{test}",
                    p,
                    n,
                    r.fbtrace_id,
                )
            )
        else:
            steps += _attempt_steps(fresh, p, n, offset)
            since = f" ({r.attempts} since its replay)" if offset else ""
            tries = max(total, r.attempts)
            steps.append(
                Step(
                    r.recorded_at,
                    "dead_lettered",
                    f"dead-lettered ({r.reason}) after {counted(tries, 'attempt')}{since}",
                    p,
                    n,
                    r.fbtrace_id,
                )
            )
    elif r.outcome == Outcome.DUPLICATE:
        times = "once" if r.count == 1 else f"{r.count} times"
        steps.append(
            Step(
                r.received_at,
                "duplicate",
                f"received again from {r.source} ({times}), "
                f"answered duplicate and not queued: {r.reason}",
                p,
                n,
            )
        )
    elif not r.rejected_at_ingest:
        steps.append(
            Step(r.received_at, "dropped", f"dropped at ingest by policy: {r.reason}", p, n)
        )
    elif (resend := _too_old_resend(r, delivered_at)) is not None:
        steps.append(Step(r.received_at, "rejected", resend, p, n))
    else:
        # A webhook's event that failed validation after its vendor was answered 200.
        steps.append(
            Step(
                r.received_at,
                "rejected",
                f"rejected at ingest {_rejection(r)}; "
                f"{r.source} was answered 200 and will not send it again: fix the cause "
                "(the mapping or the shop's data), then resend the order",
                p,
                n,
            )
        )
    return steps


def pauses_of(statuses: Mapping[str, PixelStatus]) -> dict[str, str]:
    """Why each pixel whose delivery is paused keeps its queued events, as the running
    gateway knows it (its delivery engine's status): an open breaker with Meta's last
    refusal and the fix, no token, or a rate-limit pause.  Pixels sending freely are left
    out."""
    pauses: dict[str, str] = {}
    for pixel_id, status in statuses.items():
        if status.breaker is BreakerState.UNCONFIGURED:
            pauses[pixel_id] = (
                f"delivery is paused: the pixel has no access token "
                f"(pixels.{pixel_id}.access_token); its events wait in the queue until one is set"
            )
        elif status.breaker in (BreakerState.OPEN, BreakerState.HALF_OPEN):
            last = status.last_error
            if last is None:
                why = "Meta refused a request"
            else:
                code = (
                    "no code"
                    if last.code is None
                    else f"code {code_label(last.code, last.subcode)}"
                )
                said = f": {last.message}" if last.message else ""
                trace = f", fbtrace_id {last.fbtrace_id}" if last.fbtrace_id else ""
                fix = explain(last.code, last.subcode, last.status, retry_class=last.retry_class)
                why = f"Meta refused the last request ({code}{trace}){said}. {fix}"
            since = f" since {iso(status.opened_at)}" if status.opened_at else ""
            pauses[pixel_id] = (
                f"delivery is paused{since}: {why} Events stay queued; a probe is sent "
                "regularly and delivery resumes by itself once Meta accepts it"
            )
        elif status.paused_for_seconds > 0:
            pauses[pixel_id] = (
                f"Meta is rate-limiting the pixel: sending resumes in "
                f"{status.paused_for_seconds:.0f} s"
            )
    return pauses


def _pending_steps(
    t: TracedEvent, told: _Told, pauses: Mapping[str, str] | None = None
) -> list[Step]:
    p, n = t.pixel_id, t.event_name
    fresh, offset = told.split(t.attempt_log)
    steps = [Step(t.queued_at, "received", _arrival(t.source, offset > 0), p, n)]
    steps += _attempt_steps(fresh, p, n, offset)
    if t.where == "queue":
        if t.next_attempt_at is not None:
            steps.append(Step(t.next_attempt_at, "waiting", "next attempt scheduled", p, n))
        else:
            pause = (pauses or {}).get(p)
            if pause:
                steps.append(Step(None, "paused", f"in the queue: {pause}", p, n))
            else:
                steps.append(Step(None, "queued", _QUEUED_DETAIL, p, n))
    else:
        steps.append(
            Step(
                t.dead_at,
                "dead_lettered",
                f"in the dead-letter queue ({t.reason}); `capirelay dlq` can replay it",
                p,
                n,
            )
        )
    return steps


# Read from storage alone (the CLI), a queued event's pixel may be paused in a running
# gateway without storage knowing: say where to look rather than "being sent".
_QUEUED_DETAIL = (
    "in the queue, not yet delivered: due now or being sent, unless the pixel's delivery is "
    "paused (if it stays here, `capirelay doctor` and the dashboard's Health page say why)"
)


def story(record: TraceRecord, pauses: Mapping[str, str] | None = None) -> list[Step]:
    """Every step of the event's life in time order (steps without a time last).

    ``pauses``: pixel id → why its delivery is paused (:func:`pauses_of`), where the
    caller runs in the gateway and knows; a queued event of such a pixel says so."""
    steps: list[Step] = []
    told: dict[tuple[str, str], _Told] = {}
    delivered: dict[tuple[str, str], float] = {}
    for receipt in sorted(record.receipts, key=lambda r: r.recorded_at or 0.0):
        key = (receipt.pixel_id, receipt.event_name)
        steps += _receipt_steps(receipt, told.setdefault(key, _Told()), delivered.get(key))
        if receipt.outcome == Outcome.DELIVERED:
            delivered[key] = receipt.last_attempt_at or receipt.recorded_at
    for pending in record.pending:
        # A dead letter's receipt already told its story; the letter adds only its place.
        if pending.where == "dead_letters" and any(
            r.outcome == Outcome.DEAD_LETTERED and r.pixel_id == pending.pixel_id
            for r in record.receipts
        ):
            steps.append(
                Step(
                    pending.dead_at,
                    "in_dlq",
                    "still in the dead-letter queue; `capirelay dlq` can replay it",
                    pending.pixel_id,
                    pending.event_name,
                )
            )
            continue
        key = (pending.pixel_id, pending.event_name)
        steps += _pending_steps(pending, told.setdefault(key, _Told()), pauses)
    return sorted(steps, key=lambda s: (s.at is None, s.at or 0.0))


def trace_json(record: TraceRecord, pauses: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "event_id": record.event_id,
        "status": status_of(record),
        "story": [step.to_dict() for step in story(record, pauses)],
        "receipts": [r.to_dict() for r in record.receipts],
        "pending": [p.to_dict() for p in record.pending],
    }
