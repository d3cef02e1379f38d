"""`capirelay demo --once`: the README's main job, end to end on loopback."""

from __future__ import annotations

import socket
from pathlib import Path

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


def test_shop_page_carries_the_pixel_and_the_beacon() -> None:
    page = shop_page("1234567890")
    assert '"1234567890"' in page
    assert "/v1/collect" in page
    assert "eventID" in page
