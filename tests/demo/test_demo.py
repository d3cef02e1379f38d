"""`capirelay demo --once`: the README's main job, end to end on loopback."""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from capirelay import demo
from capirelay.demo import DemoOptions, run_demo, shop_page
from capirelay.emulator.faults import Fault, FaultKind
from capirelay.ops.diagnostics import DiagnosticsRunner


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_demo_once_delivers_the_sample_event_hashed(tmp_path: Path) -> None:
    console = Console(record=True, width=120)
    options = DemoOptions(port=_free_port(), db_path=tmp_path / "demo.db", once=True)
    assert await run_demo(options, console) == 0
    text = console.export_text()
    assert "HTTP 202" in text
    assert "delivered to the emulator" in text
    # What reached "Meta" is hashed: the demo's raw e-mail never appears.
    delivered = text.split("delivered to the emulator", 1)[1]
    assert "jane.doe@example.com" not in delivered.lower()
    assert '"em"' in delivered


async def test_port_0_picks_a_free_port_and_every_url_names_it(tmp_path: Path) -> None:
    """``--port 0`` printed ``http://127.0.0.1:0/...`` URLs and then failed with a
    traceback; the demo now picks the port itself, so its URLs and origin work."""
    console = Console(record=True, width=200)
    options = DemoOptions(port=0, db_path=tmp_path / "demo.db", once=True)
    assert await run_demo(options, console) == 0
    text = console.export_text()
    assert ":0/" not in text
    shop = re.search(r"shop:\s+http://127\.0\.0\.1:(\d+)/shop", text)
    assert shop is not None and int(shop[1]) > 0
    assert f"http://127.0.0.1:{shop[1]}/v1/events" in text
    assert "delivered to the emulator" in text
    config = (tmp_path / "demo.toml").read_text()  # beside --db, named after it
    assert f"port = {shop[1]}" in config


def test_shop_page_carries_the_pixel_and_the_beacon() -> None:
    page = shop_page("1234567890")
    assert '"1234567890"' in page
    assert "/v1/collect" in page
    assert "eventID" in page


async def test_once_runs_meta_diagnostics_and_the_demo_traffic_passes_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A first run of the quick start must not greet a newcomer with a diagnostics
    WARNING: the demo's traffic looks like a shop's (an order from an ad click carries
    the click id), so the emulator's Dataset Quality check has nothing to flag."""
    caplog.set_level(logging.INFO, "capirelay.diagnostics")
    console = Console(record=True, width=200)
    options = DemoOptions(port=_free_port(), db_path=tmp_path / "demo.db", once=True)
    assert await run_demo(options, console) == 0
    text = console.export_text()
    assert "Meta diagnostics: no check failing" in text
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "capirelay.diagnostics" and r.levelno >= logging.WARNING
    ]
    assert warnings == []
    delivered = text.split("delivered to the emulator", 1)[1]
    assert '"fbc"' in delivered


async def test_once_fails_and_names_the_check_when_a_meta_diagnostics_check_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--once exited 0 whatever the diagnostics found: a smoke test that cannot fail."""

    class FailingCheck(demo.TracingEmulatorState):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.faults.add(
                Fault(FaultKind.DA_CHECK_FAILED, check="pixel_decline", message="Events dropped")
            )

    monkeypatch.setattr(demo, "TracingEmulatorState", FailingCheck)
    console = Console(record=True, width=400)
    options = DemoOptions(port=_free_port(), db_path=tmp_path / "demo.db", once=True)
    assert await run_demo(options, console) == 1
    text = console.export_text()
    assert "delivered to the emulator" in text
    assert "Meta diagnostics: 1 check failing: pixel_decline (" in text
    assert "Events dropped" in text
    assert "the sample event was delivered" in text
    assert "no check failing" not in text


async def test_once_reports_a_diagnostics_run_that_raises_after_the_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error other than Graph's from run_once crashed --once after a good delivery."""

    async def broken(self: DiagnosticsRunner) -> None:
        raise RuntimeError("the meta store is gone")

    monkeypatch.setattr(DiagnosticsRunner, "run_once", broken)
    console = Console(record=True, width=400)
    options = DemoOptions(port=_free_port(), db_path=tmp_path / "demo.db", once=True)
    assert await run_demo(options, console) == 1
    text = console.export_text()
    assert "delivered to the emulator" in text
    assert (
        "Meta diagnostics could not run (RuntimeError: the meta store is gone); "
        "the sample event was delivered (above)"
    ) in text
