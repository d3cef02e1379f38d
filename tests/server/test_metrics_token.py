"""`/metrics` is open by default and needs `metrics_token` as a bearer token when one is set."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from capirelay.config import Secret, Settings
from capirelay.server import create_app

TOKEN = "scrape-token-0123456789"


async def scrape(settings: Settings, authorization: str | None) -> httpx.Response:
    app = create_app(settings)
    headers = {"Authorization": authorization} if authorization else {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.get("/metrics", headers=headers)


def settings_for(tmp_path: Path, token: Secret | None) -> Settings:
    return Settings(storage=f"sqlite:///{tmp_path / 'q.db'}", metrics_token=token)


async def test_metrics_are_open_without_a_token_configured(tmp_path: Path) -> None:
    response = await scrape(settings_for(tmp_path, None), None)
    assert response.status_code == 200
    assert "capirelay_events_accepted_total" in response.text


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN],
)
async def test_a_configured_token_is_required(tmp_path: Path, authorization: str | None) -> None:
    response = await scrape(settings_for(tmp_path, Secret(value=TOKEN)), authorization)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in response.text


async def test_the_right_token_scrapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_METRICS_TOKEN", TOKEN)
    response = await scrape(
        settings_for(tmp_path, Secret(env="TEST_METRICS_TOKEN")), f"Bearer {TOKEN}"
    )
    assert response.status_code == 200
    assert "capirelay_queue_depth" in response.text
