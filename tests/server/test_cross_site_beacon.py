"""``/capirelay.js`` in real Chromium, gateway on the shop's own site and on another site.

The shop page is served by its own small server; the gateway by another one
on another port.  Cookies ignore ports, so a page on ``127.0.0.1:P`` and the
gateway on ``127.0.0.1:G`` are one site (the gateway can read and set the
page's cookies), while a page on ``localhost:P`` with the gateway on
``127.0.0.1:G`` is another site (the gateway sees none of the page's cookies
and its ``Set-Cookie`` cannot reach them).  Each visit fires three events on
two pages; the emulator, standing in for Meta, must receive them with one
``fbp``, the page's own ``_fbp`` cookie, and the pixel's cookie when the pixel
set one first.  Debian's ``/usr/bin/chromium``; skipped only when it is absent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from capirelay.browser_ids import parse_fbc, parse_fbp
from capirelay.config import PixelSettings, Secret
from capirelay.emulator.testing import RunningEmulator
from capirelay.server import create_app
from chromium import NEEDS_CHROMIUM, SHOPPER_UA
from waiting import wait_for

from .conftest import PIXEL_ID, TOKEN_ENV, gateway_settings, serve_in_thread

PIXEL_FBP = "fb.0.1764700000000.424242424"
CLICK_ID = "IwAR2xLmB0fbclidFromAnAd_-9"

needs_chromium = NEEDS_CHROMIUM

# The page: a recording fbq (stands in for the pixel and keeps what it was given),
# optionally the pixel's own _fbp cookie written before the snippet runs (the pixel
# loads first on a real shop), and the snippet from the gateway.
PAGE = """<!doctype html><html><head><title>shop</title>
<script>
window.fbqCalls = [];
window.fbq = function () {{ window.fbqCalls.push([].slice.call(arguments)); }};
{pixel_cookie}
</script>
<script src="{gateway}/capirelay.js" data-pixel-id="{pixel}"></script>
</head><body>shop</body></html>"""


@dataclass
class Servers:
    page_port: int
    gateway_url: str
    emulator: RunningEmulator


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
    emulator: RunningEmulator,
    secrets_in_env: pytest.MonkeyPatch,
) -> Iterator[Servers]:
    gateway_holder: dict[str, str] = {}

    async def page(request: Request) -> HTMLResponse:
        pixel_cookie = ""
        if request.query_params.get("pixel") == "1":
            pixel_cookie = f'document.cookie = "_fbp={PIXEL_FBP}; path=/; max-age=7776000";'
        html = PAGE.format(pixel_cookie=pixel_cookie, gateway=gateway_holder["url"], pixel=PIXEL_ID)
        return HTMLResponse(html)

    shop = Starlette(routes=[Route("/", page), Route("/product", page)])
    with serve_in_thread(shop) as page_url:
        page_port = int(page_url.rsplit(":", 1)[1])
        db = tmp_path_factory.mktemp("cross-site") / "capirelay.db"
        origins = [f"http://127.0.0.1:{page_port}", f"http://localhost:{page_port}"]
        settings = gateway_settings(
            db,
            emulator.url,
            pixels={
                PIXEL_ID: PixelSettings(
                    access_token=Secret(env=TOKEN_ENV),
                    default_country="US",
                    allowed_origins=origins,
                )
            },
        )
        with serve_in_thread(create_app(settings)) as gateway_url:
            gateway_holder["url"] = gateway_url
            yield Servers(page_port, gateway_url, emulator)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(user_agent=SHOPPER_UA)
    try:
        yield context.new_page()
    finally:
        context.close()


def _visit(page: Page, base: str, query: str = "") -> list[str]:
    """One visit: PageView on the landing page, ViewContent and AddToCart on a product page."""
    tag = uuid.uuid4().hex[:10]
    ids = [f"{tag}-pageview", f"{tag}-view", f"{tag}-cart"]
    page.goto(f"{base}/{query}")
    page.evaluate("id => capirelay.track('PageView', {}, {}, {eventId: id})", ids[0])
    page.goto(f"{base}/product")
    page.evaluate(
        "id => capirelay.track('ViewContent', {content_ids: ['SKU-1']}, {}, {eventId: id})", ids[1]
    )
    page.evaluate(
        "id => capirelay.track('AddToCart', {value: 5, currency: 'EUR'}, {}, {eventId: id})",
        ids[2],
    )
    calls = page.evaluate("window.fbqCalls")
    assert [call[3]["eventID"] for call in calls] == ids[1:]  # the product page's two events
    return ids


def _received(emulator: RunningEmulator, ids: list[str]) -> list[dict[str, Any]]:
    def arrived() -> list[dict[str, Any]] | None:
        by_id = {e["event"]["event_id"]: e["event"] for e in emulator.state.events(PIXEL_ID)}
        return [by_id[i] for i in ids] if all(i in by_id for i in ids) else None

    events: list[dict[str, Any]] = wait_for(arrived, timeout=15)
    return events


def _page_cookie(page: Page, name: str) -> str | None:
    for cookie in page.context.cookies():
        if cookie["name"] == name:
            return str(cookie["value"])
    return None


LAYOUTS = {
    "same-site": "http://127.0.0.1:{port}",  # gateway on 127.0.0.1 too (another port)
    "cross-site": "http://localhost:{port}",  # gateway on 127.0.0.1: another site
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@needs_chromium[0]
@needs_chromium[1]
def test_one_fbp_per_visit_the_pages_own(servers: Servers, page: Page, layout: str) -> None:
    base = LAYOUTS[layout].format(port=servers.page_port)
    ids = _visit(page, base)
    events = _received(servers.emulator, ids)
    fbps = {event["user_data"]["fbp"] for event in events}
    assert len(fbps) == 1, f"{layout}: one visit reached Meta with {len(fbps)} fbp values"
    [fbp] = fbps
    assert parse_fbp(fbp) is not None
    # The value is the page's own first-party cookie, so the pixel and later visits use it too.
    assert _page_cookie(page, "_fbp") == fbp


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@needs_chromium[0]
@needs_chromium[1]
def test_the_pixels_cookie_wins(servers: Servers, page: Page, layout: str) -> None:
    base = LAYOUTS[layout].format(port=servers.page_port)
    ids = _visit(page, base, "?pixel=1")
    events = _received(servers.emulator, ids)
    assert [event["user_data"]["fbp"] for event in events] == [PIXEL_FBP] * 3
    assert _page_cookie(page, "_fbp") == PIXEL_FBP


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@needs_chromium[0]
@needs_chromium[1]
def test_click_id_becomes_one_fbc_on_the_page(servers: Servers, page: Page, layout: str) -> None:
    base = LAYOUTS[layout].format(port=servers.page_port)
    ids = _visit(page, base, f"?fbclid={CLICK_ID}")
    events = _received(servers.emulator, ids)
    fbcs = {event["user_data"]["fbc"] for event in events}
    assert len(fbcs) == 1
    [fbc] = fbcs
    parsed = parse_fbc(fbc)
    assert parsed is not None and parsed.payload == CLICK_ID  # the click id's case kept
    assert _page_cookie(page, "_fbc") == fbc


def test_explicit_fbp_from_another_site_is_kept(servers: Servers) -> None:
    """An explicit valid ``user_data.fbp`` from another site is sent as given, not re-minted."""
    event_id = f"explicit-{uuid.uuid4().hex[:10]}"
    given = "fb.1.1764700000000.424242424"
    response = httpx.post(
        f"{servers.gateway_url}/v1/collect",
        content=json.dumps(
            {
                "pixel_id": PIXEL_ID,
                "event_name": "PageView",
                "event_id": event_id,
                "page_url": f"http://localhost:{servers.page_port}/",
                "user_data": {"fbp": given},
            }
        ),
        headers={"origin": f"http://localhost:{servers.page_port}", "user-agent": SHOPPER_UA},
    )
    assert response.status_code == 202, response.text
    assert response.json()["fbp"] == given
    assert response.json()["status"] == "queued"
    [event] = _received(servers.emulator, [event_id])
    assert event["user_data"]["fbp"] == given
