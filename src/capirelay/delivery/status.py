"""Per-pixel delivery state that outlives a request: the circuit breaker, the AIMD limit, counts.

These are small synchronous state machines with no I/O, so their rules are
tested as tables; the pixel worker drives them and does the talking.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class BreakerState(StrEnum):
    """``closed``: sending.  ``open``: a token/setup error stopped sending; events stay queued
    and a small probe batch is tried every ``breaker_probe_seconds``.  ``half_open``: the
    probe is in flight.  ``unconfigured``: no token is configured (or readable) for the pixel.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    UNCONFIGURED = "unconfigured"


@dataclass(frozen=True, slots=True)
class LastError:
    """Meta's answer to the most recent failed request (never a token or payload)."""

    at: float
    status: int | None
    code: int | None
    subcode: int | None
    message: str
    fbtrace_id: str | None
    retry_class: str


@dataclass(slots=True)
class Breaker:
    """Open on auth/setup errors, probe on a schedule, close on the first success."""

    probe_interval: float
    state: BreakerState = BreakerState.CLOSED
    opened_at: float | None = None
    next_probe_at: float | None = None

    @property
    def sending_blocked(self) -> bool:
        return self.state is not BreakerState.CLOSED

    def trip(self, now: float, *, wall_time: float) -> bool:
        """Open (or re-open after a failed probe); True when this is news (was closed).

        ``now`` is monotonic (schedules the next probe); ``wall_time`` is reported
        as ``opened_at``.
        """
        was_closed = self.state in (BreakerState.CLOSED, BreakerState.UNCONFIGURED)
        if was_closed:
            self.opened_at = wall_time
        self.state = BreakerState.OPEN
        self.next_probe_at = now + self.probe_interval
        return was_closed

    def probe_due(self, now: float) -> bool:
        return self.state is BreakerState.OPEN and (
            self.next_probe_at is None or now >= self.next_probe_at
        )

    def start_probe(self) -> None:
        self.state = BreakerState.HALF_OPEN

    def close(self) -> bool:
        """Back to sending; True when it was not already closed."""
        changed = self.state is not BreakerState.CLOSED
        self.state = BreakerState.CLOSED
        self.opened_at = None
        self.next_probe_at = None
        return changed

    def mark_unconfigured(self) -> bool:
        changed = self.state is not BreakerState.UNCONFIGURED
        self.state = BreakerState.UNCONFIGURED
        return changed


@dataclass(slots=True)
class AIMDLimit:
    """Additive-increase / multiplicative-decrease concurrency allowance for one pixel.

    A throttle halves the number of requests allowed in flight (floor 1); every
    "window" of ``limit`` consecutive successes adds one back, up to ``ceiling``
    (``delivery.max_in_flight``).  Recovery is therefore gradual: from 1 back
    to 4 takes 1 + 2 + 3 successful requests.
    """

    ceiling: int
    limit: int = 0
    successes_in_window: int = 0

    def __post_init__(self) -> None:
        if self.ceiling < 1:
            raise ValueError("ceiling must be >= 1")
        if self.limit <= 0:
            self.limit = self.ceiling

    def on_success(self) -> None:
        if self.limit >= self.ceiling:
            self.successes_in_window = 0
            return
        self.successes_in_window += 1
        if self.successes_in_window >= self.limit:
            self.limit += 1
            self.successes_in_window = 0

    def on_throttle(self) -> None:
        self.limit = max(1, self.limit // 2)
        self.successes_in_window = 0


@dataclass(slots=True)
class PixelStatus:
    """A snapshot of one pixel's delivery for the dashboard, /readyz and the CLI."""

    pixel_id: str
    breaker: BreakerState
    opened_at: float | None
    last_error: LastError | None
    concurrency_limit: int
    max_concurrency: int
    in_flight: int
    paused_for_seconds: float  # remaining throttle pause, 0 when sending freely
    sent: int = 0
    requests: int = 0
    failed_requests: int = 0
    retried: int = 0
    dead_lettered: int = 0
    bisect_requests: int = 0
    throttles: int = 0
    # What the worker waits for: "work" (nothing due; a notification or the poll ends it),
    # "linger" (a notification came; a burst gathers for ``linger_ms``), "" otherwise.
    waiting: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["breaker"] = str(self.breaker)
        return data
