"""One clock for the code that schedules: wall time for what is stored, monotonic time for waits.

Delivery reads time in two ways: wall time (``time()``, seconds since the epoch) is
what the outbox stores and compares (deadlines, ``next_attempt_at``, lease expiry),
and monotonic time (``monotonic()``) measures pauses that must not jump when the
system clock is set (a throttle pause, the breaker's next probe, housekeeping
intervals).  Both come from one injected :class:`Clock`, so a test can move time
forward with :class:`ManualClock` instead of sleeping through it.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall and monotonic time, in seconds."""

    def time(self) -> float:
        """Seconds since the epoch (compared with what the outbox stores)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for pauses and intervals)."""
        ...


class SystemClock:
    """The process's clocks: :func:`time.time` and :func:`time.monotonic`."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told: :meth:`advance` moves wall and monotonic time together.

    ``wall`` starts at the given epoch second (the current time by default), so events
    stamped with it look recent to Meta's 7-day window.
    """

    def __init__(self, wall: float | None = None, monotonic: float = 1_000.0) -> None:
        self._wall = time.time() if wall is None else wall
        self._monotonic = monotonic

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock does not go back (advance({seconds}))")
        self._wall += seconds
        self._monotonic += seconds


SYSTEM_CLOCK = SystemClock()
