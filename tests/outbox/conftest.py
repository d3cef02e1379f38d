"""The outbox under test, on each backend: a SQLite file in a temporary directory, a
fresh PostgreSQL schema of this run's database (see ``tests/conftest.py``), or, for the
tests marked ``outbox_contract``, an :class:`InMemoryOutbox`.

The contract suite (``test_outbox_contract.py``, ``test_leases_and_dedup.py``,
``test_order_ledger.py``) runs unchanged against all three; tests of SQLite-only
mechanisms are marked ``sqlite_only`` (``test_sqlite_backend.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from capirelay.outbox import Outbox, SQLiteOutbox
from capirelay.outbox.memory import InMemoryOutbox
from capirelay.outbox.postgres import PostgresOutbox


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
async def outbox(
    backend: str, db_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Outbox]:
    box: Outbox
    if backend == "postgres":
        box = PostgresOutbox(request.getfixturevalue("postgres_url"), pool_size=4)
    elif backend == "memory":
        box = InMemoryOutbox()
    else:
        box = SQLiteOutbox(db_path)
    await box.open()
    yield box
    await box.close()
