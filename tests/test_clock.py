"""The injected clock: the system one reads both clocks, the manual one moves only when told."""

from __future__ import annotations

import time

import pytest

from capirelay.clock import SYSTEM_CLOCK, Clock, ManualClock


def test_the_system_clock_reads_wall_and_monotonic_time() -> None:
    clock: Clock = SYSTEM_CLOCK
    before_wall, before_mono = time.time(), time.monotonic()
    wall, mono = clock.time(), clock.monotonic()
    assert before_wall <= wall <= time.time()
    assert before_mono <= mono <= time.monotonic()


def test_a_manual_clock_moves_wall_and_monotonic_time_together() -> None:
    clock = ManualClock(wall=1_700_000_000.0, monotonic=50.0)
    assert (clock.time(), clock.monotonic()) == (1_700_000_000.0, 50.0)
    clock.advance(2.5)
    assert (clock.time(), clock.monotonic()) == (1_700_000_002.5, 52.5)
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)
