"""Fixtures for the dashboard tests: the emulator as Meta and a gateway with ``/ui/`` enabled.

The gateway runs under real uvicorn on 127.0.0.1 (``serve_in_thread`` from the
server tests); the emulator answers Graph, ``dataset_quality`` and
``debug_token``.  Helpers send events through the gateway's public API and
log in to the dashboard the way a browser does.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from capirelay.config import IngestKey, PixelSettings, Secret, Settings
from capirelay.emulator.faults import parse_fault
from capirelay.emulator.testing import RunningEmulator, run_emulator
from capirelay.server import create_app
from server.conftest import serve_in_thread

PIXEL_ID = "1234567890"
ACCESS_TOKEN = "dash-access-token-not-real"
INGEST_KEY = "dash-ingest-key-0123456789"
ADMIN_TOKEN = "dash-admin-token-0123456789"
TEST_CODE = "TEST4242"
TOKEN_ENV = "CAPIRELAY_DASH_ACCESS_TOKEN"
INGEST_ENV = "CAPIRELAY_DASH_INGEST_KEY"
ADMIN_ENV = "CAPIRELAY_DASH_ADMIN_TOKEN"

__all__ = [
    "ACCESS_TOKEN",
    "ADMIN_TOKEN",
    "PIXEL_ID",
    "TEST_CODE",
    "Gateway",
    "csrf_from",
]

_CSRF = re.compile(r'name="csrf(?:_token" value|-token" content)="([0-9a-f]*)"')


def csrf_from(html: str) -> str:
    match = _CSRF.search(html)
    assert match is not None, "page has no CSRF field"
    return match.group(1)


class Gateway:
    """A running gateway with the dashboard, and the emulator behind it."""

    def __init__(self, url: str, emulator: RunningEmulator) -> None:
        self.url = url
        self.emulator = emulator

    def send(self, *events: dict[str, Any], test_event_code: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"pixel_id": PIXEL_ID, "data": list(events)}
        if test_event_code:
            body["test_event_code"] = test_event_code
        response = httpx.post(
            f"{self.url}/v1/events",
            json=body,
            headers={"Authorization": f"Bearer {INGEST_KEY}"},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        result: dict[str, Any] = response.json()
        return result

    def reject_event(self, event_id: str) -> None:
        """Make the emulator refuse every request that contains ``event_id`` (100/2804050)."""
        self.emulator.state.faults.add(parse_fault({"kind": "invalid_event", "event_id": event_id}))

    def clear_faults(self) -> None:
        self.emulator.state.faults.clear()

    def accepted_ids(self) -> set[str]:
        return {e["event"]["event_id"] for e in self.emulator.state.events(PIXEL_ID)}

    @contextmanager
    def logged_in(self) -> Iterator[httpx.Client]:
        """An httpx client holding a dashboard session, as a browser has after logging in."""
        with httpx.Client(base_url=self.url, timeout=10) as client:
            form = client.get("/ui/login")
            assert form.status_code == 200, form.text
            answer = client.post(
                "/ui/login", data={"csrf_token": csrf_from(form.text), "token": ADMIN_TOKEN}
            )
            assert answer.status_code == 303, answer.text
            yield client


def purchase(event_id: str, **user_data: Any) -> dict[str, Any]:
    return {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 5,
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout",
        "user_data": {
            "email": "someone@example.com",
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
            **user_data,
        },
        "custom_data": {"value": 42.5, "currency": "EUR"},
    }


def dashboard_settings(db_path: Path, graph_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "storage": f"sqlite:///{db_path}",
        "graph_url": graph_url,
        "pixels": {PIXEL_ID: PixelSettings(access_token=Secret(env=TOKEN_ENV))},
        "ingest_keys": {"backend": IngestKey(key=Secret(env=INGEST_ENV))},
        "dashboard": {"admin_token": {"env": ADMIN_ENV}},
        "delivery": {"linger_ms": 5, "poll_seconds": 0.05},
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def dashboard_env() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TOKEN_ENV, ACCESS_TOKEN)
        patch.setenv(INGEST_ENV, INGEST_KEY)
        patch.setenv(ADMIN_ENV, ADMIN_TOKEN)
        patch.delenv("CAPIRELAY_CONFIG", raising=False)
        yield patch


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, dashboard_env: pytest.MonkeyPatch
) -> Iterator[Gateway]:
    db_path = tmp_path_factory.mktemp("dashboard") / "capirelay.db"
    with run_emulator(pixels={PIXEL_ID: ACCESS_TOKEN}) as emulator:
        settings = dashboard_settings(db_path, emulator.url)
        with serve_in_thread(create_app(settings)) as url:
            yield Gateway(url, emulator)


@pytest.fixture
def uid() -> str:
    return f"d{uuid.uuid4().hex[:10]}-"
