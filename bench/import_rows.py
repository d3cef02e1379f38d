"""``capirelay import`` speed and memory, next to the gateway's batched ingest.

1. Generates a CSV of ``--rows`` store purchases in the default columns (email,
   phone, first and last name, city, state, zip, country, external_id, value,
   currency, order_id; no event_id, so every id is derived from the row), each row
   distinct, times within the last day.
2. Runs ``capirelay import FILE --pixel ...`` as a subprocess (as a user would) into a
   fresh SQLite file (and, with ``--postgres``, a scratch PostgreSQL schema): rows/s
   from start to exit, and the process's peak RSS (``ru_maxrss`` of the child).
3. Bounded run of the gateway's batched ingest for comparison: ``capirelay serve``
   with delivery paused, ``--ingest-events`` events as ``POST /v1/events`` of 100
   events over 8 connections (as ``bench/gateway.py``'s batched row), durable commits.

    .venv/bin/python bench/import_rows.py                     # 1,000,000 rows
    .venv/bin/python bench/import_rows.py --rows 100000 --postgres
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PIXEL, free_port, print_table
from _common import events_requests as common_requests
from gateway import Gateway, events_requests, load, write_config

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
CITIES = [("Austin", "TX", "78701"), ("Portland", "OR", "97201"), ("Boston", "MA", "02108")]
NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John"]


COLUMNS = [
    "event_name",
    "event_time",
    "action_source",
    "email",
    "phone",
    "first_name",
    "last_name",
    "city",
    "state",
    "zip_code",
    "country",
    "external_id",
    "value",
    "currency",
    "order_id",
]
USER = COLUMNS[3:12]


def row_values(i: int, rng: random.Random, now: int) -> list[Any]:
    city, state, zip_code = CITIES[i % len(CITIES)]
    return [
        "Purchase",
        now - rng.randrange(86400),
        "physical_store",
        f"customer{i}@example.com",
        f"+1 512 {i % 1000:03d} {i % 10000:04d}",
        rng.choice(NAMES),
        rng.choice(NAMES) + "son",
        city,
        state,
        zip_code,
        "US",
        f"crm-{i}",
        f"{10 + i % 200}.{i % 100:02d}",
        "USD",
        f"store-{i}",
    ]


def write_csv(path: Path, rows: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    now = int(time.time())
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS)
        for i in range(rows):
            out.writerow(row_values(i, rng, now))


def same_event(i: int, rng: random.Random, now: int) -> dict[str, Any]:
    """The CSV row ``i`` as ``POST /v1/events`` takes it: the same fields, the same work."""
    row = dict(zip(COLUMNS, row_values(i, rng, now), strict=True))
    return {
        "event_name": row["event_name"],
        "event_time": row["event_time"],
        "action_source": row["action_source"],
        "user_data": {k: row[k] for k in USER},
        "custom_data": {
            "value": float(row["value"]),
            "currency": "USD",
            "order_id": row["order_id"],
        },
    }


def run_import(
    csv_path: Path, config: Path, storage: str | None, workers: int = 0
) -> tuple[float, float, float, str]:
    cmd = [
        sys.executable,
        "-c",
        "from capirelay.cli import main; main()",
        "import",
        str(csv_path),
        "--pixel",
        PIXEL,
        "--config",
        str(config),
    ]
    if storage:
        cmd += ["--storage", storage]
    cmd += ["--workers", str(workers)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    main_peak = tree_peak = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            main_rss = ps.memory_info().rss
            tree = main_rss + sum(
                c.memory_info().rss for c in ps.children(recursive=True) if c.is_running()
            )
            main_peak, tree_peak = max(main_peak, main_rss), max(tree_peak, tree)
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    stdout, stderr = proc.communicate()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"import failed: {stderr}")
    return seconds, main_peak / 2**20, tree_peak / 2**20, stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ingest-events", type=int, default=100_000)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--workers", type=int, default=0, help="capirelay import --workers")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = write_config(tmp, "http://127.0.0.1:9")
        csv_path = tmp / "orders.csv"
        write_csv(csv_path, args.rows)
        size_mb = csv_path.stat().st_size / 2**20
        seconds, peak, tree, summary = run_import(csv_path, config, None, args.workers)
        rows.append(
            [
                f"capirelay import --workers {args.workers}, SQLite",
                f"{args.rows:,}",
                f"{size_mb:,.0f}",
                f"{args.rows / seconds:,.0f}",
                f"{peak:,.0f} ({tree:,.0f} with workers)",
                summary,
            ]
        )
        if args.postgres:
            import psycopg

            schema = f"bench_import_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(POSTGRES, autocommit=True) as admin:
                admin.execute(f'CREATE SCHEMA "{schema}"')
                try:
                    url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
                    seconds, peak, tree, summary = run_import(csv_path, config, url, args.workers)
                finally:
                    admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
            rows.append(
                [
                    f"capirelay import --workers {args.workers}, PostgreSQL",
                    f"{args.rows:,}",
                    f"{size_mb:,.0f}",
                    f"{args.rows / seconds:,.0f}",
                    f"{peak:,.0f} ({tree:,.0f} with workers)",
                    summary,
                ]
            )
        csv_path.unlink()

        for label, make in (
            ("same rows as JSON", "same"),
            ("bench/gateway.py events (email, phone, IP, UA, fbp)", "gateway"),
        ):
            (tmp / "bench.db").unlink(missing_ok=True)
            port = free_port()
            gateway = Gateway(config, port, with_token=False)
            try:
                count = args.ingest_events // 100
                if make == "same":
                    make_event = functools.partial(
                        same_event, rng=random.Random(11), now=int(time.time())
                    )
                    requests = common_requests(port, count, 100, make_event)
                else:
                    requests = events_requests(count, 100, port)
                result = load(port, requests, connections=8)
            finally:
                gateway.stop()
            ok = result.statuses.get(202, 0)
            rows.append(
                [
                    f"POST /v1/events x100, SQLite: {label}",
                    f"{ok * 100:,}",
                    "-",
                    f"{result.rate * 100:,.0f}",
                    "-",
                    f"{ok} requests 202",
                ]
            )
    print_table(
        "Import vs batched ingest",
        ["path", "rows/events", "file MiB", "rows/s", "peak RSS MiB", "result"],
        rows,
    )


if __name__ == "__main__":
    main()
