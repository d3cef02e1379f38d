"""`capirelay dlq list|show|replay|purge` against a real SQLite outbox file."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console
from typer.testing import CliRunner

from capirelay.cli import app
from capirelay.cli import dlq as dlq_cli
from capirelay.ops.dlq import DeadLetterSummary, list_dead_letters
from capirelay.outbox import Attempt, DeadLetterReason, NewEvent, SQLiteOutbox
from capirelay.validate import deadline

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
PIXEL = "555"


def wire(event_id: str, *, now: float, valid: bool, age_days: float = 1) -> dict[str, Any]:
    return {
        "event_name": "Purchase",
        "event_time": int(now - age_days * 86400),
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {
            "em": [hashlib.sha256(b"someone@example.com").hexdigest()],
            "client_user_agent": "Mozilla/5.0",
            "client_ip_address": "203.0.113.5",
        },
        "custom_data": {"currency": "eur", "value": 5.0} if valid else {"value": 5.0},
    }


async def seed(db: Path, pixel: str = PIXEL) -> None:
    now = time.time()
    box = SQLiteOutbox(db)
    await box.open()
    payloads = [
        (wire("fixed-1", now=now, valid=True), DeadLetterReason.INVALID),
        (wire("broken-2", now=now, valid=False), DeadLetterReason.INVALID),
        (wire("old-3", now=now, valid=True, age_days=8), DeadLetterReason.EXPIRED),
    ]
    for payload, reason in payloads:
        event = NewEvent(
            pixel_id=pixel,
            event_name="Purchase",
            event_id=payload["event_id"],
            payload=orjson.dumps(payload),
            event_time=payload["event_time"],
            deadline=deadline(payload),
        )
        await box.enqueue([event], now=now)
        leased = await box.lease(pixel, limit=10, lease_seconds=30, now=now)
        attempt = Attempt(
            at=now,
            status=400,
            code=100,
            subcode=2804009,
            message="Missing value",
            fbtrace_id="TRACE123",
            retry_class="invalid",
        )
        await box.dead_letter(
            [e.id for e in leased],
            reason=reason,
            attempt=attempt,
            now=now,
            lease_id=leased[0].lease_id,
        )
    await box.close()


@pytest.fixture
def storage(tmp_path: Path) -> str:
    db = tmp_path / "q.db"
    asyncio.run(seed(db))
    return f"sqlite:///{db}"


def invoke(*args: str) -> Any:
    return runner.invoke(app, ["dlq", *args])


def test_list_and_filter(storage: str) -> None:
    result = invoke("list", "--storage", storage)
    assert result.exit_code == 0, result.output
    for event_id in ("fixed-1", "broken-2", "old-3"):
        assert event_id in result.output
    expired = invoke("list", "--storage", storage, "--reason", "expired")
    assert "old-3" in expired.output and "fixed-1" not in expired.output


@pytest.mark.parametrize("width", [80, 120])
def test_list_never_cuts_an_id_a_code_or_a_date(
    tmp_path: Path, width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At 80 columns (a pipe) the table once showed `1234567…` and `2026-1…`.
    pixel = "1234567890123456"
    db = tmp_path / "q.db"
    asyncio.run(seed(db, pixel))
    monkeypatch.setattr(dlq_cli, "console", Console(width=width, color_system=None))
    result = invoke("list", "--storage", f"sqlite:///{db}")
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    assert all(len(line) <= width for line in result.stdout.splitlines())
    letters = asyncio.run(_dead_letters(db))
    for letter in letters:
        for value in (letter.event_id, letter.reason, f"{letter.code}/{letter.subcode}"):
            assert value in result.stdout
        assert dlq_cli._when(letter.dead_at) in result.stdout
    assert result.stdout.count(pixel) == len(letters) == 3


async def _dead_letters(db: Path) -> list[DeadLetterSummary]:
    box = SQLiteOutbox(db)
    await box.open()
    try:
        return await list_dead_letters(box)
    finally:
        await box.close()


def test_show_explains_metas_error(storage: str) -> None:
    result = invoke("show", "1", "--storage", storage)
    assert result.exit_code == 0, result.output
    assert "TRACE123" in result.output
    assert "2804009" in result.output
    assert "what to do:" in result.output
    assert "someone@example.com" not in result.output  # only the hash is stored
    assert invoke("show", "999", "--storage", storage).exit_code == 1


def test_replay_requeues_valid_and_reports_the_rest(storage: str) -> None:
    result = invoke("replay", "1", "2", "3", "--storage", storage)
    assert result.exit_code == 1, result.output  # one is still invalid
    assert "re-queued: 1" in result.output
    assert "past their deadline (left in the DLQ): 1" in result.output
    assert "still invalid 2: custom_data.currency" in result.output
    remaining = invoke("list", "--storage", storage).output
    assert "fixed-1" not in remaining and "broken-2" in remaining


def test_purge_needs_ids_or_confirmation(storage: str) -> None:
    assert invoke("purge", "--storage", storage).exit_code == 2
    assert invoke("purge", "--storage", storage, "--reason", "expired").exit_code == 2
    result = invoke("purge", "--storage", storage, "--reason", "expired", "--yes")
    assert "purged: 1" in result.output
    assert "purged: 1" in invoke("purge", "2", "--storage", storage).output


def test_a_purge_with_bounds_beyond_datetime_is_recorded_not_a_failure(storage: str) -> None:
    # The audit wrote the bounds as dates after the purge; a bound of year 0 once in UTC
    # raised there: the letters were gone and no record was kept (a reviewer's find).
    result = invoke("purge", "--storage", storage, "--since", "0001-01-01T00:00+01:00", "--yes")
    assert result.exit_code == 0, result.output
    audit = invoke("audit", "--storage", storage, "--json")
    [record] = orjson.loads(audit.stdout)
    assert record["action"] == "purge" and "since=-62135600400.0" in record["target"]


def test_audit_never_cuts_a_date_an_actor_or_a_target_at_80_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pixel = "1234567890123456"
    db = tmp_path / "q.db"
    asyncio.run(seed(db, pixel))
    storage = f"sqlite:///{db}"
    monkeypatch.setattr(dlq_cli, "_cli_actor", lambda: "cli:operations-on-call-engineer")
    purge = ["purge", "--storage", storage, "--pixel", pixel, "--event-name", "Purchase"]
    since = ["--since", "2020-01-01T00:00:00", "--until", "2099-12-31T23:59:59"]
    assert invoke(*purge, *since, "--reason", "expired", "--yes").exit_code == 0
    assert invoke("purge", "1", "2", "--storage", storage).exit_code == 0
    records = orjson.loads(invoke("audit", "--storage", storage, "--json").stdout)
    assert len(records) == 2
    monkeypatch.setattr(dlq_cli, "console", Console(width=80, color_system=None))
    result = invoke("audit", "--storage", storage)
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout, result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    for record in records:
        assert dlq_cli._when(record["at"]) in result.stdout
        for part in record["target"].split():  # a long filter wraps between its terms
            assert any(part in line for line in result.stdout.splitlines()), result.stdout
    assert result.stdout.count("cli:operations-on-call-engineer") == 2


def test_bad_storage_url_is_a_clear_error() -> None:
    result = invoke("list", "--storage", "sqlite:///:memory:")
    assert result.exit_code == 2
