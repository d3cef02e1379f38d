"""What a site owner pastes, in real Chromium: ``capirelay init``'s snippet and the README's call.

``capirelay init`` prints what goes on every page; the README shows
``capirelay.track(...)`` in an inline script right after it.  The script tag is
``async``, so that inline call runs before ``capirelay.js`` has loaded: the
pasted snippet must take it anyway (a stub that queues calls, as Meta's ``fbq``
does) and ``capirelay.js`` must send what was queued, once and in order, when it
loads.  The page is served on ``localhost:P`` and the gateway on ``127.0.0.1:G``
(another site, as in ``test_cross_site_beacon``).  The gateway's answer for
``capirelay.js`` is held until the page's HTML has been parsed, so calls made
"before load" really are.  Debian's ``/usr/bin/chromium``; skipped only when it is
absent.
"""

from __future__ import annotations

import json
import re
import textwrap
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Route
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route as StarletteRoute
from typer.testing import CliRunner

from capirelay.cli import app
from capirelay.config import PixelSettings, Secret
from capirelay.emulator.testing import RunningEmulator
from capirelay.server import create_app
from chromium import NEEDS_CHROMIUM, SHOPPER_UA
from waiting import wait_for

from .conftest import PIXEL_ID, TOKEN_ENV, gateway_settings, serve_in_thread

pytestmark = NEEDS_CHROMIUM

README = Path(__file__).resolve().parents[2] / "README.md"
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "CAPIRELAY_CONFIG": None})
# A recording stand-in for Meta's pixel, loaded first as on a real shop.
FBQ = (
    "<script>window.fbqCalls = []; window.fbq = function () "
    "{ window.fbqCalls.push([].slice.call(arguments)); };</script>"
)


@dataclass
class Site:
    page_origin: str
    gateway_url: str
    emulator: RunningEmulator
    pages: dict[str, str] = field(default_factory=dict)

    def url(self, html: str) -> str:
        """Serve ``html`` at a page of its own on the shop's origin."""
        name = uuid.uuid4().hex[:12]
        self.pages[name] = html
        return f"{self.page_origin}/{name}"


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
    emulator: RunningEmulator,
    secrets_in_env: pytest.MonkeyPatch,
) -> Iterator[Site]:
    pages: dict[str, str] = {}

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(pages[request.path_params["name"]])

    shop = Starlette(routes=[StarletteRoute("/{name}", page)])
    with serve_in_thread(shop) as shop_url:
        page_origin = f"http://localhost:{shop_url.rsplit(':', 1)[1]}"  # another site
        settings = gateway_settings(
            tmp_path_factory.mktemp("pasted") / "capirelay.db",
            emulator.url,
            pixels={
                PIXEL_ID: PixelSettings(
                    access_token=Secret(env=TOKEN_ENV), allowed_origins=[page_origin]
                )
            },
        )
        with serve_in_thread(create_app(settings)) as gateway_url:
            yield Site(page_origin, gateway_url, emulator, pages)


@pytest.fixture(scope="module")
def pasted(site: Site, tmp_path_factory: pytest.TempPathFactory) -> str:
    """What ``capirelay init --no-input`` tells the user to put on every page, as printed."""
    config = tmp_path_factory.mktemp("init") / "capirelay.toml"
    result = runner.invoke(
        app,
        [
            "init",
            "--no-input",
            "--config",
            str(config),
            "--pixel",
            PIXEL_ID,
            "--token-env",
            TOKEN_ENV,
            "--origin",
            site.page_origin,
            "--public-url",
            site.gateway_url,
            "--graph-url",
            site.emulator.url,
        ],
    )
    assert result.exit_code == 0, result.output
    after = result.stdout.split("On every page of your site", 1)[1]
    block = after.split("\n", 1)[1].split("\n\n", 1)[0]
    assert "capirelay.js" in block, result.stdout
    return textwrap.dedent(block)


def readme_call() -> str:
    """The inline ``<script>`` with ``capirelay.track(...)`` of the README's snippet example."""
    section = README.read_text(encoding="utf-8").split("### Browser snippet", 1)[1]
    [example] = re.findall(r"```html\n(.*?)```", section.split("\n### ", 1)[0], re.DOTALL)
    scripts = re.findall(r"<script>\n.*?</script>", example, re.DOTALL)
    [call] = [script for script in scripts if "capirelay.track(" in script]
    return call


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(user_agent=SHOPPER_UA)
    try:
        yield context.new_page()
    finally:
        context.close()


def _beacons(page: Page) -> list[dict[str, Any]]:
    """Every beacon body the page sends, in the order it sends them."""
    sent: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda r: (
            sent.append(json.loads(r.post_data or "{}"))
            if r.url.endswith("/v1/collect") and r.method == "POST"
            else None
        ),
    )
    return sent


def _open_before_the_script_loads(page: Page, site: Site, url: str) -> None:
    """Open ``url`` with ``capirelay.js`` held until the page's HTML is parsed (its inline
    scripts have run), then let it load and wait until it has."""
    held: list[Route] = []
    released = False

    def hold(route: Route) -> None:
        if released:
            route.continue_()
        else:
            held.append(route)

    page.route(f"{site.gateway_url}/capirelay.js", hold)
    page.goto(url, wait_until="domcontentloaded")
    released = True
    for route in held:
        route.continue_()
    page.wait_for_function("window.capirelay && window.capirelay.version")
    page.wait_for_load_state("load")


def _arrived(site: Site, ids: list[str]) -> list[dict[str, Any]]:
    """The events ``ids`` as Meta (the emulator) received them, once every one has."""

    def all_there() -> list[dict[str, Any]] | None:
        by_id = {e["event"]["event_id"]: e["event"] for e in site.emulator.state.events(PIXEL_ID)}
        return [by_id[i] for i in ids] if all(i in by_id for i in ids) else None

    events: list[dict[str, Any]] = wait_for(all_there, timeout=15, what=f"events {ids}")
    return events


