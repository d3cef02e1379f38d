"""Receipts: what became of every event that reached a final state, kept hash-only.

A receipt answers "did order 1001's Purchase reach Meta, when, and with which
``fbtrace_id``?" long after the queue row is gone.  One is written for every event
that is delivered (at ack), dead-lettered, answered ``duplicate`` at ingest, or
dropped by the consent or bot policy, in the same commit as that state change
where the backend can (ack, dead-letter) and through the same group commit
otherwise (duplicates, drops).

A receipt holds no identifier and no payload: pixel, event name, ``event_id``,
source, times, attempt count and Meta's answers (``fbtrace_id``, ``events_received``,
error code/subcode/message), plus two short keys for lookups:

* ``order_key``: the first 16 hex digits of SHA-256 of ``custom_data.order_id``, so the
  dashboard can find an order without the order id being stored;
* ``identity``: for erasure requests, ``em:``/``ph:``/``external_id:`` followed by the
  first 16 hex digits of each identifier's SHA-256 (itself the hash Meta receives),
  space-separated.  64 bits per identifier make a false match on erasure
  negligible while keeping neither the raw value nor the full hash.

Receipts are bounded: older than the retention (default 30 days) or beyond the cap
(default 2,000,000, oldest first) they are pruned in the background.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

import orjson

from capirelay.graph.errors import meta_says_of
from capirelay.orders import order_id_of, public_event_id

__all__ = [
    "IDENTITY_FIELDS",
    "KEY_HEX",
    "ErasureResult",
    "MetaAnswer",
    "Outcome",
    "Receipt",
    "TraceRecord",
    "TracedEvent",
    "dead_letter_receipt",
    "delivered_receipt",
    "identity_of",
    "order_key",
    "receipt_from_row",
    "short_key",
    "trace_from_rows",
]

# How the reason of a rejection at ingest reads: "rejected (code, code): first message".
# Only receipts without structured problems are read by it (see Receipt.problem_codes),
# with the grammar the migrations that gave older rows their problems use (SQLite
# 0007_rejection_problems.sql, PostgreSQL 0016_rejection_problems.sql).
REJECTED_REASON: Final = re.compile(r"rejected \(([a-z0-9_]+(?:, [a-z0-9_]+)*)\)")

# Hex digits of SHA-256 kept per lookup key (64 bits).
KEY_HEX: Final = 16
# The user_data keys an erasure request can name, in wire form.
IDENTITY_FIELDS: Final = ("em", "ph", "external_id")
# Most attempts kept with a receipt (as in the queue's own attempt log).
RECEIPT_ATTEMPT_LIMIT: Final = 20


class Outcome(StrEnum):
    DELIVERED = "delivered"
    DEAD_LETTERED = "dead_lettered"
    DUPLICATE = "duplicate"
    DROPPED = "dropped"


@dataclass(frozen=True, slots=True)
class MetaAnswer:
    """Meta's answer to the request that delivered a batch (for its receipts)."""

    fbtrace_id: str | None
    events_received: int | None
    sent_at: float | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    pixel_id: str
    event_name: str
    event_id: str
    outcome: str
    source: str
    recorded_at: float
    received_at: float | None = None
    first_attempt_at: float | None = None
    last_attempt_at: float | None = None
    attempts: int = 0
    fbtrace_id: str | None = None
    events_received: int | None = None
    test_event_code: str | None = None
    reason: str | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)
    attempt_log: list[dict[str, Any]] = field(default_factory=list)
    order_key: str | None = None
    identity: str | None = None
    count: int = 1
    id: int | None = None

    @property
    def rejected_at_ingest(self) -> bool:
        """An event that failed validation at ingest (a webhook's, whose vendor was answered
        200): a ``dropped`` receipt with the problems that rejected it.  A policy drop (bot,
        consent) has none."""
        return self.outcome == Outcome.DROPPED and bool(self.problem_codes)

    @property
    def problem_codes(self) -> tuple[str, ...]:
        """The ``code`` of each stored problem, in order (Meta's for a dead letter,
        capirelay's validation codes for a rejection at ingest).

        A rejection recorded without them (by a replica of a version before migration
        0016/0007 still running during a rolling upgrade, after the migration filled in
        the older rows) has its codes read from its reason, by the migrations' grammar."""
        codes = tuple(
            str(p["code"]) for p in self.problems if isinstance(p, dict) and p.get("code")
        )
        if codes or self.problems or self.outcome != Outcome.DROPPED or not self.reason:
            return codes
        older = REJECTED_REASON.match(self.reason)
        return tuple(older.group(1).split(", ")) if older else ()

    def to_dict(self) -> dict[str, Any]:
        """The receipt as a JSON-ready dict (lookup keys left out)."""
        return {
            "pixel_id": self.pixel_id,
            "event_name": self.event_name,
            "event_id": self.event_id,
            "outcome": self.outcome,
            "source": self.source,
            "received_at": self.received_at,
            "first_attempt_at": self.first_attempt_at,
            "last_attempt_at": self.last_attempt_at,
            "attempts": self.attempts,
            "fbtrace_id": self.fbtrace_id,
            "events_received": self.events_received,
            "test_event_code": self.test_event_code,
            "reason": self.reason,
            "problems": self.problems,
            "attempt_log": self.attempt_log,
            "count": self.count,
            "recorded_at": self.recorded_at,
        }


