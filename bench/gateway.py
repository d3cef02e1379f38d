"""Gateway benchmark: ingest, delivery drain, backlog memory, and the naive design, in one run.

Everything runs on loopback: the Graph API emulator and the gateway are
separate processes (as in production), this script is the load generator.

    .venv/bin/python bench/gateway.py            # full run (1,000,000-event backlog)
    .venv/bin/python bench/gateway.py --quick    # smaller counts, same shape

Phases
1. ingest: single-event ``POST /v1/events`` and ``POST /v1/collect``, then
   batched ``/v1/events`` (100 events a request).  The gateway has no access
   token for this phase, so delivery holds the events queued and the figure is
   ingest alone, with durable (synchronous=FULL) SQLite commits.
2. drain: the gateway restarts with its token and delivers the whole backlog
   to the emulator; events/s from first to last accepted event.
3. backlog memory: 1,000,000 events queued, the gateway started on it; peak
   RSS while idle and while draining.
4. naive design: a route that calls Meta inline per request through the
   official SDK (``facebook-business``), against the same emulator with
   200 ms latency, versus capirelay's ingest, both seen from the shop; then
   Meta down (HTTP 500) for a burst of events: events lost by each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    HOST,
    KEY,
    PIXEL,
    TOKEN,
    echo_unexpected,
    free_port,
    gateway_log,
    print_table,
    purchase_event,
    serve_options,
    start_emulator,
    stop_process,
    wait_http,
)
from _common import events_requests as _events_requests
from _loadgen import LoadResult, build_request, run_load

ORIGIN = "http://shop.bench.example"
PYTHON = sys.executable


def raw_event(i: int, now: int) -> dict[str, Any]:
    return purchase_event(f"bench-{i}-{uuid.uuid4().hex[:8]}", i, now, value=10.0 + i % 90)


class Gateway:
    """The gateway as a subprocess: ``python -m capirelay.server --config ...``."""

    def __init__(self, config: Path, port: int, *, with_token: bool) -> None:
        env = dict(os.environ)
        env["BENCH_INGEST_KEY"] = KEY
        env.pop("BENCH_ACCESS_TOKEN", None)
        if with_token:
            env["BENCH_ACCESS_TOKEN"] = TOKEN
        self.port = port
        # Without a token (events kept queued) its log says so by design; the rest of
        # what it logs is repeated by stop().
        self.log = None if with_token else gateway_log(config.parent, f"gateway-{port}")
        errors = self.log.open("ab") if self.log is not None else None
        self.proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "capirelay.server",
                *serve_options(config, port),
            ],
            env=env,
            stderr=errors,
        )
        if errors is not None:
            errors.close()
        wait_http(f"http://{HOST}:{port}/healthz")
        self.ps = psutil.Process(self.proc.pid)

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 1e6

    def stop(self) -> None:
        stop_process(self.proc)
        if self.log is not None:
            echo_unexpected(self.log)


def write_config(tmp: Path, graph_url: str) -> Path:
    config = tmp / "capirelay.toml"
    config.write_text(
        f"""
