"""Ingest throughput under ``wrk``, side by side with a fixed floor, as ratios.

``wrk`` (Debian's native load generator, so the load does not compete in Python)
drives, in ONE run and with the same Lua scripts and bodies:

* the floor: ``bench/wrk/floor.py``, a bare Starlette app on one uvicorn process with
  the gateway's server options, whose routes read the body and answer 202;
* ``capirelay serve`` on SQLite (``synchronous=FULL``) or PostgreSQL, once per
  ``--workers`` value.

Every event is unique (``bench/wrk/*.lua``: run id, wrk thread and a counter in each
event id), so each one is prepared, hashed, deduplicated and durably committed.  The
gateway gets no access token: delivery keeps the events queued, so the figure is ingest
alone.  Each figure is printed next to the floor of the same run and as a ratio to it,
so a loaded machine moves both; the ratio is what to compare across runs.

Rate limits: all the load comes from one address (wrk on loopback), so the config lifts
the beacon limits explicitly (``[rate_limits]`` ``collect_per_address`` and
``collect_per_pixel`` at 10^9/s; ingest keys have no quota unless configured), and says
so in its first line: the figure is ingest, not the limiter refusing requests.
``--extra-toml`` appends more TOML to the config (pixel keys go under
``[pixels.1234567890]``).

    make bench-ingest                                  # the default run, about 2 minutes
    .venv/bin/python bench/ingest_wrk.py --duration 8 --workers 1,2
    .venv/bin/python bench/ingest_wrk.py --storage postgresql://127.0.0.1:5432/test
    .venv/bin/python bench/ingest_wrk.py --workers 2 --duration 6 --repeat 5   # medians
    .venv/bin/python bench/ingest_wrk.py --workers 2 --tree /tmp/before/src --tree src

``--tree`` serves a gateway from each source tree given (``git archive REV src | tar -x
-C /tmp/before`` for an older commit), side by side in the same run like the
``--workers`` and ``--cpu-affinity`` values: a before/after comparison within the same
minutes.

The last lines compare each route with the issue's goals: with ``--repeat N`` the
floor and capirelay runs alternate N times per route, and each goal line gives every
alternation's ratio and their median (this machine's speed moves a single run by more
than a fifth; the median of alternations is the figure to judge by).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    HOST,
    KEY,
    PIXEL,
    echo_unexpected,
    free_port,
    gateway_log,
    print_table,
    serve_options,
    stop_process,
    wait_http,
)

HERE = Path(__file__).resolve().parent
WRK_DIR = HERE / "wrk"
ORIGIN = "http://shop.bench.example"
PYTHON = sys.executable


@dataclass(frozen=True)
class Route:
    name: str
    script: str
    events_per_request: int
    connections: int
    # The goal: events/s as a multiple of the single-event floor's req/s, and
    # the p99 bound (None: none set).
    goal_ratio: float
    goal_p99_ms: float | None


ROUTES = {
    "events": Route("POST /v1/events, 1 event", "events_single.lua", 1, 32, 0.4, 25.0),
    "collect": Route("POST /v1/collect, 1 event", "collect.lua", 1, 32, 0.3, 50.0),
    "batch": Route("POST /v1/events, 100 events", "events_batch.lua", 100, 8, 1.5, None),
}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    non2xx: int
    errors: int
    p50_ms: float
    p99_ms: float
    p999_ms: float = 0.0
    # Share of the machine's CPU time left idle during the run (/proc/stat): when the
    # server is the limit it is near 0; a server waiting on something else (its disk,
    # a lock) leaves the cores idle although the load generator keeps them busy.
    idle: float | None = None
    # CPU seconds (user + system) the server's processes spent during the run, every
    # worker and thread included: per request, a figure to compare across machines,
    # where the rates and even the ratios move with what a machine makes cheap.
    server_cpu: float | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_request(self) -> float | None:
        if self.server_cpu is None or not self.requests:
            return None
        return self.server_cpu / self.requests * 1e6


_SUMMARY = re.compile(r"WRK_SUMMARY (.*)")


def parse_wrk(output: str) -> WrkResult:
    """The ``WRK_SUMMARY`` line ``bench/wrk/common.lua``'s ``done()`` prints.

    wrk's own text (``Requests/sec``, ``--latency``'s distribution) is there too; the
    summary line carries the same numbers unrounded, in microseconds.
    """
    match = _SUMMARY.search(output)
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    fields = dict(item.split("=") for item in match.group(1).split())
    n = {k: int(v) for k, v in fields.items()}
    return WrkResult(
        requests=n["requests"],
        seconds=n["duration_us"] / 1e6,
        non2xx=n["non2xx"],
        errors=n["connect_errors"] + n["read_errors"] + n["write_errors"] + n["timeouts"],
        p50_ms=n["p50_us"] / 1000,
        p99_ms=n["p99_us"] / 1000,
        p999_ms=n.get("p999_us", 0) / 1000,
    )


def run_wrk(
    server: Server,
    route: Route,
    *,
    duration: float,
    threads: int,
    run_id: str,
    connections: int,
) -> WrkResult:
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(WRK_DIR / route.script),
        f"http://{HOST}:{server.port}",
        "--",
        run_id,
        KEY,
        PIXEL,
        ORIGIN,
    ]
    before, server_before = cpu_times(), server.cpu_seconds()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60)
    after, server_after = cpu_times(), server.cpu_seconds()
    spent = [b - a for a, b in zip(before, after, strict=True)]
    idle = (spent[3] + spent[4]) / sum(spent) if before and sum(spent) else None
    return replace(parse_wrk(done.stdout), idle=idle, server_cpu=server_after - server_before)


def cpu_times() -> list[int]:
    """The machine's CPU time counters (user, nice, system, idle, iowait, ...), or [] where
    there is no /proc/stat."""
    try:
        with open("/proc/stat") as stat:
            return [int(field) for field in stat.readline().split()[1:]]
    except OSError:
        return []


def ensure_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit(
            "wrk is not installed: `apt-get install -y wrk` (make bench-ingest does it)"
        )


def write_config(tmp: Path, storage: str, extra_toml: str, key_files: int = 0) -> Path:
    """The bench config.  ``key_files``: that many ingest keys read from files (the
    bench's own key last, as mounted secrets are configured) instead of one from the
    environment."""
    config = tmp / "capirelay.toml"
    if key_files:
        keys = []
        for index in range(key_files):
            key_file = tmp / f"ingest-key-{index}"
            last = index == key_files - 1
            key_file.write_text(KEY if last else f"other-source-key-{index:04d}-{KEY[:16]}")
            name = "bench" if last else f"source{index}"
            keys.append(f'[ingest_keys.{name}]\nkey = {{ file = "{key_file}" }}')
        ingest_keys = "\n".join(keys)
    else:
        ingest_keys = '[ingest_keys.bench]\nkey = { env = "BENCH_INGEST_KEY" }'
    config.write_text(
        f"""
storage = "{storage}"
graph_url = "http://{HOST}:9"
{ingest_keys}
[pixels.{PIXEL}]
allowed_origins = ["{ORIGIN}"]
default_country = "US"
[rate_limits]
collect_per_address = {{ rate = 1_000_000_000, burst = 1_000_000_000 }}
collect_per_pixel = {{ rate = 1_000_000_000, burst = 1_000_000_000 }}
{extra_toml}
"""
    )
    return config


class Server:
    def __init__(
        self,
        cmd: list[str],
        port: int,
        env: dict[str, str] | None = None,
        stderr: Path | None = None,
    ) -> None:
        self.port = port
        # capirelay's log lines go to a file, as a container's log driver would take
        # them (the access lines at --log-level info), not to this terminal; stop()
        # repeats those a reader should see (echo_unexpected).
        self.log = stderr
        errors = stderr.open("ab") if stderr is not None else None
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        if errors is not None:
            errors.close()
        try:
            wait_http(f"http://{HOST}:{port}/healthz", timeout=60)
        except BaseException:
            stop_process(self.proc)  # not left running behind the run that gave up on it
            raise

    def stop(self) -> None:
        stop_process(self.proc)
        if self.log is not None:
            echo_unexpected(self.log)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server and its live child processes (the
        workers of ``serve --workers N``) so far."""
        root = psutil.Process(self.proc.pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total


def start_floor() -> Server:
    port = free_port()
    return Server([PYTHON, str(WRK_DIR / "floor.py"), "--port", str(port)], port)


def start_capirelay(
    config: Path,
    workers: int | None,
    log_level: str = "warning",
    cpu_affinity: str = "",
    tree: Path | None = None,
) -> Server:
    port = free_port()
    env = dict(os.environ, BENCH_INGEST_KEY=KEY)
    if tree is not None:  # this source tree's capirelay, ahead of the installed one
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(tree.resolve()), env.get("PYTHONPATH", "")) if p
        )
    cmd = [
        str(Path(PYTHON).parent / "capirelay"),
        "serve",
        *serve_options(config, port, log_level),
    ]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if cpu_affinity:
        cmd += ["--cpu-affinity", cpu_affinity]
    return Server(cmd, port, env, gateway_log(config.parent, f"capirelay-{port}"))


