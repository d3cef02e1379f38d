"""Pixel settings, da_checks and /stats: the Graph client against the live emulator."""

from __future__ import annotations

import httpx
import pytest

from capirelay.emulator import RunningEmulator
from capirelay.graph import GraphClient, GraphError, RetryClass, SyncGraphClient
from capirelay.graph._pixel import parse_stats, parse_time
from emulator_data import PIXEL, TOKEN, make_event

HOUR = 3600


def test_settings_round_trip_and_persist(emulator: RunningEmulator) -> None:
    with SyncGraphClient(base_url=emulator.url) as client:
        before = client.pixel_settings(PIXEL, access_token=TOKEN)
        assert before.pixel_id == PIXEL
        assert before.enable_automatic_matching is True  # as Meta creates pixels today
        assert len(before.automatic_matching_fields) == 11
        assert before.first_party_cookie_status == "FIRST_PARTY_COOKIE_ENABLED"
        client.update_pixel_settings(PIXEL, access_token=TOKEN, enable_automatic_matching=False)
        assert client.pixel_settings(PIXEL, access_token=TOKEN).aam_on is False
        answer = client.update_pixel_settings(
            PIXEL,
            access_token=TOKEN,
            enable_automatic_matching=True,
            automatic_matching_fields=["em", "ph"],
            first_party_cookie_status="FIRST_PARTY_COOKIE_DISABLED",
        )
        assert answer == {"success": True}
        after = client.pixel_settings(PIXEL, access_token=TOKEN)
    assert after.aam_on and after.automatic_matching_fields == ("em", "ph")
    assert after.cookies_disabled
    # The token never appears in the request log's query.
    assert all(TOKEN not in str(entry) for entry in emulator.state.request_log())


def test_update_without_permission_is_graph_error_200(
    emulator: RunningEmulator, http: httpx.Client
) -> None:
    http.post("/_emulator/tokens/scopes", json={"access_token": TOKEN, "scopes": ["ads_read"]})
    with SyncGraphClient(base_url=emulator.url) as client:
        with pytest.raises(GraphError) as caught:
            client.update_pixel_settings(PIXEL, access_token=TOKEN, enable_automatic_matching=False)
        # reading still works with ads_read
        assert client.pixel_settings(PIXEL, access_token=TOKEN).aam_on is True
    assert caught.value.code == 200
    assert caught.value.retry_class is RetryClass.AUTH
    assert TOKEN not in str(caught.value)


def test_bad_settings_are_refused_before_any_request() -> None:
    with SyncGraphClient(transport=httpx.MockTransport(lambda r: httpx.Response(500))) as client:
        with pytest.raises(ValueError, match="automatic_matching_fields: unknown field"):
            client.update_pixel_settings(
                PIXEL, access_token=TOKEN, automatic_matching_fields=["email"]
            )
        with pytest.raises(ValueError, match="first_party_cookie_status"):
            client.update_pixel_settings(PIXEL, access_token=TOKEN, first_party_cookie_status="on")


async def test_da_checks_pass_by_default_and_fail_by_fault(
    emulator: RunningEmulator, http: httpx.Client
) -> None:
    async with GraphClient(base_url=emulator.url) as client:
        checks = await client.da_checks(PIXEL, access_token=TOKEN)
        assert {c.key for c in checks} == {"pixel_missing_param_in_events", "pixel_decline"}
        assert not any(c.failing for c in checks)
        http.post(
            "/_emulator/faults",
            json={
                "kind": "da_check_failed",
                "check": "pixel_missing_param_in_events",
                "message": "content_ids missing in 40% of events",
                "count": 1,
            },
        ).raise_for_status()
        failing = [c for c in await client.da_checks(PIXEL, access_token=TOKEN) if c.failing]
        assert [c.key for c in failing] == ["pixel_missing_param_in_events"]
        assert failing[0].user_message == "content_ids missing in 40% of events"
        assert failing[0].action_uri.startswith("https://")
        # count=1: the next run passes again
        assert not any(c.failing for c in await client.da_checks(PIXEL, access_token=TOKEN))


def test_stats_reflect_received_events_by_source_and_result(
    emulator: RunningEmulator, http: httpx.Client
) -> None:
    now = 1_800_000_000.0 + 1800
    emulator.state.set_clock(now)
    hour = int(now // HOUR) * HOUR
    events = [make_event(i, event_time=int(now) - 60) for i in range(3)]
    # A browser twin of order-0, and a Pixel fire carrying an unhashed email (had_pii).
    http.post(
        f"/_emulator/pixels/{PIXEL}/browser_events",
        json={
            "events": [
                {"event_name": "Purchase", "event_id": "order-0"},
                {"event_name": "Purchase", "user_data": {"em": "buyer9@example.com"}},
            ]
        },
    ).raise_for_status()
    with SyncGraphClient(base_url=emulator.url) as client:
        client.send_events(PIXEL, events, access_token=TOKEN)
        client.send_events(PIXEL, [events[1]], access_token=TOKEN)  # a retry: deduplicated
        client.send_events(
            PIXEL, [make_event(5, event_time=int(now))], access_token=TOKEN, test_event_code="T1"
        )

        def rows(aggregation: str) -> dict[str, int]:
            buckets = client.pixel_stats(
                PIXEL,
                access_token=TOKEN,
                aggregation=aggregation,
                start_time=hour - HOUR,
                end_time=hour + HOUR,
            )
            assert [b.start_time for b in buckets] == [hour]
            return {f"{r.event}:{r.value}": r.count for r in buckets[0].rows}

        assert rows("event_source") == {"Purchase:SERVER": 4, "Purchase:WEB": 2}
        # order-0 arrived from the browser first: its server copy and the retry of
        # order-1 are deduplicated; the test event is not counted at all.
        assert rows("event_processing_results") == {
            "Purchase:processed": 4,
            "Purchase:deduplicated": 2,
        }
        assert rows("had_pii") == {"Purchase:false": 5, "Purchase:true": 1}


def test_parse_stats_reads_iso_and_unix_times() -> None:
    assert parse_time("2026-12-04T10:00:00+0000") == parse_time(1796378400)
    buckets = parse_stats(
        {"data": [{"aggregation": "event", "start_time": "2026-12-04T10:00:00+0000",
                   "data": [{"value": "Purchase", "count": "3"}, {"value": "x"}]}]}
    )  # fmt: skip
    assert len(buckets) == 1 and buckets[0].rows[0].count == 3 and len(buckets[0].rows) == 1


def test_new_fault_kinds_parse_and_name_the_missing_field() -> None:
    from capirelay.emulator import parse_fault

    fault = parse_fault({"kind": "da_check_failed", "check": "pixel_decline", "count": 2})
    assert (fault.check, fault.count) == ("pixel_decline", 2)
    assert parse_fault({"kind": "uncounted"}).kind == "uncounted"
    with pytest.raises(ValueError, match="da_check_failed faults need check"):
        parse_fault({"kind": "da_check_failed"})


def test_unknown_pixel_edges_and_other_pixels_are_graph_errors(http: httpx.Client) -> None:
    auth = {"Authorization": f"OAuth {TOKEN}"}
    unknown = http.get(f"/v26.0/{PIXEL}/no_such_edge", headers=auth)
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == 2500
    post_only = http.get(f"/v26.0/{PIXEL}/events", headers=auth)  # the events edge is POST-only
    assert post_only.status_code == 400
    assert post_only.json()["error"]["message"] == "Unsupported get request."
    foreign = http.get("/v26.0/999/stats", headers=auth)
    assert foreign.json()["error"]["code"] == 100
    assert foreign.json()["error"]["error_subcode"] == 33
