"""When to try a failed event again: one small, pure, deadline-aware backoff policy.

Meta refuses an event whose ``event_time`` is more than 7 days old (62 for
``physical_store``), so a retry after that moment can only turn a transient
failure into a permanent one.  The policy therefore never schedules past the
event's deadline: it answers ``None`` and the caller dead-letters the event
as ``expired``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


class UniformSource(Protocol):
    """Anything with ``random() -> float`` in [0, 1): ``random.Random``, or a fixed stub."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class FixedDraw:
    """One jitter draw shared by a whole batch, so its events stay together when rescheduled."""

    value: float

    def random(self) -> float:
        return self.value


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped by ``max_delay`` and by the event's deadline.

    For the ``n``-th failed attempt (``attempts = n >= 1``) and ``u`` drawn
    uniformly from [0, 1)::

        ceiling = min(max_delay, base * factor ** (n - 1))
        delay   = ceiling * (1 - jitter * u)          # in (ceiling * (1 - jitter), ceiling]
        latest  = deadline - deadline_margin
        next    = None                 if latest <= now   (the deadline would pass: "expired")
                  min(now + delay, latest)  otherwise

    ``jitter = 1`` is "full jitter" (uniform in (0, ceiling]); the default 0.5
    keeps every retry at least half its ceiling away, which spreads a fleet's
    retries after an outage without ever retrying in a tight loop.  The last
    try before the deadline is pulled in to ``latest`` rather than skipped, so
    an event gets every chance Meta still allows.  ``deadline_margin`` leaves
    room for the request itself (Meta's 1.5 s budget) and modest clock skew.
    """

    base: float = 2.0
    factor: float = 2.0
    max_delay: float = 3600.0
    jitter: float = 0.5
    deadline_margin: float = 5.0

    def __post_init__(self) -> None:
        if self.base <= 0:
            raise ValueError("base must be > 0 seconds")
        if self.factor < 1:
            raise ValueError("factor must be >= 1 (backoff never shrinks)")
        if self.max_delay < self.base:
            raise ValueError("max_delay must be >= base")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")
        if self.deadline_margin < 0:
            raise ValueError("deadline_margin must be >= 0")

    def ceiling(self, attempts: int) -> float:
        """The un-jittered delay after ``attempts`` failed attempts."""
        exponent = max(attempts, 1) - 1
        try:
            raw = self.base * self.factor**exponent
        except OverflowError:
            return self.max_delay
        return self.max_delay if math.isinf(raw) else min(self.max_delay, raw)

    def delay(self, attempts: int, rng: UniformSource) -> float:
        return self.ceiling(attempts) * (1.0 - self.jitter * rng.random())

    def next_attempt_at(
        self, attempts: int, now: float, deadline: float, rng: UniformSource
    ) -> float | None:
        """When to try again, or ``None`` when the deadline would pass first."""
        latest = deadline - self.deadline_margin
        if latest <= now:
            return None
        return min(now + self.delay(attempts, rng), latest)
