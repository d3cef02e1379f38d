"""Suite-wide fixtures: the PostgreSQL service on 127.0.0.1:5432, isolated per run and per test.

Every test run creates its own database (``capirelay_test_<random>``) and drops it
at the end, even after failures (``DROP DATABASE ... WITH (FORCE)`` also ends
connections a killed gateway process left behind).  Inside it, each test (or
each module, for the module-scoped gateway fixtures) gets its own schema via
``pg_schema()``: a storage URL whose ``search_path`` points at a fresh schema,
dropped afterwards.  ``CAPIRELAY_TEST_POSTGRES`` overrides the server URL.

Backend parametrization: a test whose fixtures ask for ``backend`` runs once per
storage backend; ``@pytest.mark.sqlite_only`` keeps a test that exercises a
SQLite-specific mechanism (group-commit counters, ``max_page_count``) to SQLite, and
``@pytest.mark.outbox_contract`` adds the in-memory outbox (``memory``) to the backends
(tests of the contract itself, through the ``outbox`` fixture of ``tests/outbox``).

Outbox: ``outbox`` is an open outbox on ``backend`` (a SQLite file ``outbox.db`` in
``tmp_path``, or a fresh PostgreSQL schema), the one per-backend outbox fixture of the
suite; a directory that wants SQLite's faster ``synchronous=NORMAL`` overrides
``sqlite_synchronous``.  Waiting for a condition: ``tests/waiting.py``.

Browser: ``browser`` is Debian's headless Chromium, launched once per module
(``tests/chromium.py``).

Emulator: ``emulator`` is a live Graph API emulator on a loopback port serving the
pixels of ``emulator_data`` (directories needing other pixels or a wider scope
override it), ``http`` a client for it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser, sync_playwright

from capirelay.emulator import RunningEmulator, run_emulator
from capirelay.outbox import Outbox, SQLiteOutbox
from capirelay.outbox.memory import InMemoryOutbox
from capirelay.outbox.postgres import PostgresOutbox
from chromium import CHROMIUM, CHROMIUM_ARGS
from emulator_data import OTHER_PIXEL, OTHER_TOKEN, PIXEL, TOKEN, make_event

POSTGRES_SERVER_URL = os.environ.get(
    "CAPIRELAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("sqlite", "postgres")

SchemaFactory = Callable[[], AbstractContextManager[str]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: exercises a SQLite-specific mechanism; not run on PostgreSQL"
    )
    config.addinivalue_line(
        "markers", "outbox_contract: a test of the Outbox contract; also run on InMemoryOutbox"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        only_sqlite = metafunc.definition.get_closest_marker("sqlite_only") is not None
        contract = metafunc.definition.get_closest_marker("outbox_contract") is not None
        backends = ("sqlite",) if only_sqlite else ("memory", *BACKENDS) if contract else BACKENDS
        metafunc.parametrize("backend", backends, scope=_backend_scope(metafunc))


def _backend_scope(metafunc: pytest.Metafunc) -> str:
    # The gateway fixtures (tests/server/conftest.py: ``storage_url`` and what builds on it)
    # are module-scoped: their backend must be too, so that a module starts one gateway per
    # backend rather than one per test.
    return "module" if "storage_url" in metafunc.fixturenames else "function"


@pytest.fixture
def backend() -> str:
    """Placeholder: ``pytest_generate_tests`` parametrizes this name for every test using it."""
    raise AssertionError("backend is parametrized by pytest_generate_tests")


def _with_database(server_url: str, database: str) -> str:
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{database}"


def schema_url(database_url: str, schema: str) -> str:
    """``database_url`` with ``search_path`` set to ``schema`` for every connection."""
    separator = "&" if "?" in database_url else "?"
    return f"{database_url}{separator}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The URL of a database created for this test run and dropped at its end."""
    name = f"capirelay_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_SERVER_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_SERVER_URL.split('@')[-1]} "
            f"({type(exc).__name__}); .ci/run starts it"
        )
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _with_database(POSTGRES_SERVER_URL, name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_schema(postgres_database: str) -> SchemaFactory:
    """``with pg_schema() as url:`` a fresh, empty schema for the block; dropped after it."""

    @contextmanager
    def fresh_schema() -> Iterator[str]:
        schema = f"s_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres_database, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield schema_url(postgres_database, schema)
        finally:
            with psycopg.connect(postgres_database, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    return fresh_schema


@pytest.fixture
def postgres_url(pg_schema: SchemaFactory) -> Iterator[str]:
    """A storage URL on a fresh schema of this run's database, for one test."""
    with pg_schema() as url:
        yield url


@pytest.fixture
def sqlite_synchronous() -> str:
    """SQLite's ``synchronous`` for the ``outbox`` fixture (the production default)."""
    return "FULL"


@pytest.fixture
async def outbox(
    backend: str, tmp_path: Path, sqlite_synchronous: str, request: pytest.FixtureRequest
) -> AsyncIterator[Outbox]:
    """An open outbox on ``backend``, closed after the test."""
    box: Outbox
    if backend == "postgres":
        box = PostgresOutbox(request.getfixturevalue("postgres_url"), pool_size=4)
    elif backend == "memory":  # tests marked outbox_contract
        box = InMemoryOutbox()
    else:
        box = SQLiteOutbox(tmp_path / "outbox.db", synchronous=sqlite_synchronous)
    await box.open()
    yield box
    await box.close()


@pytest.fixture
def event_factory() -> Callable[..., dict[str, Any]]:
    return make_event


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL: TOKEN, OTHER_PIXEL: OTHER_TOKEN}, fault_seed=7) as running:
        yield running


@pytest.fixture
def http(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, timeout=5.0) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, for one module's tests (``tests/chromium.py``)."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()
