"""What happened to each event the demo saw: queued, dropped (and why), rejected, delivered.

The gateway answers every ingest request with a per-event status, but the shop
page sends its beacon with ``navigator.sendBeacon``, which never shows the page
the answer.  :class:`OutcomeRecorder` wraps the demo's gateway app (ASGI) and
keeps the answers to ``POST /v1/collect`` and ``POST /v1/events`` by event id;
:class:`TracingEmulatorState` is the emulator state that also remembers which
Graph request (its ``fbtrace_id``) carried each event id to "Meta".  The shop
page polls ``GET /demo/outcome/{event_id}`` and the terminal table lists the
recent outcomes, so a beacon dropped as a bot is visible instead of silent.

Only the demo uses this; a production gateway reports the same facts in its
metrics, logs and dashboard.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capirelay.emulator import EmulatorState

__all__ = ["Outcome", "OutcomeRecorder", "TracingEmulatorState", "drop_explanation"]

_RECORDED_PATHS = frozenset({"/v1/collect", "/v1/events"})
_MAX_CAPTURE_BYTES = 1024 * 1024
_KEEP = 200

_DROP_EXPLANATIONS = {
    "bot": (
        "the browser's user agent looks like a crawler or a headless browser, so the "
        "gateway did not send it (filter_bots = true keeps bots out of Meta's counts)"
    ),
    "no_consent": "the shopper has not given consent (consent.require_consent)",
}


def drop_explanation(reason: str | None) -> str:
    if reason is None:
        return "dropped by the gateway"
    return _DROP_EXPLANATIONS.get(reason, f"dropped by the gateway ({reason})")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One event as the gateway answered it; ``status`` becomes ``delivered`` later."""

    event_id: str
    event_name: str
    source: str  # "browser" or "server"
    status: str  # queued, duplicate, dropped, rejected, delivered
    at: float
    reason: str | None = None
    detail: str | None = None
    problems: tuple[str, ...] = ()
    fbtrace_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_name": self.event_name,
            "source": self.source,
            "status": self.status,
            "reason": self.reason,
            "detail": self.detail,
            "problems": list(self.problems),
            "fbtrace_id": self.fbtrace_id,
        }

    def describe(self) -> str:
        """One line for the terminal."""
        if self.status == "delivered":
            return f"delivered to Meta (emulator), fbtrace_id {self.fbtrace_id}"
        if self.status == "dropped":
            return f"dropped: {self.detail or drop_explanation(self.reason)}"
        if self.status == "rejected":
            return "rejected: " + ("; ".join(self.problems) or self.detail or "invalid event")
        if self.status == "duplicate":
            return "duplicate of an event already queued (same event_id): not sent twice"
        return "queued, waiting for delivery"


