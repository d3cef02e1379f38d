"""Fault injection for the emulator: make the local Graph API fail the way Meta does.

A :class:`Fault` describes one misbehaviour (latency, a 5xx, a hang past the
client's timeout, a rate-limit error with Meta's headers, a revoked token, a
Graph error of your choice, an invalid-event rejection for one ``event_id``).
Each lasts for ``count`` matching requests and/or ``duration`` seconds (wall
clock, so it works while the emulator's event clock is frozen) and fires with
``probability`` (a seeded RNG keeps runs reproducible).

The :class:`FaultBook` holds the active faults; the app asks it, per request,
which faults apply.  Faults touch ``POST /{version}/{pixel}/events``, except
``da_check_failed`` (``GET /{pixel}/da_checks`` answers that check as failed)
and ``uncounted`` (events of an accepted request are acknowledged but left out
of ``GET /{pixel}/stats``, as when Meta drops them after receipt).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from capirelay.meta_facts import (
    CODE_APP_RATE_LIMIT,
    CODE_RATE_LIMIT,
    CODE_USER_RATE_LIMIT,
    SUBCODE_INVALID_EVENT,
)


class FaultKind(StrEnum):
    LATENCY = "latency"
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"
    THROTTLE = "throttle"
    TOKEN_REVOKED = "token_revoked"
    GRAPH_ERROR = "graph_error"
    INVALID_EVENT = "invalid_event"
    DA_CHECK_FAILED = "da_check_failed"
    UNCOUNTED = "uncounted"


# Faults that decide the whole response before the request is looked at.
RESPONSE_KINDS = frozenset({FaultKind.HTTP_ERROR, FaultKind.THROTTLE, FaultKind.GRAPH_ERROR})
# The throttling codes the emulator can answer (graph.errors classes them all as throttled).
THROTTLE_CODES = (
    CODE_APP_RATE_LIMIT,
    CODE_USER_RATE_LIMIT,
    CODE_RATE_LIMIT,
    80000,  # Business Use Case limits (CODES_AD_ACCOUNT_RATE_LIMIT) Meta answers most
    80003,
    80004,
    80014,
)
DEFAULT_INVALID_EVENT_SUBCODE = SUBCODE_INVALID_EVENT


@dataclass(slots=True)
class Fault:
    """One injected misbehaviour; unused fields stay None.

    latency:       ``latency_ms`` (fixed) or ``latency_ms``..``latency_max_ms`` (uniform)
    http_error:    ``status`` (500 gets Graph's JSON code 2, 502/503/504 an HTML page)
    timeout:       hangs ``seconds`` (default 30) then answers 504
    throttle:      ``code`` in 4/17/613/800xx, HTTP 400, usage headers,
                   ``regain_minutes`` and optional ``retry_after`` seconds
    token_revoked: ``token`` (None = every token) answers 190/463
    graph_error:   any ``code``/``subcode``/``status``/``message``/``is_transient``
    invalid_event: rejects requests containing ``event_id`` with 100/``subcode``
    da_check_failed: ``check`` (a da_checks key) answers ``failed``, ``message`` as its
                   user_message; ``count`` counts da_checks requests
    uncounted:     the events of the next ``count`` accepted requests stay out of /stats
    """

    kind: FaultKind
    id: int = 0
    count: int | None = None
    duration: float | None = None
    probability: float = 1.0
    pixel_id: str | None = None
    latency_ms: float | None = None
    latency_max_ms: float | None = None
    status: int | None = None
    seconds: float | None = None
    code: int | None = None
    subcode: int | None = None
    message: str | None = None
    is_transient: bool | None = None
    retry_after: float | None = None
    regain_minutes: float | None = None
    token: str | None = None
    event_id: str | None = None
    check: str | None = None
    expires_at: float | None = None  # monotonic deadline derived from duration

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v is not None and k != "token"}
        data["kind"] = str(self.kind)
        if self.token is not None:
            data["token"] = "[redacted]"
        if self.expires_at is not None:
            data["seconds_left"] = max(0.0, round(self.expires_at - time.monotonic(), 3))
        data.pop("expires_at", None)
        return data


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "count": (int,),
    "duration": (int, float),
    "probability": (int, float),
    "pixel_id": (str, int),
    "latency_ms": (int, float),
    "latency_max_ms": (int, float),
    "status": (int,),
    "seconds": (int, float),
    "code": (int,),
    "subcode": (int,),
    "message": (str,),
    "is_transient": (bool,),
    "retry_after": (int, float),
    "regain_minutes": (int, float),
    "token": (str,),
    "event_id": (str, int),
    "check": (str,),
}


def parse_fault(spec: Mapping[str, Any]) -> Fault:
    """Build a fault from its JSON form; raises ``ValueError`` naming the bad field."""
    try:
        kind = FaultKind(str(spec.get("kind")))
    except ValueError:
        choices = ", ".join(k.value for k in FaultKind)
        raise ValueError(f"kind must be one of: {choices}") from None
    values: dict[str, Any] = {}
    for name, value in spec.items():
        if name == "kind" or value is None:
            continue
        allowed = _FIELD_TYPES.get(name)
        if allowed is None:
            raise ValueError(f"unknown fault field {name!r}")
        if isinstance(value, bool) and bool not in allowed:
            raise ValueError(f"{name} has the wrong type")
        if not isinstance(value, allowed):
            raise ValueError(f"{name} has the wrong type")
        values[name] = str(value) if name in ("pixel_id", "event_id") else value
    fault = Fault(kind=kind, **values)
    _check_fault(fault)
    return fault


def _check_fault(fault: Fault) -> None:
    if fault.count is not None and fault.count < 1:
        raise ValueError("count must be at least 1")
    if fault.duration is not None and fault.duration <= 0:
        raise ValueError("duration must be positive")
    if not 0.0 <= fault.probability <= 1.0:
        raise ValueError("probability must be between 0 and 1")
    required = {
        FaultKind.LATENCY: "latency_ms",
        FaultKind.GRAPH_ERROR: "code",
        FaultKind.INVALID_EVENT: "event_id",
        FaultKind.DA_CHECK_FAILED: "check",
    }.get(fault.kind)
    if required and getattr(fault, required) is None:
        raise ValueError(f"{fault.kind} faults need {required}")
    if fault.kind is FaultKind.THROTTLE and fault.code not in (None, *THROTTLE_CODES):
        raise ValueError(f"throttle code must be one of {THROTTLE_CODES}")
    if fault.kind is FaultKind.HTTP_ERROR and not 500 <= (fault.status or 500) <= 599:
        raise ValueError("http_error status must be 5xx")


class FaultBook:
    """The active faults; thread-safe because tests poke it from outside the server."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._next_id = 1
        self._random = random.Random(seed)

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            fault.id = self._next_id
            self._next_id += 1
            if fault.duration is not None:
                fault.expires_at = time.monotonic() + fault.duration
            self._faults.append(fault)
            return fault

    def clear(self) -> int:
        with self._lock:
            removed = len(self._faults)
            self._faults.clear()
            return removed

    def active(self) -> list[Fault]:
        with self._lock:
            self._drop_expired()
            return list(self._faults)

    def __bool__(self) -> bool:
        return bool(self._faults)

    def take(
        self,
        kinds: frozenset[FaultKind],
        pixel_id: str,
        *,
        first_only: bool = False,
        **match: str | None,
    ) -> list[Fault]:
        """Faults of ``kinds`` that fire for this request, consuming one use of each.

        ``first_only`` stops at the first that fires (faults that decide the response
        cannot stack; the oldest wins and the others keep their count).  ``match``
        narrows by ``token``: a fault with that field set only fires for that value.
        """
        if not self._faults:
            return []
        fired: list[Fault] = []
        with self._lock:
            self._drop_expired()
            for fault in self._faults:
                if fault.kind in kinds and self._applies(fault, pixel_id, match):
                    fired.append(fault)
                    if fault.count is not None:
                        fault.count -= 1
                    if first_only:
                        break
            self._faults = [f for f in self._faults if f.count is None or f.count > 0]
        return fired

    def latency_seconds(self, fault: Fault) -> float:
        low = fault.latency_ms or 0.0
        high = fault.latency_max_ms
        if high is None or high <= low:
            return low / 1000.0
        with self._lock:
            return self._random.uniform(low, high) / 1000.0

    def _applies(self, fault: Fault, pixel_id: str, match: Mapping[str, str | None]) -> bool:
        if fault.pixel_id is not None and fault.pixel_id != pixel_id:
            return False
        for name, value in match.items():
            wanted = getattr(fault, name)
            if wanted is not None and wanted != value:
                return False
        return fault.probability >= 1.0 or self._random.random() < fault.probability

    def _drop_expired(self) -> None:
        now = time.monotonic()
        self._faults = [f for f in self._faults if f.expires_at is None or f.expires_at > now]

    def peek(self, kind: FaultKind, pixel_id: str) -> list[Fault]:
        """Active faults of ``kind`` for the pixel, without using them up."""
        if not self._faults:
            return []
        with self._lock:
            self._drop_expired()
            return [
                f
                for f in self._faults
                if f.kind is kind and (f.pixel_id is None or f.pixel_id == pixel_id)
            ]

    def consume(self, fault: Fault) -> bool:
        """Roll the fault's probability; when it fires, use up one of its ``count``."""
        with self._lock:
            if fault.probability < 1.0 and self._random.random() >= fault.probability:
                return False
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0 and fault in self._faults:
                    self._faults.remove(fault)
            return True
