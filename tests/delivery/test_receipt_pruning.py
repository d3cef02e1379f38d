"""The delivery engine's housekeeping prunes receipts past the retention and the cap."""

from __future__ import annotations

import time

import pytest
from delivery_data import make_settings

from capirelay.clock import ManualClock
from capirelay.delivery import DeliveryEngine
from capirelay.emulator.testing import RunningEmulator
from capirelay.metrics import Metrics
from capirelay.outbox import Outbox
from capirelay.outbox.receipts import Outcome, Receipt
from waiting import wait_for_async

DAY = 86400


def dropped(event_id: str, at: float) -> Receipt:
    return Receipt(
        "1234567890", "PageView", event_id, Outcome.DROPPED, "collect", at, at, reason="no_consent"
    )


async def _known(outbox: Outbox, event_id: str) -> bool:
    return (await outbox.trace(event_id)).known


async def test_housekeeping_prunes_old_and_excess_receipts(
    emulator: RunningEmulator, outbox: Outbox, token_env: pytest.MonkeyPatch
) -> None:
    now = time.time()
    await outbox.record_receipts([dropped("old", now - 31 * DAY)])
    await outbox.record_receipts([dropped(f"new{i}", now - 10 + i) for i in range(4)])
    settings = make_settings(emulator.url)
    settings.receipts.retention_days = 30
    settings.receipts.max_receipts = 3
    engine = DeliveryEngine(outbox, settings, Metrics())
    await engine.start()
    try:

        async def pruned() -> bool:
            return not await _known(outbox, "new0")

        await wait_for_async(pruned, timeout=10, what="receipts pruned")
    finally:
        await engine.stop(timeout=2)
    assert not await _known(outbox, "old")
    assert [await _known(outbox, f"new{i}") for i in range(4)] == [False, True, True, True]


async def test_the_first_housekeeping_prunes_however_recently_the_machine_booted(
    emulator: RunningEmulator, outbox: Outbox, token_env: pytest.MonkeyPatch
) -> None:
    # The monotonic clock counts from boot: a replica started 5 s after a boot must not
    # wait out prune_interval_seconds (600) before its first pruning.
    clock = ManualClock(wall=time.time(), monotonic=5.0)
    await outbox.record_receipts([dropped("old", clock.time() - 31 * DAY)])
    settings = make_settings(emulator.url)
    settings.receipts.retention_days = 30
    engine = DeliveryEngine(outbox, settings, Metrics(), clock=clock)
    await engine.start()
    try:

        async def pruned() -> bool:
            return not await _known(outbox, "old")

        await wait_for_async(pruned, timeout=10, what="old receipt pruned")
    finally:
        await engine.stop(timeout=2)
