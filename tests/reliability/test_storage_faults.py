"""Storage failing under the gateway: a full disk for SQLite, PostgreSQL connections cut and
the database refusing connections.  Ingest must fail loudly (503 with ``Retry-After``,
nothing acknowledged) rather than answer 202 for what it could not store, and recover by
itself once storage is back; everything it did acknowledge must still reach Meta.

The full disk is real: a 4 MiB tmpfs mounted for the test (root only; skipped with the
reason otherwise) holds the SQLite file, and a filler file takes the last free byte.
PostgreSQL faults touch only this test run's own database (tests/conftest.py creates and
drops it), never the shared server: ``pg_terminate_backend`` cuts the gateway's
connections, and ``ALLOW_CONNECTIONS false`` stands in for a database that is down.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from capirelay.server import create_app
from server.conftest import serve_in_thread
from waiting import wait_for

from .harness import (
    INGEST_KEY,
    PIXEL_ID,
    RecordedEmulator,
    dlq_size,
    purchase,
    queue_depth,
    recorded_emulator,
)
from .test_meta_faults import settings_for

TMPFS_SIZE = "4m"
BATCH = 100
MAX_POSTS = 400


@pytest.fixture
def meta() -> Iterator[RecordedEmulator]:
    with recorded_emulator() as emulator:
        yield emulator


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()[:200]}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no byte left; the file, for freeing it later."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as out:
        for size in (65536, 4096, 1):
            try:
                while True:
                    out.write(chunk[:size])
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


class Poster:
    """Posts fresh batches; remembers which ids got 202 and which were refused with 503."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {INGEST_KEY}"}, timeout=10
        )
        self.acked: set[str] = set()
        self.refused: set[str] = set()
        self.statuses: dict[int, int] = {}
        self.refusals: list[httpx.Response] = []
        self.lock = threading.Lock()

    def post(self) -> int:
        prefix = uuid.uuid4().hex[:10]
        events = [purchase(f"{prefix}-{i}") for i in range(BATCH)]
        try:
            answer = self.client.post("/v1/events", json={"pixel_id": PIXEL_ID, "data": events})
        except httpx.TransportError:
            return 0
        ids = {event["event_id"] for event in events}
        with self.lock:
            self.statuses[answer.status_code] = self.statuses.get(answer.status_code, 0) + 1
            if answer.status_code == 202:
                self.acked |= ids
            else:
                self.refused |= ids
                self.refusals.append(answer)
        return answer.status_code

    def close(self) -> None:
        self.client.close()


def assert_refused_loudly(poster: Poster) -> None:
    assert poster.refusals, "storage never failed"
    for answer in poster.refusals:
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "storage_unavailable"
        assert int(answer.headers["retry-after"]) > 0


@pytest.mark.sqlite_only
def test_disk_full_is_503_then_recovers(
    meta: RecordedEmulator, small_disk: Path, record_property: Any
) -> None:
    settings = settings_for(meta.url, small_disk / "capirelay.db")
    with serve_in_thread(create_app(settings)) as url:
        poster = Poster(url)
        try:
            assert poster.post() == 202
            filler = fill(small_disk)
            posts = 1
            while poster.post() != 503 and posts < MAX_POSTS:
                posts += 1
            acked_while_full = len(poster.acked)
            # Still full.  A later batch may fit in pages the delivery engine freed; what
            # matters is that each answer tells the truth (checked below).
            for _ in range(5):
                poster.post()
            ready_while_full = httpx.get(f"{url}/readyz", timeout=5).status_code
            # A refused write takes the gateway out of the load balancer for a while.
            assert ready_while_full == 503

            filler.unlink()
            wait_for(lambda: poster.post() == 202, timeout=15)
            wait_for(lambda: poster.acked <= meta.accepted_ids(), timeout=30)
            wait_for(lambda: queue_depth(url) == 0, timeout=30)
            assert dlq_size(url) == {}
        finally:
            poster.close()

    assert_refused_loudly(poster)
    assert not poster.refused & meta.accepted_ids(), "a refused event was stored after all"
    figures = (
        f"disk full ({TMPFS_SIZE} tmpfs): {acked_while_full} events acked before the disk "
        f"filled, {poster.statuses.get(503, 0)} requests refused with 503 "
        f"(readyz {ready_while_full} while full), recovered once space returned; "
        f"{len(poster.acked)} acked, {len(poster.acked)} delivered, lost 0"
    )
    record_property("figures", figures)
    print("\n" + figures)


