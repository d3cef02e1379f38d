"""Dedup and the order ledger together, every backend against the in-memory outbox (the
reference model): generated calls of events that share event ids and order ids in every
arrangement, sent one after the other or at once (on PostgreSQL the calls of one
event-loop iteration go out as one statement group), must get the same statuses and
record the same orders.  (The case that found a defect: the browser's Purchase without
an order id and the shop's with one, sharing an event id in one group.)  The check
itself is tests/enqueue_model.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from outbox_data import make_event

from capirelay.outbox import Outbox, SQLiteOutbox
from capirelay.outbox.postgres import PostgresOutbox
from enqueue_model import answers_as_the_model


def test_every_backend_answers_as_the_model(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    loop = asyncio.new_event_loop()
    box: Outbox
    if backend == "postgres":
        box = PostgresOutbox(request.getfixturevalue("postgres_url"), pool_size=4, listen=False)
    else:
        box = SQLiteOutbox(tmp_path / "outbox.db")
    loop.run_until_complete(box.open())
    try:
        answers_as_the_model(box, loop, make_event, max_examples=80)
    finally:
        loop.run_until_complete(box.close())
        loop.close()
