"""A real SQLite outbox file in a temporary directory, opened and closed per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from capirelay.outbox import SQLiteOutbox


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
async def outbox(db_path: Path) -> AsyncIterator[SQLiteOutbox]:
    box = SQLiteOutbox(db_path)
    await box.open()
    yield box
    await box.close()
