"""The engine: run the rule table over an event, a batch; an event's deadline and subcode."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from capirelay.meta_facts import MAX_EVENTS_PER_REQUEST
from capirelay.problems import Problem, error
from capirelay.validate._context import DEFAULT_MAX_FUTURE_SKEW, Check, Context, _is_int, _max_age
from capirelay.validate._screen import SCREENED, clean
from capirelay.validate.rules import GENERIC_SUBCODE, META, META_SUBCODES, RULES

__all__ = ["deadline", "meta_subcode", "validate_batch", "validate_event"]

_CHECKS: tuple[Check, ...] = tuple(rule.check for rule in RULES)
_META_CHECKS: tuple[Check, ...] = tuple(rule.check for rule in RULES if rule.enforced_by == META)
# The one-pass screen stands in for exactly these checks; a rule it does not know of
# turns it off rather than being skipped.
_SCREEN_ON: bool = frozenset(_CHECKS) == SCREENED


def validate_event(
    payload: Mapping[str, Any],
    *,
    now: float | None = None,
    max_future_skew: int = DEFAULT_MAX_FUTURE_SKEW,
    meta_only: bool = False,
) -> list[Problem]:
    """Every problem the rules find in one wire event, in rule order.

    ``meta_only``: only the rules Graph itself enforces (``Rule.enforced_by ==
    "meta"``), as the emulator answers; the gateway applies capirelay's policy too.
    """
    if not isinstance(payload, dict):
        return [error("invalid_type", "data[]", "each event must be a JSON object")]
    clock = time.time() if now is None else now
    if _SCREEN_ON and clean(payload, clock, max_future_skew):
        return []  # no rule has anything to say (capirelay.validate._screen)
    ctx = Context.of(payload, clock, max_future_skew)
    problems: list[Problem] = []
    for check in _META_CHECKS if meta_only else _CHECKS:
        found = check(payload, ctx)
        if found:
            problems.extend(found)
    return problems


def validate_batch(
    payloads: Sequence[Mapping[str, Any]],
    *,
    now: float | None = None,
    max_future_skew: int = DEFAULT_MAX_FUTURE_SKEW,
) -> list[list[Problem]]:
    """Problems per event, in order, all against the same clock reading.

    Raises :class:`ValueError` over :data:`MAX_EVENTS_PER_REQUEST` events: that
    is a request-level error, not any one event's.
    """
    if len(payloads) > MAX_EVENTS_PER_REQUEST:
        raise ValueError(
            f"a request carries at most {MAX_EVENTS_PER_REQUEST} events; "
            f"got {len(payloads)}, split it"
        )
    clock = time.time() if now is None else now
    return [validate_event(p, now=clock, max_future_skew=max_future_skew) for p in payloads]


def deadline(payload: Mapping[str, Any]) -> float:
    """Unix time after which Meta rejects the event: ``event_time`` + 7 d (62 d physical_store)."""
    event_time = payload.get("event_time")
    if not _is_int(event_time):
        raise ValueError("event_time must be an integer Unix timestamp to compute a deadline")
    action_source = payload.get("action_source")
    return float(event_time + _max_age(action_source if isinstance(action_source, str) else None))


def meta_subcode(problems: Iterable[Problem]) -> int | None:
    """The subcode Meta would answer for the first error, ``None`` when there is none."""
    for problem in problems:
        if problem.is_error:
            return META_SUBCODES.get(problem.code, GENERIC_SUBCODE)
    return None
