"""`capirelay demo --once`: the README's main job, end to end on loopback."""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path

import pytest
from rich.console import Console

from capirelay.demo import DemoOptions, run_demo, shop_page


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
