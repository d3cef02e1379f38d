"""Instructions per ingest request, counted by callgrind: a figure that does not move
with the machine's load.

``bench/ingest_wrk.py`` judges the issue's goal, but on a shared 2-core guest its rates
and CPU times move by ±15% between identical runs, so a change worth 2 to 5% of a request
cannot be told from noise there.  This script runs ``bench/ingest_cpu.py`` (the gateway
app called as ASGI in process, 32 requests in flight, a real SQLite outbox with
``synchronous = FULL``) under ``valgrind --tool=callgrind`` and counts the instructions
executed between two marks around the measured requests (``--mark``: the harness calls
``getppid()`` just before and after them, and callgrind dumps its counters before each
``getppid``).  All threads are counted: the event loop, the SQLite writer, the WAL
syncer.  Not counted: the kernel's work (system calls, ``fdatasync``), uvicorn's HTTP
parsing (no sockets here), and time spent waiting.  Instructions are not microseconds
(a cache miss costs more than an add), but the same code on the same inputs executes
nearly the same count, whatever else the machine is doing.

``--http`` counts the whole server instead: ``capirelay serve`` (one process, SQLite)
runs under callgrind, a loopback client outside it sends warm-up requests, then
``callgrind_control`` zeroes the counters, ``--requests`` single-event requests go over
32 keep-alive connections, and ``callgrind_control`` dumps the counters.  That adds
uvicorn, httptools, the event loop and the gateway's own protocol wrappers to the count
(the kernel's work is still not counted).

Give ``--tree`` one or more source trees (``git archive REV src | tar -x -C DIR``) to
count them in the same run; each row then also shows its ratio to the first::

    .venv/bin/python bench/ingest_instructions.py --requests 1000
    .venv/bin/python bench/ingest_instructions.py --tree /tmp/before/src --tree src
    .venv/bin/python bench/ingest_instructions.py --http --requests 600

Each run takes about a minute (callgrind runs Python some 50 times slower), most of
it start-up, which the marks leave out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    HOST,
    KEY,
    PIXEL,
    events_requests,
    free_port,
    print_table,
    purchase_event,
    serve_options,
    wait_http,
)
from _loadgen import run_load

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
_TOTAL = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def count(tree: Path, requests: int, route: str, batch: int) -> tuple[int, str]:
    """Instructions between the marks for ``requests`` requests with ``tree`` first on the
    path, and the harness's own last line (its wall rate under callgrind)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install -y valgrind")
    with tempfile.TemporaryDirectory(prefix="capirelay-instr-") as tmp:
        out = Path(tmp) / "callgrind.out"
        env = dict(os.environ, PYTHONPATH=str(tree))
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            "--dump-before=getppid",
            "--dump-instr=no",
            sys.executable,
            str(HERE / "ingest_cpu.py"),
            "--mark",
            "--requests",
            str(requests),
            "--route",
            route,
            "--batch",
            str(batch),
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"the counted run failed:\n{done.stderr[-3000:]}")
        dumps = sorted(Path(tmp).glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
        # Dumps: start-up to the first mark, the measured requests, (the rest at exit).
        if len(dumps) < 2:
            raise SystemExit(f"expected a dump at each mark, found {len(dumps)}")
        text = dumps[1].read_text()
        match = _TOTAL.search(text)
        if match is None:
            raise SystemExit(f"no total in {dumps[1].name}")
        rate = next(
            (line for line in done.stdout.splitlines() if "requests," in line), "(no rate line)"
        )
        return int(match[1]), rate


def count_http(tree: Path, requests: int, keep: Path | None = None) -> tuple[int, str]:
    """Instructions of a ``capirelay serve`` process under callgrind for ``requests``
    single-event requests sent over HTTP (see the module docstring)."""
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: apt-get install -y valgrind")
    with tempfile.TemporaryDirectory(prefix="capirelay-instr-") as tmp:
        config = Path(tmp) / "capirelay.toml"
        config.write_text(
            f"""
storage = "sqlite:///{Path(tmp) / "instr.db"}"
graph_url = "http://{HOST}:9"
[ingest_keys.bench]
key = {{ env = "BENCH_INGEST_KEY" }}
[pixels.{PIXEL}]
default_country = "US"
"""
        )
        out = Path(tmp) / "callgrind.out"
        port = free_port()
        env = dict(os.environ, PYTHONPATH=str(tree), BENCH_INGEST_KEY=KEY)
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            "--dump-instr=no",
            "--compress-strings=no",  # a dump kept (--keep) reads without name tables
            sys.executable,
            "-m",
            "capirelay",
            "serve",
            *serve_options(config, port),
        ]
        server = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_http(f"http://{HOST}:{port}/healthz", timeout=600)
            run = uuid.uuid4().hex[:8]
            now = int(time.time())
            warm = events_requests(port, 200, 1, lambda i: _event(f"{run}w", i, now))
            measured = events_requests(port, requests, 1, lambda i: _event(run, i, now))
            _load(port, warm)
            _control("-z", server.pid)
            started = time.perf_counter()
            statuses = _load(port, measured)
            elapsed = time.perf_counter() - started
            _control("-d", server.pid)
            if statuses != {202: requests}:
                raise SystemExit(f"unexpected answers: {statuses}")
            dumps = [p for p in Path(tmp).glob("callgrind.out.*") if p.suffix[1:].isdigit()]
            if len(dumps) != 1:
                raise SystemExit(f"expected one dump, found {len(dumps)}")
            if keep is not None:
                shutil.copy(dumps[0], keep)
            match = _TOTAL.search(dumps[0].read_text())
            if match is None:
                raise SystemExit(f"no total in {dumps[0].name}")
        finally:
            server.terminate()
            try:
                server.wait(timeout=120)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        return int(
            match[1]
        ), f"{requests:,} requests, {requests / elapsed:,.0f} req/s wall (over HTTP)"


