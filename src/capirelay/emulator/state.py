"""What the emulator remembers: pixels, tokens, accepted events, dedup keys, stats.

One :class:`EmulatorState` backs one emulator app.  It is shared between the
server thread and the test (or CLI) that inspects it, so every mutation holds a
lock.  Per-event work is kept to a dict lookup, a counter bump and (when
``store_events``) one list append, because the gateway's drain benchmark pushes
tens of thousands of events a second through here.

Dedup follows Meta's documented rule: the same ``(event_name, event_id)`` on the
same pixel within 48 hours of the first receipt is discarded (still counted in
``events_received``, as Graph does).  Keys are kept as 64-bit hashes mapped to
the minute of first receipt, so a million-event load test costs tens of
megabytes, not a million dicts.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from capirelay.emulator._pixel_state import PixelMetaBook
from capirelay.emulator.faults import FaultBook
from capirelay.meta_facts import DEDUP_WINDOW_SECONDS
from capirelay.problems import Problem

REQUEST_LOG_SIZE = 500
DEFAULT_SCOPES = ("ads_management", "ads_read", "business_management")

Clock = Callable[[], float]
Validator = Callable[[dict[str, Any], float], list[Problem]]


def _default_validator(payload: dict[str, Any], now: float) -> list[Problem]:
    # Imported on first use: capirelay.validate is the single source of Meta's
    # acceptance rules, and importing it lazily keeps the emulator importable
    # (e.g. for --help) even in a trimmed install.
    from capirelay.validate import validate_event

    # Only what Graph itself refuses: capirelay's stricter policy (e.g. a hashed
    # external_id) is the gateway's business, not Meta's.
    return validate_event(payload, now=now, meta_only=True)


def _default_subcodes() -> Mapping[str, int]:
    from capirelay.validate import META_SUBCODES

    return META_SUBCODES


@dataclass(slots=True)
class TokenRecord:
    pixels: set[str] = field(default_factory=set)
    revoked: bool = False
    expires_at: int = 0  # 0 = never, like a system-user token
    scopes: tuple[str, ...] = DEFAULT_SCOPES


@dataclass(slots=True)
class StoredEvent:
    payload: dict[str, Any]
    received_at: float
    test_event_code: str | None
    deduplicated: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.payload,
            "received_at": self.received_at,
            "test_event_code": self.test_event_code,
            "deduplicated": self.deduplicated,
        }


@dataclass(slots=True)
class KeyCoverage:
    """Per (pixel, event_name): how many events carried each match key (for EMQ)."""

    events: int = 0
    with_event_id: int = 0
    keys: Counter[str] = field(default_factory=Counter)
    last_received_at: float = 0.0


class EmulatorState:
    """All mutable state of one emulator instance."""

    def __init__(
        self,
        *,
        pixels: Mapping[str, str] | None = None,
        now: float | Clock | None = None,
        store_events: bool = True,
        validator: Validator | None = None,
        meta_subcodes: Mapping[str, int] | None = None,
        fault_seed: int | None = None,
        app_secret: str | None = None,
    ) -> None:
        self._lock = threading.RLock()
        # The app's secret, when known: appsecret_proof values are then verified.
        self.app_secret = app_secret
        self._clock: Clock = time.time
        self.set_clock(now)
        self.store_events = store_events
        self.validator: Validator = validator or _default_validator
        self._meta_subcodes = meta_subcodes
        self.faults = FaultBook(fault_seed)
        self.pixel_meta = PixelMetaBook()  # settings and /stats counts (guarded by _lock)
        self._initial_pixels = dict(pixels or {})
        self._tokens: dict[str, TokenRecord] = {}
        self._pixels: set[str] = set()
        self._events: dict[str, list[StoredEvent]] = {}
        self._dedup_keys: dict[int, int] = {}
        self._coverage: dict[tuple[str, str], KeyCoverage] = {}
        self._request_log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self._errors: Counter[str] = Counter()
        self._requests = self._received = self._accepted = self._duplicates = 0
        self._minute_cache = (-1, -1)
        self._last_sweep_minute = 0
        self._reset_traffic()
        for pixel_id, token in self._initial_pixels.items():
            self.register_pixel(pixel_id, token)

    # -- clock ---------------------------------------------------------------

    def set_clock(self, now: float | Clock | None) -> None:
        """Freeze the clock at a timestamp, follow a callable, or (None) real time."""
        if now is None:
            self._clock = time.time
        elif callable(now):
            self._clock = now
        else:
            frozen = float(now)
            self._clock = lambda: frozen

    def now(self) -> float:
        return self._clock()

    def today(self) -> date:
        return datetime.fromtimestamp(self.now(), UTC).date()

    @property
    def meta_subcodes(self) -> Mapping[str, int]:
        if self._meta_subcodes is None:
            self._meta_subcodes = _default_subcodes()
        return self._meta_subcodes

    # -- pixels and tokens ---------------------------------------------------

    def register_pixel(self, pixel_id: str, access_token: str) -> None:
        """Make ``pixel_id`` exist and give ``access_token`` access to it."""
        with self._lock:
            self._pixels.add(str(pixel_id))
            self._tokens.setdefault(access_token, TokenRecord()).pixels.add(str(pixel_id))

    def pixels(self) -> list[str]:
        with self._lock:
            return sorted(self._pixels)

    def revoke_token(self, access_token: str) -> bool:
        return self._set_revoked(access_token, True)

    def restore_token(self, access_token: str) -> bool:
        return self._set_revoked(access_token, False)

    def _set_revoked(self, access_token: str, revoked: bool) -> bool:
        with self._lock:
            record = self._tokens.get(access_token)
            if record is None:
                return False
            record.revoked = revoked
            return True

    def token(self, access_token: str) -> TokenRecord | None:
        return self._tokens.get(access_token)

    def set_token_expiry(self, access_token: str, expires_at: int) -> bool:
        """Make ``access_token`` expire at ``expires_at`` (Unix seconds; 0 = never)."""
        with self._lock:
            record = self._tokens.get(access_token)
            if record is None:
                return False
            record.expires_at = int(expires_at)
            return True

    def is_expired(self, record: TokenRecord) -> bool:
        """The token's ``expires_at`` has passed on the emulator's clock (0 never does)."""
        return 0 < record.expires_at <= self.now()

    def can_access(self, access_token: str, pixel_id: str) -> bool:
        record = self._tokens.get(access_token)
        return record is not None and pixel_id in record.pixels

    # -- traffic -------------------------------------------------------------

    def accept(
        self,
        pixel_id: str,
        events: Iterable[dict[str, Any]],
        test_event_code: str | None,
        *,
        counted: bool = True,
    ) -> int:
        """Record validated events; duplicates count but are flagged, never re-stored.

        ``counted`` False leaves them out of ``/stats`` (the ``uncounted`` fault);
        test events never reach ``/stats``.
        """
        for_stats: list[tuple[dict[str, Any], bool]] = []
        received_at = self.now()
        minute = int(received_at // 60)
        cutoff_minute = int((received_at - DEDUP_WINDOW_SECONDS) // 60)
        count = 0
        with self._lock:
            seen = self._dedup_keys
            stored = self._events.setdefault(pixel_id, []) if self.store_events else None
            for event in events:
                count += 1
                event_name = event.get("event_name")
                event_id = event.get("event_id")
                duplicate = False
                if event_id is not None:
                    key = hash((pixel_id, event_name, str(event_id)))
                    first_minute = seen.get(key)
                    if first_minute is not None and first_minute >= cutoff_minute:
                        duplicate = True
                    else:
                        seen[key] = self._interned_minute(minute)
                if duplicate:
                    self._duplicates += 1
                else:
                    self._accepted += 1
                    self._cover(pixel_id, event, received_at)
                if stored is not None:
                    stored.append(StoredEvent(event, received_at, test_event_code, duplicate))
                if counted and test_event_code is None:
                    for_stats.append((event, duplicate))
            if for_stats:
                self.pixel_meta.record(pixel_id, "SERVER", for_stats, received_at)
            self._received += count
            self._maybe_sweep(minute)
        return count

    def _interned_minute(self, minute: int) -> int:
        # Sharing one int object per minute keeps a dedup entry at key + slot size.
        if self._minute_cache[0] != minute:
            self._minute_cache = (minute, minute)
        return self._minute_cache[1]

    def _maybe_sweep(self, minute: int) -> None:
        if minute - self._last_sweep_minute < 60:
            return
        cutoff = minute - DEDUP_WINDOW_SECONDS // 60 - 1
        self._dedup_keys = {k: m for k, m in self._dedup_keys.items() if m >= cutoff}
        self._last_sweep_minute = minute

    def _cover(self, pixel_id: str, event: dict[str, Any], received_at: float) -> None:
        name = event.get("event_name")
        coverage = self._coverage.setdefault((pixel_id, str(name)), KeyCoverage())
        coverage.events += 1
        coverage.last_received_at = received_at
        if event.get("event_id") is not None:
            coverage.with_event_id += 1
        user_data = event.get("user_data")
        if isinstance(user_data, dict):
            coverage.keys.update(k for k, v in user_data.items() if v not in (None, "", []))

    def pixel_settings(self, pixel_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(self.pixel_meta.meta(pixel_id).settings)

    def update_pixel_settings(self, pixel_id: str, changes: Mapping[str, Any]) -> None:
        with self._lock:
            self.pixel_meta.meta(pixel_id).settings.update(changes)

    def pixel_stats(
        self, pixel_id: str, aggregation: str, start: float, end: float, source: str | None
    ) -> list[dict[str, Any]]:
        with self._lock:
            return self.pixel_meta.stats(pixel_id, aggregation, start, end, source)

    def accept_browser(self, pixel_id: str, events: Iterable[dict[str, Any]]) -> int:
        """Record simulated Pixel (browser) fires for ``/stats`` and browser/server dedup."""
        with self._lock:
            batch = [(e, False) for e in events]
            self.pixel_meta.record(pixel_id, "WEB", batch, self.now())
        return len(batch)

    def record_request(self, entry: dict[str, Any]) -> None:
        """Append one request to the log; callers pass no token, no body."""
        with self._lock:
            self._requests += 1
            self._request_log.append(entry)
            code = entry.get("error_code")
            if code is not None:
                self._errors[str(code)] += 1

    # -- inspection ----------------------------------------------------------

    def events(
        self,
        pixel_id: str,
        *,
        test_event_code: str | None = None,
        event_name: str | None = None,
        deduplicated: bool | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        with self._lock:
            stored = list(self._events.get(pixel_id, ()))
        selected = [
            e.to_dict()
            for e in stored
            if (test_event_code is None or e.test_event_code == test_event_code)
            and (event_name is None or e.payload.get("event_name") == event_name)
            and (deduplicated is None or e.deduplicated == deduplicated)
        ]
        return selected[-limit:] if limit else selected

    def coverage(self, pixel_id: str) -> dict[str, KeyCoverage]:
        with self._lock:
            return {
                name: KeyCoverage(c.events, c.with_event_id, Counter(c.keys), c.last_received_at)
                for (pixel, name), c in self._coverage.items()
                if pixel == pixel_id
            }

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "events_received": self._received,
                "events_accepted": self._accepted,
                "duplicates": self._duplicates,
                "errors_by_code": dict(self._errors),
                "dedup_keys": len(self._dedup_keys),
                "stored_events": sum(len(v) for v in self._events.values()),
            }

    def request_log(self, limit: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            entries = list(self._request_log)
        return entries[-limit:] if limit else entries

    def reset(self) -> None:
        """Back to just-started: traffic, faults and revocations cleared; pixels kept, and
        each token's scopes and expiry."""
        with self._lock:
            self._reset_traffic()
            self.faults.clear()
            for record in self._tokens.values():
                record.revoked = False

    def _reset_traffic(self) -> None:
        self.pixel_meta.reset_traffic()
        self._events = {}
        self._dedup_keys = {}
        self._coverage = {}
        self._request_log = deque(maxlen=REQUEST_LOG_SIZE)
        self._errors = Counter()
        self._requests = 0
        self._received = 0
        self._accepted = 0
        self._duplicates = 0
        self._minute_cache = (-1, -1)
        self._last_sweep_minute = int(self.now() // 60)
