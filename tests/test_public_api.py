"""The public names from the README import and work together, end to end."""

from __future__ import annotations

import hashlib
import time

import capirelay
from capirelay import (
    Content,
    CustomData,
    Event,
    GraphClient,
    NormalizationError,
    UserData,
    hash_field,
    normalize,
)
from capirelay.emulator import run_emulator


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def readme_event(now: int) -> Event:
    return Event(
        event_name="Purchase",
        event_time=now,
        event_id="order-1001",
        action_source="website",
        event_source_url="https://shop.example/thank-you",
        user_data=UserData(
            email="John_Smith@Gmail.com",
            phone="(650) 555-1212",
            first_name="Mary-Ann",
            last_name="O'Neil",
            date_of_birth="2/16/1997",
            city="São Paulo",
            state="California",
            zip_code="94025-1234",
            country="United States",
            external_id="customer-42",
            client_ip_address="2001:db8::1",
            client_user_agent="Mozilla/5.0 (X11)",
            fbp="fb.1.1558571054389.1098115397",
        ),
        custom_data=CustomData(
            value=25.0,
            currency="EUR",
            contents=[Content(id="SKU-1", quantity=1, item_price=25.0)],
        ),
    )


def test_readme_example_normalizes_as_documented() -> None:
    wire = readme_event(int(time.time())).to_wire(default_country="US")
    user = wire.payload["user_data"]
    assert wire.problems == []
    assert user["em"] == [sha("john_smith@gmail.com")]
    assert user["ph"] == [sha("16505551212")]
    assert user["fn"] == [sha("maryann")]
    assert user["ln"] == [sha("oneil")]
    assert user["db"] == [sha("19970216")]
    assert user["ct"] == [sha("sãopaulo")]
    assert user["st"] == [sha("ca")]
    assert user["zp"] == [sha("94025")]
    assert user["country"] == [sha("us")]
    assert user["external_id"] == [sha("customer-42")]
    assert user["fbp"] == "fb.1.1558571054389.1098115397"


def test_normalize_and_hash_field_are_the_package_level_functions() -> None:
    assert normalize("country", "USA") == "us"
    assert hash_field("em", " John_Smith@gmail.com ") == sha("john_smith@gmail.com")
    assert capirelay.normalize is normalize
    try:
        normalize("em", "not-an-email")
    except NormalizationError as exc:
        assert isinstance(exc, ValueError)
        assert exc.field == "em"
        assert "not-an-email" not in str(exc)
    else:
        raise AssertionError("an unusable e-mail must raise NormalizationError")


async def test_readme_client_round_trip_against_the_emulator() -> None:
    async with run_emulator(pixels={"1234567890": "TOKEN"}) as emulator:
        wire = readme_event(int(time.time())).to_wire(default_country="US")
        async with GraphClient(base_url=emulator.url) as client:
            response = await client.send_events("1234567890", [wire.payload], access_token="TOKEN")
        assert response.events_received == 1
        assert response.fbtrace_id
        stored = emulator.state.events("1234567890")
        assert stored[0]["event"]["user_data"]["em"] == [sha("john_smith@gmail.com")]