def fresh_storage(storage: str, tmp: Path, label: str) -> str:
    """A fresh SQLite file, or a fresh schema of the PostgreSQL database (see drop_schemas)."""
    if storage == "sqlite":
        return f"sqlite:///{tmp / f'bench-{label}.db'}"
    import psycopg

    schema = f"capirelay_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(storage, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    _schemas.append(schema)
    separator = "&" if "?" in storage else "?"
    return f"{storage}{separator}options={quote(f'-csearch_path={schema}')}"


_schemas: list[str] = []


def drop_schemas(storage: str) -> None:
    if not _schemas:
        return
    import psycopg

    with psycopg.connect(storage, autocommit=True) as conn:
        for schema in _schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per server")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--workers",
        default="",
        help="comma-separated capirelay --workers values to compare "
        "(default: the server's own default only)",
    )
    parser.add_argument(
        "--cpu-affinity",
        action="append",
        default=[],
        help="a capirelay --cpu-affinity value to compare (off, auto, or a CPU list such "
        "as 0,1); repeat the option to compare several, each with every --workers value "
        "(default: the server's own default only)",
    )
    parser.add_argument(
        "--tree",
        action="append",
        type=Path,
        default=[],
        help="a source tree to serve from (git archive REV src | tar -x -C DIR; give DIR/src), "
        "repeat to compare several side by side, each with every --workers and "
        "--cpu-affinity value (default: this checkout's installed capirelay)",
    )
    parser.add_argument("--routes", default="events,collect,batch")
    parser.add_argument(
        "--storage",
        default="sqlite",
        help="sqlite (a fresh file per configuration) or a postgresql:// URL",
    )
    parser.add_argument("--extra-toml", type=Path, help="TOML appended to the bench config")
    parser.add_argument(
        "--log-level",
        default="warning",
        help="capirelay serve's --log-level (its default, info, writes an access line per "
        "request; warning leaves them out, as the goal lines were measured)",
    )
    parser.add_argument(
        "--key-files",
        type=int,
        default=0,
        help="configure this many ingest keys, each read from a file, the bench's own "
        "last (default: one key from an environment variable)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="floor and capirelay runs alternated this many times per route; the goal "
        "lines give each pair's ratio and their median",
    )
    args = parser.parse_args()
    ensure_wrk()

    routes = [ROUTES[name] for name in args.routes.split(",")]
    worker_counts: list[int | None] = [int(w) for w in args.workers.split(",") if w] or [None]
    affinities = [a.strip() for a in args.cpu_affinity if a.strip()] or [""]
    trees: list[Path | None] = list(args.tree) or [None]
    configurations = [(w, a, t) for w in worker_counts for a in affinities for t in trees]
    extra = args.extra_toml.read_text() if args.extra_toml else ""
    print(
        "rate limits: beacon limits lifted to 10^9/s (one load address); ingest-key quotas "
        "off" + ("; plus --extra-toml" if extra else "")
    )
    print(f"machine: {os.cpu_count()} cores; wrk -t{args.threads}, {args.duration:g} s per run")

    rows: list[list[str]] = []
    checks: list[str] = []
    goals: list[str] = []
    with tempfile.TemporaryDirectory(prefix="capirelay-wrk-") as tmpdir:
        tmp = Path(tmpdir)
        # Every configuration's gateway runs from the start (an idle gateway costs
        # nothing: no token, nothing to deliver), so each alternation runs the floor and
        # then every configuration, in turn, within the same minute or two: what differs
        # between configurations is theirs, not the machine's hour.
        labels: list[str] = []
        gateways: list[Server] = []
        floor = start_floor()
        try:
            for index, (workers, affinity, tree) in enumerate(configurations):
                label = "default" if workers is None else str(workers)
                if affinity:
                    label += f" cpu={affinity}"
                if tree is not None:
                    label += f" {tree}"
                directory = tmp / f"config-{index}"
                directory.mkdir()
                config = write_config(
                    directory,
                    fresh_storage(args.storage, directory, str(index)),
                    extra,
                    args.key_files,
                )
                labels.append(label)
                gateways.append(start_capirelay(config, workers, args.log_level, affinity, tree))
            sent = [0] * len(gateways)
            # floors[i][script]: the floor of the i-th alternation of each route.
            floors: list[dict[str, WrkResult]] = [{} for _ in range(args.repeat)]
            for route in routes:
                run_id = uuid.uuid4().hex[:8]
                common = dict(threads=args.threads, connections=route.connections)
                run_wrk(floor, route, duration=args.warmup, run_id=run_id + "w", **common)
                for index, gateway in enumerate(gateways):
                    warm = run_wrk(
                        gateway, route, duration=args.warmup, run_id=f"{run_id}w{index}", **common
                    )
                    sent[index] += (warm.requests - warm.non2xx) * route.events_per_request
                pairs: list[list[tuple[WrkResult, WrkResult]]] = [[] for _ in gateways]
                for turn in range(args.repeat):
                    tag = f"{run_id}{turn}"
                    floor_result = run_wrk(
                        floor, route, duration=args.duration, run_id=tag + "f", **common
                    )
                    floors[turn][route.script] = floor_result
                    # Every route is compared with the single-event floor of the same
                    # alternation (events/s per floor request/s), as the issue states it.
                    yardstick = floors[turn].get(ROUTES["events"].script, floor_result)
                    suffix = f" #{turn + 1}" if args.repeat > 1 else ""
                    rows.append(table_row(route, f"floor{suffix}", floor_result, None))
                    # Configurations take turns being first after the floor.
                    order = list(range(len(gateways)))
                    if turn % 2:
                        order.reverse()
                    for index in order:
                        time.sleep(0.5)
                        ours = run_wrk(
                            gateways[index],
                            route,
                            duration=args.duration,
                            run_id=f"{tag}g{index}",
                            **common,
                        )
                        sent[index] += (ours.requests - ours.non2xx) * route.events_per_request
                        rows.append(
                            table_row(
                                route, f"capirelay w={labels[index]}{suffix}", ours, yardstick
                            )
                        )
                        pairs[index].append((yardstick, ours))
                for index, label in enumerate(labels):
                    goals.append(goal_line(route, label, pairs[index]))
            for index, gateway in enumerate(gateways):
                checks.append(f"w={labels[index]}: {accepted_events(gateway.port):,} events "
                              f"accepted (metrics), {sent[index]:,} in 2xx answers wrk counted "
                              "(wrk does not count requests in flight when it stops)")  # fmt: skip
        finally:
            for gateway in gateways:
                gateway.stop()
            floor.stop()
        drop_schemas(args.storage)
    print_table(
        f"wrk ingest vs floor ({args.storage.split(':')[0]}, "
        f"{args.duration:g} s per run, same run)",
        ["route", "server", "conns", "req/s", "events/s", "p50 ms", "p99 ms", "p99.9 ms",
         "non-2xx/err", "idle", "server CPU µs/req", "ratio to floor req/s"],
        rows,
    )  # fmt: skip
    for line in checks:
        print(line)
    print(
        f"\ngoals, each alternation's ratio to the single-event floor of the same "
        f"alternation, then the median of {args.repeat}:"
    )
    for line in goals:
        print(line)


