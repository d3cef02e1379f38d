"""Fixtures of the Meta diagnostics tests: an open outbox on each backend (as tests/outbox)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from capirelay.outbox import Outbox, SQLiteOutbox
from capirelay.outbox.postgres import PostgresOutbox


@pytest.fixture
async def outbox(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Outbox]:
    box: Outbox
    if backend == "postgres":
        box = PostgresOutbox(request.getfixturevalue("postgres_url"), pool_size=4)
    else:
        box = SQLiteOutbox(tmp_path / "outbox.db")
    await box.open()
    yield box
    await box.close()
