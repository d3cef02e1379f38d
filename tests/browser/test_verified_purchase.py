"""A verified purchase through the real snippet in headless Chromium.

The shop's thank-you page (served by Playwright's router on the gateway's own
origin, as a shop serving its gateway at ``track.`` would) loads
``/capirelay.js`` from a live gateway whose pixel requires a
server-signed token on ``Purchase``.  The page passes the token minted by the
library; a page that changes the value gets nothing through.  The snippet
uses ``sendBeacon`` (it cannot read the answer), so what arrived is asked of
the emulator standing in for Meta.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

from chromium import NEEDS_CHROMIUM
from waiting import wait_for

pytestmark = NEEDS_CHROMIUM

from playwright.sync_api import Browser, Page, Route  # noqa: E402

from capirelay import mint_beacon_token  # noqa: E402
from capirelay.config import PixelSettings, Secret  # noqa: E402
from capirelay.emulator.testing import RunningEmulator, run_emulator  # noqa: E402
from capirelay.server import create_app  # noqa: E402
from chromium import SHOPPER_UA  # noqa: E402
from server.conftest import gateway_settings, serve_in_thread  # noqa: E402

PIXEL_ID = "1234567890"
ACCESS_TOKEN = "browser-test-access-token"
SECRET = "browser-test-beacon-secret"


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL_ID: ACCESS_TOKEN}) as em:
        yield em


@pytest.fixture(scope="module")
def gateway(emulator: RunningEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("verified") / "capirelay.db"
    settings = gateway_settings(
        db,
        emulator.url,
        pixels={
            PIXEL_ID: PixelSettings(
                access_token=Secret(value=ACCESS_TOKEN),
                allowed_origins=["*"],
                beacon_events=["PageView", "Purchase"],
                require_verified=["Purchase"],
                verification_secret=Secret(value=SECRET),
            )
        },
    )
    with serve_in_thread(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def page(browser: Browser, gateway: str) -> Iterator[Page]:
    context = browser.new_context(user_agent=SHOPPER_UA)
    shop_page = context.new_page()
    html = (
        f'<html><body><script src="/capirelay.js" data-pixel-id="{PIXEL_ID}">'
        "</script></body></html>"
    )

    def thank_you(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html", body=html)

    shop_page.route(f"{gateway}/thank-you", thank_you)
    shop_page.goto(f"{gateway}/thank-you")
    shop_page.wait_for_function("window.capirelay && window.capirelay.version")
    try:
        yield shop_page
    finally:
        context.close()


def refused(gateway: str, code: str) -> float:
    text = httpx.get(f"{gateway}/metrics", timeout=5).text
    pattern = rf'capirelay_events_rejected_total{{pixel="{PIXEL_ID}",problem="{code}"}} (\S+)'
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def sent_ids(emulator: RunningEmulator) -> set[str]:
    return {str(e["event"].get("event_id")) for e in emulator.state.events(PIXEL_ID)}


def test_the_page_passes_the_servers_token_and_the_purchase_reaches_meta(
    page: Page, emulator: RunningEmulator
) -> None:
    event_id = f"order-{uuid.uuid4().hex[:8]}"
    token = mint_beacon_token(
        SECRET, pixel_id=PIXEL_ID, event_name="Purchase", event_id=event_id,
        value="25.50", currency="EUR", ttl_seconds=600,
    )  # fmt: skip
    returned = page.evaluate(
        "([id, token]) => capirelay.track('Purchase', {value: 25.5, currency: 'EUR'}, {},"
        " {eventId: id, token: token})",
        [event_id, token],
    )

    assert returned == event_id
    wait_for(lambda: event_id in sent_ids(emulator))


def test_a_page_that_lowers_the_value_gets_nothing_through(
    page: Page, emulator: RunningEmulator, gateway: str
) -> None:
    tampered = f"order-{uuid.uuid4().hex[:8]}"
    unsigned = f"order-{uuid.uuid4().hex[:8]}"
    marker = f"order-{uuid.uuid4().hex[:8]}"
    token = mint_beacon_token(
        SECRET, pixel_id=PIXEL_ID, event_name="Purchase", event_id=tampered,
        value="250.00", currency="EUR", ttl_seconds=600,
    )  # fmt: skip
    marker_token = mint_beacon_token(
        SECRET, pixel_id=PIXEL_ID, event_name="Purchase", event_id=marker,
        value="1.00", currency="EUR", ttl_seconds=600,
    )  # fmt: skip
    page.evaluate(
        "([a, t, b, m, mt]) => {"
        " capirelay.track('Purchase', {value: 2.5, currency: 'EUR'}, {}, {eventId: a, token: t});"
        " capirelay.track('Purchase', {value: 2.5, currency: 'EUR'}, {}, {eventId: b});"
        " capirelay.track('Purchase', {value: 1, currency: 'EUR'}, {}, {eventId: m, token: mt});"
        "}",
        [tampered, token, unsigned, marker, marker_token],
    )

    # The gateway counts each refusal by its code when it answers: once both are
    # counted, neither beacon was queued; the marker shows the page's beacons flow.
    wait_for(lambda: refused(gateway, "token_mismatch") >= 1)
    wait_for(lambda: refused(gateway, "verification_required") >= 1)
    wait_for(lambda: marker in sent_ids(emulator))
    assert tampered not in sent_ids(emulator) and unsigned not in sent_ids(emulator)
