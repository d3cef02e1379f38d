"""What the reliability and security suites share: a gateway child process, a Graph API
recorder, events carrying known identifiers, and readers for the gateway's metrics.

The gateway runs as ``python -m capirelay.server --config ...`` (the way an
operator runs it) so a test can SIGKILL it, read everything it printed, and
look at every file it wrote.  The emulator runs in the test process, behind
:class:`RecordingGraph`, an ASGI wrapper that notes which event ids each
request to Meta carried and when: that is how the suites measure attempts,
retry intervals and sends past a deadline without trusting the gateway's own
account of them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capirelay.emulator.app import create_app as create_emulator_app
from capirelay.emulator.state import EmulatorState
from gateway_traffic import kill_process, stop_process, wait_ready
from server.conftest import serve_in_thread

PIXEL_ID = "1234567890"
ACCESS_TOKEN = "EAAGreliabilityTokenNotReal0123456789"
INGEST_KEY = "ingest-key-reliability-0123456789"
ADMIN_TOKEN = "admin-token-reliability-0123456789"
SHOPIFY_SECRET = "shpss_reliability_secret_0123"
STRIPE_SECRET = "whsec_reliability_secret_4567"
SECRET_ENV = {
    "RELIABILITY_ACCESS_TOKEN": ACCESS_TOKEN,
    "RELIABILITY_INGEST_KEY": INGEST_KEY,
    "RELIABILITY_ADMIN_TOKEN": ADMIN_TOKEN,
    "RELIABILITY_SHOPIFY_SECRET": SHOPIFY_SECRET,
    "RELIABILITY_STRIPE_SECRET": STRIPE_SECRET,
}
SECRETS = tuple(SECRET_ENV.values())
STARTUP_TIMEOUT = 20.0

# Identifiers a test sends raw and then looks for in everything the gateway wrote.  Each is
# distinctive enough that it cannot turn up by chance inside a hash, a timestamp or an id.
KNOWN_IDENTIFIERS = {
    "email": "Zelda.Quixote-PII@Example.org",
    "phone": "+44 20 7946 0958",
    "first_name": "Zeldaquix",
    "last_name": "Pinnockworth",
    "city": "Xyzzyville",
    "zip_code": "SW1A 2AA",
    "external_id": "cust-PII-7731-xq",
}
# The forms a careless pipeline would store: as given, normalized, and the phone's digits.
KNOWN_RAW_FORMS = (
    *KNOWN_IDENTIFIERS.values(),
    *(value.lower() for value in KNOWN_IDENTIFIERS.values()),
    "442079460958",
    "2079460958",
    "sw1a2aa",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def purchase(event_id: str, *, event_time: int | None = None, pii: bool = False) -> dict[str, Any]:
    """A valid website Purchase; ``pii`` adds every :data:`KNOWN_IDENTIFIERS` value, raw."""
    user_data: dict[str, Any] = {
        "email": f"{event_id}@example.com",
        "client_ip_address": "203.0.113.9",
        "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64) reliability",
    }
    if pii:
        user_data.update(KNOWN_IDENTIFIERS, country="GB")
    return {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 2 if event_time is None else event_time,
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout",
        "user_data": user_data,
        "custom_data": {"value": 19.5, "currency": "EUR"},
    }


def metric_values(metrics_text: str, name: str) -> dict[str, float]:
    """``{label-string: value}`` for every sample of ``name`` in a Prometheus text page."""
    values: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            sample, _, value = line.rpartition(" ")
            values[sample[len(name) :]] = float(value)
    return values


def metric_total(base_url: str, name: str) -> float:
    return sum(metric_values(httpx.get(f"{base_url}/metrics", timeout=10).text, name).values())


def queue_depth(base_url: str) -> float:
    return metric_total(base_url, "capirelay_queue_depth")


def dlq_size(base_url: str) -> dict[str, float]:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    sizes = metric_values(text, "capirelay_dlq_size")
    return {labels.split('"')[1]: value for labels, value in sizes.items() if value}


# ---------------------------------------------------------------------------
# Meta, recorded


@dataclass(frozen=True, slots=True)
class GraphRequest:
    """One request the gateway made to the Graph API: when, what it carried, the answer."""

    at: float  # time.time() when the request arrived
    event_ids: tuple[str, ...]
    status: int


@dataclass
class RecordingGraph:
    """ASGI wrapper around the emulator app that records every ``.../events`` request."""

    app: ASGIApp
    requests: list[GraphRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/events"):
            await self.app(scope, receive, send)
            return
        arrived = time.time()
        body = bytearray()
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status = 0
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # the disconnect, whenever it comes
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, replay, watch)
        finally:
            self._record(arrived, bytes(body), status)

    def _record(self, arrived: float, body: bytes, status: int) -> None:
        try:
            data = orjson.loads(body).get("data", [])
            if isinstance(data, str):
                data = orjson.loads(data)
            ids = tuple(str(event.get("event_id")) for event in data)
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            ids = ()
        with self._lock:
            self.requests.append(GraphRequest(arrived, ids, status))

    def attempts(self) -> dict[str, list[GraphRequest]]:
        """Every request that carried each event id, in arrival order."""
        with self._lock:
            recorded = list(self.requests)
        by_event: dict[str, list[GraphRequest]] = {}
        for request in recorded:
            for event_id in request.event_ids:
                by_event.setdefault(event_id, []).append(request)
        return by_event

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()


@dataclass
class RecordedEmulator:
    url: str
    state: EmulatorState
    graph: RecordingGraph

    def accepted_ids(self) -> set[str]:
        return {stored["event"]["event_id"] for stored in self.state.events(PIXEL_ID)}


@contextmanager
def recorded_emulator(pixels: dict[str, str] | None = None) -> Iterator[RecordedEmulator]:
    """The emulator on a loopback port, every events request recorded."""
    state = EmulatorState(pixels=pixels or {PIXEL_ID: ACCESS_TOKEN}, fault_seed=7)
    graph = RecordingGraph(create_emulator_app(state))
    with serve_in_thread(graph) as url:
        yield RecordedEmulator(url, state, graph)


# ---------------------------------------------------------------------------
# The gateway as a child process


def write_config(directory: Path, *, storage: str, graph_url: str, extra: str = "") -> Path:
    """A ``capirelay.toml`` with one pixel, one ingest key and fast delivery timings."""
    config = directory / "capirelay.toml"
    config.write_text(
        f"""
