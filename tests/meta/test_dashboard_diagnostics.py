"""The dashboard's Diagnostics page and Health warnings, on a live gateway over each backend.

The gateway serves the pages; the scheduled run is driven from the test against the
same storage (as another replica would), with an injected clock.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from meta_data import HOUR, PIXEL, TOKEN

from capirelay.config import Settings
from capirelay.emulator import RunningEmulator, run_emulator
from capirelay.graph import GraphClient, SyncGraphClient
from capirelay.metrics import Metrics
from capirelay.ops.diagnostics import DiagnosticsRunner
from capirelay.ops.meta_store import DeliveredHour, meta_store_for
from capirelay.outbox import open_outbox
from capirelay.server import create_app
from dashboard.conftest import csrf_from
from server.conftest import serve_in_thread

ADMIN = "diag-admin-token-0123456789"


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with run_emulator(pixels={PIXEL: TOKEN}) as running:
        yield running


@pytest.fixture
def settings(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, emulator: RunningEmulator
) -> Settings:
    storage = (
        str(request.getfixturevalue("postgres_url"))
        if backend == "postgres"
        else f"sqlite:///{tmp_path / 'capirelay.db'}"
    )
    return Settings(
        storage=storage,
        graph_url=emulator.url,
        pixels={PIXEL: {"access_token": {"value": TOKEN}}},
        dashboard={"admin_token": {"value": ADMIN}},
        diagnostics={"enabled": False, "min_events": 5},
    )


@pytest.fixture
def gateway(settings: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(settings)) as url:
        yield url


@contextmanager
def logged_in(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=10) as client:
        form = client.get("/ui/login")
        data = {"csrf_token": csrf_from(form.text), "token": ADMIN}
        answer = client.post("/ui/login", data=data)
        assert answer.status_code == 303, answer.text
        yield client


async def test_diagnostics_page_shows_checks_history_and_chart(
    emulator: RunningEmulator, settings: Settings, gateway: str
) -> None:
    hour = (int(time.time()) // HOUR) * HOUR
    now = hour + 600
    emulator.state.set_clock(now - 5 * HOUR)
    with SyncGraphClient(base_url=emulator.url) as client:
        events = [
            {"event_name": "Purchase", "event_time": now - 5 * HOUR - 10, "event_id": f"o{i}",
             "action_source": "website", "event_source_url": "https://shop.example/",
             "user_data": {"client_ip_address": "203.0.113.9", "client_user_agent": "UA"},
             "custom_data": {"value": 1.0, "currency": "EUR"}}
            for i in range(10)
        ]  # fmt: skip
        client.send_events(PIXEL, events, access_token=TOKEN)
    emulator.state.set_clock(now)
    async with httpx.AsyncClient(base_url=emulator.url) as http:
        fault = {"kind": "da_check_failed", "check": "pixel_missing_param_in_events",
                 "message": "content_ids are missing"}  # fmt: skip
        (await http.post("/_emulator/faults", json=fault)).raise_for_status()
    outbox = open_outbox(settings.storage)
    await outbox.open()
    try:
        store = meta_store_for(outbox)
        # What the gateway recorded: 12 acknowledged in that hour, Meta counts 10.
        await store.add_delivered([DeliveredHour(PIXEL, "Purchase", hour - 5 * HOUR, 12, 12)])
        runner = DiagnosticsRunner(settings, store, Metrics(), clock=lambda: now)
        assert await runner.run_once() is not None
    finally:
        await outbox.close()

    with logged_in(gateway) as client:
        health = client.get("/ui/health").text  # AAM on, cookies on: no warning
        assert 'data-pixel-settings="' not in health and 'id="pixel-settings"' in health
        page = client.get("/ui/diagnostics")
    assert page.status_code == 200
    html = page.text
    assert 'data-key="pixel_missing_param_in_events" data-failing="true"' in html
    assert "content_ids are missing" in html
    assert "https://business.facebook.com/events_manager2/list/pixel/" in html
    assert "capirelay mapping test" in html  # capirelay's advice beside Meta's text
    assert 'data-key="capirelay:server_undercount" data-failing="true"' in html
    assert f'id="recon-acknowledged-{PIXEL}">12<' in html
    assert f'id="recon-server-{PIXEL}">10<' in html
    assert "<svg" in html and "Sent versus counted, per hour" in html
    assert 'id="diagnostics-history"' in html and "started failing" in html
    assert TOKEN not in html


async def test_health_warns_when_aam_off_or_cookies_disabled(
    emulator: RunningEmulator, gateway: str
) -> None:
    # Settings changed in Events Manager before anyone looked (the page caches 5 min).
    async with GraphClient(base_url=emulator.url) as graph:
        await graph.update_pixel_settings(
            PIXEL,
            access_token=TOKEN,
            enable_automatic_matching=False,
            first_party_cookie_status="FIRST_PARTY_COOKIE_DISABLED",
        )
    with logged_in(gateway) as client:
        page = client.get("/ui/health")
    assert page.status_code == 200
    html = page.text
    assert html.count(f'data-pixel-settings="{PIXEL}"') == 2
    assert "capirelay pixel enable-aam" in html
    assert "capirelay pixel first-party-cookies on" in html
    assert '<span class="badge warn">off</span>' in html
    assert '<span class="badge warn">disabled</span>' in html
