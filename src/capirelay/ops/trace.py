"""One event's story, from storage: received → attempts (with Meta's answers) → outcome.

Shared by ``capirelay trace``, the dashboard's search box and
``GET /v1/events/{event_id}``, so all three tell the same story.  The input is a
:class:`~capirelay.outbox.receipts.TraceRecord` (receipts, plus the event's row in
the queue or the dead-letter store if it is still there); nothing here reads a
payload, so nothing here can show an identifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from capirelay.outbox.receipts import Outcome, Receipt, TracedEvent, TraceRecord

__all__ = ["Step", "status_of", "story", "trace_json"]


@dataclass(frozen=True, slots=True)
class Step:
    at: float | None
    what: str  # received, attempt, delivered, dead_lettered, duplicate, dropped, queued, waiting
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
    """One word: delivered, queued, dead_lettered, duplicate, dropped or unknown."""
    if record.delivered:
        return "delivered"
    if any(p.where == "queue" for p in record.pending):
        return "queued"
    if any(p.where == "dead_letters" for p in record.pending):
        return "dead_lettered"
    if record.receipts:
        return str(record.receipts[-1].outcome)
    return "unknown"


def _attempt_detail(attempt: dict[str, Any]) -> str:
    parts = []
    if attempt.get("status") is not None:
        parts.append(f"HTTP {attempt['status']}")
    else:
        parts.append("no answer")
    code, subcode = attempt.get("code"), attempt.get("subcode")
    if code is not None:
        parts.append(f"code {code}" + (f"/{subcode}" if subcode is not None else ""))
    if attempt.get("retry_class"):
        parts.append(str(attempt["retry_class"]))
    if attempt.get("message"):
        parts.append(str(attempt["message"]))
    return ", ".join(parts)


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


def _receipt_steps(r: Receipt) -> list[Step]:
    p, n = r.pixel_id, r.event_name
    steps: list[Step] = []
    if r.outcome in (Outcome.DELIVERED, Outcome.DEAD_LETTERED):
        steps.append(Step(r.received_at, "received", f"queued from {r.source}", p, n))
        if r.outcome == Outcome.DELIVERED:
            steps += _attempt_steps(r.attempt_log, p, n)
            received = "" if r.events_received is None else f", events_received={r.events_received}"
            test = f", test_event_code={r.test_event_code}" if r.test_event_code else ""
            steps.append(
                Step(
                    r.last_attempt_at,
                    "delivered",
                    f"accepted by Meta on attempt {r.attempts}{received}{test}",
                    p,
                    n,
                    r.fbtrace_id,
                )
            )
        else:
            log = r.attempt_log
            steps += _attempt_steps(log, p, n)
            steps.append(
                Step(
                    r.recorded_at,
                    "dead_lettered",
                    f"dead-lettered ({r.reason}) after {r.attempts} attempts",
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
    else:
        steps.append(
            Step(r.received_at, "dropped", f"dropped at ingest by policy: {r.reason}", p, n)
        )
    return steps


def _pending_steps(t: TracedEvent) -> list[Step]:
    p, n = t.pixel_id, t.event_name
    steps = [Step(t.queued_at, "received", f"queued from {t.source}", p, n)]
    steps += _attempt_steps(t.attempt_log, p, n)
    if t.where == "queue":
        if t.next_attempt_at is not None:
            steps.append(Step(t.next_attempt_at, "waiting", "next attempt scheduled", p, n))
        else:
            steps.append(Step(None, "queued", "in the queue, being sent or due now", p, n))
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


def story(record: TraceRecord) -> list[Step]:
    """Every step of the event's life in time order (steps without a time last)."""
    steps: list[Step] = []
    for receipt in record.receipts:
        steps += _receipt_steps(receipt)
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
        steps += _pending_steps(pending)
    return sorted(steps, key=lambda s: (s.at is None, s.at or 0.0))


def trace_json(record: TraceRecord) -> dict[str, Any]:
    return {
        "event_id": record.event_id,
        "status": status_of(record),
        "story": [step.to_dict() for step in story(record)],
        "receipts": [r.to_dict() for r in record.receipts],
        "pending": [p.to_dict() for p in record.pending],
    }