storage = "sqlite:///{tmp / "bench.db"}"
graph_url = "{graph_url}"
[pixels.{PIXEL}]
access_token = {{ env = "BENCH_ACCESS_TOKEN" }}
allowed_origins = ["{ORIGIN}"]
default_country = "US"
[ingest_keys.bench]
key = {{ env = "BENCH_INGEST_KEY" }}
# The load generator is one address sending thousands of beacons a second: far over the
# default per-address and per-pixel limits, which this benchmark does not measure.
[rate_limits]
collect_per_address = {{ rate = 1_000_000, burst = 1_000_000 }}
collect_per_pixel = {{ rate = 1_000_000, burst = 1_000_000 }}
[delivery]
batch_size = 1000
linger_ms = 20
max_in_flight = 4
"""
    )
    return config


def emulator_stats(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/_emulator/stats", timeout=5).json()


def accepted(url: str) -> int:
    stats = emulator_stats(url)
    return int(stats.get("events_accepted", stats.get("events_received", 0)))


def set_fault(url: str, spec: dict[str, Any] | None) -> None:
    httpx.delete(f"{url}/_emulator/faults", timeout=5)
    if spec:
        httpx.post(f"{url}/_emulator/faults", json=spec, timeout=5).raise_for_status()


def events_requests(n: int, per_request: int, port: int) -> list[bytes]:
    now = int(time.time())
    return _events_requests(port, n, per_request, lambda i: raw_event(i, now))


def collect_requests(n: int, port: int) -> list[bytes]:
    headers = {
        "Content-Type": "text/plain;charset=UTF-8",
        "Origin": ORIGIN,
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) bench",
        "Referer": "https://shop.bench.example/product",
    }
    out = []
    for i in range(n):
        body = orjson.dumps(
            {
                "pixel_id": PIXEL,
                "event_name": "AddToCart",
                "event_id": f"c-{i}-{uuid.uuid4().hex[:6]}",
                "page_url": f"https://shop.bench.example/p/{i}?fbclid=IwAR{i}",
                "custom_data": {"value": 5.0, "currency": "USD"},
            }
        )
        h = dict(headers, Cookie=f"_fbp=fb.1.1700000000000.{i}")
        out.append(build_request(HOST, port, "POST", "/v1/collect", body, h))
    return out


def load(port: int, requests: list[bytes], connections: int) -> LoadResult:
    return asyncio.run(
        run_load(
            HOST,
            port,
            lambda i: requests[i],
            total=len(requests),
            connections=connections,
            max_seconds=120,
        )
    )


def row(name: str, result: LoadResult, per_request: int = 1, goal: str = "") -> list[str]:
    ok = result.statuses.get(202, 0) + result.statuses.get(200, 0)
    return [
        name,
        f"{result.rate:,.0f}",
        f"{result.rate * per_request:,.0f}",
        f"{result.percentile(50) * 1000:.1f}",
        f"{result.percentile(99) * 1000:.1f}",
        f"{ok}/{result.requests}",
        goal,
    ]


def wait_accepted(url: str, target: int, timeout: float) -> tuple[int, float]:
    start = time.perf_counter()
    seen = accepted(url)
    while seen < target and time.perf_counter() - start < timeout:
        time.sleep(0.1)
        seen = accepted(url)
    return seen, time.perf_counter() - start


def fill_backlog(db_url: str, count: int) -> float:
    """Queue ``count`` wire-ready events straight into the outbox (no HTTP)."""
    from capirelay.outbox import NewEvent, open_outbox

    async def go() -> float:
        outbox = open_outbox(db_url)
        await outbox.open()
        now = time.time()
        template = {
            "event_name": "Purchase",
            "event_time": int(now),
            "action_source": "website",
            "event_source_url": "https://shop.bench.example/thanks",
            "user_data": {
                "em": ["0" * 64],
                "client_user_agent": "Mozilla/5.0",
                "client_ip_address": "203.0.113.9",
            },
            "custom_data": {"value": 10.0, "currency": "usd"},
        }
        started = time.perf_counter()
        for base in range(0, count, 1000):
            batch = []
            for i in range(base, min(count, base + 1000)):
                payload = dict(template, event_id=f"backlog-{i}")
                batch.append(
                    NewEvent(
                        PIXEL,
                        "Purchase",
                        f"backlog-{i}",
                        orjson.dumps(payload),
                        int(now),
                        now + 7 * 86400,
                    )
                )
            await outbox.enqueue(batch, now=now)
        elapsed = time.perf_counter() - started
        await outbox.close()
        return elapsed

    return asyncio.run(go())


def sample_rss(gw: Gateway, until: Any, seconds: float) -> float:
    peak = gw.rss_mb()
    end = time.monotonic() + seconds
    while time.monotonic() < end and not until():
        peak = max(peak, gw.rss_mb())
        time.sleep(0.2)
    return max(peak, gw.rss_mb())


NAIVE_APP = """
import os, time
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from facebook_business.api import FacebookAdsApi
from facebook_business.adobjects.serverside.event import Event
from facebook_business.adobjects.serverside.event_request import EventRequest
from facebook_business.adobjects.serverside.user_data import UserData
from facebook_business.adobjects.serverside.custom_data import CustomData
from facebook_business.adobjects.serverside.action_source import ActionSource

