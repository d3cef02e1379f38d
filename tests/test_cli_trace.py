"""``capirelay trace``: every value whole, piped (a full-width table) or on a narrow terminal."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from rich.console import Console
from typer.testing import CliRunner

from capirelay.cli import app
from capirelay.cli import trace as trace_cli
from capirelay.ops.trace import iso
from capirelay.outbox import Attempt, DeadLetterReason, NewEvent, SQLiteOutbox
from capirelay.outbox.receipts import dropped_receipt

PIXEL = "1234567890"
EVENT_ID = "order-20261204-0001-checkout-complete-with-a-long-id"
MESSAGE = (
    "Invalid parameter: the user_data.em value is not a SHA-256 hex digest; hash the "
    "normalized email address before sending it (see the Conversions API parameters page)"
)
FBTRACE = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


async def dead_lettered_event(db: Path) -> None:
    outbox = SQLiteOutbox(db)
    await outbox.open()
    try:
        now = time.time()
        payload = {"event_name": "Purchase", "event_time": int(now), "event_id": EVENT_ID}
        event = NewEvent(PIXEL, "Purchase", EVENT_ID, orjson.dumps(payload), int(now), now + 3600)
        await outbox.enqueue([event], now=now)
        [leased] = await outbox.lease(PIXEL, limit=1, lease_seconds=30, now=now)
        attempt = Attempt(now, 400, code=100, message=MESSAGE, fbtrace_id=FBTRACE)
        await outbox.dead_letter(
            [leased.id],
            reason=DeadLetterReason.INVALID,
            attempt=attempt,
            now=now,
            lease_id=leased.lease_id,
        )
    finally:
        await outbox.close()


def test_piped_trace_prints_full_values(tmp_path: Path) -> None:
    db = tmp_path / "capirelay.db"
    asyncio.run(dead_lettered_event(db))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPIRELAY_")}
    result = subprocess.run(  # stdout is a pipe here, as in `capirelay trace ... | grep`
        [sys.executable, "-m", "capirelay", "trace", EVENT_ID, "--storage", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "80", "TERM": "xterm"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr  # not delivered
    assert EVENT_ID in result.stdout
    lines = result.stdout.splitlines()
    # Each value whole on one line: no column cut short, folded or ellipsized.
    assert any(MESSAGE in line for line in lines), result.stdout
    assert any(FBTRACE in line and EVENT_ID not in line for line in lines), result.stdout
    assert "…" not in result.stdout


async def rejected_webhook_event(db: Path, event_id: str) -> None:
    outbox = SQLiteOutbox(db)
    await outbox.open()
    try:
        too_old = {"code": "event_too_old", "field": "event_time", "severity": "error",
                   "message": "event_time is more than 7 days in the past"}  # fmt: skip
        receipt = dropped_receipt(
            pixel_id=PIXEL, event_name="Purchase", event_id=event_id, source="webhook:shop",
            reason="rejected (event_too_old): event_time is more than 7 days in the past",
            problems=[too_old], now=time.time(),
        )  # fmt: skip
        await outbox.record_receipts([receipt])
    finally:
        await outbox.close()


def test_a_webhook_event_rejected_at_ingest_is_headed_rejected_not_dropped(
    tmp_path: Path,
) -> None:
    db, event_id = tmp_path / "capirelay.db", "shopify:450789469:Purchase"
    asyncio.run(rejected_webhook_event(db, event_id))
    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "CAPIRELAY_CONFIG": None})
    result = runner.invoke(app, ["trace", event_id, "--storage", f"sqlite:///{db}"])
    assert result.exit_code == 1, result.output  # not delivered
    heading = result.stdout.splitlines()[0]
    assert heading == f"{event_id}: rejected"
    assert "rejected at ingest (event_too_old)" in result.stdout
    as_json = runner.invoke(app, ["trace", event_id, "--storage", f"sqlite:///{db}", "--json"])
    assert orjson.loads(as_json.stdout)["status"] == "rejected"


def test_trace_on_an_80_column_terminal_never_cuts_an_id_or_a_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "capirelay.db"
    asyncio.run(dead_lettered_event(db))
    terminal = Console(width=80, force_terminal=True, color_system=None, soft_wrap=True)
    monkeypatch.setattr(trace_cli, "console", terminal)
    runner = CliRunner(env={"NO_COLOR": "1", "CAPIRELAY_CONFIG": None})
    result = runner.invoke(app, ["trace", EVENT_ID, "--storage", f"sqlite:///{db}"])
    assert result.exit_code == 1, result.output  # not delivered
    assert "…" not in result.stdout, result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines()), result.stdout
    lines = result.stdout.splitlines()
    assert any(EVENT_ID in line for line in lines)
    assert any(FBTRACE in line for line in lines), result.stdout
    as_json = runner.invoke(app, ["trace", EVENT_ID, "--storage", f"sqlite:///{db}", "--json"])
    steps = orjson.loads(as_json.stdout)["story"]
    for at in {step["at"] for step in steps if step["at"] is not None}:
        assert any(iso(at) in line for line in lines), (iso(at), result.stdout)
