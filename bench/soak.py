"""Soak: the gateway at a steady rate for a long time; memory, latency and delivery over time.

The gateway runs as a child process (``python -m capirelay.server``) on SQLite (or
``--storage URL``), Meta is the emulator in this process (events counted, not stored),
and this script is an open-loop load generator: a batch of ``--batch`` events goes out
every ``batch / rate`` seconds whether or not earlier ones have been answered, so a
slow gateway shows as latency rather than as a lower offered rate.  Loopback only.

    .venv/bin/python bench/soak.py --minutes 30 --rate 500
    .venv/bin/python bench/soak.py --minutes 3 --rate 500 --sample-seconds 15 --json out.json

Every ``--sample-seconds`` a row: gateway RSS, ingest latency p50/p99 in that window,
requests refused, events accepted and delivered so far, queue depth.  At the end the
verdict (after ``--warmup`` seconds) looks at RSS growth over the last quarter of the run
(the SQLite page caches fill first; see ``verdict``) and at the p99 of the last quarter
against the first.  Exit status 1 when an event was lost, a request was refused, or memory
or latency grew past ``--max-rss-growth-mb`` / ``--max-p99-ratio``.  ``--rejudge FILE``
prints the verdict of an earlier ``--json`` report under the current rules.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from capirelay.emulator.testing import run_emulator

HOST = "127.0.0.1"
PIXEL = "1234567890"
TOKEN = "soak-access-token-not-real"
KEY = "soak-ingest-key-0123456789"


@dataclass
class Sample:
    at_seconds: float
    rss_mb: float
    p50_ms: float
    p99_ms: float
    requests: int
    refused: int
    accepted: int
    delivered: int
    queue_depth: int


@dataclass
class Window:
    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    refused: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def write_config(directory: Path, storage: str, graph_url: str) -> Path:
    config = directory / "capirelay.toml"
    config.write_text(
        f"""
