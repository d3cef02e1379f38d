"""Real gateway processes under client traffic: what the crash-safety tests share.

``tests/server/test_crash_safety.py`` (one gateway, SIGKILLed and restarted) and
``tests/postgres/test_replicas.py`` (replicas on one database, one SIGKILLed)
drive the same traffic: client threads posting batches, each batch retried until
a gateway acknowledges it, as a sane client (or a load balancer) does; what was
acknowledged is then looked for at the emulator.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

BatchFactory = Callable[[int], list[dict[str, Any]]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(
    process: subprocess.Popen[bytes], url: str, log_path: Path, name: str, timeout: float
) -> None:
    """Return once ``url``/readyz answers 200; fail with the log's tail if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not become ready")


def kill_process(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL, as a crash would, and reap the process."""
    process.send_signal(signal.SIGKILL)
    process.wait(10)


def stop_process(process: subprocess.Popen[bytes] | None) -> int | None:
    """SIGTERM and wait (SIGKILL if it hangs); the exit code, None if never started."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(5)
    return process.returncode


class Traffic:
    """Client threads (each calling :meth:`run`) posting ``total`` events in batches.

    A batch that gets no 202 (connection refused, reset, 503) is retried, on the next of
    ``urls`` when there are several (what a load balancer does for a dead replica),
    until ``deadline_seconds`` pass.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        pixel_id: str,
        ingest_key: str,
        total: int,
        batch_size: int,
        make_batch: BatchFactory,
        deadline_seconds: float,
        retry_pause: float,
        client_timeout: float,
    ) -> None:
        self.urls = list(urls)
        self.pixel_id, self.ingest_key = pixel_id, ingest_key
        self.total, self.batch_size, self.make_batch = total, batch_size, make_batch
        self.deadline_seconds = deadline_seconds
        self.retry_pause, self.client_timeout = retry_pause, client_timeout
        self.lock = threading.Lock()
        self.next_batch = 0
        self.acked: set[str] = set()
        self.statuses: Counter[str] = Counter()
        self.retries = 0
        self.errors: list[str] = []

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.ingest_key}"}
        clients = [
            httpx.Client(base_url=url, headers=headers, timeout=self.client_timeout)
            for url in self.urls
        ]
        try:
            while (number := self._take()) is not None:
                self._post_until_answered(clients, number)
        finally:
            for client in clients:
                client.close()

    def _take(self) -> int | None:
        with self.lock:
            if self.next_batch * self.batch_size >= self.total:
                return None
            self.next_batch += 1
            return self.next_batch - 1

    def _post_until_answered(self, clients: list[httpx.Client], number: int) -> None:
        body = {"pixel_id": self.pixel_id, "data": self.make_batch(number)}
        deadline = time.monotonic() + self.deadline_seconds
        attempt = 0
        while time.monotonic() < deadline:
            client = clients[(number + attempt) % len(clients)]
            attempt += 1
            try:
                response = client.post("/v1/events", json=body)
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 202:
                self._record(response.json()["results"])
                return
            with self.lock:
                self.retries += 1
            time.sleep(self.retry_pause)
        self.errors.append(f"batch {number} never answered")

    def _record(self, results: list[dict[str, Any]]) -> None:
        with self.lock:
            for result in results:
                self.statuses[result["status"]] += 1
                if result["status"] in ("queued", "duplicate"):
                    self.acked.add(result["event_id"])