def ratio_to(route: Route, result: WrkResult, floor: WrkResult) -> float:
    """``result``'s events/s over ``floor``'s requests/s (0 for a floor that did nothing)."""
    return result.rate * route.events_per_request / floor.rate if floor.rate else 0.0


def goal_line(route: Route, label: str, pairs: list[tuple[WrkResult, WrkResult]]) -> str:
    """``w=2 POST /v1/events, 1 event: 0.33 0.35 0.34 -> 0.34 (goal >= 0.4: not met); p99 ...``:
    each (yardstick, capirelay) pair's ratio, their median, and the p99 bound."""
    ratios = [ratio_to(route, ours, floor) for floor, ours in pairs]
    ratio = statistics.median(ratios)
    text = (
        f"w={label} {route.name}: {' '.join(f'{r:.2f}' for r in ratios)} -> {ratio:.2f} "
        f"(goal >= {route.goal_ratio:g}: {'met' if ratio >= route.goal_ratio else 'not met'})"
    )
    if route.goal_p99_ms is not None:
        p99 = statistics.median(ours.p99_ms for _, ours in pairs)
        met = p99 < route.goal_p99_ms
        text += (
            f"; p99 {p99:.1f} ms (goal < {route.goal_p99_ms:g} ms: {'met' if met else 'not met'})"
        )
    costs = [
        (ours.cpu_us_per_request / route.events_per_request, floor.cpu_us_per_request)
        for floor, ours in pairs
        if ours.cpu_us_per_request is not None and floor.cpu_us_per_request
    ]
    if costs:
        ours_us = statistics.median(c for c, _ in costs)
        floor_us = statistics.median(f for _, f in costs)
        text += (
            f"; server CPU {ours_us:.0f} us/event against the floor's {floor_us:.0f} us/request "
            f"({ours_us / floor_us:.1f}x)"
        )
    return text


def accepted_events(port: int) -> int:
    """``capirelay_events_accepted_total`` summed over its series, from ``/metrics``."""
    text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("capirelay_events_accepted_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def table_row(route: Route, server: str, result: WrkResult, floor: WrkResult | None) -> list[str]:
    """One table line; ``floor`` None for the floor's own line."""
    events = result.rate * route.events_per_request
    if floor is None:
        ratio_text = "1.00 (yardstick)" if route.events_per_request == 1 else "-"
    else:
        ratio_text = f"{ratio_to(route, result, floor):.2f}" + (
            " (events/s)" if route.events_per_request > 1 else ""
        )
    return [
        route.name,
        server,
        str(route.connections),
        f"{result.rate:,.0f}",
        f"{events:,.0f}",
        f"{result.p50_ms:.1f}",
        f"{result.p99_ms:.1f}",
        f"{result.p999_ms:.1f}",
        f"{result.non2xx}/{result.errors}",
        "-" if result.idle is None else f"{result.idle:.0%}",
        "-" if result.cpu_us_per_request is None else f"{result.cpu_us_per_request:.0f}",
        ratio_text,
    ]


if __name__ == "__main__":
    main()