def _from_visit(site: Site, visit: str) -> list[dict[str, Any]]:
    events = (e["event"] for e in site.emulator.state.events(PIXEL_ID))
    return [e for e in events if e.get("event_source_url", "").endswith(f"?visit={visit}")]


def _flush(page: Page) -> None:
    """Take in the page's events up to now (Playwright delivers them during its own calls)."""
    page.evaluate("0")


def _received_counts(site: Site) -> Counter[str]:
    return Counter(e["event"]["event_id"] for e in site.emulator.state.events(PIXEL_ID))


def test_the_readme_call_after_what_init_prints_reaches_the_gateway(
    site: Site, pasted: str, page: Page
) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sent = _beacons(page)
    html = (
        f"<!doctype html><html><head>\n{pasted}\n{readme_call()}\n</head><body>shop</body></html>"
    )
    visit = uuid.uuid4().hex[:10]
    _open_before_the_script_loads(page, site, site.url(html) + f"?visit={visit}")
    assert errors == []

    [event] = wait_for(lambda: _from_visit(site, visit), timeout=15, what="the README's event")
    _flush(page)
    assert [b["event_id"] for b in sent] == [event["event_id"]]
    assert event["event_name"] == "Purchase"
    assert event["event_source_url"].endswith(f"?visit={visit}")
    assert event["custom_data"]["content_ids"] == ["TSHIRT-42"]
    assert re.fullmatch(r"[0-9a-f]{64}", event["user_data"]["em"][0])  # hashed at the gateway


def test_calls_before_and_after_load_arrive_once_each_in_order(
    site: Site, pasted: str, page: Page
) -> None:
    sent = _beacons(page)
    early = (
        "<script>window.early = capirelay; window.ids = ["
        'capirelay.track("PageView"), '
        'capirelay.track("ViewContent", {content_ids: ["SKU-1"]}, {}, {eventId: "given-'
        + uuid.uuid4().hex[:8]
        + '"})'
        "]; window.stubbed = !capirelay.version;</script>"
    )
    html = f"<!doctype html><html><head>{FBQ}\n{pasted}\n{early}</head><body>shop</body></html>"
    _open_before_the_script_loads(page, site, site.url(html))

    # Both calls were taken by the stub before capirelay.js ran, and answered with their ids.
    assert page.evaluate("window.stubbed") is True
    ids: list[str] = page.evaluate("window.ids")
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", ids[0]
    )
    assert ids[1].startswith("given-")
    ids.append(page.evaluate("capirelay.track('AddToCart', {value: 5, currency: 'EUR'})"))
    # A reference to the stub kept by the page's own code still reaches the snippet.
    ids.append(page.evaluate("window.early.track('InitiateCheckout')"))

    events = _arrived(site, ids)
    _flush(page)
    assert [e["event_name"] for e in events] == [
        "PageView",
        "ViewContent",
        "AddToCart",
        "InitiateCheckout",
    ]
    assert [b["event_id"] for b in sent] == ids  # sent in the order they were made, once each
    counts = _received_counts(site)
    assert [counts[i] for i in ids] == [1, 1, 1, 1]
    # The pixel was given the same ids, in the same order, once each.
    assert [call[3]["eventID"] for call in page.evaluate("window.fbqCalls")] == ids


def test_a_page_that_loads_the_script_synchronously_as_well_sends_each_event_once(
    site: Site, pasted: str, page: Page
) -> None:
    # An older page (the script without async), then the pasted snippet as well: the stub
    # must not replace the loaded snippet, nor the second copy send anything twice.
    sync_tag = f'<script src="{site.gateway_url}/capirelay.js" data-pixel-id="{PIXEL_ID}"></script>'
    call = "<script>window.first = capirelay.track('PageView');</script>"
    html = f"<!doctype html><html><head>{FBQ}\n{sync_tag}\n{pasted}\n{call}</head></html>"
    sent = _beacons(page)
    page.goto(site.url(html))
    ids = [page.evaluate("window.first"), page.evaluate("capirelay.track('ViewContent')")]

    _arrived(site, ids)
    _flush(page)
    assert [b["event_id"] for b in sent] == ids
    assert [call[3]["eventID"] for call in page.evaluate("window.fbqCalls")] == ids


def test_a_consent_decision_made_before_load_applies_in_its_place(
    site: Site, pasted: str, page: Page
) -> None:
    # Replayed in order: the first track waits for consent and is dropped by the refusal,
    # the second is refused, only the one after consent(true) is sent.
    calls = (
        "<script>capirelay.init({requireConsent: true}); window.ids = ["
        "capirelay.track('PageView')]; capirelay.consent(false);"
        " window.ids.push(capirelay.track('ViewContent')); capirelay.consent(true);"
        " window.ids.push(capirelay.track('AddToCart'));</script>"
    )
    html = f"<!doctype html><html><head>{FBQ}\n{pasted}\n{calls}</head></html>"
    sent = _beacons(page)
    _open_before_the_script_loads(page, site, site.url(html))
    ids: list[str] = page.evaluate("window.ids")

    [event] = _arrived(site, ids[2:])
    _flush(page)
    assert [b["event_id"] for b in sent] == ids[2:]
    assert [b["consent"] for b in sent] == [{"ad_storage": "granted", "ad_user_data": "granted"}]
    assert event["event_name"] == "AddToCart"
    assert [call[3]["eventID"] for call in page.evaluate("window.fbqCalls")] == ids[2:]
