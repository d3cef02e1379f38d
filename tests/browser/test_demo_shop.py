"""The snippet in a real browser: headless Chromium (Debian ``chromium``) on the demo shop.

The demo runs in a subprocess through :func:`capirelay.demo.run_demo`, the
function behind ``capirelay demo``: gateway, Graph API emulator and shop page
on loopback, stopped with SIGINT like a user's Ctrl-C.  Each test opens the
shop in a fresh browser context (no cookies, no storage), acts like a shopper
and then asks the emulator, which stands in for Meta, what arrived.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from chromium import NEEDS_CHROMIUM

pytestmark = NEEDS_CHROMIUM

from playwright.sync_api import Browser, BrowserContext, Page  # noqa: E402

from capirelay.demo import DEMO_PIXEL_ID  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
EMULATOR_LINE = re.compile(r"Graph emulator (http://127\.0\.0\.1:\d+)")
STARTUP_SECONDS = 20.0
DELIVERY_SECONDS = 10.0
# What ``capirelay demo --port P --db D`` runs, without the rest of the CLI.
RUN_DEMO = """
import asyncio, sys
from pathlib import Path
from capirelay.demo import DemoOptions, run_demo
sys.exit(asyncio.run(run_demo(DemoOptions(port=int(sys.argv[1]), db_path=Path(sys.argv[2])))))
"""


@dataclass(frozen=True)
class Demo:
    url: str
    emulator_url: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read_emulator_url(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_SECONDS
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        match = EMULATOR_LINE.search(line)
        if match:
            return match.group(1)
    raise AssertionError("capirelay demo did not start:\n" + "".join(seen[-20:]))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    port = _free_port()
    db = tmp_path_factory.mktemp("demo") / "demo.db"
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "PYTHONUNBUFFERED": "1"}
    env.pop("CAPIRELAY_CONFIG", None)
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_DEMO, str(port), str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        emulator_url = _read_emulator_url(process)
        # Drain the live status table so the demo never blocks on a full pipe.
        drain = threading.Thread(target=process.stdout.read, daemon=True)  # type: ignore[union-attr]
        drain.start()
        yield Demo(url=f"http://127.0.0.1:{port}", emulator_url=emulator_url)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _beacons(page: Page) -> list[str]:
    """Record every request the page makes to the gateway's beacon endpoint."""
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/v1/collect") else None)
    return sent


def _received(demo: Demo) -> dict[str, dict[str, Any]]:
    """The events "Meta" (the emulator) holds for the demo pixel, by event id."""
    answer = httpx.get(f"{demo.emulator_url}/_emulator/pixels/{DEMO_PIXEL_ID}/events").json()
    return {item["event"]["event_id"]: item["event"] for item in answer["data"]}


