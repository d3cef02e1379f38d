"""Beacon flood: what the rate limits let through, and the gateway's memory, on loopback.

A bounded run against a gateway subprocess with the *default* limits (the ones
a shop gets without configuring anything), behind a trusted proxy (this
script, on 127.0.0.1) so each request can carry its own client address:

1. one address sends ``--single`` beacons as fast as it can;
2. ``--spread`` beacons from as many distinct addresses (more than the
   ``max_tracked_addresses`` buckets kept), the distributed flood the
   per-pixel limit is for, then as many again from new addresses: memory
   must stay flat once the bucket table is full;
3. one honest beacon from a fresh address after each flood.

Printed: requests, 202s, 429s, events queued (from /metrics), gateway RSS
before and after each phase.  The gateway holds no access token, so events
stay queued and nothing leaves the machine.

    .venv/bin/python bench/flood.py                 # 20,000 + 2 x 120,000 requests
    .venv/bin/python bench/flood.py --single 2000 --spread 10000   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HOST, PIXEL, free_port, print_table, stop_process, wait_http
from _loadgen import LoadResult, build_request, run_load

HEADERS = {
    "Content-Type": "text/plain;charset=UTF-8",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) flood",
}


def write_config(tmp: Path, pixel_limit: str | None) -> Path:
    config = tmp / "capirelay.toml"
    limits = f"[rate_limits]\ncollect_per_pixel = {pixel_limit}\n" if pixel_limit else ""
    config.write_text(
        f"""
storage = "sqlite:///{tmp / "flood.db"}"
graph_url = "http://127.0.0.1:9"
trusted_proxies = ["127.0.0.1"]
{limits}
[pixels.{PIXEL}]
default_country = "US"
""",
        encoding="utf-8",
    )
    return config


def beacon(port: int, i: int, address: str) -> bytes:
    body = orjson.dumps(
        {
            "pixel_id": PIXEL,
            "event_name": "AddToCart",
            "event_id": f"flood-{address}-{i}",
            "page_url": "https://shop.example/p",
            "custom_data": {"value": 5, "currency": "USD"},
        }
    )
    headers = {**HEADERS, "X-Forwarded-For": address}
    return build_request(HOST, port, "POST", "/v1/collect", body, headers)


def spread_address(i: int) -> str:
    return f"100.{64 + (i >> 16) % 64}.{(i >> 8) % 256}.{i % 256}"


def queued(port: int) -> int:
    text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("capirelay_events_accepted_total{") and 'source="collect"' in line:
            total += float(line.rpartition(" ")[2])
    return int(total)


def honest(port: int, address: str) -> int:
    body = {"pixel_id": PIXEL, "event_name": "PageView", "event_id": f"honest-{time.time_ns()}"}
    answer = httpx.post(
        f"http://{HOST}:{port}/v1/collect",
        json=body,
        headers={**HEADERS, "X-Forwarded-For": address},
        timeout=5,
    )
    return answer.status_code


def load(port: int, total: int, make: object) -> LoadResult:
    return asyncio.run(
        run_load(HOST, port, make, total=total, connections=8, max_seconds=300)  # type: ignore[arg-type]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=20_000)
    parser.add_argument("--spread", type=int, default=120_000)
    parser.add_argument(
        "--pixel-limit",
        help='e.g. "{ rate = 1, burst = 1 }": refuse (nearly) everything at the pixel, so '
        "the RSS figures show the address buckets alone, without queued events",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPIRELAY_")}
        command = [
            sys.executable,
            "-m",
            "capirelay.server",
            "--config",
            str(write_config(tmp, args.pixel_limit)),
        ]
        command += ["--port", str(port), "--log-level", "warning"]
        proc = subprocess.Popen(command, env=env)
        try:
            wait_http(f"http://{HOST}:{port}/healthz")
            gateway = psutil.Process(proc.pid)
            rows = []
            phases = (
                ("one address", args.single, lambda i: beacon(port, i, "203.0.113.7")),
                (
                    "distinct addresses",
                    args.spread,
                    lambda i: beacon(port, i, spread_address(i)),
                ),
                (
                    "as many new addresses",
                    args.spread,
                    lambda i: beacon(port, i, spread_address(i + args.spread)),
                ),
            )
            for name, total, make in phases:
                rss_before = gateway.memory_info().rss / 1e6
                queued_before = queued(port)
                result = load(port, total, make)
                rss_after = gateway.memory_info().rss / 1e6
                rows.append(
                    [
                        name,
                        f"{result.requests:,}",
                        f"{result.statuses.get(202, 0):,}",
                        f"{result.statuses.get(429, 0):,}",
                        f"{queued(port) - queued_before:,}",
                        f"{result.rate:,.0f}",
                        f"{rss_before:.0f} -> {rss_after:.0f}",
                        str(
                            honest(
                                port, "198.51.100.77" if name == "one address" else "2001:db8::1"
                            )
                        ),
                    ]
                )
            print_table(
                "Beacon flood, default limits"
                + (f", collect_per_pixel = {args.pixel_limit}" if args.pixel_limit else "")
                + " (loopback, 8 connections)",
                [
                    "flood",
                    "requests",
                    "202",
                    "429",
                    "queued",
                    "req/s",
                    "gateway RSS MB",
                    "honest beacon after",
                ],
                rows,
            )
            text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=5).text
            match = re.search(
                r"capirelay_events_dropped_total\{[^}]*rate_limited[^}]*\} (\S+)", text
            )
            print(f"capirelay_events_dropped_total{{reason=rate_limited}} = {match and match[1]}")
        finally:
            stop_process(proc)


if __name__ == "__main__":
    main()
