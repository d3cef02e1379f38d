"""One gateway with every door open for the security suite: ingest keys, the browser beacon,
three signed webhooks (Shopify, WooCommerce, Stripe) and the dashboard, on a loopback port.

Secrets are literal values here (the suite checks what the gateway does with them, not how
they are loaded); :data:`SECRETS` lists them so tests can look for them in the output.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capirelay.config import (
    DashboardSettings,
    DeliverySettings,
    IngestKey,
    PixelSettings,
    Secret,
    Settings,
    WebhookSettings,
)
from capirelay.server import create_app
from reliability.harness import (
    ACCESS_TOKEN,
    ADMIN_TOKEN,
    INGEST_KEY,
    PIXEL_ID,
    SHOPIFY_SECRET,
    STRIPE_SECRET,
    RecordedEmulator,
    recorded_emulator,
)
from server.conftest import serve_in_thread

SHOP_ORIGIN = "https://shop.example"
WOO_SECRET = "wc_security_secret_89ab"
WEBHOOK_SECRETS = {"shop": SHOPIFY_SECRET, "woo": WOO_SECRET, "stripe": STRIPE_SECRET}
PRESETS = {"shop": "shopify", "woo": "woocommerce", "stripe": "stripe"}
MAX_BODY = 256 * 1024
MAX_COLLECT_BODY = 4096


def security_settings(graph_url: str, db_path: Path) -> Settings:
    return Settings(
        storage=f"sqlite:///{db_path}",
        graph_url=graph_url,
        pixels={
            PIXEL_ID: PixelSettings(
                access_token=Secret(value=ACCESS_TOKEN),
                default_country="GB",
                allowed_origins=[SHOP_ORIGIN],
            )
        },
        ingest_keys={"backend": IngestKey(key=Secret(value=INGEST_KEY))},
        webhooks={
            name: WebhookSettings(
                preset=PRESETS[name], pixel_id=PIXEL_ID, secret=Secret(value=secret)
            )
            for name, secret in WEBHOOK_SECRETS.items()
        },
        dashboard=DashboardSettings(admin_token=Secret(value=ADMIN_TOKEN)),
        delivery=DeliverySettings(linger_ms=5, poll_seconds=0.05),
        max_body_bytes=MAX_BODY,
        max_collect_body_bytes=MAX_COLLECT_BODY,
    )


@pytest.fixture(scope="module")
def meta() -> Iterator[RecordedEmulator]:
    with recorded_emulator() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def settings(meta: RecordedEmulator, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return security_settings(meta.url, tmp_path_factory.mktemp("security") / "capirelay.db")


@pytest.fixture(scope="module")
def gateway(settings: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(settings)) as url:
        yield url
