"""The retry policy as a table: backoff growth, jitter bounds, the cap and the deadline."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from capirelay.retry import RetryPolicy

NOW = 1_000_000.0
FAR = NOW + 7 * 86400


@dataclass
class Fixed:
    value: float

    def random(self) -> float:
        return self.value


DEFAULT = RetryPolicy()


@pytest.mark.parametrize(
    ("policy", "attempts", "draw", "deadline", "expected"),
    [
        # u = 0: the full ceiling base * factor ** (n - 1)
        (DEFAULT, 1, 0.0, FAR, NOW + 2),
        (DEFAULT, 2, 0.0, FAR, NOW + 4),
        (DEFAULT, 5, 0.0, FAR, NOW + 32),
        (DEFAULT, 0, 0.0, FAR, NOW + 2),  # no attempts yet counts as the first
        # jitter 0.5: u close to 1 halves the delay
        (DEFAULT, 3, 0.5, FAR, NOW + 6),
        (DEFAULT, 3, 0.999999, FAR, pytest.approx(NOW + 4, abs=1e-4)),
        # the ceiling is capped by max_delay, even for absurd attempt counts
        (DEFAULT, 13, 0.0, FAR, NOW + 3600),
        (DEFAULT, 5000, 0.0, FAR, NOW + 3600),
        (RetryPolicy(factor=10.0), 400, 0.0, FAR, NOW + 3600),  # would overflow a float
        # the deadline caps the delay: last try at deadline - margin
        (DEFAULT, 10, 0.0, NOW + 100, NOW + 95),
        (DEFAULT, 1, 0.0, NOW + 6, NOW + 1),
        # no time left before the deadline: None ("expired")
        (DEFAULT, 1, 0.0, NOW + 5, None),
        (DEFAULT, 1, 0.0, NOW - 1, None),
        (RetryPolicy(deadline_margin=0), 1, 0.0, NOW + 0.5, NOW + 0.5),
        # full jitter
        (RetryPolicy(jitter=1.0), 2, 0.75, FAR, NOW + 1),
        (RetryPolicy(jitter=0.0), 2, 0.75, FAR, NOW + 4),
    ],
)
def test_next_attempt_at(
    policy: RetryPolicy, attempts: int, draw: float, deadline: float, expected: object
) -> None:
    assert policy.next_attempt_at(attempts, NOW, deadline, Fixed(draw)) == expected


def test_jittered_delays_stay_within_bounds() -> None:
    rng = random.Random(7)
    for attempts in range(1, 20):
        ceiling = DEFAULT.ceiling(attempts)
        for _ in range(50):
            when = DEFAULT.next_attempt_at(attempts, NOW, FAR, rng)
            assert when is not None
            assert NOW + ceiling * 0.5 < when <= NOW + ceiling


def test_never_past_the_deadline() -> None:
    rng = random.Random(3)
    for attempts in range(1, 30):
        for left in (0.0, 1.0, 5.0, 5.5, 30.0, 4000.0):
            when = DEFAULT.next_attempt_at(attempts, NOW, NOW + left, rng)
            assert when is None or when <= NOW + left - DEFAULT.deadline_margin


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base": 0}, "base"),
        ({"factor": 0.5}, "factor"),
        ({"max_delay": 1.0}, "max_delay"),
        ({"jitter": 1.5}, "jitter"),
        ({"deadline_margin": -1}, "deadline_margin"),
    ],
)
def test_invalid_policies(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)
