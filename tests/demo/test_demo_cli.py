"""`capirelay demo` as a user runs it: the real console script in a subprocess, over real HTTP.

Its stdout is a pipe here (as under ``nohup``), so the demo prints one line per
event outcome as it happens instead of a live table; the test reads those lines
while the demo runs.  Ctrl-C is a SIGINT to the process group, as a terminal
sends it, and must end the demo (and ``make run``) with exit status 0.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from capirelay.config import load_settings

CAPIRELAY = Path(sys.executable).with_name("capirelay")
STARTUP_SECONDS = 30.0
DASHBOARD_LINE = re.compile(r"^  dashboard: (http://\S+/ui/)  token: (\S+)$", re.M)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Running:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = STARTUP_SECONDS) -> re.Match[str]:
        """The first match of ``pattern`` in the output so far, waiting for more lines."""
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                match = regex.search("".join(self.lines))
                if match:
                    return match
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"no {pattern!r} in demo output:\n{self.text}")
                self.changed.wait(left)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _start(argv: list[str], cwd: Path, *, new_session: bool = False) -> Running:
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "PYTHONUNBUFFERED": "0"}
    env.pop("CAPIRELAY_CONFIG", None)
    env.pop("CAPIRELAY_DEMO_ADMIN_TOKEN", None)
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=new_session,
    )
    running = Running(process)
    threading.Thread(target=running.pump, daemon=True).start()
    return running


def _stop(running: Running, *, group: bool = False) -> int:
    if running.process.poll() is None:
        if group:
            os.killpg(running.process.pid, signal.SIGINT)
        else:
            running.process.send_signal(signal.SIGINT)
    try:
        return running.process.wait(timeout=20)
    finally:
        if running.process.poll() is None:
            running.process.kill()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[Running, Path, int]]:
    # A broken ./capirelay.toml in the working directory must not leak into the demo.
    (tmp_path / "capirelay.toml").write_text('storage = "sqlite:///elsewhere.db"\nport = 1\n')
    port = _free_port()
    running = _start([str(CAPIRELAY), "demo", "--port", str(port)], tmp_path)
    try:
        running.wait_for(r"Ctrl-C stops the demo")
        yield running, tmp_path, port
    finally:
        _stop(running)


def test_demo_prints_every_way_in_once(demo: tuple[Running, Path, int]) -> None:
    running, cwd, port = demo
    url = f"http://127.0.0.1:{port}"
    text = running.text
    assert f"  shop:      {url}/shop" in text
    assert DASHBOARD_LINE.search(text)
    assert "ingest key: demo-ingest-key" in text
    assert re.search(r"Graph emulator http://127\.0\.0\.1:\d+", text)
    assert f"database:  {cwd / 'capirelay-demo.db'}" in text
    assert f"config:    {cwd / 'capirelay-demo.toml'}" in text
    assert "capirelay dlq list --config capirelay-demo.toml" in text
    assert f"{cwd / 'capirelay.toml'} is NOT used by the demo" in text
    assert text.count("dashboard:") == 1  # printed once, not per refresh
    # The demo means every event as a test event: no start-up warning about its code.
    assert "test_event_code is set" not in text


def test_the_printed_token_opens_the_dashboard(demo: tuple[Running, Path, int]) -> None:
    running, _, _ = demo
    dashboard, token = DASHBOARD_LINE.search(running.text).groups()  # type: ignore[union-attr]
    assert httpx.get(dashboard).status_code in (303, 401)
    assert httpx.get(dashboard, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with httpx.Client(base_url=dashboard.removesuffix("/ui/")) as browser:
        form = browser.get("/ui/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert csrf is not None
        answer = browser.post("/ui/login", data={"token": token, "csrf_token": csrf.group(1)})
        assert answer.status_code == 303
        assert browser.get("/ui/").status_code == 200
        for icon in ("/favicon.ico", "/ui/static/favicon.ico"):
            answer = browser.get(icon)
            assert answer.status_code == 200, icon
            assert answer.content.startswith(b"\x00\x00\x01\x00")  # an ICO file
        assert browser.get("/favicon.ico").headers["content-type"] == "image/x-icon"


def test_the_printed_curl_sends_an_event_and_the_outcome_is_printed(
    demo: tuple[Running, Path, int],
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    running, _, _ = demo
    command = running.wait_for(r"^    (curl .+)$").group(1)
    answer = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    assert '"status":"queued"' in answer.stdout
    # Not a terminal: one line per outcome, written while the demo runs (not only at exit).
    running.wait_for(r"^Lead \S+ \(server\): delivered to Meta \(emulator\), fbtrace_id \S+$")
    running.wait_for(r"^Purchase order-\d+ \(server\): delivered to Meta")


def test_dlq_list_with_the_demo_config_reads_the_demos_queue(
    demo: tuple[Running, Path, int],
) -> None:
    _, cwd, _ = demo
    config = cwd / "capirelay-demo.toml"
    settings = load_settings(config)
    assert settings.storage == f"sqlite:///{cwd / 'capirelay-demo.db'}"
    secrets = cwd / "capirelay-demo-secrets"
    for name in ("access-token", "ingest-key", "admin-token"):
        assert stat.S_IMODE((secrets / name).stat().st_mode) == 0o600
    assert "secret" not in config.read_text().lower().replace("-secrets/", "")
    listed = subprocess.run(
        [str(CAPIRELAY), "dlq", "list", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    assert listed.returncode == 0, listed.stderr
    assert str(cwd / "capirelay-demo.db") in listed.stderr
    assert not (cwd / "elsewhere.db").exists()


def test_a_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(CAPIRELAY), "demo", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stdout
    assert "pass --port" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_ctrl_c_ends_the_demo_with_status_zero(tmp_path: Path) -> None:
    running = _start([str(CAPIRELAY), "demo", "--port", str(_free_port())], tmp_path)
    running.wait_for(r"Ctrl-C stops the demo")
    assert _stop(running) == 0
    running.process.wait()
    assert "Traceback" not in running.text
    assert "demo stopped" in running.text


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_ctrl_c_on_make_run_is_not_an_error(tmp_path: Path) -> None:
    port = _free_port()
    (tmp_path / "Makefile").write_text(f"run:\n\t{CAPIRELAY} demo --port {port}\n")
    running = _start(["make", "--no-print-directory", "run"], tmp_path, new_session=True)
    running.wait_for(r"Ctrl-C stops the demo")
    code = _stop(running, group=True)  # the terminal's Ctrl-C reaches make and the demo
    running.process.wait()
    assert "Error 130" not in running.text
    assert "Traceback" not in running.text
    assert code in (0, -signal.SIGINT)  # make re-raises the SIGINT it received itself


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def _bad_and_bot(url: str) -> tuple[str, str]:
    """A beacon from a crawler (dropped) and a Purchase without value/currency (rejected)."""
    dropped = httpx.post(
        f"{url}/v1/collect",
        headers={"User-Agent": BOT_UA, "Content-Type": "text/plain"},
        content=b'{"pixel_id": "1234567890", "event_name": "ViewContent", "event_id": "bot-1"}',
    ).json()
    assert dropped["status"] == "dropped"
    rejected = httpx.post(
        f"{url}/v1/events",
        headers={"Authorization": "Bearer demo-ingest-key"},
        json={
            "pixel_id": "1234567890",
            "data": [
                {
                    "event_name": "Purchase",
                    "event_id": "bad-1",
                    "event_time": int(time.time()),
                    "action_source": "website",
                    "event_source_url": "https://shop.example/",
                    "user_data": {"email": "a@example.com", "client_user_agent": "x"},
                }
            ],
        },
    ).json()
    assert rejected["results"][0]["status"] == "rejected"
    return "bot-1", "bad-1"


def test_dropped_and_rejected_events_get_lines_too(demo: tuple[Running, Path, int]) -> None:
    running, _, port = demo
    _bad_and_bot(f"http://127.0.0.1:{port}")
    running.wait_for(r"^ViewContent bot-1 \(browser\): dropped: the browser's user agent looks")
    running.wait_for(r"^Purchase bad-1 \(server\): rejected: custom_data\.\S+: ")


def test_the_live_table_in_a_terminal_has_dropped_and_rejected_rows(tmp_path: Path) -> None:
    import pty

    port = _free_port()
    controller, terminal = pty.openpty()
    env = {**os.environ, "COLUMNS": "220", "LINES": "60", "TERM": "xterm-256color"}
    env.pop("CAPIRELAY_CONFIG", None)
    process = subprocess.Popen(
        [str(CAPIRELAY), "demo", "--port", str(port)],
        cwd=tmp_path,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
    )
    os.close(terminal)
    screen: list[str] = []
    changed = threading.Condition()

    def pump() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            with changed:
                screen.append(ANSI.sub("", chunk.decode("utf-8", "replace")))
                changed.notify_all()

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        with changed:
            while text not in "".join(screen):
                left = deadline - time.monotonic()
                assert left > 0, f"{text!r} never shown:\n{''.join(screen)[-3000:]}"
                changed.wait(left)

    threading.Thread(target=pump, daemon=True).start()
    try:
        wait_for("Ctrl-C stops the demo")
        _bad_and_bot(f"http://127.0.0.1:{port}")
        wait_for("events dropped by the gateway")
        wait_for("ViewContent bot-1 (browser)")
        wait_for("Purchase bad-1 (server)")
        wait_for("rejected: custom_data.")
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
        os.close(controller)


def test_a_shop_visit_from_the_printed_address_reaches_meta_with_a_click_id(
    demo: tuple[Running, Path, int],
) -> None:
    """The printed shop address is an ad click's landing (``?fbclid=``): the shop's
    beacon carries it as its page URL, and the gateway builds ``fbc`` from it."""
    running, _, port = demo
    shop = running.wait_for(r"^  shop:      (http://\S+/shop\?fbclid=(\S+))")
    emulator = running.wait_for(r"Graph emulator (http://\S+)")[1]
    beacon = {
        "pixel_id": "1234567890",
        "event_name": "Purchase",
        "event_id": "ad-visit-1",
        "page_url": shop[1],
        "custom_data": {"value": 25.0, "currency": "EUR"},
    }
    answer = httpx.post(
        f"http://127.0.0.1:{port}/v1/collect",
        headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
                 "Origin": f"http://127.0.0.1:{port}", "Content-Type": "text/plain"},
        json=beacon,
    ).json()  # fmt: skip
    assert answer["status"] == "queued", answer
    running.wait_for(r"^Purchase ad-visit-1 \(browser\): delivered")
    events = httpx.get(f"{emulator}/_emulator/pixels/1234567890/events").json()["data"]
    sent = next(e["event"] for e in events if e["event"]["event_id"] == "ad-visit-1")
    assert sent["user_data"]["fbc"].endswith("." + shop[2])