api = FacebookAdsApi.init(access_token=os.environ["NAIVE_TOKEN"], crash_log=False)
api._session.GRAPH = os.environ["NAIVE_GRAPH"]

def track(request):
    # The route users build by hand: call Meta inline, per request.
    event = Event(event_name="Purchase", event_time=int(time.time()),
                  event_source_url="https://shop.bench.example/thanks",
                  action_source=ActionSource.WEBSITE,
                  user_data=UserData(email="shopper@example.com", client_user_agent="Mozilla/5.0",
                                     client_ip_address="203.0.113.9"),
                  custom_data=CustomData(value=10.0, currency="usd"))
    try:
        EventRequest(events=[event], pixel_id=os.environ["NAIVE_PIXEL"]).execute()
    except Exception:
        return JSONResponse({"sent": False}, status_code=502)   # the event is gone
    return JSONResponse({"sent": True})

app = Starlette(routes=[Route("/track", track, methods=["POST"])])
"""


def naive_server(tmp: Path, graph_url: str) -> tuple[subprocess.Popen[bytes], int]:
    (tmp / "naive_app.py").write_text(NAIVE_APP)
    port = free_port()
    env = dict(
        os.environ, NAIVE_TOKEN=TOKEN, NAIVE_GRAPH=graph_url, NAIVE_PIXEL=PIXEL, PYTHONPATH=str(tmp)
    )
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "uvicorn",
            "naive_app:app",
            "--host",
            HOST,
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
    )
    wait_http(f"http://{HOST}:{port}/")
    return proc, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--backlog", type=int, default=None, help="events for the memory phase")
    args = parser.parse_args()
    single_n = 4000 if args.quick else 20000
    batch_n = 200 if args.quick else 1000
    backlog_n = args.backlog or (100_000 if args.quick else 1_000_000)
    naive_n = 300 if args.quick else 1000

    tmp = Path(tempfile.mkdtemp(prefix="capirelay-bench-"))
    emulator, graph_url = start_emulator()
    config = write_config(tmp, graph_url)
    print(f"# capirelay gateway benchmark ({os.cpu_count()} cores, {time.strftime('%Y-%m-%d')})")
    try:
        # 1. ingest alone (no token: delivery holds everything queued)
        port = free_port()
        gw = Gateway(config, port, with_token=False)
        ev1 = events_requests(single_n, 1, port)
        col = collect_requests(single_n, port)
        ev100 = events_requests(batch_n, 100, port)
        load(port, ev1[:200], 16)  # warm-up
        rows = [
            row(
                "POST /v1/events, 1 event/request",
                load(port, ev1[200:], 32),
                1,
                ">= 2,000 req/s, p99 < 50 ms",
            ),
            row(
                "POST /v1/collect, 1 event/request",
                load(port, col, 32),
                1,
                ">= 2,000 req/s, p99 < 50 ms",
            ),
            row(
                "POST /v1/events, 100 events/request",
                load(port, ev100, 8),
                100,
                ">= 20,000 events/s",
            ),
        ]
        print_table(
            "Ingest (durable SQLite commits, delivery paused)",
            ["scenario", "req/s", "events/s", "p50 ms", "p99 ms", "2xx", "goal"],
            rows,
        )
        queued = (single_n - 200) + single_n + batch_n * 100 + 200
        gw.stop()

        # 2. drain the backlog to the emulator
        before = accepted(graph_url)
        gw = Gateway(config, port, with_token=True)
        seen, seconds = wait_accepted(graph_url, before + queued, timeout=300)
        drained = seen - before
        gw.stop()
        print_table(
            "Delivery drain to the emulator (1,000-event batches, 4 in flight)",
            ["events queued", "events delivered", "seconds", "events/s", "goal"],
            [
                [
                    f"{queued:,}",
                    f"{drained:,}",
                    f"{seconds:.1f}",
                    f"{drained / seconds:,.0f}",
                    ">= 20,000 events/s",
                ]
            ],
        )

        # 3. backlog memory
        fill_s = fill_backlog(f"sqlite:///{tmp / 'bench.db'}", backlog_n)
        gw = Gateway(config, port, with_token=False)
        idle_peak = sample_rss(gw, lambda: False, 5.0)
        gw.stop()
        before = accepted(graph_url)
        gw = Gateway(config, port, with_token=True)
        t0 = time.perf_counter()
        drain_peak = sample_rss(gw, lambda: accepted(graph_url) >= before + backlog_n, 600)
        drain_s = time.perf_counter() - t0
        drained = accepted(graph_url) - before
        gw.stop()
        print_table(
            f"Backlog of {backlog_n:,} queued events",
            ["phase", "peak RSS MB", "events", "seconds", "events/s", "goal"],
            [
                [
                    "filling the outbox directly",
                    "-",
                    f"{backlog_n:,}",
                    f"{fill_s:.1f}",
                    f"{backlog_n / fill_s:,.0f}",
                    "",
                ],
                ["gateway idle on the backlog", f"{idle_peak:.0f}", "-", "5.0", "-", "< 250 MB"],
                [
                    "gateway draining it",
                    f"{drain_peak:.0f}",
                    f"{drained:,}",
                    f"{drain_s:.1f}",
                    f"{drained / drain_s:,.0f}",
                    "< 250 MB",
                ],
            ],
        )

        # 4. the naive design vs capirelay, Meta with 200 ms latency, then Meta down
        naive, naive_port = naive_server(tmp, graph_url)
        gw = Gateway(config, port, with_token=True)
        try:
            set_fault(graph_url, {"kind": "latency", "latency_ms": 200})
            naive_req = build_request(HOST, naive_port, "POST", "/track", b"{}", {})
            naive_slow = load(naive_port, [naive_req] * naive_n, 32)
            ours = events_requests(naive_n, 1, port)
            ours_slow = load(port, ours, 32)
            set_fault(graph_url, {"kind": "http_error", "status": 500})
            naive_down = load(naive_port, [naive_req] * naive_n, 32)
            before = accepted(graph_url)
            ours_down = load(port, events_requests(naive_n, 1, port), 32)
            time.sleep(2.0)
            set_fault(graph_url, None)
            seen, _ = wait_accepted(graph_url, before + naive_n, timeout=120)
            naive_lost = naive_down.requests - naive_down.statuses.get(200, 0)
            ours_lost = ours_down.statuses.get(202, 0) - (seen - before)
            print_table(
                "Naive inline SDK route vs capirelay (Meta answering in 200 ms, then down)",
                [
                    "design",
                    "shop req/s",
                    "shop p50 ms",
                    "shop p99 ms",
                    "events lost while Meta down",
                ],
                [
                    [
                        "inline facebook-business call",
                        f"{naive_slow.rate:,.0f}",
                        f"{naive_slow.percentile(50) * 1000:.0f}",
                        f"{naive_slow.percentile(99) * 1000:.0f}",
                        f"{naive_lost}/{naive_n}",
                    ],
                    [
                        "capirelay /v1/events",
                        f"{ours_slow.rate:,.0f}",
                        f"{ours_slow.percentile(50) * 1000:.1f}",
                        f"{ours_slow.percentile(99) * 1000:.1f}",
                        f"{max(ours_lost, 0)}/{naive_n}",
                    ],
                ],
            )
        finally:
            set_fault(graph_url, None)
            gw.stop()
            naive.terminate()
            naive.wait()
    finally:
        emulator.terminate()
        emulator.wait()


if __name__ == "__main__":
    main()
