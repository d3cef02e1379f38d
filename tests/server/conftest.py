"""Fixtures for the gateway tests: the emulator as Meta, the outbox on each backend (a tmp-dir
SQLite file, or a fresh PostgreSQL schema), the app on a real loopback socket.

``serve_in_thread(app)`` runs any ASGI app under uvicorn on 127.0.0.1 with an
ephemeral port in a background thread and stops it on exit; the gateway's
lifespan (outbox open, delivery engine start, and their shutdown) runs for
real.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

from capirelay.config import IngestKey, PixelSettings, Secret, Settings
from capirelay.emulator.testing import RunningEmulator, run_emulator
from capirelay.server import create_app

PIXEL_ID = "1234567890"
OTHER_PIXEL_ID = "5550001111"
ACCESS_TOKEN = "test-access-token-not-a-real-one"
OTHER_ACCESS_TOKEN = "other-access-token"
TOKEN_ENV = "CAPIRELAY_TEST_ACCESS_TOKEN"
OTHER_TOKEN_ENV = "CAPIRELAY_TEST_OTHER_ACCESS_TOKEN"
INGEST_KEY = "backend-key-0123456789"
LIMITED_KEY = "limited-key-9876543210"
INGEST_KEY_ENV = "CAPIRELAY_TEST_INGEST_KEY"
LIMITED_KEY_ENV = "CAPIRELAY_TEST_LIMITED_KEY"
SHOP_ORIGIN = "https://shop.example"
CONFIG_TEST_CODE = "TEST_FROM_CONFIG"

STARTUP_TIMEOUT = 10.0


@contextmanager
def serve_in_thread(app: ASGIApp) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1:<ephemeral> in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STARTUP_TIMEOUT)
        sock.close()


# One emulator and one gateway per test module: starting and stopping them costs
# ~0.35 s, so tests share them and isolate themselves with unique event ids (``uid``).


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL_ID: ACCESS_TOKEN, OTHER_PIXEL_ID: OTHER_ACCESS_TOKEN}) as em:
        yield em


@pytest.fixture(scope="module")
def secrets_in_env() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TOKEN_ENV, ACCESS_TOKEN)
        patch.setenv(OTHER_TOKEN_ENV, OTHER_ACCESS_TOKEN)
        patch.setenv(INGEST_KEY_ENV, INGEST_KEY)
        patch.setenv(LIMITED_KEY_ENV, LIMITED_KEY)
        # No stray ./capirelay.toml or CAPIRELAY_CONFIG may leak into the tests' settings.
        patch.delenv("CAPIRELAY_CONFIG", raising=False)
        yield patch


def gateway_settings(db_path: Path | str, graph_url: str, **overrides: Any) -> Settings:
    """Settings for the test gateway; ``db_path`` is a SQLite file or a storage URL."""
    storage = db_path if isinstance(db_path, str) else f"sqlite:///{db_path}"
    values: dict[str, Any] = {
        "storage": storage,
        "graph_url": graph_url,
        "pixels": {
            PIXEL_ID: PixelSettings(
                access_token=Secret(env=TOKEN_ENV),
                default_country="US",
                allowed_origins=[SHOP_ORIGIN],
            ),
            OTHER_PIXEL_ID: PixelSettings(
                access_token=Secret(env=OTHER_TOKEN_ENV),
                test_event_code=CONFIG_TEST_CODE,
            ),
        },
        "ingest_keys": {
            "backend": IngestKey(key=Secret(env=INGEST_KEY_ENV)),
            "limited": IngestKey(key=Secret(env=LIMITED_KEY_ENV), pixels=[OTHER_PIXEL_ID]),
        },
        "delivery": {"linger_ms": 5, "poll_seconds": 0.05},
        "trusted_proxies": ["127.0.0.1"],
        "max_body_bytes": 256 * 1024,
        "max_collect_body_bytes": 4096,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway") / "capirelay.db"


@pytest.fixture(scope="module")
def storage_url(backend: str, db_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The gateway's storage for this module and backend (the whole module runs per backend)."""
    if backend == "postgres":
        with request.getfixturevalue("pg_schema")() as url:
            yield url
    else:
        yield f"sqlite:///{db_path}"


@pytest.fixture(scope="module")
def settings(
    db_path: Path,
    storage_url: str,
    emulator: RunningEmulator,
    secrets_in_env: pytest.MonkeyPatch,
) -> Settings:
    secrets_in_env.chdir(db_path.parent)
    return gateway_settings(storage_url, emulator.url)


@pytest.fixture(scope="module")
def gateway_url(settings: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(settings)) as url:
        yield url


@pytest.fixture
def client(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway_url, headers={"Authorization": f"Bearer {INGEST_KEY}"}, timeout=10
    ) as http:
        yield http


@pytest.fixture
def uid() -> str:
    """A prefix that makes this test's event ids its own on the shared emulator."""
    return f"t{uuid.uuid4().hex[:10]}-"
