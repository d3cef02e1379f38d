"""What the loopback benchmarks share: the bench pixel and keys, free ports, waiting for a
server, starting the emulator, stopping a subprocess, building ``/v1/events`` load and
printing a result table.

Every benchmark script runs its servers as subprocesses on 127.0.0.1 and prints
Markdown tables; one copy of that machinery keeps the scripts' setups (and their
tables) identical, so their figures compare.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import orjson

from _loadgen import build_request

PIXEL = "1234567890"
TOKEN = "bench-token"
KEY = "bench-ingest-key"
HOST = "127.0.0.1"


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, interval: float = 0.1) -> None:
    """Return once ``url`` answers below 500; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise RuntimeError(f"{url} did not come up")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a gateway drains and closes its outbox on it), SIGKILL after 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# What a gateway started without an access token (the benches' way of keeping events
# queued) logs by design, once per process: the config's warning and delivery's error.
NO_TOKEN_LINES = ("access_token is not set", "no access token")


def gateway_log(directory: Path, name: str) -> Path:
    """A file for a gateway subprocess's log lines (its stderr), in the bench's own
    temporary ``directory``: the terminal keeps the bench's tables, and
    :func:`echo_unexpected` repeats what it should still see."""
    return directory / f"{name}.log"


def echo_unexpected(log: Path, expected: tuple[str, ...] = NO_TOKEN_LINES) -> None:
    """Repeat on stderr the WARNING, ERROR and CRITICAL lines of ``log``, each with the
    lines that follow it up to the next log line (a traceback), but those naming one of
    ``expected``; and a traceback printed outside a log line, whole."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return
    echoing = False
    for line in text.splitlines():
        # A log line starts with its date (logs.py's text format); other lines belong to
        # the log line before them.
        starts_entry = line[:4].isdigit() or line.startswith("Traceback")
        if starts_entry:
            loud = line.startswith("Traceback") or any(
                level in line for level in (" WARNING ", " ERROR ", " CRITICAL ")
            )
            echoing = loud and not any(phrase in line for phrase in expected)
        if echoing:
            print(f"{log.name}: {line}", file=sys.stderr)


def start_emulator() -> tuple[subprocess.Popen[bytes], str]:
    """The Graph API emulator as a subprocess serving the bench pixel; its base URL.

    ``--no-store-events``: a benchmark sends millions of events and reads only counters.
    """
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "capirelay.emulator",
            "--port",
            str(port),
            "--pixel",
            f"{PIXEL}:{TOKEN}",
            "--no-store-events",
        ],
        stdout=subprocess.DEVNULL,
    )
    graph_url = f"http://{HOST}:{port}"
    wait_http(f"{graph_url}/_emulator/stats")
    return proc, graph_url


def serve_options(config: Path, port: int, log_level: str = "warning") -> list[str]:
    """The gateway's command-line options in the benches: their config, a port of their
    own, and no access lines unless asked for."""
    return ["--config", str(config), "--port", str(port), "--log-level", log_level]


def purchase_event(
    event_id: str, i: int, now: int, *, value: float = 10.5, fbp: bool = True
) -> dict[str, Any]:
    """The benches' purchase by the ``i``-th shopper, with the identifiers
    ``bench/wrk/events_single.lua`` sends (``fbp=False``: without the browser id)."""
    user_data = {
        "email": f"shopper{i}@example.com",
        "phone": f"+1 650 555 {i % 10000:04d}",
        "client_ip_address": f"203.0.{(i >> 8) % 256}.{i % 256}",
        "client_user_agent": "Mozilla/5.0 (bench)",
    }
    if fbp:
        user_data["fbp"] = f"fb.1.1700000000000.{i}"
    return {
        "event_name": "Purchase",
        "event_time": now,
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.bench.example/thanks",
        "user_data": user_data,
        "custom_data": {"value": value, "currency": "USD"},
    }


def events_requests(
    port: int, count: int, per_request: int, event: Callable[[int], dict[str, Any]]
) -> list[bytes]:
    """``count`` pre-encoded ``POST /v1/events`` requests of ``per_request`` events each;
    ``event(i)`` builds the i-th event of the run."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    out = []
    for r in range(count):
        data = [event(r * per_request + j) for j in range(per_request)]
        body = orjson.dumps({"pixel_id": PIXEL, "data": data})
        out.append(build_request(HOST, port, "POST", "/v1/events", body, headers))
    return out


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) + " |")
    sys.stdout.flush()
