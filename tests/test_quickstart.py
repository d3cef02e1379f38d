"""examples/quickstart.py, the README's library example, runs against a real emulator process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.py"
CAPIRELAY = Path(sys.executable).with_name("capirelay")
STARTUP_SECONDS = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def emulator_url() -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [str(CAPIRELAY), "emulator", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                httpx.get(f"{url}/_emulator/stats").raise_for_status()
                break
            except httpx.TransportError:
                assert process.poll() is None, "capirelay emulator exited"
                assert time.monotonic() < deadline, "capirelay emulator did not start"
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CAPIRELAY_")}
    return subprocess.run(
        [sys.executable, str(QUICKSTART)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_quickstart_sends_a_hashed_purchase_to_the_emulator(emulator_url: str) -> None:
    result = _run({"CAPIRELAY_GRAPH_URL": emulator_url})
    assert result.returncode == 0, result.stderr
    assert "events_received: 1" in result.stdout
    stored = httpx.get(f"{emulator_url}/_emulator/pixels/1234567890/events").json()["data"]
    (event,) = [item["event"] for item in stored]
    assert event["event_id"] == "order-1001"
    assert event["user_data"]["ph"] == [
        "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"  # 16505551212
    ]
    assert "john_smith@gmail.com" not in str(event).lower()


def test_quickstart_without_an_emulator_says_how_to_start_one() -> None:
    result = _run({"CAPIRELAY_GRAPH_URL": f"http://127.0.0.1:{_free_port()}"})
    assert result.returncode == 1
    assert "start one with `capirelay emulator`" in result.stderr


def test_the_readme_library_example_is_the_quickstart_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = QUICKSTART.read_text(encoding="utf-8")
    assert f"```python\n{code}```" in readme
