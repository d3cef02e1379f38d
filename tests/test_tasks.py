"""Background tasks stop for certain, even when a library swallows one cancellation.

Python 3.11's ``asyncio.wait_for`` (used by psycopg_pool while it waits for a connection)
drops a cancel that lands as the wait completes (gh-86296): to the task it looks exactly like
``except CancelledError: pass``. These tasks do that on purpose, deterministically.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from capirelay.config import Settings
from capirelay.delivery import DeliveryEngine
from capirelay.metrics import Metrics
from capirelay.outbox.memory import InMemoryOutbox
from capirelay.tasks import cancel_and_wait, finish_despite_cancels


async def swallow_first_cancel(entered: asyncio.Event, rounds: list[int]) -> None:
    """A ``while True`` loop whose first cancel is lost, like one inside 3.11's wait_for."""
    swallowed = False
    while True:
        rounds.append(1)
        entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed = True


async def test_a_swallowed_cancel_is_sent_again() -> None:
    entered, rounds = asyncio.Event(), []
    task = asyncio.create_task(swallow_first_cancel(entered, rounds))
    await entered.wait()
    await cancel_and_wait(task)
    assert task.cancelled()
    assert len(rounds) == 2  # it went round once more after the lost cancel, then ended


async def test_finished_and_missing_tasks_are_fine(caplog: pytest.LogCaptureFixture) -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    async def finish() -> int:
        return 1

    failed, finished = asyncio.create_task(fail()), asyncio.create_task(finish())
    await asyncio.wait({failed, finished})
    with caplog.at_level(logging.WARNING, logger="capirelay"):
        await cancel_and_wait(None, failed, finished)
    assert "ended with RuntimeError while stopping" in caplog.text
    assert finished.result() == 1


class LosesOneCancel(InMemoryOutbox):
    """An outbox whose housekeeping query loses the first cancel, like psycopg_pool can.

    The engine's start() asks once before the supervisor runs: that call answers at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.swallowed = False
        self.calls = 0

    async def due_pixels(self, *, now: float) -> list[str]:
        self.calls += 1
        if self.calls == 1:
            return []
        self.entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed = True
        return []


async def test_the_delivery_engine_stops_when_its_housekeeping_loses_a_cancel() -> None:
    outbox = LosesOneCancel()
    await outbox.open()
    engine = DeliveryEngine(outbox, Settings(), Metrics())
    await engine.start()
    await outbox.entered.wait()
    await engine.stop(timeout=1.0)  # used to hang here: the supervisor went round again
    assert outbox.swallowed
    assert engine.status() == {}
    await outbox.close()


async def test_a_clean_up_finishes_whatever_cancels_arrive() -> None:
    """cancel_and_wait cancels every RECANCEL_SECONDS: a cancelled task's clean-up (give its
    lease back) that takes longer must still run to its end, then the task ends cancelled."""
    release_started, may_finish = asyncio.Event(), asyncio.Event()
    released: list[str] = []

    async def release() -> None:
        release_started.set()
        await may_finish.wait()
        released.append("lease")

    async def batch() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await finish_despite_cancels(release(), timeout=3600)
            raise

    task = asyncio.create_task(batch())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(cancel_and_wait(task))
    await release_started.wait()
    for _ in range(3):  # three more cancels land while the clean-up waits
        task.cancel()
        await asyncio.sleep(0)
    assert not task.done() and not released
    may_finish.set()
    await stopping
    assert released == ["lease"] and task.cancelled()


async def test_a_clean_up_that_hangs_is_given_up_after_its_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hung = asyncio.Event()

    async def release() -> None:
        await hung.wait()  # never set

    with caplog.at_level(logging.WARNING, logger="capirelay"):
        await finish_despite_cancels(release(), timeout=0.0)
    assert "did not finish within 0.0 s" in caplog.text


async def test_a_clean_up_error_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def release() -> None:
        raise ConnectionError("database gone")

    with caplog.at_level(logging.WARNING, logger="capirelay"):
        await finish_despite_cancels(release(), timeout=5)
    assert "clean-up ended with ConnectionError" in caplog.text
