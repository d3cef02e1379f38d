"""``capirelay erase`` end to end, on both backends: one person's queued event, dead letter and
receipts go; everyone else's stay; an audit record (hashes only) is kept."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from capirelay.cli import app as cli_app
from capirelay.cli.erase import erasure_hashes
from capirelay.emulator.testing import RunningEmulator
from capirelay.outbox import open_outbox
from waiting import wait_for

from .conftest import PIXEL_ID, TOKEN_ENV

PERSON = "Erase.Me@Example.com"
OTHER = "keep.me@example.com"


@pytest.fixture
def config_file(tmp_path: Path, storage_url: str) -> Path:
    path = tmp_path / "capirelay.toml"
    path.write_text(
        f'storage = "{storage_url}"\n'
        f'[pixels.{PIXEL_ID}]\naccess_token = {{ env = "{TOKEN_ENV}" }}\n'
        'default_country = "US"\n'
    )
    return path


@pytest.fixture
def faults(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url) as http:
        yield http
        http.delete("/_emulator/faults").raise_for_status()


def event(event_id: str, email: str) -> dict[str, Any]:
    return {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 60,
        "event_id": event_id,
        "action_source": "system_generated",
        "user_data": {"email": email, "phone": "+1 650 555 0199"},
        "custom_data": {"value": 5.0, "currency": "USD"},
    }


def status(client: httpx.Client, event_id: str) -> str | None:
    response = client.get(f"/v1/events/{event_id}", params={"pixel_id": PIXEL_ID})
    return response.json()["status"] if response.status_code == 200 else None


def send(client: httpx.Client, *events: dict[str, Any]) -> None:
    response = client.post("/v1/events", json={"pixel_id": PIXEL_ID, "data": list(events)})
    assert response.status_code == 202


def test_erase_removes_one_persons_events_and_receipts(
    client: httpx.Client,
    faults: httpx.Client,
    emulator: RunningEmulator,
    config_file: Path,
    storage_url: str,
    uid: str,
) -> None:
    delivered, kept = f"{uid}delivered", f"{uid}other-person"
    send(client, event(delivered, PERSON), event(kept, OTHER))
    wait_for(lambda: status(client, delivered) == "delivered" == status(client, kept))

    refused = f"{uid}refused"
    faults.post(
        "/_emulator/faults", json={"faults": [{"kind": "invalid_event", "event_id": refused}]}
    ).raise_for_status()
    send(client, event(refused, PERSON))
    wait_for(lambda: status(client, refused) == "dead_lettered")

    # Meta is down for this pixel: the next event waits in the queue, retried with backoff.
    queued = f"{uid}queued"
    faults.post(
        "/_emulator/faults",
        json={"faults": [{"kind": "http_error", "status": 503, "pixel_id": PIXEL_ID}]},
    ).raise_for_status()
    send(client, event(queued, PERSON))

    def retried() -> bool:
        body = client.get(f"/v1/events/{queued}", params={"pixel_id": PIXEL_ID}).json()
        return bool(body.get("pending") and body["pending"][0]["attempt_log"])

    wait_for(retried)

    result = CliRunner().invoke(
        cli_app, ["erase", "--email", "  erase.me@EXAMPLE.com ", "--config", str(config_file)]
    )

    assert result.exit_code == 0, result.output
    assert "1 queued events, 1 dead letters, 2 receipts" in result.output
    assert "erase.me" not in result.output.lower()
    for gone in (delivered, refused, queued):
        assert status(client, gone) is None
    assert status(client, kept) == "delivered"

    digest = hashlib.sha256(b"erase.me@example.com").hexdigest()

    async def audit() -> list[dict[str, Any]]:
        outbox = open_outbox(storage_url)
        await outbox.open()
        try:
            return await outbox.erasure_log()
        finally:
            await outbox.close()

    [record] = [r for r in asyncio.run(audit()) if r["value_sha256"] == digest]
    assert record["field"] == "em" and record["queued"] == 1 and record["receipts"] == 2
    assert "example.com" not in str(record)


def test_erase_needs_an_identifier_and_a_valid_value(config_file: Path) -> None:
    result = CliRunner().invoke(cli_app, ["erase", "--config", str(config_file)])
    assert result.exit_code == 2 and "--email, --phone or --external-id" in result.output
    bad = CliRunner().invoke(
        cli_app, ["erase", "--email", "not-an-email", "--config", str(config_file)]
    )
    assert bad.exit_code == 2 and "--email" in bad.output and "not-an-email" not in bad.output


def test_phones_hash_as_ingest_does_for_each_configured_country() -> None:
    national = erasure_hashes([], ["(650) 555-0199"], [], {"US", None})["ph"]
    international = erasure_hashes([], ["+1 650 555 0199"], [], {None})["ph"]
    assert international <= national
    assert hashlib.sha256(b"16505550199").hexdigest() in national


def test_erase_with_no_database_says_so_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run in the wrong directory (no config, so the default ./capirelay.db), erase created
    an empty database, "erased" nothing from it and exited 0: the user believed the person
    erased.  Like trace and dlq, it now says there is no database and exits 1."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)
    result = CliRunner().invoke(cli_app, ["erase", "--email", "a@b.com"])
    assert result.exit_code == 1, result.output
    assert "no database at capirelay.db" in result.output
    assert list(tmp_path.iterdir()) == []