@dataclass(frozen=True, slots=True)
class TracedEvent:
    """An event still in the queue or in the dead-letter store (not yet final, or final
    and still kept there), as a trace shows it."""

    where: str  # "queue" or "dead_letters"
    pixel_id: str
    event_name: str
    event_id: str
    source: str
    queued_at: float
    attempts: int
    attempt_log: list[dict[str, Any]]
    test_event_code: str | None
    reason: str | None = None
    dead_at: float | None = None
    next_attempt_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "pixel_id": self.pixel_id,
            "event_name": self.event_name,
            "event_id": self.event_id,
            "source": self.source,
            "queued_at": self.queued_at,
            "attempts": self.attempts,
            "attempt_log": self.attempt_log,
            "test_event_code": self.test_event_code,
            "reason": self.reason,
            "dead_at": self.dead_at,
            "next_attempt_at": self.next_attempt_at,
        }


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """Everything storage knows about one ``event_id``: receipts, queue, dead letters."""

    event_id: str
    receipts: list[Receipt] = field(default_factory=list)
    pending: list[TracedEvent] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return bool(self.receipts or self.pending)

    @property
    def delivered(self) -> bool:
        return any(r.outcome == Outcome.DELIVERED for r in self.receipts)


@dataclass(frozen=True, slots=True)
class ErasureResult:
    queued: int = 0
    dead_letters: int = 0
    receipts: int = 0

    @property
    def total(self) -> int:
        return self.queued + self.dead_letters + self.receipts


def short_key(digest_hex: str) -> str:
    return digest_hex[:KEY_HEX].lower()


def order_key(order_id: Any) -> str | None:
    """The lookup key of an order id (see module docstring); ``None`` when there is none."""
    if order_id is None or isinstance(order_id, (dict, list, bool)):
        return None
    text = str(order_id).strip()
    if not text:
        return None
    return short_key(hashlib.sha256(text.encode("utf-8")).hexdigest())


