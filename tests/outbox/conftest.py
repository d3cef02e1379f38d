"""The outbox under test is ``outbox`` of ``tests/conftest.py``, on each backend: a SQLite
file in a temporary directory (``db_path``, for tests that reopen it), or a fresh
PostgreSQL schema of this run's database.

The behavioural suite (``test_sqlite_outbox.py``) runs unchanged against both;
tests of SQLite-only mechanisms are marked ``sqlite_only``.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"