storage = "{storage}"
graph_url = "{graph_url}"

[pixels.{PIXEL_ID}]
access_token = {{ env = "RELIABILITY_ACCESS_TOKEN" }}
default_country = "GB"
allowed_origins = ["https://shop.example"]

[ingest_keys.backend]
key = {{ env = "RELIABILITY_INGEST_KEY" }}

[delivery]
batch_size = 200
max_in_flight = 4
linger_ms = 20
lease_seconds = 2
poll_seconds = 0.1
backoff_base = 0.2
backoff_max = 2.0
request_timeout = 1.0
breaker_probe_seconds = 0.5
{extra}
""",
        encoding="utf-8",
    )
    return config


class GatewayProcess:
    """``python -m capirelay.server`` on a fixed loopback port; stdout and stderr to a file."""

    def __init__(
        self, config: Path, log_path: Path, *, port: int | None = None, log_level: str = "info"
    ) -> None:
        self.config, self.log_path, self.log_level = config, log_path, log_level
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_ready: bool = True) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPIRELAY_")}
        env.update(SECRET_ENV)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "capirelay.server",
                    "--config",
                    str(self.config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    self.log_level,
                ],
                cwd=self.config.parent,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait_ready:
            self.wait_ready()

    def wait_ready(self) -> None:
        assert self.process is not None
        wait_ready(self.process, self.url, self.log_path, "gateway", STARTUP_TIMEOUT)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        assert self.process is not None
        kill_process(self.process)

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL if it hangs); the exit code, None if never started."""
        return stop_process(self.process)
