"""``doctor`` shows Meta's side: pixel settings now, and the last scheduled diagnostics,
Meta's text and link beside capirelay's fix (both backends)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from meta_data import PIXEL, TOKEN, make_settings

from capirelay.emulator import RunningEmulator, run_emulator
from capirelay.graph import GraphClient
from capirelay.metrics import Metrics
from capirelay.ops.diagnostics import DiagnosticsRunner
from capirelay.ops.doctor import run_doctor
from capirelay.ops.meta_advice import UNDERCOUNT, advice_for, dq_key
from capirelay.ops.meta_store import meta_store_for
from capirelay.outbox import Outbox, open_outbox


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with run_emulator(pixels={PIXEL: TOKEN}) as running:
        yield running


@pytest.fixture
def storage_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'capirelay.db'}"


async def test_doctor_reports_settings_and_stored_diagnostics(
    emulator: RunningEmulator, storage_url: str
) -> None:
    settings = make_settings(emulator.url).model_copy(update={"storage": storage_url})
    async with GraphClient(base_url=emulator.url) as client:
        await client.update_pixel_settings(
            PIXEL,
            access_token=TOKEN,
            enable_automatic_matching=False,
            first_party_cookie_status="FIRST_PARTY_COOKIE_DISABLED",
        )
    async with httpx.AsyncClient(base_url=emulator.url) as http:
        fault = {"kind": "da_check_failed", "check": "pixel_decline", "message": "Volume fell"}
        (await http.post("/_emulator/faults", json=fault)).raise_for_status()
    outbox: Outbox = open_outbox(storage_url)
    await outbox.open()
    try:
        runner = DiagnosticsRunner(settings, meta_store_for(outbox), Metrics())
        assert await runner.run_once() is not None
    finally:
        await outbox.close()

    report = await run_doctor(settings=settings, now=time.time() + 1800)
    checks = {c.name: c for c in report.checks}
    assert checks[f"aam {PIXEL}"].status == "warn"
    assert "capirelay pixel enable-aam" in (checks[f"aam {PIXEL}"].fix or "")
    cookies = checks[f"first-party cookies {PIXEL}"]
    assert cookies.status == "warn" and "first-party-cookies on" in (cookies.fix or "")
    decline = checks[f"meta {PIXEL} pixel_decline"]
    assert decline.status == "warn"
    assert decline.detail.startswith("Meta: Event volume declined: Volume fell (https://")
    assert "capirelay dlq list" in (decline.fix or "")
    assert checks[f"meta diagnostics {PIXEL}"].detail.startswith("last run 0.5 h ago")
    assert TOKEN not in str(report.to_dict())


@pytest.mark.parametrize(
    ("event_name", "title", "expected"),
    [
        # The event's name is no part of the finding: "ip" inside it is no IP address.
        ("SubscriptionCreated", "Send email with more events", "user_data.em"),
        ("AddShippingInfo", "Send click_id with more events", "_fbc"),
        # Nor is "ip" inside a word of the title ("zip").
        ("Purchase", "Send zip code with more events", None),
        # Meta's own IP diagnostics (reference §5) still get the IP advice.
        ("Purchase", "Server sending mismatched IP addresses", "client_ip_address"),
        ("Purchase", "Update your IPv4 IP addresses to IPv6 IP addresses", "client_ip_address"),
        ("Purchase", "Send ip_address with more events", "client_ip_address"),
    ],
)
def test_dataset_quality_advice_follows_the_finding_not_the_event_name(
    event_name: str, title: str, expected: str | None
) -> None:
    advice = advice_for(dq_key(event_name, title), title)
    if expected is None:
        assert "client_ip_address" not in advice
    else:
        assert expected in advice


def test_undercount_advice_names_no_cause_meta_rules_out() -> None:
    advice = advice_for(UNDERCOUNT)
    # An event older than 7 days errors the whole request (nothing is acknowledged), and
    # events without test_event_code are counted like any other (reference §4.2, §4.3):
    # neither can make Meta count fewer server events than it acknowledged.
    assert "older than 7 days, " not in advice
    assert "sent without test_event_code" not in advice
    # What does remove an acknowledged server copy: dedup against the browser's twin.
    assert "event_id" in advice and "deduplicated" in advice
