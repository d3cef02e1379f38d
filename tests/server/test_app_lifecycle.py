"""The app in-process (httpx.ASGITransport, lifespan run by hand): storage failure, readiness,
who owns the outbox and the engine."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from capirelay.config import Secret, Settings, WebhookSettings
from capirelay.delivery.engine import DeliveryEngine
from capirelay.emulator.testing import RunningEmulator
from capirelay.metrics import Metrics
from capirelay.outbox import SQLiteOutbox
from capirelay.server import create_app
from capirelay.server.run import main as run_main

from .conftest import CONFIG_TEST_CODE, INGEST_KEY, OTHER_PIXEL_ID, PIXEL_ID, gateway_settings


@pytest.fixture
def lifecycle_settings(
    tmp_path: Path, emulator: RunningEmulator, secrets_in_env: pytest.MonkeyPatch
) -> Settings:
    return gateway_settings(tmp_path / "owned.db", emulator.url)


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://gateway.test",
            headers={"Authorization": f"Bearer {INGEST_KEY}"},
        ) as client:
            yield client


def batch(prefix: str, size: int, padding: int) -> dict[str, Any]:
    now = int(time.time())
    return {
        "pixel_id": PIXEL_ID,
        "data": [
            {
                "event_name": "Purchase",
                "event_time": now,
                "event_id": f"{prefix}-{i}",
                "action_source": "website",
                "event_source_url": "https://shop.example/",
                "user_data": {"external_id": f"{prefix}-{i}", "client_user_agent": "x" * padding},
                "custom_data": {"value": 1, "currency": "EUR"},
            }
            for i in range(size)
        ],
    }


async def test_storage_failure_is_503_and_acknowledges_nothing(
    lifecycle_settings: Settings, tmp_path: Path
) -> None:
    # A 640 KiB quota stands in for a full disk: SQLite answers SQLITE_FULL past it.
    # (Room for the schema, which grows with migrations, plus at least one batch.)
    outbox = SQLiteOutbox(tmp_path / "full.db", max_bytes=640 * 1024)
    await outbox.open()
    try:
        async with running(create_app(lifecycle_settings, outbox=outbox)) as client:
            statuses = []
            for round_number in range(40):
                response = await client.post(
                    "/v1/events", json=batch(f"fill{round_number}", 50, 2000)
                )
                statuses.append(response.status_code)
                if response.status_code != 202:
                    break
            assert statuses[0] == 202 and statuses[-1] == 503, statuses
            assert response.headers["retry-after"].isdigit()
            assert response.json()["error"]["code"] == "storage_unavailable"
            assert "results" not in response.json()
    finally:
        await outbox.close()


async def test_readiness_needs_a_running_engine(
    lifecycle_settings: Settings, tmp_path: Path
) -> None:
    outbox = SQLiteOutbox(tmp_path / "ready.db")
    await outbox.open()
    metrics = Metrics()
    engine = DeliveryEngine(outbox, lifecycle_settings, metrics)
    try:
        app = create_app(lifecycle_settings, outbox=outbox, engine=engine, metrics=metrics)
        async with running(app) as client:
            not_started = await client.get("/readyz")
            await engine.start()
            started = await client.get("/readyz")
            await engine.stop()
        # A caller-owned outbox outlives the app.
        assert await outbox.ping()
    finally:
        await outbox.close()

    assert not_started.status_code == 503
    assert not_started.json()["status"] == "not_ready"
    assert any(reason.startswith("delivery") for reason in not_started.json()["reasons"])
    assert started.status_code == 200


async def test_owned_outbox_and_engine_are_closed_on_shutdown(lifecycle_settings: Settings) -> None:
    app = create_app(lifecycle_settings)
    async with running(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        engine = app.state.engine
        outbox = app.state.outbox
        assert engine.running
    assert not engine.running
    assert not await outbox.ping()


async def test_start_up_warns_of_a_test_event_code_and_an_unset_webhook_secret(
    tmp_path: Path,
    emulator: RunningEmulator,
    secrets_in_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Before, serve started silently: every event went out with the test code, and the
    # shop's first delivery was the first anyone heard of the missing secret (a 503).
    secrets_in_env.delenv("CAPIRELAY_TEST_UNSET_WEBHOOK_SECRET", raising=False)
    hook = WebhookSettings(
        preset="shopify",
        pixel_id=PIXEL_ID,
        secret=Secret(env="CAPIRELAY_TEST_UNSET_WEBHOOK_SECRET"),
    )
    settings = gateway_settings(tmp_path / "warned.db", emulator.url, webhooks={"shop": hook})
    caplog.set_level(logging.WARNING, logger="capirelay.server")
    async with running(create_app(settings)) as client:
        assert (await client.get("/readyz")).status_code == 200
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "capirelay.server" and r.levelno == logging.WARNING
    ]
    assert (
        "webhooks.shop.secret (environment variable CAPIRELAY_TEST_UNSET_WEBHOOK_SECRET) is "
        "missing or empty; export CAPIRELAY_TEST_UNSET_WEBHOOK_SECRET=<the webhook's signing "
        "secret, from the sender's settings> for the gateway's process: until then every "
        "delivery to POST /v1/webhooks/shop is answered 503 webhook_secret_missing, which the "
        "sender retries for a limited time only"
    ) in warnings
    [test_code] = [w for w in warnings if "test_event_code" in w]
    assert test_code.startswith(
        f"pixels.{OTHER_PIXEL_ID}.test_event_code is set ({CONFIG_TEST_CODE}): every event for "
        f"pixel {OTHER_PIXEL_ID} that carries no code of its own goes to Meta as a test event; "
        f"once testing is done, remove test_event_code from [pixels.{OTHER_PIXEL_ID}]"
    )


def test_command_line_refuses_a_missing_config(tmp_path: Path) -> None:
    assert run_main(["--config", str(tmp_path / "missing.toml")]) == 2


def test_command_line_help_names_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run_main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert all(option in out for option in ("--config", "--host", "--port", "--graceful-timeout"))


def test_start_up_does_not_warn_where_test_events_are_intended() -> None:
    from capirelay.config import PixelSettings, Settings
    from capirelay.ops.preflight import startup_findings

    class AllTestEvents(Settings):
        test_events_intended = True

    pixels = {"123": PixelSettings(test_event_code="TEST1")}
    assert [f.check for f in startup_findings(Settings(pixels=pixels))] == ["test events"]
    assert startup_findings(AllTestEvents(pixels=pixels)) == []


def test_start_up_warns_of_an_api_version_near_or_past_its_sunset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``serve`` said nothing at start-up of a pinned version 45 days from retirement, or
    already retired: the Graph client warns only once it is first made (first delivery or
    diagnostics run), which an idle pixel or disabled diagnostics never reach."""
    from datetime import date

    from capirelay.config import PixelSettings, Settings
    from capirelay.ops.preflight import log_startup_findings, startup_findings

    settings = Settings(
        pixels={
            "1": PixelSettings(api_version="v21.0"),
            "2": PixelSettings(api_version="v15.0"),
            "3": PixelSettings(),
            # Newer than capirelay's table: most likely Meta's latest, never "move back".
            "4": PixelSettings(api_version="v99.0"),
        }
    )
    findings = startup_findings(settings, today=date(2026, 12, 7))
    assert [(f.check, f.blocking) for f in findings] == [
        ("api version", False),
        ("api version", True),
    ]
    assert findings[0].detail == (
        "pixels.1.api_version: v21.0 stops working on 2027-01-21 (45 days left). "
        "Move api_version to v26.0 before then."
    )
    assert findings[1].fix.startswith('set api_version = "v26.0" in [pixels.2] and restart')
    caplog.set_level(logging.WARNING, logger="capirelay.test")
    log_startup_findings(settings, logging.getLogger("capirelay.test"))
    assert any(
        "pixels.2.api_version: v15.0 stopped working on 2024-11-20" in r.getMessage()
        for r in caplog.records
    )
