"""Bad values cost one event, never the storage: the outbox's own safety net, and the same
per-event answer from both backends for the same hostile events.

Ingest's limits (``capirelay.limits``) keep values PostgreSQL cannot store out of the
queue; these tests bypass them to check the backend itself: a data exception on one row
is that row's ``REJECTED``, not :class:`StorageUnavailable`, and the rest of the batch is
queued.  The property test at the end feeds the same generated hostile events through
ingest into a SQLite and a PostgreSQL outbox and compares every per-event result.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capirelay.config import PixelSettings
from capirelay.ingest import prepare_event
from capirelay.outbox import Outbox, SQLiteOutbox
from capirelay.outbox.base import Attempt, DeadLetterReason, EnqueueStatus, NewEvent
from capirelay.outbox.postgres import PostgresOutbox

NOW = time.time()
PIXEL = PixelSettings(default_country="US")


def new_event(event_id: str, event_name: str = "Purchase") -> NewEvent:
    return NewEvent(
        pixel_id="1",
        event_name=event_name,
        event_id=event_id,
        payload=b'{"event_name":"Purchase"}',
        event_time=int(NOW),
        deadline=NOW + 86_400,
    )


async def test_a_row_the_backend_cannot_store_is_rejected_alone(
    outbox: Outbox, backend: str
) -> None:
    prefix = uuid.uuid4().hex[:8]
    events = [
        new_event(f"{prefix}-good-1"),
        new_event(f"{prefix}-nul\x00"),
        new_event(f"{prefix}-" + secrets.token_hex(2000)),  # beyond a PostgreSQL btree entry
        new_event(f"{prefix}-good-2", event_name="Lead\x00"),
        new_event(f"{prefix}-good-3"),
    ]
    statuses = await outbox.enqueue(events, now=NOW)
    if backend == "postgres":
        assert statuses == [
            EnqueueStatus.QUEUED,
            EnqueueStatus.REJECTED,
            EnqueueStatus.REJECTED,
            EnqueueStatus.REJECTED,
            EnqueueStatus.QUEUED,
        ]
    else:  # SQLite stores any text; ingest's limits are what keep such rows out
        assert statuses == [EnqueueStatus.QUEUED] * 5
    assert await outbox.ping()
    leased = await outbox.lease("1", limit=10, lease_seconds=30, now=NOW)
    assert {f"{prefix}-good-1", f"{prefix}-good-3"} <= {e.event_id for e in leased}


async def test_a_nul_in_metas_error_message_is_stored_with_the_attempt(outbox: Outbox) -> None:
    prefix = uuid.uuid4().hex[:8]
    await outbox.enqueue([new_event(f"{prefix}-a"), new_event(f"{prefix}-b")], now=NOW)
    leased = await outbox.lease("1", limit=10, lease_seconds=30, now=NOW)
    first, second = (e for e in leased if e.event_id.startswith(prefix))
    attempt = Attempt(at=NOW, status=400, code=100, message="bad \x00 value", retry_class="x")
    await outbox.reschedule(
        [first.id], next_attempt_at=NOW + 1, attempt=attempt, lease_id=first.lease_id
    )
    await outbox.dead_letter(
        [second.id],
        reason=DeadLetterReason.INVALID,
        attempt=attempt,
        now=NOW,
        lease_id=second.lease_id,
    )
    letters = await outbox.dlq_list(limit=100)
    [letter] = [d for d in letters if d.event_id == f"{prefix}-b"]
    assert letter.error is not None
    assert letter.error["message"].startswith("bad ")


async def test_an_event_id_holding_nul_is_traced_as_unknown(outbox: Outbox) -> None:
    # PostgreSQL refused the query itself (text cannot hold U+0000): GET /v1/events/a%00b and
    # the dashboard's search for it were a 500 there, and "not found" on SQLite.
    await outbox.enqueue([new_event("a")], now=NOW)
    record = await outbox.trace("a\x00b")
    assert record.event_id == "a\x00b"
    assert not record.known
    assert await outbox.event_ids_for_order("a\x00b") == []
    assert (await outbox.trace("a")).known  # the storage answers as before


# ---------------------------------------------------------------------------
# Property: the same hostile events get the same per-event results on both backends

hostile_text = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(max_codepoint=0x1F), min_size=1, max_size=4),
    st.integers(min_value=240, max_value=3300).map(lambda n: "z" * n),
    st.sampled_from(["\x00", "a\x00b", "\ud7ff", "\U0010ffff", "Purchase", "Lead"]),
)


@st.composite
def hostile_event(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_name": draw(st.sampled_from(["Purchase", "Lead"]) | hostile_text),
        "event_time": int(NOW) - 10,
        "action_source": "website",
        "event_source_url": "https://shop.example/" + draw(hostile_text),
        "user_data": {"em": "a" * 64, "client_user_agent": "Mozilla/5.0 (fuzz)"},
        "custom_data": {
            "value": draw(st.floats(allow_nan=False, allow_infinity=False) | st.integers()),
            "currency": "EUR",
            draw(hostile_text): draw(hostile_text),
        },
    }
    if draw(st.booleans()):
        event["event_id"] = draw(hostile_text)
    return event


def results(
    prepared: list[Any], statuses: list[EnqueueStatus]
) -> list[tuple[str, tuple[str, ...]]]:
    answers = iter(statuses)
    out = []
    for item in prepared:
        status = "rejected" if item.new_event is None else str(next(answers))
        out.append((status, tuple(sorted(p.code for p in item.problems if p.is_error))))
    return out


def test_both_backends_answer_hostile_events_alike(tmp_path: Path, postgres_url: str) -> None:
    loop = asyncio.new_event_loop()
    sqlite_box = SQLiteOutbox(tmp_path / "outbox.db")
    postgres_box = PostgresOutbox(postgres_url, pool_size=2, listen=False)
    loop.run_until_complete(sqlite_box.open())
    loop.run_until_complete(postgres_box.open())

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(events=st.lists(hostile_event(), min_size=1, max_size=6))
    def same_answers(events: list[dict[str, Any]]) -> None:
        run = uuid.uuid4().hex[:8]
        for event in events:
            if "event_id" in event:
                event["event_id"] = run + event["event_id"]
        prepared = [
            prepare_event(
                event, pixel_id="1", pixel=PIXEL, now=NOW, test_event_code=None,
                source="fuzz", max_future_skew=300,
            )
            for event in events
        ]  # fmt: skip
        accepted = [item.new_event for item in prepared if item.new_event is not None]
        on_sqlite = loop.run_until_complete(sqlite_box.enqueue(accepted, now=NOW))
        on_postgres = loop.run_until_complete(postgres_box.enqueue(accepted, now=NOW))
        assert results(prepared, on_sqlite) == results(prepared, on_postgres)
        assert EnqueueStatus.REJECTED not in on_postgres  # ingest's limits caught them all

    try:
        same_answers()
    finally:
        loop.run_until_complete(sqlite_box.close())
        loop.run_until_complete(postgres_box.close())
        loop.close()


@pytest.mark.parametrize("event_id", ["x" * 3200, "nul\x00", "tab\tid"])
def test_ingest_refuses_what_postgres_could_not_store(event_id: str) -> None:
    event = {
        "event_name": "Lead",
        "event_id": event_id,
        "event_time": int(NOW),
        "action_source": "website",
        "event_source_url": "https://shop.example/",
        "user_data": {"em": "a" * 64, "client_user_agent": "Mozilla/5.0"},
    }
    prepared = prepare_event(
        event, pixel_id="1", pixel=PIXEL, now=NOW, test_event_code=None, source="t",
        max_future_skew=300,
    )  # fmt: skip
    assert prepared.rejected
    assert [p.field for p in prepared.problems if p.is_error] == ["event_id"]
