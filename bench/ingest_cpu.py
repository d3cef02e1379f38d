"""CPU per single-event ``POST /v1/events`` (or ``/v1/collect``), in process, without HTTP.

The gateway app is called as ASGI directly (no sockets, no uvicorn), 32 requests in
flight, against a real SQLite outbox (``synchronous=FULL``, group commit), each request
one unique Purchase event.  It prints CPU microseconds per request for the event-loop
thread and the writer thread (``psutil`` per-thread times), which stay meaningful on a
loaded machine where wall-clock rates do not; ``--profile`` prints the top of a
``cProfile`` of the event-loop thread instead.  ``--route collect`` sends browser
beacons (text/plain, Chrome User-Agent, the shop's Origin, an ``_fbp`` cookie) as
``bench/wrk/collect.lua`` does.  Add the server's own cost from ``bench/ingest_wrk.py``'s
floor (1 / floor req/s) to get the whole request.

    .venv/bin/python bench/ingest_cpu.py [--requests 5000] [--route events|collect]
        [--batch 100] [--profile [--sort tottime] [--top 40]]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psutil
import uvloop

from _common import purchase_event
from capirelay.config import (
    IngestKey,
    PixelSettings,
    RateLimit,
    RateLimitSettings,
    Secret,
    Settings,
)
from capirelay.server.app import create_app

PIXEL = "1234567890"
KEY = "bench-ingest-key"
ORIGIN = "https://shop.bench.example"
CONCURRENCY = 32
CHROME = (
    b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/124.0 Safari/537.36"
)


def _beacon(run: str, i: int) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = orjson.dumps(
        {
            "pixel_id": PIXEL,
            "event_name": "AddToCart",
            "event_id": f"c{run}{i}",
            "page_url": f"https://shop.bench.example/p/{i}?fbclid=IwAR{i}",
            "custom_data": {"value": 5.0, "currency": "USD"},
        }
    )
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"text/plain;charset=UTF-8"),
        (b"origin", ORIGIN.encode()),
        (b"user-agent", CHROME),
        (b"referer", b"https://shop.bench.example/product"),
        (b"cookie", f"_fbp=fb.1.1700000000000.{i}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    return body, headers


def _event(run: str, i: int, now: int, batch: int) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = _body(run, i, now, batch)
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {KEY}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    return body, headers


def _body(run: str, i: int, now: int, batch: int) -> bytes:
    return orjson.dumps(
        {"pixel_id": PIXEL, "data": [_purchase(run, i * batch + j, now) for j in range(batch)]}
    )


def _purchase(run: str, i: int, now: int) -> dict[str, Any]:
    return purchase_event(f"{run}-{i}", i, now)


async def _request(app: Any, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 8080),
    }
    delivered = False
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:  # the app asks again only to watch for a disconnect
            await asyncio.Event().wait()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    if statuses != [202]:
        raise RuntimeError(f"unexpected answer {statuses}")


def _thread_cpu() -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}


async def _run(app: Any, args: argparse.Namespace) -> None:
    run, now = uuid.uuid4().hex[:8], int(time.time())
    path = f"/v1/{args.route}"

    def make(prefix: str, i: int) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        return _beacon(prefix, i) if args.route == "collect" else _event(prefix, i, now, args.batch)

    requests, profile = args.requests, args.profile
    async with app.router.lifespan_context(app):
        for i in range(200):  # warm caches and the writer
            await _request(app, path, *make(run + "w", i))
        bodies = [make(run, i) for i in range(requests)]
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(request: tuple[bytes, list[tuple[bytes, bytes]]]) -> None:
            async with gate:
                await _request(app, path, *request)

        profiler = cProfile.Profile() if profile else None
        before, started = _thread_cpu(), time.perf_counter()
        if args.mark:
            os.getppid()  # callgrind --dump-before=getppid: the measured part starts here
        if profiler:
            profiler.enable()
        await asyncio.gather(*(one(body) for body in bodies))
        if profiler:
            profiler.disable()
        if args.mark:
            os.getppid()  # ... and ends here
        elapsed, after = time.perf_counter() - started, _thread_cpu()
        names = {t.native_id: t.name for t in threading.enumerate()}
        print(f"{requests:,} requests, {requests / elapsed:,.0f} req/s wall (in process)")
        for tid, cpu in after.items():
            spent = cpu - before.get(tid, 0.0)
            if spent > 0.005:
                per = (
                    f" ({1e6 * spent / requests / args.batch:.1f} µs/event)"
                    if args.batch > 1
                    else ""
                )
                print(f"  {names.get(tid, tid)}: {1e6 * spent / requests:.0f} µs CPU/request{per}")
        if profiler:
            pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--route", choices=["events", "collect"], default="events")
    parser.add_argument("--batch", type=int, default=1, help="events per /v1/events request")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="cumulative", help="cProfile order (tottime, ...)")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--mark",
        action="store_true",
        help="call getppid() just before and after the measured requests, where "
        "bench/ingest_instructions.py has callgrind dump its counts",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="capirelay-cpu-") as tmp:
        settings = Settings(
            storage=f"sqlite:///{Path(tmp) / 'cpu.db'}",
            graph_url="http://127.0.0.1:9",
            pixels={PIXEL: PixelSettings(default_country="US", allowed_origins=[ORIGIN])},
            ingest_keys={"bench": IngestKey(key=Secret(value=KEY))},
            # One load address: the beacon limits are lifted, as bench/ingest_wrk.py does.
            rate_limits=RateLimitSettings(
                collect_per_address=RateLimit(rate=1e9, burst=1_000_000_000),
                collect_per_pixel=RateLimit(rate=1e9, burst=1_000_000_000),
            ),
        )
        app = create_app(settings)
        with _serving_collector():
            uvloop.run(_run(app, args))


def _serving_collector() -> contextlib.AbstractContextManager[None]:
    """The collector settings ``capirelay serve`` runs with (none before they existed, so
    an older tree on PYTHONPATH is measured as it served)."""
    try:
        from capirelay.server.collector import serving_collector
    except ImportError:
        return contextlib.nullcontext()
    return serving_collector()


if __name__ == "__main__":
    main()
