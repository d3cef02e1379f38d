"""Dead-letter queue operations for the CLI (``capirelay dlq ...``) and the dashboard.

A dead letter is an event Meta refused or that ran out of time, kept with
Meta's error, its ``fbtrace_id`` and its attempt history.  The stored event
is the wire form (identifiers already SHA-256 hashed), so showing it is safe.

Replay is the fix-and-resend loop: after the mapping or configuration is
corrected, :func:`replay` re-validates each event against Meta's rules and
re-queues only those that pass *and* are still inside their deadline
(``event_time`` + 7 days, 62 for ``physical_store``); the rest are reported,
never sent to certain rejection.  Replay respects dedup like ingest does: a
letter whose ``(pixel, event_name, event_id)`` is held by a queued event or by
one sent inside the 48 h window (say, a corrected resend), or that repeats the
key of another letter in the same replay, stays in the DLQ as a ``duplicate``
instead of reaching Meta twice.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from capirelay.graph.errors import meta_says_of
from capirelay.outbox import DeadLetter, DLQFilter, Outbox
from capirelay.problems import Problem, has_errors
from capirelay.validate import validate_event

__all__ = [
    "DeadLetterDetail",
    "DeadLetterSummary",
    "ReplayReport",
    "list_dead_letters",
    "purge",
    "replay",
    "show",
]

PAGE_SIZE: Final = 500


@dataclass(frozen=True, slots=True)
class DeadLetterSummary:
    """One line of ``capirelay dlq list``."""

    id: int
    pixel_id: str
    event_name: str
    event_id: str
    reason: str
    code: int | None
    subcode: int | None
    message: str | None
    fbtrace_id: str | None
    attempts: int
    dead_at: float
    deadline: float

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class DeadLetterDetail:
    """Everything about one dead letter (``capirelay dlq show``)."""

    summary: DeadLetterSummary
    event: dict[str, Any]  # the wire event as it would be sent (hashed identifiers)
    error: dict[str, Any] | None
    attempts: list[dict[str, Any]]
    test_event_code: str | None
    queued_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary.to_dict(),
            "event": self.event,
            "error": self.error,
            "attempt_history": self.attempts,
            "test_event_code": self.test_event_code,
            "queued_at": self.queued_at,
        }


@dataclass(slots=True)
class ReplayReport:
    """What :func:`replay` did (or, with ``dry_run``, would do) with each dead letter."""

    requeued: list[int] = field(default_factory=list)
    still_invalid: dict[int, list[Problem]] = field(default_factory=dict)
    expired: list[int] = field(default_factory=list)
    not_found: list[int] = field(default_factory=list)
    # Left in the DLQ: the key is held, or another letter of this replay has it.  A dry
    # run only sees the second kind (holding keys are checked when moving).
    duplicate: list[int] = field(default_factory=list)
    dry_run: bool = False

    @property
    def counts(self) -> dict[str, int]:
        return {
            "requeued": len(self.requeued),
            "still_invalid": len(self.still_invalid),
            "expired": len(self.expired),
            "not_found": len(self.not_found),
            "duplicate": len(self.duplicate),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "counts": self.counts,
            "requeued": self.requeued,
            "still_invalid": {
                str(i): [p.to_dict() for p in problems]
                for i, problems in self.still_invalid.items()
            },
            "expired": self.expired,
            "not_found": self.not_found,
            "duplicate": self.duplicate,
        }


def summarize(letter: DeadLetter) -> DeadLetterSummary:
    error = letter.error or {}
    return DeadLetterSummary(
        id=letter.id,
        pixel_id=letter.pixel_id,
        event_name=letter.event_name,
        event_id=letter.event_id,
        reason=letter.reason,
        code=error.get("code"),
        subcode=error.get("subcode"),
        message=meta_says_of(error),
        fbtrace_id=error.get("fbtrace_id"),
        attempts=len(letter.attempts),
        dead_at=letter.dead_at,
        deadline=letter.deadline,
    )


async def list_dead_letters(
    outbox: Outbox, flt: DLQFilter | None = None, limit: int = 100, offset: int = 0
) -> list[DeadLetterSummary]:
    """Dead letters matching ``flt``, newest first."""
    return [summarize(d) for d in await outbox.dlq_list(flt, limit=limit, offset=offset)]


async def show(outbox: Outbox, dlq_id: int) -> DeadLetterDetail | None:
    letter = await outbox.dlq_get(dlq_id)
    if letter is None:
        return None
    return DeadLetterDetail(
        summary=summarize(letter),
        event=orjson.loads(letter.payload),
        error=letter.error,
        attempts=letter.attempts,
        test_event_code=letter.test_event_code,
        queued_at=letter.queued_at,
    )


async def replay(
    outbox: Outbox,
    target: Sequence[int] | DLQFilter,
    *,
    now: float,
    dry_run: bool = False,
    actor: str | None = None,
    origin: str = "cli",
) -> ReplayReport:
    """Re-queue the dead letters in ``target`` that pass validation and are in their deadline.

    With ``actor`` (who asked: ``admin token``, ``cli:<user>``...), the replay is kept in
    the audit trail with ``origin``, its target and how many letters it re-queued.
    """
    report = ReplayReport(dry_run=dry_run)
    keys_seen: set[tuple[str, str, str, bool]] = set()
    async for letter in _targets(outbox, target, report):
        # An unverified beacon's letter claims its key apart (capirelay.orders): it never
        # holds back an authenticated letter of the same id, nor is held back by one.
        key = (letter.pixel_id, letter.event_name, letter.event_id, letter.unverified)
        if key in keys_seen:
            report.duplicate.append(letter.id)
            continue
        if _judge(letter, now, report):
            keys_seen.add(key)
    if report.requeued and not dry_run:
        candidates, report.requeued = report.requeued, []
        for start in range(0, len(candidates), PAGE_SIZE):
            moved = await outbox.dlq_requeue(candidates[start : start + PAGE_SIZE], now=now)
            report.requeued.extend(moved.requeued)
            report.duplicate.extend(moved.duplicate)
    if actor is not None and not dry_run:
        await outbox.record_audit(
            at=now, actor=actor, action="replay", target=describe_target(target),
            count=len(report.requeued), origin=origin,
        )  # fmt: skip
    return report


async def purge(
    outbox: Outbox,
    target: Sequence[int] | DLQFilter,
    *,
    actor: str | None = None,
    origin: str = "cli",
    now: float | None = None,
) -> int:
    """Delete dead letters by id or by filter (``DLQFilter()`` matches all); returns how many.

    With ``actor``, the purge is kept in the audit trail (see :func:`replay`).
    """
    if isinstance(target, DLQFilter):
        purged = await outbox.dlq_purge(flt=target)
    else:
        purged = await outbox.dlq_purge(ids=list(target))
    if actor is not None:
        await outbox.record_audit(
            at=time.time() if now is None else now, actor=actor, action="purge",
            target=describe_target(target), count=purged, origin=origin,
        )  # fmt: skip
    return purged


MAX_AUDIT_IDS = 20
MAX_AUDIT_TARGET = 500


def _iso(at: float | None) -> str | None:
    """A filter's bound as the operator gave it, an ISO date-time in UTC (it was written
    as Unix seconds, ``since=1796601600.0``)."""
    if at is None:
        return None
    try:
        moment = datetime.fromtimestamp(at, UTC)
    except (OverflowError, ValueError, OSError):
        # A bound outside datetime's years (year 0 once in UTC): written as given, never a
        # failure after the purge it records has happened (a reviewer's find).
        return str(at)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def describe_target(target: Sequence[int] | DLQFilter) -> str:
    """What a replay or purge was given, for the audit trail: ids, or the filter's fields."""
    if not isinstance(target, DLQFilter):
        ids = [str(i) for i in target]
        more = f" (+{len(ids) - MAX_AUDIT_IDS} more)" if len(ids) > MAX_AUDIT_IDS else ""
        return "ids " + ", ".join(ids[:MAX_AUDIT_IDS]) + more
    parts = [
        f"{name}={value}"
        for name, value in (
            ("pixel", target.pixel_id),
            ("event_name", target.event_name),
            ("reason", target.reason),
            ("since", _iso(target.since)),
            ("until", _iso(target.until)),
        )
        if value is not None
    ]
    text = "filter " + (" ".join(parts) if parts else "(all)")
    # Filters are typed by operators into forms and flags: no control character (NUL
    # cannot be stored on PostgreSQL) and a bounded length in the audit trail.
    return "".join(char if ord(char) >= 0x20 else "?" for char in text)[:MAX_AUDIT_TARGET]


def _judge(letter: DeadLetter, now: float, report: ReplayReport) -> bool:
    """File the letter under expired, still invalid or (to re-queue) requeued; True for
    the last."""
    if letter.deadline <= now:
        report.expired.append(letter.id)
        return False
    problems = validate_event(orjson.loads(letter.payload), now=now)
    if has_errors(problems):
        report.still_invalid[letter.id] = [p for p in problems if p.is_error]
        return False
    report.requeued.append(letter.id)
    return True


async def _targets(
    outbox: Outbox, target: Sequence[int] | DLQFilter, report: ReplayReport
) -> AsyncIterator[DeadLetter]:
    # Pages are read completely before anything is re-queued, so offsets never shift.
    if isinstance(target, DLQFilter):
        offset = 0
        while page := await outbox.dlq_list(target, limit=PAGE_SIZE, offset=offset):
            for letter in page:
                yield letter
            offset += len(page)
        return
    for dlq_id in dict.fromkeys(target):
        found = await outbox.dlq_get(dlq_id)
        if found is None:
            report.not_found.append(dlq_id)
        else:
            yield found