def _event(run: str, i: int, now: int) -> dict[str, Any]:
    """The event of bench/wrk/events_single.lua."""
    return purchase_event(f"w{run}{i}", i, now, value=10 + i % 90 + 0.5)


def _load(port: int, requests: list[bytes]) -> dict[int, int]:
    result = asyncio.run(
        run_load(
            HOST,
            port,
            requests.__getitem__,
            total=len(requests),
            connections=32,
            max_seconds=3600,
        )
    )
    return result.statuses


def _control(flag: str, pid: int) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--route", choices=["events", "collect"], default="events")
    parser.add_argument("--batch", type=int, default=1, help="events per /v1/events request")
    parser.add_argument(
        "--http", action="store_true", help="count a capirelay serve process over HTTP"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="with --http: copy callgrind's dump here (callgrind_annotate reads it)",
    )
    parser.add_argument(
        "--tree",
        action="append",
        type=Path,
        help="a source tree to count (repeatable); default: this checkout's src",
    )
    args = parser.parse_args()
    trees = args.tree or [ROOT / "src"]
    rows, first = [], None
    for tree in trees:
        if args.http:
            total, rate = count_http(tree.resolve(), args.requests, args.keep)
        else:
            total, rate = count(tree.resolve(), args.requests, args.route, args.batch)
        per_request = total / args.requests
        first = first or per_request
        rows.append(
            [
                str(tree),
                f"{args.requests:,}",
                f"{per_request:,.0f}",
                f"{per_request / args.batch:,.0f}",
                f"{per_request / first:.3f}",
            ]
        )
        print(f"{tree}: {per_request:,.0f} instructions/request; {rate}", file=sys.stderr)
    route = f"POST /v1/{args.route}" + (f", {args.batch} events" if args.batch > 1 else "")
    route = "POST /v1/events over HTTP, one capirelay serve process" if args.http else route
    print_table(
        f"Instructions per request under callgrind ({route}, all threads)",
        ["tree", "requests", "instructions/request", "per event", "ratio to the first"],
        rows,
    )


if __name__ == "__main__":
    main()
