"""Real things for delivery tests: the emulator on a loopback port, the outbox on each
backend (``outbox`` in ``tests/conftest.py``), a
delivery engine with small timings so each scenario runs in seconds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from delivery_data import PIXEL, TOKEN, TOKEN_ENV, EngineFactory, make_settings

from capirelay.delivery import DeliveryEngine
from capirelay.emulator.testing import RunningEmulator, run_emulator
from capirelay.metrics import Metrics
from capirelay.outbox import Outbox


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with run_emulator(pixels={PIXEL: TOKEN}) as running:
        yield running


@pytest.fixture
def sqlite_synchronous() -> str:
    """Many small commits per scenario: skip the fsync the durability tests cover."""
    return "NORMAL"


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return monkeypatch


@pytest.fixture
async def start_engine(
    emulator: RunningEmulator, outbox: Outbox, token_env: pytest.MonkeyPatch
) -> AsyncIterator[EngineFactory]:
    engines: list[DeliveryEngine] = []

    async def start(**delivery: Any) -> DeliveryEngine:
        options = {key: delivery.pop(key) for key in ("clock", "transport") if key in delivery}
        engine = DeliveryEngine(
            outbox, make_settings(emulator.url, **delivery), Metrics(), **options
        )
        await engine.start()
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        await engine.stop(timeout=2.0)
