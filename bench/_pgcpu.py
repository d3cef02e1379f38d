"""CPU time of the PostgreSQL backends serving a benchmark run, read from ``/proc``.

The run's connections carry an ``application_name`` (in the storage URL); the backends
are found in ``pg_stat_activity`` by that name and their ``utime + stime`` read from
``/proc/<pid>/stat`` (the server runs on this machine).  Backends come and go (a
replica restarts, a pool opens a connection), so a sampler thread records every
backend's latest reading a few times a second; the run's database CPU is the sum over
backends of (last reading - first reading, or last reading for a backend that started
during the run).
"""

from __future__ import annotations

import os
import threading
from typing import Final

import psycopg

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            data = handle.read()
    except OSError:
        return None
    # Fields after "(comm)": state is field 3, utime field 14, stime field 15.
    rest = data[data.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLOCK_TICKS


def process_run_seconds(pid: int) -> float | None:
    """Time ``pid`` has run on a CPU, in seconds, to the nanosecond (``/proc/<pid>/schedstat``;
    the tick-counted ``utime + stime`` where schedstat is missing)."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as handle:
            return int(handle.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return process_cpu_seconds(pid)


def backend_pid(admin_url: str, application_name: str) -> int | None:
    """The pid of the one backend named ``application_name`` (None if not exactly one)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application_name,)
        ).fetchall()
    return int(rows[0][0]) if len(rows) == 1 else None


class BackendCpu:
    """Sum of the CPU seconds the backends named ``application_name`` spend from start()."""

    def __init__(self, admin_url: str, application_name: str, interval: float = 0.1) -> None:
        self.admin_url = admin_url
        self.application_name = application_name
        self.interval = interval
        self._baseline: dict[int, float] = {}
        self._latest: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[tuple[int]] | None = None

    def _pids(self) -> list[int]:
        assert self._conn is not None
        cur = self._conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (self.application_name,),
        )
        return [row[0] for row in cur.fetchall()]

    def sample(self) -> None:
        for pid in self._pids():
            seconds = process_cpu_seconds(pid)
            if seconds is not None:
                self._latest[pid] = seconds

    def start(self) -> BackendCpu:
        self._conn = psycopg.connect(self.admin_url, autocommit=True)
        self.sample()
        self._baseline = dict(self._latest)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> float:
        """Stop sampling (once; a second call changes nothing); the run's backend CPU
        seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._conn is not None:
            self.sample()
            self._conn.close()
            self._conn = None
        return sum(v - self._baseline.get(pid, 0.0) for pid, v in self._latest.items())