class TracingEmulatorState(EmulatorState):
    """An emulator state that remembers the ``fbtrace_id`` of the request that carried each id.

    The emulator calls :meth:`accept` and then :meth:`record_request` for the same
    request with no other request in between (both run on its single event loop
    without awaiting), so the ids accepted last belong to the next logged request.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trace_lock = threading.Lock()
        self._accepted_ids: list[str] = []
        self._traces: OrderedDict[str, str] = OrderedDict()

    def accept(
        self,
        pixel_id: str,
        events: Iterable[dict[str, Any]],
        test_event_code: str | None,
        *,
        counted: bool = True,
    ) -> int:
        events = list(events)
        count = super().accept(pixel_id, events, test_event_code, counted=counted)
        with self._trace_lock:
            self._accepted_ids = [str(e["event_id"]) for e in events if e.get("event_id")]
        return count

    def record_request(self, entry: dict[str, Any]) -> None:
        super().record_request(entry)
        trace = entry.get("fbtrace_id")
        with self._trace_lock:
            ids, self._accepted_ids = self._accepted_ids, []
            if entry.get("status") != 200 or not isinstance(trace, str):
                return
            for event_id in ids:
                self._traces[event_id] = trace
            while len(self._traces) > 10 * _KEEP:
                self._traces.popitem(last=False)

    def fbtrace_id(self, event_id: str) -> str | None:
        with self._trace_lock:
            return self._traces.get(event_id)


@dataclass(slots=True)
class _Exchange:
    request: list[bytes] = field(default_factory=list)
    response: list[bytes] = field(default_factory=list)
    status: int = 0
    size: int = 0


class OutcomeRecorder:
    """ASGI middleware keeping the gateway's answer for every event it was sent."""

    def __init__(self, app: ASGIApp, tracer: TracingEmulatorState) -> None:
        self.app = app
        self.tracer = tracer
        self._lock = threading.Lock()
        self._outcomes: OrderedDict[str, Outcome] = OrderedDict()
        self.counts: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if scope["path"] not in _RECORDED_PATHS:
            await self.app(scope, receive, send)
            return
        exchange = _Exchange()

        async def receive_copy() -> Message:
            message = await receive()
            if message["type"] == "http.request" and exchange.size < _MAX_CAPTURE_BYTES:
                chunk = message.get("body", b"")
                exchange.request.append(chunk)
                exchange.size += len(chunk)
            return message

        async def send_copy(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = int(message["status"])
            elif message["type"] == "http.response.body":
                exchange.response.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive_copy, send_copy)
        self._record(scope["path"], exchange)

    # ------------------------------------------------------------------ reading

    def get(self, event_id: str) -> Outcome | None:
        with self._lock:
            outcome = self._outcomes.get(event_id)
        return self._with_delivery(outcome) if outcome is not None else None

    def recent(self, limit: int = 8) -> list[Outcome]:
        with self._lock:
            latest = list(self._outcomes.values())[-limit:]
        return [self._with_delivery(o) for o in reversed(latest)]

    def _with_delivery(self, outcome: Outcome) -> Outcome:
        if outcome.status != "queued":
            return outcome
        trace = self.tracer.fbtrace_id(outcome.event_id)
        if trace is None:
            return outcome
        delivered = replace(outcome, status="delivered", fbtrace_id=trace)
        with self._lock:
            if outcome.event_id in self._outcomes:
                self._outcomes[outcome.event_id] = delivered
                self._bump("delivered")
        return delivered

    # ---------------------------------------------------------------- recording

    def _record(self, path: str, exchange: _Exchange) -> None:
        sent = _json(b"".join(exchange.request))
        answer = _json(b"".join(exchange.response))
        if path == "/v1/collect":
            outcomes = list(_collect_outcomes(sent, answer, exchange.status))
        else:
            outcomes = list(_events_outcomes(sent, answer, exchange.status))
        with self._lock:
            for outcome in outcomes:
                self._outcomes[outcome.event_id] = outcome
                self._outcomes.move_to_end(outcome.event_id)
                self._bump(outcome.status)
            while len(self._outcomes) > _KEEP:
                self._outcomes.popitem(last=False)

    def _bump(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def _error_message(answer: Any) -> str | None:
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        message = answer["error"].get("message")
        return str(message) if message else None
    return None


def _problem_lines(problems: Any, *, errors_only: bool) -> tuple[str, ...]:
    lines = []
    for problem in problems if isinstance(problems, list) else []:
        if not isinstance(problem, dict):
            continue
        if errors_only and problem.get("severity") != "error":
            continue
        lines.append(f"{problem.get('field')}: {problem.get('message')}")
    return tuple(lines)


def _collect_outcomes(sent: Any, answer: Any, status: int) -> Iterable[Outcome]:
    sent = sent if isinstance(sent, dict) else {}
    name = str(sent.get("event_name") or "?")
    now = time.time()
    if status >= 400 or not isinstance(answer, dict):
        event_id = sent.get("event_id")
        if isinstance(event_id, str) and event_id:
            yield Outcome(event_id, name, "browser", "rejected", now, detail=_error_message(answer))
        return
    event_id = str(answer.get("event_id") or sent.get("event_id") or "")
    if not event_id:
        return
    outcome_status = str(answer.get("status") or "queued")
    reason = answer.get("reason") if outcome_status == "dropped" else None
    yield Outcome(
        event_id,
        name,
        "browser",
        outcome_status,
        now,
        reason=reason,
        detail=drop_explanation(reason) if outcome_status == "dropped" else None,
        problems=_problem_lines(answer.get("problems"), errors_only=outcome_status == "rejected"),
    )


def _events_outcomes(sent: Any, answer: Any, status: int) -> Iterable[Outcome]:
    data = sent.get("data") if isinstance(sent, dict) else None
    events = data if isinstance(data, list) else []
    now = time.time()
    if status >= 400 or not isinstance(answer, dict):
        message = _error_message(answer)
        for event in events:
            if isinstance(event, dict) and event.get("event_id"):
                name = str(event.get("event_name") or "?")
                event_id = str(event["event_id"])
                yield Outcome(event_id, name, "server", "rejected", now, detail=message)
        return
    for result in answer.get("results") or []:
        index = result.get("index")
        event = events[index] if isinstance(index, int) and index < len(events) else {}
        found_id = result.get("event_id") or (event.get("event_id") if event else None)
        if not found_id:
            continue
        result_status = str(result.get("status") or "queued")
        rejected = result_status == "rejected"
        yield Outcome(
            str(found_id),
            str(event.get("event_name") or "?") if isinstance(event, dict) else "?",
            "server",
            result_status,
            now,
            problems=_problem_lines(result.get("problems"), errors_only=rejected),
        )