storage = "{storage}"
graph_url = "{graph_url}"
[pixels.{PIXEL}]
access_token = {{ env = "SOAK_ACCESS_TOKEN" }}
default_country = "US"
[ingest_keys.soak]
key = {{ env = "SOAK_INGEST_KEY" }}
[delivery]
batch_size = 1000
linger_ms = 50
max_in_flight = 4
""",
        encoding="utf-8",
    )
    return config


def start_gateway(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPIRELAY_")}
    env.update(SOAK_ACCESS_TOKEN=TOKEN, SOAK_INGEST_KEY=KEY)
    command = [sys.executable, "-m", "capirelay.server", "--config", str(config)]
    command += ["--host", HOST, "--port", str(port), "--log-level", "warning"]
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://{HOST}:{port}/readyz", timeout=0.5).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the gateway did not start; see {log}")


def batch_body(batch: int, now: int) -> bytes:
    prefix = uuid.uuid4().hex[:12]
    events = [
        {
            "event_name": "Purchase",
            "event_time": now,
            "event_id": f"{prefix}-{i}",
            "action_source": "website",
            "event_source_url": "https://shop.example/checkout",
            "user_data": {
                "email": f"soak.{prefix}.{i}@example.com",
                "phone": "+1 650 555 0100",
                "client_ip_address": "203.0.113.5",
                "client_user_agent": "Mozilla/5.0 (soak)",
            },
            "custom_data": {"value": 12.5, "currency": "USD"},
        }
        for i in range(batch)
    ]
    return json.dumps({"pixel_id": PIXEL, "data": events}).encode()


def queue_depth(base_url: str) -> int:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("capirelay_queue_depth{")
        )
    )


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


async def post(
    client: httpx.AsyncClient, body: bytes, window: Window, counts: dict[str, int]
) -> None:
    started = time.perf_counter()
    try:
        answer = await client.post("/v1/events", content=body)
        ok = answer.status_code == 202
        if ok:
            counts["accepted"] += sum(r["status"] == "queued" for r in answer.json()["results"])
    except httpx.HTTPError:
        ok = False
    window.latencies.append(time.perf_counter() - started)
    window.requests += 1
    window.refused += not ok


async def run_load(
    args: argparse.Namespace, base_url: str, process: psutil.Process, emulator: Any
) -> tuple[list[Sample], int]:
    """The samples, and the events accepted in all (answers after the last sample too)."""
    interval = args.batch / args.rate
    total_seconds = args.minutes * 60
    samples: list[Sample] = []
    counts = {"accepted": 0}
    window = Window()
    tasks: set[asyncio.Task[None]] = set()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=30, limits=limits
    ) as client:
        start = time.monotonic()
        next_sample = start + args.sample_seconds
        tick = 0
        while (now := time.monotonic()) < start + total_seconds:
            due = start + tick * interval
            if now < due:
                await asyncio.sleep(due - now)
            task = asyncio.create_task(
                post(client, batch_body(args.batch, int(time.time())), window, counts)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            tick += 1
            if time.monotonic() >= next_sample:
                samples.append(
                    await take_sample(start, window, counts, process, emulator, base_url)
                )
                print_row(samples[-1])
                window = Window()
                next_sample += args.sample_seconds
        await asyncio.gather(*tasks)
    return samples, counts["accepted"]


async def take_sample(
    start: float,
    window: Window,
    counts: dict[str, int],
    process: psutil.Process,
    emulator: Any,
    base_url: str,
) -> Sample:
    depth = await asyncio.to_thread(queue_depth, base_url)
    return Sample(
        at_seconds=round(time.monotonic() - start, 1),
        rss_mb=round(process.memory_info().rss / 1e6, 1),
        p50_ms=round(percentile(window.latencies, 50), 2),
        p99_ms=round(percentile(window.latencies, 99), 2),
        requests=window.requests,
        refused=window.refused,
        accepted=counts["accepted"],
        delivered=int(emulator.state.stats()["events_accepted"]),
        queue_depth=depth,
    )


HEADER = (
    f"{'t (s)':>8} {'RSS MB':>8} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} {'refused':>8} "
    f"{'accepted':>10} {'delivered':>10} {'queued':>7}"
)


def print_row(s: Sample) -> None:
    print(
        f"{s.at_seconds:>8.0f} {s.rss_mb:>8.1f} {s.p50_ms:>8.2f} {s.p99_ms:>8.2f} {s.requests:>9} "
        f"{s.refused:>8} {s.accepted:>10} {s.delivered:>10} {s.queue_depth:>7}",
        flush=True,
    )


def verdict(
    args: argparse.Namespace, samples: list[Sample], accepted: int, delivered: int
) -> dict[str, Any]:
    """Flat = nothing lost or refused, RSS steady over the last quarter, p99 not drifting up.

    RSS is judged on the last quarter of the run, not first-to-last: the outbox's SQLite
    page caches (64 MiB per connection) legitimately fill with the 48 h dedup window's
    working set first, and a leak is what keeps growing once they are full.  The total
    growth is reported beside it.
    """
    steady = [s for s in samples if s.at_seconds > args.warmup] or samples
    quarter = max(1, len(steady) // 4)
    first, last = steady[0], steady[-1]
    last_quarter = steady[-quarter - 1 :] if len(steady) > quarter else steady
    first_p99 = statistics.median(s.p99_ms for s in steady[:quarter])
    last_p99 = statistics.median(s.p99_ms for s in steady[-quarter:])
    refused = sum(s.refused for s in samples)
    summary = {
        "minutes": args.minutes,
        "rate": args.rate,
        "accepted": accepted,
        "delivered": delivered,
        "lost": accepted - delivered,
        "refused": refused,
        "rss_first_mb": first.rss_mb,
        "rss_last_mb": last.rss_mb,
        "rss_peak_mb": max(s.rss_mb for s in samples),
        "rss_growth_mb": round(last.rss_mb - first.rss_mb, 1),
        "rss_growth_last_quarter_mb": round(last.rss_mb - last_quarter[0].rss_mb, 1),
        "p99_first_quarter_ms": first_p99,
        "p99_last_quarter_ms": last_p99,
        "p99_ratio": round(last_p99 / first_p99, 2) if first_p99 else float("nan"),
    }
    summary["flat"] = (
        summary["lost"] == 0
        and refused == 0
        and summary["rss_growth_last_quarter_mb"] <= args.max_rss_growth_mb
        and summary["p99_ratio"] <= args.max_p99_ratio
    )
    return summary


def rejudge(args: argparse.Namespace) -> int:
    report = json.loads(args.rejudge.read_text())
    samples = [Sample(**sample) for sample in report["samples"]]
    old = report["verdict"]
    args.minutes, args.rate = old["minutes"], old["rate"]
    summary = verdict(args, samples, old["accepted"], old["delivered"])
    print(json.dumps(summary, indent=2))
    return 0 if summary["flat"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=500.0, help="events per second offered")
    parser.add_argument("--batch", type=int, default=10, help="events per request")
    parser.add_argument("--sample-seconds", type=float, default=60.0)
    parser.add_argument(
        "--warmup", type=float, default=30.0, help="seconds left out of the verdict"
    )
    parser.add_argument("--storage", help="storage URL (default: SQLite in a temp dir)")
    parser.add_argument(
        "--max-rss-growth-mb", type=float, default=5.0, help="over the last quarter of the run"
    )
    parser.add_argument("--max-p99-ratio", type=float, default=2.0)
    parser.add_argument("--json", type=Path, help="write samples and verdict here")
    parser.add_argument("--rejudge", type=Path, help="judge an earlier --json report; no run")
    args = parser.parse_args()
    if args.rejudge:
        return rejudge(args)

    with (
        tempfile.TemporaryDirectory(prefix="capirelay-soak-") as tmp,
        run_emulator(pixels={PIXEL: TOKEN}, store_events=False) as emulator,
    ):
        directory = Path(tmp)
        storage = args.storage or f"sqlite:///{directory / 'soak.db'}"
        port = free_port()
        gateway = start_gateway(
            write_config(directory, storage, emulator.url), port, directory / "gateway.log"
        )
        base_url = f"http://{HOST}:{port}"
        try:
            backend = storage.split(":")[0]
            print(
                f"soak: {args.rate:g} events/s in batches of {args.batch} "
                f"for {args.minutes:g} min, {backend}"
            )
            print(HEADER)
            samples, accepted = asyncio.run(
                run_load(args, base_url, psutil.Process(gateway.pid), emulator)
            )
            drain_deadline = time.monotonic() + 60
            while (
                emulator.state.stats()["events_accepted"] < accepted
                and time.monotonic() < drain_deadline
            ):
                time.sleep(0.2)
            delivered = int(emulator.state.stats()["events_accepted"])
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(30)
    summary = verdict(args, samples, accepted, delivered)
    word = "FLAT" if summary["flat"] else "NOT FLAT"
    print(
        f"\nverdict: {word} - accepted {accepted}, delivered {delivered}, "
        f"lost {summary['lost']}, refused {summary['refused']}; "
        f"RSS {summary['rss_first_mb']} -> {summary['rss_last_mb']} MB "
        f"(peak {summary['rss_peak_mb']}, last quarter "
        f"{summary['rss_growth_last_quarter_mb']:+} MB); "
        f"p99 {summary['p99_first_quarter_ms']} -> {summary['p99_last_quarter_ms']} ms"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"samples": [asdict(s) for s in samples], "verdict": summary}, indent=2)
        )
    return 0 if summary["flat"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
