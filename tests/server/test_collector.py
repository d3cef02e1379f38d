"""The garbage collector settings of a serving process (``capirelay.server.collector``)."""

from __future__ import annotations

import gc

from capirelay.server.collector import SERVING_THRESHOLDS, serving_collector


def test_serving_settings_apply_while_serving_and_are_restored_after() -> None:
    before = gc.get_threshold()
    with serving_collector():
        assert gc.get_threshold() == SERVING_THRESHOLDS
        assert gc.get_freeze_count() > 0  # what start-up built is frozen
        cycle: list[object] = []
        cycle.append(cycle)  # garbage cycles are still collected
        del cycle
        assert gc.collect() >= 1
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
