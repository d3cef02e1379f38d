"""The dashboard pages over real HTTP: counts move, dead letters can be inspected and replayed,
errors are grouped with their fix, match quality and health show Meta's own answers.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from capirelay.server import create_app
from not_graph import serve_not_graph
from server.conftest import serve_in_thread
from waiting import wait_for

from .conftest import (
    ADMIN_TOKEN,
    PIXEL_ID,
    TEST_CODE,
    Gateway,
    csrf_from,
    dashboard_settings,
    purchase,
)


def _cell(html: str, event_name: str, column: str) -> int:
    row = re.search(rf'<tr data-event="{event_name}">(.*?)</tr>', html, re.S)
    assert row is not None, f"no row for {event_name}"
    cell = re.search(rf'data-col="{column}">(?:<a [^>]*>)?(\d+)', row.group(1))
    assert cell is not None, f"no {column} cell"
    return int(cell.group(1))


def _dead_letter_id(client: httpx.Client, event_id: str) -> int:
    page = client.get("/ui/dlq").text
    match = re.search(
        rf'<tr data-event-id="{re.escape(event_id)}">\s*<td><a href="/ui/dlq/(\d+)"', page
    )
    assert match is not None, "the event is not in the DLQ listing"
    return int(match.group(1))


def test_overview_counts_move_when_events_flow(gateway: Gateway, uid: str) -> None:
    with gateway.logged_in() as client:
        before = client.get("/ui/").text
        sent_before = _cell(before, "Purchase", "sent") if 'data-event="Purchase"' in before else 0
        gateway.send(purchase(f"{uid}a"), purchase(f"{uid}b"), purchase(f"{uid}a"))
        wait_for(lambda: {f"{uid}a", f"{uid}b"} <= gateway.accepted_ids())
        after = wait_for(
            lambda: (
                (page := client.get("/ui/").text)
                and _cell(page, "Purchase", "sent") >= sent_before + 2
                and page
            )
        )
        assert _cell(after, "Purchase", "duplicates") >= 1
        assert "Throughput, last 15 minutes" in after
        assert "<svg" in after and "<polyline" in after


def test_dead_letter_inspect_and_replay(gateway: Gateway, uid: str) -> None:
    bad = f"{uid}bad"
    gateway.reject_event(bad)
    gateway.send(purchase(bad), purchase(f"{uid}good"))
    wait_for(lambda: f"{uid}good" in gateway.accepted_ids())
    with gateway.logged_in() as client:
        dlq_id = wait_for(
            lambda: bad in client.get("/ui/dlq").text and _dead_letter_id(client, bad)
        )
        detail = client.get(f"/ui/dlq/{dlq_id}").text
        assert "2804050" in detail  # Meta's subcode
        assert re.search(r'id="fbtrace-id">[A-Za-z0-9_-]{6,}<', detail)
        assert "&#34;em&#34;" in detail and "someone@example.com" not in detail
        assert "replay" in detail.lower()
        gateway.clear_faults()
        answer = client.post(f"/ui/dlq/{dlq_id}/replay", data={"csrf_token": csrf_from(detail)})
        assert answer.status_code == 303
        assert "replayed=1" in answer.headers["location"]
        notice = client.get(answer.headers["location"]).text
        assert "1 dead letter(s) re-queued" in notice
        wait_for(lambda: bad in gateway.accepted_ids())
        assert client.get(f"/ui/dlq/{dlq_id}").status_code == 404
        wait_for(lambda: bad in client.get("/ui/test-events").text)


def test_purge_one_dead_letter(gateway: Gateway, uid: str) -> None:
    doomed = f"{uid}doomed"
    gateway.reject_event(doomed)
    try:
        gateway.send(purchase(doomed))
        with gateway.logged_in() as client:
            dlq_id = wait_for(
                lambda: doomed in client.get("/ui/dlq").text and _dead_letter_id(client, doomed)
            )
            token = csrf_from(client.get(f"/ui/dlq/{dlq_id}").text)
            answer = client.post(f"/ui/dlq/{dlq_id}/purge", data={"csrf_token": token})
            assert "purged=1" in answer.headers["location"]
            assert client.get(f"/ui/dlq/{dlq_id}").status_code == 404
    finally:
        gateway.clear_faults()


def test_bulk_purge_needs_the_confirmation_box(gateway: Gateway) -> None:
    with gateway.logged_in() as client:
        token = csrf_from(client.get("/ui/dlq").text)
        answer = client.post("/ui/dlq/purge", data={"csrf_token": token, "reason": "config"})
        assert answer.status_code == 400


def test_errors_page_groups_by_meta_code_with_the_fix(gateway: Gateway, uid: str) -> None:
    bad = f"{uid}err"
    gateway.reject_event(bad)
    try:
        gateway.send(purchase(bad))
        with gateway.logged_in() as client:
            page = wait_for(
                lambda: (p := client.get("/ui/errors").text) and 'data-subcode="2804050"' in p and p
            )
            group = re.search(r'data-code="100" data-subcode="2804050">(.*?)</section>', page, re.S)
            assert group is not None
            assert "replay from the dead-letter queue" in group.group(1)
            # Meta's user message, the only place it names the event and field.
            assert "rejected by an injected emulator fault" in group.group(1)
            assert "affected events" in group.group(1)
            assert "code=100" in group.group(1) and "subcode=2804050" in group.group(1)
            filtered = client.get(
                f"/ui/dlq?pixel={PIXEL_ID}&event=Purchase&reason=invalid&code=100&subcode=2804050"
            )
            assert bad in filtered.text
            other_code = client.get("/ui/dlq?code=190")
            assert bad not in other_code.text
            assert "Troubleshooting" in page and "Duplicate conversions" in page
    finally:
        gateway.clear_faults()


def test_test_events_page_lists_events_sent_with_a_test_code(gateway: Gateway, uid: str) -> None:
    gateway.send(purchase(f"{uid}t"), test_event_code=TEST_CODE)
    with gateway.logged_in() as client:
        page = wait_for(lambda: (p := client.get("/ui/test-events").text) and f"{uid}t" in p and p)
        row = re.search(rf'<tr data-event-id="{uid}t">(.*?)</tr>', page, re.S)
        assert row is not None and TEST_CODE in row.group(1)
        assert "client_user_agent, em<" in row.group(1)  # key names only, never values
        assert 'http-equiv="refresh"' in page


def test_quality_page_shows_prediction_hints_and_metas_emq(gateway: Gateway, uid: str) -> None:
    gateway.send(*(purchase(f"{uid}q{i}") for i in range(4)))
    wait_for(lambda: f"{uid}q3" in gateway.accepted_ids())
    with gateway.logged_in() as client:
        page = client.get("/ui/quality").text
        row = re.search(r'<tr data-event="Purchase">(.*?)</tr>', page, re.S)
        assert row is not None
        predicted = re.search(r'data-col="predicted">([\d.]+)<', row.group(1))
        meta = re.search(r'data-col="meta-emq">([\d.]+)<', row.group(1))
        assert predicted is not None and 0 < float(predicted.group(1)) <= 10
        assert meta is not None and 0 < float(meta.group(1)) <= 10
        assert "of Purchase events lack a phone" in page
        assert "Meta&#39;s feedback per key" in page or "Meta's feedback per key" in page


def test_health_page_shows_token_breaker_version_and_clock(gateway: Gateway) -> None:
    with gateway.logged_in() as client:
        page = client.get("/ui/health").text
        row = re.search(rf'<tr data-pixel="{PIXEL_ID}">(.*?)</tr>', page, re.S)
        assert row is not None
        assert re.search(r'data-col="token">valid<', row.group(1))
        assert re.search(
            r'data-col="breaker" title="circuit breaker closed">delivering<', row.group(1)
        )
        assert "v26.0" in row.group(1)
        assert re.search(r'id="clock-skew"><span class="badge \w+">(?:0|[+-]\d+) s<', page)


def test_health_page_says_when_graph_url_is_not_graph(
    tmp_path: Path, dashboard_env: pytest.MonkeyPatch
) -> None:
    # Before: "reachable", and the other server's clock shown as Meta's.
    with serve_not_graph() as not_graph:
        settings = dashboard_settings(tmp_path / "capirelay.db", not_graph)
        with serve_in_thread(create_app(settings)) as url, httpx.Client(base_url=url) as client:
            form = client.get("/ui/login")
            login = {"csrf_token": csrf_from(form.text), "token": ADMIN_TOKEN}
            assert client.post("/ui/login", data=login).status_code == 303
            page = client.get("/ui/health").text
    assert '<div class="n" id="graph-state"><span class="badge bad">not Graph</span>' in page
    assert "clock skew (unknown: graph_url is not Graph)" in page
    assert 'id="clock-skew"' not in page
    alert = '<div class="alert" id="not-graph">graph_url answers, but not as Graph (HTTP 404'
    assert alert in page


def test_unknown_dead_letter_is_a_page_not_an_error(gateway: Gateway) -> None:
    with gateway.logged_in() as client:
        answer = client.get("/ui/dlq/987654321")
        assert answer.status_code == 404
        assert "No such dead letter" in answer.text


def test_static_css_is_public(gateway: Gateway) -> None:
    answer = httpx.get(gateway.url + "/ui/static/dashboard.css")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/css")
