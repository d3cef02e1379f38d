"""CPU per single-event ``POST /v1/events``, in process, without HTTP: what the app costs.

The gateway app is called as ASGI directly (no sockets, no uvicorn), 32 requests in
flight, against a real SQLite outbox (``synchronous=FULL``, group commit), each request
one unique Purchase event.  It prints CPU microseconds per request for the event-loop
thread and the writer thread (``psutil`` per-thread times), which stay meaningful on a
loaded machine where wall-clock rates do not; ``--profile`` prints the top of a
``cProfile`` of the event-loop thread instead.  Add the framework's own cost from
``bench/ingest_wrk.py``'s floor (1 / floor req/s) to get the whole request.

    .venv/bin/python bench/ingest_cpu.py [--requests 5000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
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

from capirelay.config import IngestKey, PixelSettings, Secret, Settings
from capirelay.server.app import create_app

PIXEL = "1234567890"
KEY = "bench-ingest-key"
CONCURRENCY = 32


def _body(run: str, i: int, now: int) -> bytes:
    return orjson.dumps(
        {
            "pixel_id": PIXEL,
            "data": [
                {
                    "event_name": "Purchase",
                    "event_time": now,
                    "event_id": f"{run}-{i}",
                    "action_source": "website",
                    "event_source_url": "https://shop.bench.example/thanks",
                    "user_data": {
                        "email": f"shopper{i}@example.com",
                        "phone": f"+1 650 555 {i % 10000:04d}",
                        "client_ip_address": f"203.0.{(i >> 8) % 256}.{i % 256}",
                        "client_user_agent": "Mozilla/5.0 (bench)",
                        "fbp": f"fb.1.1700000000000.{i}",
                    },
                    "custom_data": {"value": 10.5, "currency": "USD"},
                }
            ],
        }
    )


async def _request(app: Any, body: bytes) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/events",
        "raw_path": b"/v1/events",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {KEY}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
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


async def _run(app: Any, requests: int, profile: bool) -> None:
    run, now = uuid.uuid4().hex[:8], int(time.time())
    async with app.router.lifespan_context(app):
        for i in range(200):  # warm caches and the writer
            await _request(app, _body(run + "w", i, now))
        bodies = [_body(run, i, now) for i in range(requests)]
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(body: bytes) -> None:
            async with gate:
                await _request(app, body)

        profiler = cProfile.Profile() if profile else None
        before, started = _thread_cpu(), time.perf_counter()
        if profiler:
            profiler.enable()
        await asyncio.gather(*(one(body) for body in bodies))
        if profiler:
            profiler.disable()
        elapsed, after = time.perf_counter() - started, _thread_cpu()
        names = {t.native_id: t.name for t in threading.enumerate()}
        print(f"{requests:,} requests, {requests / elapsed:,.0f} req/s wall (in process)")
        for tid, cpu in after.items():
            spent = cpu - before.get(tid, 0.0)
            if spent > 0.005:
                print(f"  {names.get(tid, tid)}: {1e6 * spent / requests:.0f} µs CPU/request")
        if profiler:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="capirelay-cpu-") as tmp:
        settings = Settings(
            storage=f"sqlite:///{Path(tmp) / 'cpu.db'}",
            graph_url="http://127.0.0.1:9",
            pixels={PIXEL: PixelSettings(default_country="US")},
            ingest_keys={"bench": IngestKey(key=Secret(value=KEY))},
        )
        uvloop.run(_run(create_app(settings), args.requests, args.profile))


if __name__ == "__main__":
    main()
