"""Token, version and clock health against the emulator on a real loopback socket."""

from __future__ import annotations

import socket
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest

from capirelay.config import PixelSettings, Secret, Settings
from capirelay.emulator.testing import RunningEmulator, run_emulator
from capirelay.ops.health import clock_skew, probe_graph, token_health, version_health

PIXEL = "1234567890"
OTHER_PIXEL = "5550001111"
TOKEN = "EAAhealthcheckTOKENabcdefghijklmnop"
OTHER_TOKEN = "EAAotherpixelTOKENabcdefghijklmnop"
TOKEN_ENV = "CAPIRELAY_TEST_HEALTH_TOKEN"


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL: TOKEN, OTHER_PIXEL: OTHER_TOKEN}) as running:
        yield running


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def settings_for(graph_url: str, **pixel: Any) -> Settings:
    values: dict[str, Any] = {"access_token": Secret(env=TOKEN_ENV), **pixel}
    return Settings(graph_url=graph_url, pixels={PIXEL: PixelSettings(**values)})


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_valid_token(emulator: RunningEmulator) -> None:
    health = (await token_health(settings_for(emulator.url)))[PIXEL]
    assert health.configured and health.valid is True
    assert health.expires_at is None  # system-user tokens never expire
    assert "ads_management" in health.scopes
    assert health.pixel_access is True
    assert health.error is None and health.explanation is None


async def test_expiring_token_reports_its_expiry(emulator: RunningEmulator) -> None:
    expires = int(time.time()) + 5 * 86400
    record = emulator.state.token(TOKEN)
    assert record is not None
    record.expires_at = expires
    health = (await token_health(settings_for(emulator.url)))[PIXEL]
    assert health.expires_at == datetime.fromtimestamp(expires, UTC)
    days_left = health.days_left()
    assert days_left is not None and 4.9 < days_left <= 5.0


async def test_expired_token(emulator: RunningEmulator) -> None:
    record = emulator.state.token(TOKEN)
    assert record is not None
    record.expires_at = int(time.time()) - 86400
    health = (await token_health(settings_for(emulator.url)))[PIXEL]
    assert health.valid is False
    assert health.error is not None and "(190/463)" in health.error
    assert "Session has expired" in health.error


async def test_revoked_token(emulator: RunningEmulator) -> None:
    emulator.state.revoke_token(TOKEN)
    health = (await token_health(settings_for(emulator.url)))[PIXEL]
    assert health.valid is False
    assert health.error is not None and "(190/463)" in health.error
    assert health.explanation is not None and "Access token invalid or expired" in (
        health.explanation
    )


async def test_unknown_token(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "EAAneverissuedTOKENabcdefghijklmnop")
    health = (await token_health(settings_for(emulator.url)))[PIXEL]
    assert health.valid is False
    assert health.error is not None and "(190)" in health.error
    assert "EAAneverissued" not in repr(health) + str(health.to_dict())


async def test_token_without_access_to_the_pixel(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, OTHER_TOKEN)  # valid, but granted on OTHER_PIXEL only
    health = (await token_health(settings_for(emulator.url)))[PIXEL]
    assert health.valid is True
    assert health.pixel_access is False


async def test_missing_token_is_reported_without_asking_graph(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV)
    before = len(emulator.state.request_log())
    health = (await token_health(settings_for(emulator.url)))[PIXEL]
    assert (health.configured, health.valid) == (False, False)
    assert health.error == f"no access token found in environment variable {TOKEN_ENV}"
    assert len(emulator.state.request_log()) == before


async def test_expired_version_leaves_token_validity_unknown(emulator: RunningEmulator) -> None:
    settings = settings_for(emulator.url, api_version="v19.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the version is reported by version_health, not warned
        health = (await token_health(settings))[PIXEL]
    assert health.valid is None
    assert health.explanation is not None and "(2635)" in health.explanation
    status = version_health(settings, today=date(2026, 11, 26))[PIXEL]
    assert status.state == "expired"
    assert status.available_until == date(2026, 5, 21)


@pytest.mark.parametrize(
    ("version", "today", "state"),
    [
        ("v26.0", date(2026, 11, 26), "ok"),
        ("v21.0", date(2026, 11, 26), "near_sunset"),
        ("v21.0", date(2027, 1, 22), "expired"),
        ("v20.0", date(2026, 11, 26), "expired"),
    ],
)
def test_version_health_per_pixel(version: str, today: date, state: str) -> None:
    settings = settings_for("http://127.0.0.1:9", api_version=version)
    assert version_health(settings, today)[PIXEL].state == state


async def test_clock_skew_against_real_time(emulator: RunningEmulator) -> None:
    skew = await clock_skew(settings_for(emulator.url))
    assert skew is not None and abs(skew) < 2.0  # the Date header has 1 s resolution


async def test_clock_skew_against_a_frozen_emulator_clock(emulator: RunningEmulator) -> None:
    emulator.state.set_clock(time.time() + 600)
    skew = await clock_skew(settings_for(emulator.url))
    assert skew is not None and 598.0 < skew < 602.0
    emulator.state.set_clock(time.time() - 3600)
    skew = await clock_skew(settings_for(emulator.url))
    assert skew is not None and -3602.0 < skew < -3598.0


async def test_unreachable_graph() -> None:
    probe = await probe_graph(settings_for(closed_port_url()))
    assert probe.reachable is False
    assert probe.skew_seconds is None
    assert probe.error is not None and probe.error.startswith("ConnectError")