def _delivered(demo: Demo, event_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + DELIVERY_SECONDS
    while time.monotonic() < deadline:
        event = _received(demo).get(event_id)
        if event is not None:
            return event
        time.sleep(0.1)
    raise AssertionError(f"event {event_id} did not reach the emulator in {DELIVERY_SECONDS} s")


def _bots_dropped(demo: Demo) -> float:
    metrics = httpx.get(f"{demo.url}/metrics").text
    pattern = rf'capirelay_events_dropped_total{{pixel="{DEMO_PIXEL_ID}",reason="bot"}} (\S+)'
    match = re.search(pattern, metrics)
    return float(match.group(1)) if match else 0.0


def _buy(page: Page) -> str:
    """Click Buy; the event id the page handed to the recording fbq stub."""
    page.click("#buy")
    calls = page.evaluate("window.fbqCalls")
    assert calls, "the page did not call fbq"
    kind, name, params, options = calls[-1]
    assert (kind, name) == ("track", "Purchase")
    assert params["currency"] == "EUR" and params["value"] == 25
    # User data never goes to the pixel: only custom data and the shared id.
    assert set(options) == {"eventID"}
    return str(options["eventID"])


def test_buy_reaches_meta_with_the_pixels_event_id(demo: Demo, page: Page) -> None:
    page.goto(f"{demo.url}/shop")
    page.fill("#email", "Shopper@Example.com")
    event_id = _buy(page)

    event = _delivered(demo, event_id)
    assert event["event_name"] == "Purchase"
    assert event["action_source"] == "website"
    assert event["custom_data"]["currency"].upper() == "EUR"
    # The e-mail arrived hashed, never raw.
    assert re.fullmatch(r"[0-9a-f]{64}", event["user_data"]["em"][0])
    assert "shopper@example.com" not in str(event).lower()
    fbp = {c["name"]: c["value"] for c in page.context.cookies()}.get("_fbp")
    assert fbp is not None and fbp.startswith("fb.")
    assert event["user_data"]["fbp"] == fbp

    # The page shows what really happened: delivered, with the Graph request's fbtrace_id.
    line = page.locator(f'#log .outcome[data-event-id="{event_id}"][data-status="delivered"]')
    line.wait_for(timeout=DELIVERY_SECONDS * 1000)
    assert re.search(r"delivered to Meta \(emulator\) · fbtrace_id \S+", line.inner_text())
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo-shop-after-buy.png"), full_page=True)


def test_a_headless_buy_shows_it_was_dropped_as_a_bot(demo: Demo, browser: Browser) -> None:
    # Headless Chromium's own user agent ("HeadlessChrome"): the gateway drops it as a bot,
    # and the page must say so instead of claiming the purchase was sent.
    context = browser.new_context()
    try:
        page = context.new_page()
        before = _bots_dropped(demo)
        page.goto(f"{demo.url}/shop")
        event_id = _buy(page)
        line = page.locator(f'#log .outcome[data-event-id="{event_id}"][data-status="dropped"]')
        line.wait_for(timeout=DELIVERY_SECONDS * 1000)
        assert "dropped by the gateway" in line.inner_text()
        assert "crawler or a headless browser" in line.inner_text()
        assert _bots_dropped(demo) == before + 1
        assert event_id not in _received(demo)
    finally:
        context.close()


def test_nothing_is_sent_before_consent_and_the_queue_flushes_after(demo: Demo, page: Page) -> None:
    sent = _beacons(page)
    page.goto(f"{demo.url}/shop")
    page.evaluate("capirelay.init({requireConsent: true})")
    held = page.evaluate("capirelay.track('Purchase', {value: 5, currency: 'EUR'})")
    page.wait_for_timeout(300)
    assert sent == []
    assert page.evaluate("window.fbqCalls") == []
    assert held not in _received(demo)

    page.evaluate("capirelay.consent(true)")
    event = _delivered(demo, held)
    assert len(sent) == 1
    assert page.evaluate("window.fbqCalls")[-1][3] == {"eventID": held}
    assert event["custom_data"]["value"] == 5


@pytest.mark.parametrize(
    "decision",
    ["false", "{ad_storage: 'granted', ad_user_data: 'denied'}", "{ad_storage: false}"],
)
def test_refused_consent_sends_nothing(demo: Demo, page: Page, decision: str) -> None:
    sent = _beacons(page)
    page.goto(f"{demo.url}/shop")
    page.evaluate(f"capirelay.init({{requireConsent: true}}); capirelay.consent({decision})")
    page.click("#buy")
    page.wait_for_timeout(300)
    assert sent == []
    assert page.evaluate("window.fbqCalls") == []


def test_click_id_is_stored_only_after_consent(demo: Demo, page: Page) -> None:
    page.goto(f"{demo.url}/shop?fbclid=AbC123")
    page.evaluate("capirelay.init({requireConsent: true})")
    assert page.evaluate("sessionStorage.getItem('capirelay_fbclid')") is None
    page.evaluate("capirelay.consent(true)")
    assert page.evaluate("sessionStorage.getItem('capirelay_fbclid')") == "AbC123"
    page.evaluate("capirelay.consent(false)")
    assert page.evaluate("sessionStorage.getItem('capirelay_fbclid')") is None


def test_custom_events_use_track_custom(demo: Demo, page: Page) -> None:
    page.goto(f"{demo.url}/shop")
    event_id = page.evaluate("capirelay.track('SizeGuideOpened', {size: 'M'})")
    assert page.evaluate("window.fbqCalls") == [
        ["trackCustom", "SizeGuideOpened", {"size": "M"}, {"eventID": event_id}]
    ]
    assert _delivered(demo, event_id)["event_name"] == "SizeGuideOpened"


def test_fbclid_from_the_landing_page_reaches_meta_with_its_case(demo: Demo, page: Page) -> None:
    # Land from an ad, browse to another page, buy there: the click id rides along.
    page.goto(f"{demo.url}/shop?fbclid=AbC123")
    assert page.evaluate("sessionStorage.getItem('capirelay_fbclid')") == "AbC123"
    page.goto(f"{demo.url}/shop?page=2")
    event_id = _buy(page)

    event = _delivered(demo, event_id)
    assert re.fullmatch(r"fb\.\d\.\d{13}\.AbC123", event["user_data"]["fbc"])
    fbc_cookie = {c["name"]: c["value"] for c in page.context.cookies()}.get("_fbc")
    assert fbc_cookie == event["user_data"]["fbc"]


def test_snippet_is_served_with_cache_headers(demo: Demo) -> None:
    response = httpx.get(f"{demo.url}/capirelay.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/javascript; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    again = httpx.get(
        f"{demo.url}/capirelay.js", headers={"If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304


def test_without_send_beacon_or_random_uuid_fetch_and_a_v4_id_take_over(
    demo: Demo, context: BrowserContext
) -> None:
    context.add_init_script(
        "delete Navigator.prototype.sendBeacon; delete Crypto.prototype.randomUUID;"
    )
    page = context.new_page()
    kinds: list[str] = []
    page.on(
        "request",
        lambda r: kinds.append(r.resource_type) if r.url.endswith("/v1/collect") else None,
    )
    page.goto(f"{demo.url}/shop")
    assert page.evaluate("typeof navigator.sendBeacon") == "undefined"
    event_id = _buy(page)

    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", event_id
    )
    assert _delivered(demo, event_id)["event_name"] == "Purchase"
    assert kinds == ["fetch"]


def test_headless_browsers_are_filtered_as_bots(demo: Demo, browser: Browser) -> None:
    robot = browser.new_context()  # Chromium's own "HeadlessChrome" user agent
    try:
        page = robot.new_page()
        page.goto(f"{demo.url}/shop")
        before = _bots_dropped(demo)
        event_id = _buy(page)  # the pixel still fires; the gateway refuses to count it
        deadline = time.monotonic() + DELIVERY_SECONDS
        while _bots_dropped(demo) == before:
            assert time.monotonic() < deadline, "the gateway never counted the bot"
            time.sleep(0.05)
        assert event_id not in _received(demo)
        # The page's own _fbp may exist: the snippet writes it on the page as the pixel does.
    finally:
        robot.close()
