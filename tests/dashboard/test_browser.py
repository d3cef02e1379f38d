"""The dashboard in a real browser (headless Chromium through Playwright).

Logs in, watches the counts move as events go through the gateway to the
emulator, opens a dead-lettered event, replays it and sees it delivered.
Screenshots land in ``test-artifacts/dashboard/`` (gitignored) for a human
to look at.  Uses Debian's ``/usr/bin/chromium``; skipped only when it is absent.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chromium import NEEDS_CHROMIUM
from waiting import wait_for

from .conftest import ADMIN_TOKEN, TEST_CODE, Gateway, purchase

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"

playwright_sync = pytest.importorskip("playwright.sync_api")

pytestmark = NEEDS_CHROMIUM


@pytest.fixture
def page(browser: playwright_sync.Browser) -> Iterator[playwright_sync.Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def _shot(page: playwright_sync.Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _sent(page: playwright_sync.Page, event_name: str) -> int:
    cell = page.locator(f'tr[data-event="{event_name}"] td[data-col="sent"]').first
    return int(cell.inner_text()) if cell.count() else 0


def _event(name: str, event_id: str, **extra: object) -> dict[str, object]:
    event = purchase(event_id, **extra)
    event["event_name"] = name
    if name != "Purchase":
        event.pop("custom_data")
    return event


def _log_in(page: playwright_sync.Page, gateway: Gateway) -> None:
    page.goto(f"{gateway.url}/ui/")
    assert page.url.endswith("/ui/login")
    _shot(page, "01-login")
    page.fill("#token", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{gateway.url}/ui/")


def test_log_in_watch_counts_replay_a_dead_letter(
    page: playwright_sync.Page, gateway: Gateway, uid: str
) -> None:
    missing: list[str] = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    _log_in(page, gateway)
    sent_before = _sent(page, "Purchase")

    # Traffic of a few kinds: some with phone and click id, some duplicates.
    events = [_event("Purchase", f"{uid}p{i}", phone=f"+1 415 555 01{i:02d}") for i in range(6)]
    events += [_event("AddToCart", f"{uid}c{i}") for i in range(9)]
    events += [
        _event("Lead", f"{uid}l{i}", fbc=f"fb.1.{int(time.time() * 1000)}.AbC{i}") for i in range(4)
    ]
    events += [_event("Purchase", f"{uid}p0"), _event("AddToCart", f"{uid}c1")]  # duplicates
    gateway.send(*events)
    gateway.send(_event("ViewContent", f"{uid}tv"), test_event_code=TEST_CODE)
    wait_for(lambda: {f"{uid}p5", f"{uid}c8", f"{uid}l3"} <= gateway.accepted_ids())

    def purchase_sent_moved() -> bool:
        page.reload()
        return _sent(page, "Purchase") >= sent_before + 6

    wait_for(purchase_sent_moved, timeout=10, interval=0.2)
    assert (
        int(page.locator('tr[data-event="AddToCart"] td[data-col="duplicates"]').inner_text()) >= 1
    )
    assert page.locator("svg.chart polyline").count() >= 3
    _shot(page, "02-overview")

    # A dead letter: the emulator refuses one specific event.
    bad = f"{uid}bad"
    gateway.reject_event(bad)
    gateway.send(_event("Purchase", bad))

    def dead_lettered() -> bool:
        page.goto(f"{gateway.url}/ui/dlq")
        return page.locator(f'tr[data-event-id="{bad}"]').count() == 1

    wait_for(dead_lettered, timeout=10, interval=0.2)
    _shot(page, "03-dlq")

    page.locator(f'tr[data-event-id="{bad}"] a').first.click()
    page.wait_for_url(re.compile(r".*/ui/dlq/\d+$"))
    assert "2804050" in page.inner_text("main")
    assert len(page.inner_text("#fbtrace-id")) >= 6
    assert '"em"' in page.inner_text("#wire-event")
    _shot(page, "04-dead-letter")

    gateway.clear_faults()
    page.click("#replay")
    page.wait_for_url(re.compile(r".*/ui/dlq\?replayed=1.*"))
    assert "1 dead letter(s) re-queued" in page.inner_text("main")
    wait_for(lambda: bad in gateway.accepted_ids())

    def delivered_row() -> bool:
        page.goto(f"{gateway.url}/ui/test-events")
        return page.locator(f'#recent-deliveries tr[data-event-id="{bad}"]').count() == 1

    wait_for(delivered_row, timeout=10, interval=0.2)
    assert page.locator(f'#test-events tr[data-event-id="{uid}tv"]').count() == 1
    _shot(page, "05-test-events")

    page.goto(f"{gateway.url}/ui/errors")
    assert "100/2804050" in page.inner_text("main")
    _shot(page, "06-errors")

    page.goto(f"{gateway.url}/ui/quality")
    assert "lack" in page.inner_text("main")
    # At 1280 px the whole Match quality table is in view: no column cut off or scrolled away.
    widths = page.evaluate(
        "[...document.querySelectorAll('table.quality')].map("
        "t => [t.parentElement.scrollWidth, t.parentElement.clientWidth])"
    )
    assert widths and all(scroll <= client for scroll, client in widths), widths
    _shot(page, "07-quality")
    # The icon a browser asks every dashboard page's origin for exists.
    assert page.evaluate("document.querySelector('link[rel=icon]').href").endswith("favicon.ico")

    page.goto(f"{gateway.url}/ui/health")
    assert page.locator('td [data-col="token"]').first.inner_text() == "valid"
    _shot(page, "08-health")

    # One more refusal left in place: the overview as an operator would find it (README image).
    stuck = f"{uid}stuck"
    gateway.reject_event(stuck)
    try:
        gateway.send(_event("Lead", stuck, phone="+1 415 555 0199"))

        def stuck_in_dlq() -> bool:
            page.goto(f"{gateway.url}/ui/")
            return page.inner_text("#dlq-size") != "0"

        wait_for(stuck_in_dlq, timeout=10, interval=0.2)
    finally:
        gateway.clear_faults()
    assert page.locator('tr[data-event="Lead"] td[data-col="dlq"] a').count() == 1
    _shot(page, "10-overview-with-dead-letter")

    assert missing == [], missing  # no 404 on any dashboard page (favicon included)

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{gateway.url}/ui/")
    # Nothing overflows the phone's width except inside the scrollable tables.
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1
    _shot(page, "09-overview-phone")