# ---------------------------------------------------------------------------
# PostgreSQL


def _admin_url(database_url: str) -> str:
    parts = urlsplit(database_url)
    return parts._replace(path="/postgres", query="").geturl()


def _database_name(database_url: str) -> str:
    return urlsplit(database_url).path.lstrip("/")


def terminate_backends(admin: psycopg.Connection[Any], database: str) -> int:
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    ).fetchall()
    return len(rows)


@contextlib.contextmanager
def database_down(admin: psycopg.Connection[Any], database: str) -> Iterator[None]:
    """The database refuses new connections and loses its open ones, until the block ends."""
    admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
    try:
        terminate_backends(admin, database)
        yield
    finally:
        admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')


def test_postgres_cut_and_down_is_503_then_recovers(
    meta: RecordedEmulator,
    postgres_database: str,
    pg_schema: Any,
    tmp_path: Path,
    record_property: Any,
) -> None:
    database = _database_name(postgres_database)
    with (
        pg_schema() as storage_url,
        psycopg.connect(_admin_url(postgres_database), autocommit=True) as admin,
    ):
        settings = settings_for(meta.url, tmp_path / "unused.db").model_copy(
            update={"storage": storage_url}
        )
        with serve_in_thread(create_app(settings)) as url:
            poster = Poster(url)
            stop = threading.Event()

            def traffic() -> None:
                while not stop.is_set():
                    poster.post()
                    time.sleep(0.01)

            # Several clients at once: while the database is down a request waits for a
            # connection up to the outbox's connect timeout (5 s) before its 503, so one
            # client alone needs 30 s for the six refusals waited for below.
            threads = [threading.Thread(target=traffic, daemon=True) for _ in range(4)]
            for thread in threads:
                thread.start()
            try:
                cut = 0
                for _ in range(3):
                    # Traffic flows (more requests accepted since the last cut), then a cut.
                    accepted = poster.statuses.get(202, 0)
                    wait_for(lambda n=accepted: poster.statuses.get(202, 0) > n + 5, timeout=15)
                    cut += terminate_backends(admin, database)
                refused_before = poster.statuses.get(503, 0)
                with database_down(admin, database):
                    wait_for(lambda: poster.statuses.get(503, 0) > refused_before + 5, timeout=30)
                    refused_while_down = poster.statuses.get(503, 0) - refused_before
                    ready_while_down = httpx.get(f"{url}/readyz", timeout=10).status_code
                acked_at_recovery = poster.statuses.get(202, 0)
                wait_for(lambda: poster.statuses.get(202, 0) > acked_at_recovery + 3, timeout=20)
            finally:
                stop.set()
                for thread in threads:
                    thread.join(15)
                poster.close()
            wait_for(lambda: poster.acked <= meta.accepted_ids(), timeout=30)
            wait_for(lambda: queue_depth(url) == 0, timeout=30)
            assert dlq_size(url) == {}

    assert_refused_loudly(poster)
    assert refused_while_down > 0
    assert ready_while_down == 503
    assert not poster.refused & meta.accepted_ids(), "a refused event was stored after all"
    figures = (
        f"PostgreSQL: {cut} connections terminated in 3 cuts, then the database down: "
        f"{poster.statuses.get(503, 0)} requests refused with 503 (readyz 503 while down), "
        f"recovered; {len(poster.acked)} acked, {len(poster.acked)} delivered, lost 0"
    )
    record_property("figures", figures)
    print("\n" + figures)
