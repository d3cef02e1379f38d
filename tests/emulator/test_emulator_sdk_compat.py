"""Meta's own Python SDK, pointed at the emulator, gets what Graph would answer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from capirelay.emulator import RunningEmulator
from emulator_data import PIXEL, TOKEN

facebook_business = pytest.importorskip("facebook_business")

from facebook_business.adobjects.serverside.action_source import ActionSource  # noqa: E402
from facebook_business.adobjects.serverside.custom_data import CustomData  # noqa: E402
from facebook_business.adobjects.serverside.event import Event  # noqa: E402
from facebook_business.adobjects.serverside.event_request import EventRequest  # noqa: E402
from facebook_business.adobjects.serverside.user_data import UserData  # noqa: E402
from facebook_business.api import FacebookAdsApi  # noqa: E402
from facebook_business.exceptions import FacebookRequestError  # noqa: E402


@pytest.fixture
def sdk_api(emulator: RunningEmulator) -> Iterator[FacebookAdsApi]:
    previous = FacebookAdsApi.get_default_api()
    api = FacebookAdsApi.init(access_token=TOKEN, crash_log=False, api_version="v26.0")
    api._session.GRAPH = emulator.url  # the SDK's own base-URL seam
    yield api
    FacebookAdsApi.set_default_api(previous)


def sdk_event(event_id: str, event_time: int | None = None) -> Event:
    return Event(
        event_name="Purchase",
        event_time=event_time or int(time.time()) - 30,
        event_id=event_id,
        action_source=ActionSource.WEBSITE,
        event_source_url="https://shop.example/checkout",
        user_data=UserData(
            email="buyer@example.com",
            client_ip_address="203.0.113.7",
            client_user_agent="Mozilla/5.0",
        ),
        custom_data=CustomData(currency="usd", value=12.5),
    )


def test_sdk_sync_path_form_body_with_json_strings_is_accepted(
    sdk_api: FacebookAdsApi, emulator: RunningEmulator
) -> None:
    request = EventRequest(
        pixel_id=PIXEL, events=[sdk_event("sdk-1"), sdk_event("sdk-2")], test_event_code="SDK1"
    )
    response = request.execute()
    assert response.events_received == 2
    stored = emulator.state.events(PIXEL, test_event_code="SDK1")
    assert [e["event"]["event_id"] for e in stored] == ["sdk-1", "sdk-2"]
    (logged,) = emulator.state.request_log()
    assert logged["body"] == "form"
    assert "access_token" not in logged["query"], "the SDK puts it in the URL; the log drops it"


def test_sdk_sees_a_graph_error_for_an_invalid_event(sdk_api: FacebookAdsApi) -> None:
    old = sdk_event("sdk-old", event_time=int(time.time()) - 9 * 86400)
    with pytest.raises(FacebookRequestError) as caught:
        EventRequest(pixel_id=PIXEL, events=[sdk_event("sdk-ok"), old]).execute()
    error = caught.value
    assert error.http_status() == 400
    assert error.api_error_code() == 100
    assert error.api_error_subcode() == 2804003
    assert error.api_transient_error() is False
