"""The outbox under test is ``outbox`` of ``tests/conftest.py``, on each backend: a SQLite
file in a temporary directory (``db_path``, for tests that reopen it), a fresh
PostgreSQL schema of this run's database, or, for the tests marked ``outbox_contract``,
an :class:`InMemoryOutbox`.

The contract suite (``test_outbox_contract.py``, ``test_leases_and_dedup.py``,
``test_order_ledger.py``) runs unchanged against all three; tests of SQLite-only
mechanisms are marked ``sqlite_only`` (``test_sqlite_backend.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"