def _values(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        yield from (v for v in value if isinstance(v, str))


def identity_of(payload: Mapping[str, Any]) -> str | None:
    """The erasure keys of a wire event's hashed identifiers (see module docstring)."""
    user_data = payload.get("user_data")
    if not isinstance(user_data, Mapping):
        return None
    keys = sorted(
        {
            f"{name}:{short_key(value)}"
            for name in IDENTITY_FIELDS
            for value in _values(user_data.get(name))
            if value
        }
    )
    return " ".join(keys) or None


def payload_keys(payload: bytes) -> tuple[str | None, str | None]:
    """``(order_key, identity)`` of an orjson-encoded wire event."""
    try:
        wire = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(wire, dict):
        return None, None
    return order_key(order_id_of(wire)), identity_of(wire)


def carries(payload: bytes, hashes: Mapping[str, set[str]]) -> bool:
    """Whether a wire event holds one of ``hashes`` (wire key -> full SHA-256 hex digests)."""
    try:
        wire = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    user_data = wire.get("user_data") if isinstance(wire, dict) else None
    if not isinstance(user_data, dict):
        return False
    # Here, not at the top: the outbox's other users need none of normalization's tables.
    from capirelay.normalize import digest_of

    # A value the param builder hashed carries its appendix after the digest.
    return any(
        digest_of(value) in wanted
        for name, wanted in hashes.items()
        for value in _values(user_data.get(name))
    )


def _attempts(log: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(log)[-RECEIPT_ATTEMPT_LIMIT:]


def delivered_receipt(
    *,
    pixel_id: str,
    event_name: str,
    event_id: str,
    source: str,
    queued_at: float,
    attempts: int,
    attempt_log: Sequence[dict[str, Any]],
    test_event_code: str | None,
    payload: bytes,
    answer: MetaAnswer | None,
    now: float,
) -> Receipt:
    """The receipt of a queue row Meta accepted (its ``attempt_log`` holds the failures
    before the successful request)."""
    sent_at = answer.sent_at if answer and answer.sent_at is not None else now
    first = attempt_log[0].get("at") if attempt_log else sent_at
    order, identity = payload_keys(payload)
    return Receipt(
        pixel_id=pixel_id,
        event_name=event_name,
        event_id=event_id,
        outcome=Outcome.DELIVERED,
        source=source,
        recorded_at=now,
        received_at=queued_at,
        first_attempt_at=first,
        last_attempt_at=sent_at,
        attempts=attempts + 1,
        fbtrace_id=answer.fbtrace_id if answer else None,
        events_received=answer.events_received if answer else None,
        test_event_code=test_event_code,
        attempt_log=_attempts(attempt_log),
        order_key=order,
        identity=identity,
    )


def dead_letter_receipt(
    *,
    pixel_id: str,
    event_name: str,
    event_id: str,
    source: str,
    queued_at: float,
    attempts: int,
    attempt_log: Sequence[dict[str, Any]],
    test_event_code: str | None,
    payload: bytes,
    reason: str,
    attempt: dict[str, Any] | None,
    now: float,
) -> Receipt:
    """The receipt of a queue row moved to the dead-letter store; ``attempt`` is the
    final failed attempt, if the event was sent at all."""
    log = [*attempt_log, attempt] if attempt else list(attempt_log)
    order, identity = payload_keys(payload)
    problems = []
    if attempt:
        problems.append(
            {
                "code": attempt.get("code"),
                "subcode": attempt.get("subcode"),
                "message": meta_says_of(attempt),
            }
        )
    return Receipt(
        pixel_id=pixel_id,
        event_name=event_name,
        event_id=event_id,
        outcome=Outcome.DEAD_LETTERED,
        source=source,
        recorded_at=now,
        received_at=queued_at,
        first_attempt_at=log[0].get("at") if log else None,
        last_attempt_at=log[-1].get("at") if log else None,
        attempts=attempts + (1 if attempt else 0),
        fbtrace_id=attempt.get("fbtrace_id") if attempt else None,
        test_event_code=test_event_code,
        reason=reason,
        problems=problems,
        attempt_log=_attempts(log),
        order_key=order,
        identity=identity,
    )


def duplicate_receipt(
    *,
    pixel_id: str,
    event_name: str,
    event_id: str,
    source: str,
    payload: bytes,
    test_event_code: str | None,
    now: float,
) -> Receipt:
    order, identity = payload_keys(payload)
    return Receipt(
        pixel_id=pixel_id,
        event_name=event_name,
        event_id=event_id,
        outcome=Outcome.DUPLICATE,
        source=source,
        recorded_at=now,
        received_at=now,
        last_attempt_at=now,
        test_event_code=test_event_code,
        reason="an event with this pixel, event_name and event_id was received "
        "in the last 48 hours or is still queued",
        order_key=order,
        identity=identity,
    )


def dropped_receipt(
    *,
    pixel_id: str,
    event_name: str,
    event_id: str,
    source: str,
    reason: str,
    now: float,
    order_id: Any = None,
    problems: Sequence[dict[str, Any]] = (),
) -> Receipt:
    """An event kept from Meta at ingest (a beacon the consent or bot policy dropped, a
    webhook's event rejected): no identifier is kept, only the lookup key of its
    ``custom_data.order_id`` where it had one, so a search by order finds it.

    ``reason`` is for people (the policy's code for a drop, a sentence for a rejection);
    ``problems`` (``code``, ``field``, ``severity``, ``message``: fields named, never
    values) are the errors that rejected the event, empty for a policy drop.  What a trace
    tells is decided by them, never by the wording of ``reason``."""
    return Receipt(
        pixel_id=pixel_id,
        event_name=event_name,
        event_id=event_id,
        outcome=Outcome.DROPPED,
        source=source,
        recorded_at=now,
        received_at=now,
        reason=reason,
        problems=list(problems),
        order_key=order_key(order_id) if order_id is not None else None,
    )


def json_or_none(items: Sequence[dict[str, Any]]) -> str | None:
    return orjson.dumps(list(items)).decode() if items else None


def decode_list(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, (bytes, str)):
        loaded = orjson.loads(value)
        return loaded if isinstance(loaded, list) else []
    return list(value)


def delivered_from_row(row: Sequence[Any], answer: MetaAnswer | None, now: float) -> Receipt:
    """:func:`delivered_receipt` of a settling row (``pixel_id, event_name, event_id, source,
    queued_at, attempts, attempt_log, test_event_code, payload``)."""
    pixel_id, name, event_id, source, queued_at, attempts, log, tec, payload = row
    return delivered_receipt(
        pixel_id=pixel_id,
        event_name=name,
        event_id=public_event_id(event_id),
        source=source,
        queued_at=queued_at,
        attempts=attempts,
        attempt_log=decode_list(log),
        test_event_code=tec,
        payload=bytes(payload),
        answer=answer,
        now=now,
    )


def dead_letter_from_row(
    row: Sequence[Any], reason: str, attempt: dict[str, Any] | None, now: float
) -> Receipt:
    """:func:`dead_letter_receipt` of a settling row (columns as :func:`delivered_from_row`)."""
    pixel_id, name, event_id, source, queued_at, attempts, log, tec, payload = row
    return dead_letter_receipt(
        pixel_id=pixel_id,
        event_name=name,
        event_id=public_event_id(event_id),
        source=source,
        queued_at=queued_at,
        attempts=attempts,
        attempt_log=decode_list(log),
        test_event_code=tec,
        payload=bytes(payload),
        reason=reason,
        attempt=attempt,
        now=now,
    )


def receipt_from_row(row: Sequence[Any]) -> Receipt:
    """A ``Receipt`` from a receipts-table row (both backends select the same columns)."""
    (
        id_,
        pixel_id,
        event_name,
        event_id,
        outcome,
        source,
        recorded_at,
        received_at,
        first_at,
        last_at,
        attempts,
        fbtrace_id,
        events_received,
        tec,
        reason,
        problems,
        attempt_log,
        order,
        identity,
        count,
    ) = row
    return Receipt(
        id=id_,
        pixel_id=pixel_id,
        event_name=event_name,
        event_id=event_id,
        outcome=outcome,
        source=source,
        recorded_at=recorded_at,
        received_at=received_at,
        first_attempt_at=first_at,
        last_attempt_at=last_at,
        attempts=attempts,
        fbtrace_id=fbtrace_id,
        events_received=events_received,
        test_event_code=tec,
        reason=reason,
        problems=decode_list(problems),
        attempt_log=decode_list(attempt_log),
        order_key=order,
        identity=identity,
        count=count,
    )


def trace_from_rows(
    event_id: str,
    pixel_id: str | None,
    receipt_rows: Iterable[Sequence[Any]],
    queued_rows: Iterable[Sequence[Any]],
    letter_rows: Iterable[Sequence[Any]],
) -> TraceRecord:
    """One event's :class:`TraceRecord` from the rows both backends select: its receipts,
    its queue rows (``pixel_id, event_name, event_id, source, queued_at, attempts,
    attempt_log, test_event_code, state, available_at``; state 1 is waiting) and its dead
    letters (``pixel_id, event_name, event_id, source, queued_at, attempt_log,
    test_event_code, reason, dead_at``), narrowed to ``pixel_id`` when given."""
    receipts = [receipt_from_row(row) for row in receipt_rows]
    pending = [
        TracedEvent(
            "queue", p, n, public_event_id(e), src, qa, att, decode_list(log), tec,
            next_attempt_at=available_at if state == 1 else None,
        )
        for p, n, e, src, qa, att, log, tec, state, available_at in queued_rows
    ]  # fmt: skip
    for p, n, e, src, qa, log, tec, reason, dead_at in letter_rows:
        attempts = decode_list(log)
        pending.append(
            TracedEvent(
                "dead_letters", p, n, public_event_id(e), src, qa, len(attempts), attempts, tec,
                reason=reason, dead_at=dead_at,
            )
        )  # fmt: skip
    if pixel_id is not None:
        receipts = [r for r in receipts if r.pixel_id == pixel_id]
        pending = [t for t in pending if t.pixel_id == pixel_id]
    return TraceRecord(event_id, receipts, pending)
