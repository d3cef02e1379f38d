"""Fixtures shared by the PostgreSQL outbox tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pg_replicas import OpenReplica

from capirelay.outbox.postgres import PostgresOutbox


@pytest.fixture
async def open_replica(postgres_url: str) -> AsyncIterator[OpenReplica]:
    """Open outboxes on the test's schema as separate replicas (own pools); all closed after."""
    opened: list[PostgresOutbox] = []

    async def open_one(**options: object) -> PostgresOutbox:
        box = PostgresOutbox(postgres_url, pool_size=4, **options)  # type: ignore[arg-type]
        await box.open()
        opened.append(box)
        return box

    yield open_one
    for box in opened:
        await box.close()
