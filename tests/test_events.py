"""Specification of ``capirelay.events``: the typed event model and its wire form.

Expected hashes are written as ``sha(<normalized value>)`` where the normalized
value is the one Meta's Customer Information Parameters page documents, so a
failing row says which normalization rule moved.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from capirelay.events import (
    ActionSource,
    AppData,
    AttributionData,
    AttributionMethod,
    AttributionModel,
    Content,
    CustomData,
    CustomerSegmentation,
    DeclineReason,
    DeliveryCategory,
    Event,
    ExtInfo,
    MessagingChannel,
    UserData,
    WireEvent,
    _prepare,
    encode_request,
    prepare_wire,
)
from capirelay.problems import Problem, Severity

T0 = 1_764_128_000  # 2025-11-26T03:33:20Z


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def event(**fields: Any) -> Event:
    fields.setdefault("action_source", "website")
    return Event(event_name="Purchase", event_time=T0, **fields)


# --------------------------------------------------------------------------- user_data input


@pytest.mark.parametrize(
    ("readable", "wire", "raw", "normalized"),
    [
        ("email", "em", "John_Smith@gmail.com", "john_smith@gmail.com"),
        ("phone", "ph", "+1 (650) 555-1212", "16505551212"),
        ("first_name", "fn", "Mary", "mary"),
        ("last_name", "ln", "Smith", "smith"),
        ("date_of_birth", "db", "19970216", "19970216"),
        ("gender", "ge", "f", "f"),
        ("city", "ct", "San Francisco", "sanfrancisco"),
        ("state", "st", "CA", "ca"),
        ("zip_code", "zp", "94025", "94025"),
        ("country", "country", "US", "us"),
        ("external_id", "external_id", "cust-42", "cust-42"),
    ],
)
def test_readable_name_and_wire_key_give_the_same_hashed_list(
    readable: str, wire: str, raw: str, normalized: str
) -> None:
    by_name = UserData.model_validate({readable: raw}).to_wire()
    by_key = UserData.model_validate({wire: raw}).to_wire()
    assert by_name == by_key == {wire: [sha(normalized)]}


def test_a_string_and_a_one_item_list_are_the_same_and_lists_dedupe_in_order() -> None:
    single = UserData(email="b@example.com").to_wire()
    listed = UserData(email=["b@example.com"]).to_wire()
    many = UserData(email=["B@example.com", "a@example.com", " b@EXAMPLE.com "]).to_wire()
    assert single == listed == {"em": [sha("b@example.com")]}
    assert many == {"em": [sha("b@example.com"), sha("a@example.com")]}


def test_numbers_are_accepted_where_meta_wants_strings() -> None:
    wire = UserData.model_validate({"ph": 16505551212, "zp": 94025}).to_wire()
    assert wire == {"ph": [sha("16505551212")], "zp": [sha("94025")]}


@pytest.mark.parametrize(
    ("model", "data", "bad_key"),
    [
        (Event, {"event_name": "Lead", "event_time": T0, "event_nmae": "x"}, "event_nmae"),
        (Event, {"event_name": "Lead", "event_time": T0, "user_data": {"emial": "x"}}, "emial"),
        (Event, {"event_name": "Lead", "event_time": T0, "app_data": {"extinf": []}}, "extinf"),
        (UserData, {"client_ip": "203.0.113.9"}, "client_ip"),
        (AttributionData, {"ad_idd": "1"}, "ad_idd"),
    ],
)
def test_unknown_keys_are_rejected_naming_the_key(
    model: type[Event | UserData | AttributionData], data: dict[str, Any], bad_key: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    errors = caught.value.errors()
    assert [e["type"] for e in errors] == ["extra_forbidden"]
    assert errors[0]["loc"][-1] == bad_key
    assert bad_key in str(caught.value)


def test_the_same_field_under_both_names_is_rejected() -> None:
    with pytest.raises(ValidationError, match="em"):
        UserData.model_validate({"email": "a@example.com", "em": "b@example.com"})


def test_validation_errors_and_repr_never_show_identifier_values() -> None:
    secret = "mary.private@example.com"
    with pytest.raises(ValidationError) as caught:
        Event.model_validate(
            {
                "event_name": "Lead",
                "event_time": T0,
                "user_data": {"em": {"x": secret}, "e": secret},
            }
        )
    assert secret not in str(caught.value)
    shown = repr(Event(event_name="Lead", event_time=T0, user_data=UserData(email=secret)))
    assert secret not in shown
    assert "email=<redacted>" in shown


# --------------------------------------------------------------------------- problems


def test_a_bad_phone_drops_only_ph_and_reports_a_warning_without_the_value() -> None:
    raw_phone = "call me maybe"
    wire = event(
        user_data=UserData(email="mary@example.com", phone=raw_phone, fbc="fb.1.1554763741205.AbC")
    ).to_wire()
    assert wire.payload["user_data"] == {
        "em": [sha("mary@example.com")],
        "fbc": "fb.1.1554763741205.AbC",
    }
    [problem] = wire.problems
    assert (problem.code, problem.field, problem.severity) == (
        "invalid_phone",
        "user_data.ph",
        Severity.WARNING,
    )
    assert "country code" in problem.message
    assert raw_phone not in problem.message


@pytest.mark.parametrize(
    ("phone", "country", "default_country", "warned"),
    [
        ("6505551212", None, None, True),  # national digits, nothing to complete them with
        ("020 7946 0958", None, None, True),
        # A US number without its 1 whose ten digits also read as another country's number
        # with its code (+47 98570523): the likelier reading is still a missing 1.
        ("(479) 857-0523", None, None, True),
        ("4798570523", None, None, True),
        ("4798570523", "us", None, False),
        ("(479) 857-0523", None, "US", False),
        ("+47 985 70 523", None, None, False),
        (["+1 650 555 1212", "6505551212"], None, None, True),
        ("6505551212", "us", None, False),
        ("6505551212", None, "US", False),
        ("+1 650 555 1212", None, None, False),
        ("0044 20 7946 0958", None, None, False),
        ("16505551212", None, None, False),  # already normalized with its country code
        (sha("16505551212"), None, None, False),
    ],
)
def test_a_phone_without_country_code_is_sent_with_a_warning(
    phone: Any, country: str | None, default_country: str | None, warned: bool
) -> None:
    user_data = UserData(phone=phone, country=country, client_user_agent="Mozilla/5.0")
    wire = event(user_data=user_data).to_wire(default_country)
    assert wire.payload["user_data"]["ph"], "the number is still sent"
    flagged = [p for p in wire.problems if p.code == "phone_without_country_code"]
    assert len(flagged) == (1 if warned else 0)
    if warned:
        [problem] = flagged
        assert (problem.field, problem.severity) == ("user_data.ph", Severity.WARNING)
        assert "country code" in problem.message and "default_country" in problem.message
        assert "6505551212" not in problem.message
    raw = {
        "event_name": "Purchase",
        "event_time": T0,
        "action_source": "website",
        "user_data": {"ph": phone, "client_user_agent": "Mozilla/5.0"}
        | ({"country": country} if country else {}),
    }
    assert_same_as_model(raw, default_country)


@pytest.mark.parametrize(
    ("phones", "readings"),
    [
        ("3212345678", "+32 (Belgium)"),
        (["3212345678", "4798570523"], "+32 (Belgium) or +47 (Norway)"),
        (["4798570523", "+47 985 70 523"], "+47 (Norway)"),
    ],
)
def test_a_phone_that_reads_two_ways_names_both_readings_and_hashes_the_digits(
    phones: Any, readings: str
) -> None:
    wire = event(user_data=UserData(phone=phones, client_user_agent="Mozilla/5.0")).to_wire(None)
    listed = [phones] if isinstance(phones, str) else phones
    sent = [sha("".join(ch for ch in p if ch.isdigit())) for p in listed]
    assert wire.payload["user_data"]["ph"] == list(dict.fromkeys(sent))
    [problem] = [p for p in wire.problems if p.code == "phone_without_country_code"]
    assert f"written with its country code, {readings}, which is how it" in problem.message
    assert "US number without its 1" in problem.message


def test_a_phone_list_with_a_national_only_number_keeps_the_plain_warning() -> None:
    user_data = UserData(phone=["3212345678", "6505551212"], client_user_agent="Mozilla/5.0")
    [problem] = [
        p for p in event(user_data=user_data).to_wire(None).problems
        if p.code == "phone_without_country_code"
    ]  # fmt: skip
    assert problem.message.startswith("user_data.ph looks like a number without its country")


def test_one_bad_value_in_a_list_keeps_the_good_ones() -> None:
    wire = event(user_data=UserData(email=["nope", "ok@example.com"])).to_wire()
    assert wire.payload["user_data"] == {"em": [sha("ok@example.com")]}
    assert [p.code for p in wire.problems] == ["invalid_email"]


def test_blank_values_are_absence_not_problems() -> None:
    wire = event(
        user_data=UserData(email="  ", first_name="", fbp=" ", phone=[]), event_id=""
    ).to_wire()
    assert wire.payload == {"event_name": "Purchase", "event_time": T0, "action_source": "website"}
    assert wire.problems == []


def test_building_a_batch_never_raises_for_bad_identifiers() -> None:
    bad = UserData(email="x", phone="y", country="Atlantis", date_of_birth="someday")
    body = orjson.loads(encode_request([event(user_data=bad) for _ in range(3)]))
    assert [e.get("user_data", {}) for e in body["data"]] == [{}, {}, {}]


# --------------------------------------------------------------------------- hashing rules


HASHED_WIRE_KEYS = [
    "em", "ph", "fn", "ln", "db", "ge", "ct", "st", "zp", "country", "external_id",
    "f5first", "f5last", "fi", "dobd", "dobm", "doby",
]  # fmt: skip
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(HASHED_WIRE_KEYS), st.text(max_size=30)))
def test_any_text_becomes_hashes_or_warnings_never_an_exception(values: dict[str, str]) -> None:
    marked = {key: "Zq9" + text for key, text in values.items()}  # a value no message could hold
    wire = event(user_data=UserData.model_validate(marked)).to_wire(default_country="US")
    for key, sent in wire.payload.get("user_data", {}).items():
        assert all(SHA256_HEX.fullmatch(h) for h in ([sent] if isinstance(sent, str) else sent))
        assert key in marked
    for problem in wire.problems:
        assert problem.severity is Severity.WARNING
        assert problem.field.startswith("user_data.")
        assert "Zq9" not in problem.message
    dropped = {p.field.removeprefix("user_data.") for p in wire.problems}
    assert dropped | set(wire.payload.get("user_data", {})) == set(marked)


def test_already_hashed_values_pass_through_unchanged() -> None:
    hashed = {key: sha(f"some {key}") for key in ("em", "ph", "fn", "country", "external_id")}
    wire = UserData.model_validate(hashed).to_wire()
    assert wire == {key: [value] for key, value in hashed.items()}


def test_wire_output_revalidates_to_itself() -> None:
    first = full_event().to_payload()
    again = Event.model_validate(first).to_wire()
    assert again.payload == first
    assert again.problems == []


def test_browser_ids_and_ip_pass_through_with_case_kept() -> None:
    ids = {
        "fbc": "fb.1.1554763741205.IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk",
        "fbp": "fb.1.1558571054389.1098115397.AQICAQMC",
        "client_ip_address": "2001:DB8::1",
        "client_user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X)",
        "lead_id": 1234567890,
        "madid": "AEBE52E7-03EE-455A-B3C4-E57283966239",
    }
    assert UserData.model_validate(ids).to_wire() == ids


def test_the_events_country_completes_a_national_phone_else_the_default() -> None:
    national = "020 7946 0958"
    own = event(user_data=UserData(phone=national, country="GB")).to_payload(default_country="US")
    default = event(user_data=UserData(phone=national)).to_payload(default_country="GB")
    assert own["user_data"]["ph"] == default["user_data"]["ph"] == [sha("442079460958")]


def test_a_hashed_or_unusable_country_leaves_the_hint_to_default_country() -> None:
    national = "(650) 555-1212"
    for country in (sha("us"), "Atlantis"):
        wire = UserData(phone=national, country=country).to_wire(default_country="US")
        assert wire["ph"] == [sha("16505551212")]


def test_user_data_problems_are_appended_to_the_callers_list() -> None:
    problems: list[Problem] = []
    UserData(email="nope", dobm="13").to_wire(problems=problems)
    assert [(p.code, p.field) for p in problems] == [
        ("invalid_email", "user_data.em"),
        ("invalid_birth_month", "user_data.dobm"),
    ]


def test_single_value_hashed_keys_are_one_string() -> None:
    wire = UserData(f5first="Jonathan", fi="J", doby="1990").to_wire()
    assert wire == {"f5first": sha("jonat"), "fi": sha("j"), "doby": sha("1990")}


def test_limited_data_use_fields_go_out_as_given() -> None:
    payload = event(
        data_processing_options="LDU",
        data_processing_options_country=1,
        data_processing_options_state=1000,
        opt_out=True,
    ).to_payload()
    assert payload["data_processing_options"] == ["LDU"]
    assert payload["data_processing_options_country"] == 1
    assert payload["data_processing_options_state"] == 1000
    assert payload["opt_out"] is True


# --------------------------------------------------------------------------- event_time


@pytest.mark.parametrize(
    "given",
    [
        T0,
        float(T0),
        str(T0),
        "2025-11-26T03:33:20Z",
        "2025-11-26T04:33:20+01:00",
        datetime.fromtimestamp(T0, UTC),
        datetime.fromtimestamp(T0, timezone(timedelta(hours=-5))) + timedelta(microseconds=999),
    ],
)
def test_event_time_forms_become_int_seconds(given: object) -> None:
    parsed = Event(event_name="Lead", event_time=given).event_time  # type: ignore[arg-type]
    assert parsed == T0
    assert type(parsed) is int


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        (T0 + 0.5, "whole Unix seconds"),
        (datetime(2025, 11, 26, 3, 33, 20), "timezone"),
        ("yesterday", "ISO-8601"),
        (True, "boolean"),
    ],
)
def test_event_time_rejects_ambiguous_forms_with_a_hint(given: object, hint: str) -> None:
    with pytest.raises(ValidationError, match=hint):
        Event(event_name="Lead", event_time=given)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- custom_data


def test_custom_properties_and_vertical_keys_pass_through() -> None:
    custom = CustomData.model_validate(
        {
            "value": 10,
            "currency": "EUR",
            "checkin_date": "2026-12-01",
            "mileage": {"unit": "km", "value": 12000},
            "contents": [{"id": "sku-1", "quantity": 1, "size": "XL"}],
            "loyalty_tier": None,
        }
    )
    wire = event(custom_data=custom).to_payload()["custom_data"]
    assert wire == {
        "value": 10,
        "currency": "eur",
        "contents": [{"id": "sku-1", "quantity": 1, "size": "XL"}],
        "checkin_date": "2026-12-01",
        "mileage": {"unit": "km", "value": 12000},
    }


@pytest.mark.parametrize(
    ("given", "sent"),
    [("USD", "usd"), (" usd ", "usd"), ("Eur", "eur"), ("US$", None), ("XYZ", None)],
)
def test_currency_is_lowercase_iso_4217_or_dropped(given: str, sent: str | None) -> None:
    wire = event(custom_data=CustomData(value=1, currency=given)).to_wire()
    assert wire.payload["custom_data"].get("currency") == sent
    assert [p.code for p in wire.problems] == ([] if sent else ["invalid_currency"])


@pytest.mark.parametrize(
    ("given", "sent"),
    [(10, 10), (12.5, 12.5), ("12.50", 12.5), (Decimal("7.25"), 7.25), ("3", 3)],
)
def test_amounts_accept_numbers_and_numeric_strings(given: object, sent: float) -> None:
    wire = CustomData.model_validate({"value": given, "predicted_ltv": given}).to_wire([])
    assert wire == {"value": sent, "predicted_ltv": sent}


def test_a_boolean_is_not_an_amount() -> None:
    with pytest.raises(ValidationError, match="boolean"):
        CustomData(value=True)


def test_customer_segmentation_on_the_event_is_emitted_in_custom_data() -> None:
    seg = CustomerSegmentation.NEW_CUSTOMER_TO_BUSINESS
    wire = event(customer_segmentation=seg, custom_data=CustomData(value=5)).to_payload()
    assert "customer_segmentation" not in wire
    assert wire["custom_data"] == {"value": 5, "customer_segmentation": "new_customer_to_business"}


def test_customer_segmentation_given_twice_differently_is_rejected() -> None:
    with pytest.raises(ValidationError, match="customer_segmentation"):
        event(
            customer_segmentation="new_customer_to_business",
            custom_data={"customer_segmentation": "customer_in_loyalty_program"},
        )


# --------------------------------------------------------------------------- enums, app_data


def test_attribution_enums_serialize_and_round_trip_through_orjson() -> None:
    attribution = AttributionData(
        ad_id=120210000000001,
        attribution_model=AttributionModel.LAST_CLICK,
        attribution_method=AttributionMethod.DEEPLINK,
        decline_reason=DeclineReason.OUT_OF_LOOKBACK_WINDOW,
        attribution_setting={"inactivity_window_hours": 24},
        visit_time="2025-11-26T03:33:20Z",
    )
    payload = event(attribution_data=attribution).to_payload()
    expected = {
        "ad_id": "120210000000001",
        "attribution_model": "last_click",
        "attribution_method": "deeplink",
        "decline_reason": "out_of_lookback_window",
        "attribution_setting": {"inactivity_window_hours": 24},
        "visit_time": T0,
    }
    assert payload["attribution_data"] == expected
    assert orjson.loads(orjson.dumps(payload))["attribution_data"] == expected
    assert json.loads(json.dumps(payload))["attribution_data"] == expected
    assert AttributionData.model_validate(expected) == attribution


def test_extinfo_named_slots_become_16_strings_with_blanks() -> None:
    app = AppData(
        advertiser_tracking_enabled=True,
        extinfo=ExtInfo(ext_info_version="i2", os_version="17.1", screen_width=1170),
        url_schemes="myapp://",
        vendor_id="V-1",
    )
    wire = event(app_data=app, action_source=ActionSource.APP).to_payload()["app_data"]
    assert wire == {
        "advertiser_tracking_enabled": 1,
        "extinfo": ["i2", "", "", "", "17.1", "", "", "", "", "1170", "", "", "", "", "", ""],
        "url_schemes": ["myapp://"],
        "vendor_id": "V-1",
    }


@pytest.mark.parametrize(
    ("raw", "slots"),
    [
        (["a2", "com.shop", "1.0"], ["a2", "com.shop", "1.0"] + [""] * 13),
        (["a2", None, 3], ["a2", "", "3"] + [""] * 13),
        ([str(i) for i in range(16)], [str(i) for i in range(16)]),
    ],
)
def test_extinfo_accepts_a_raw_list(raw: list[Any], slots: list[str]) -> None:
    assert AppData(extinfo=raw).to_wire()["extinfo"] == slots


def test_extinfo_longer_than_16_is_rejected() -> None:
    with pytest.raises(ValidationError, match="16 slots"):
        AppData(extinfo=["x"] * 17)


# --------------------------------------------------------------------------- encode_request


def test_encode_request_emits_request_params_and_takes_dicts_as_is() -> None:
    ready = {"event_name": "Lead", "event_time": T0, "user_data": {"em": [sha("x@y.z")]}}
    body = orjson.loads(
        encode_request(
            [event(user_data=UserData(email="a@example.com")), ready],
            test_event_code="TEST123",
            partner_agent="capirelay",
            namespace_id="ns",
            upload_id="u1",
            upload_tag="store-upload",
            upload_source="pos",
            platforms=[{"name": "shopify", "type": "ecommerce", "version": "2"}],
            progress={"start_inclusive": 0, "end_exclusive": 2},
            access_token="EAAB-token",
        )
    )
    assert body["data"][0]["user_data"] == {"em": [sha("a@example.com")]}
    assert body["data"][1] == ready
    assert {k: v for k, v in body.items() if k != "data"} == {
        "test_event_code": "TEST123",
        "partner_agent": "capirelay",
        "namespace_id": "ns",
        "upload_id": "u1",
        "upload_tag": "store-upload",
        "upload_source": "pos",
        "platforms": [{"name": "shopify", "type": "ecommerce", "version": "2"}],
        "progress": {"start_inclusive": 0, "end_exclusive": 2},
        "access_token": "EAAB-token",
    }


def test_encode_request_omits_unset_params() -> None:
    assert orjson.loads(encode_request([{"event_name": "Lead"}])) == {
        "data": [{"event_name": "Lead"}]
    }


def test_encode_request_takes_1000_events_and_refuses_1001_or_none() -> None:
    payload = {"event_name": "Lead", "event_time": T0}
    assert len(orjson.loads(encode_request([payload] * 1000))["data"]) == 1000
    with pytest.raises(ValueError, match="at most 1,000 events, got 1,001"):
        encode_request([payload] * 1001)
    with pytest.raises(ValueError, match="at least one event"):
        encode_request([])


def test_encode_request_passes_default_country_to_events() -> None:
    body = orjson.loads(
        encode_request([event(user_data=UserData(phone="(650) 555-1212"))], default_country="US")
    )
    assert body["data"][0]["user_data"]["ph"] == [sha("16505551212")]


# --------------------------------------------------------------------------- golden


def full_event() -> Event:
    return Event.model_validate(
        {
            "event_name": "Purchase",
            "event_time": "2025-11-26T03:33:20Z",
            "action_source": "website",
            "event_id": "order-1001",
            "event_source_url": "https://shop.example/checkout/thanks",
            "referrer_url": "https://shop.example/checkout",
            "opt_out": False,
            "user_data": {
                "email": ["John_Smith@gmail.com", "john_smith@gmail.com"],
                "ph": "+1 (650) 555-1212",
                "first_name": "Mary",
                "ln": "Smith",
                "date_of_birth": "19970216",
                "ge": "f",
                "city": "San Francisco",
                "st": "CA",
                "zip_code": "94025",
                "country": "US",
                "external_id": "cust-42",
                "client_ip_address": "203.0.113.9",
                "client_user_agent": "Mozilla/5.0",
                "fbc": "fb.1.1554763741205.AbCdEf",
                "fbp": "fb.1.1558571054389.1098115397",
                "subscription_id": "sub-9",
            },
            "custom_data": {
                "value": 123.45,
                "currency": "USD",
                "content_ids": "sku-1",
                "contents": [
                    {
                        "id": "sku-1",
                        "quantity": 2,
                        "item_price": 61.725,
                        "delivery_category": "home_delivery",
                    }
                ],
                "content_type": "product",
                "order_id": "1001",
                "num_items": 2,
                "gift_wrap": True,
            },
            "customer_segmentation": "existing_customer_to_business",
            "original_event_data": {"event_name": "AddToCart", "event_time": T0 - 60},
            "messaging_channel": "whatsapp",
            "data_processing_options": [],
            "advanced_measurement_table": "amt-1",
        }
    )


def test_golden_fully_populated_event() -> None:
    wire = full_event().to_wire()
    assert isinstance(wire, WireEvent)
    assert wire.problems == []
    assert wire.payload == {
        "event_name": "Purchase",
        "event_time": T0,
        "action_source": "website",
        "event_id": "order-1001",
        "event_source_url": "https://shop.example/checkout/thanks",
        "referrer_url": "https://shop.example/checkout",
        "opt_out": False,
        "advanced_measurement_table": "amt-1",
        "user_data": {
            "em": [sha("john_smith@gmail.com")],
            "ph": [sha("16505551212")],
            "fn": [sha("mary")],
            "ln": [sha("smith")],
            "db": [sha("19970216")],
            "ge": [sha("f")],
            "ct": [sha("sanfrancisco")],
            "st": [sha("ca")],
            "zp": [sha("94025")],
            "country": [sha("us")],
            "external_id": [sha("cust-42")],
            "client_ip_address": "203.0.113.9",
            "client_user_agent": "Mozilla/5.0",
            "fbc": "fb.1.1554763741205.AbCdEf",
            "fbp": "fb.1.1558571054389.1098115397",
            "subscription_id": "sub-9",
        },
        "custom_data": {
            "value": 123.45,
            "currency": "usd",
            "content_ids": ["sku-1"],
            "contents": [
                {
                    "id": "sku-1",
                    "quantity": 2,
                    "item_price": 61.725,
                    "delivery_category": "home_delivery",
                }
            ],
            "content_type": "product",
            "order_id": "1001",
            "num_items": 2,
            "customer_segmentation": "existing_customer_to_business",
            "gift_wrap": True,
        },
        "original_event_data": {"event_name": "AddToCart", "event_time": T0 - 60},
        "messaging_channel": "whatsapp",
        "data_processing_options": [],
    }
    assert wire.payload == full_event().to_payload()


def test_typed_construction_matches_wire_dict_validation() -> None:
    typed = Event(
        event_name="Purchase",
        event_time=T0,
        action_source=ActionSource.WEBSITE,
        user_data=UserData(email="a@example.com", fbp="fb.1.1.2"),
        custom_data=CustomData(
            value=3,
            currency="usd",
            contents=[Content(id="p", delivery_category=DeliveryCategory.CURBSIDE)],
        ),
        messaging_channel=MessagingChannel.INSTAGRAM,
    )
    from_wire = Event.model_validate(
        {
            "event_name": "Purchase",
            "event_time": T0,
            "action_source": "website",
            "user_data": {"em": "a@example.com", "fbp": "fb.1.1.2"},
            "custom_data": {
                "value": 3,
                "currency": "usd",
                "contents": [{"id": "p", "delivery_category": "curbside"}],
            },
            "messaging_channel": "instagram",
        }
    )
    assert typed == from_wire
    assert typed.to_payload() == from_wire.to_payload()


# --------------------------------------------------------------------------- prepare_wire


def via_model(raw: Any, default_country: str | None = None) -> WireEvent | ValidationError:
    try:
        return Event.model_validate(raw).to_wire(default_country)
    except ValidationError as exc:
        return exc


def assert_same_as_model(raw: Any, default_country: str | None = None) -> None:
    """prepare_wire gives the model path's bytes and problems, or raises the same error."""
    expected = via_model(raw, default_country)
    if isinstance(expected, ValidationError):
        with pytest.raises(ValidationError) as caught:
            prepare_wire(raw, default_country=default_country)
        assert caught.value.errors(include_context=False) == expected.errors(include_context=False)
        return
    wire = prepare_wire(raw, default_country=default_country)
    # repr, not orjson: it also tells 1 from 1.0 and True, keeps key order, and takes
    # the > 64-bit ints that orjson refuses to encode (for both paths alike).
    assert repr(wire.payload) == repr(expected.payload)
    assert wire.problems == expected.problems


def ingest_shaped(**overrides: Any) -> dict[str, Any]:
    """The event a shop's backend posts: the bench's shape, readable values, raw PII."""
    raw: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": T0,
        "action_source": "website",
        "event_id": "order-1",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {
            "em": " Mary.Smith@Example.com ",
            "ph": "+1 (650) 555-1212",
            "fn": "Mary-Ann",
            "ln": "O'Neil",
            "ct": "San Francisco",
            "st": "CA",
            "zp": "94025-1234",
            "country": "US",
            "external_id": "cust-1",
            "client_ip_address": "203.0.113.9",
            "client_user_agent": "Mozilla/5.0",
            "fbc": "fb.1.1554763741205.AbCdEf",
            "fbp": "fb.1.1558571054389.1098115397",
        },
        "custom_data": {
            "value": 12.5,
            "currency": "USD",
            "contents": [{"id": "sku-1", "quantity": 2, "item_price": 6.25}],
        },
    }
    raw.update(overrides)
    return raw


def with_user(**user_data: Any) -> dict[str, Any]:
    return ingest_shaped(user_data=user_data)


def test_prepare_wire_takes_the_fast_path_for_the_ingest_shape() -> None:
    raw = ingest_shaped()
    fast = _prepare._fast_wire(raw, None)
    assert fast is not None
    assert fast == Event.model_validate(raw).to_wire()


# Shapes the fast path must hand to the model (None from _fast_wire), with why; the
# result must still be the model's, coerced or rejected the same way.
NEEDS_THE_MODEL = [
    ("unknown event key", ingest_shaped(evnt_id="x")),
    ("ISO event_time", ingest_shaped(event_time="2025-11-26T03:33:20Z")),
    ("float event_time", ingest_shaped(event_time=float(T0))),
    ("bool event_time", ingest_shaped(event_time=True)),
    ("missing event_name", {"event_time": T0}),
    ("empty event_name", ingest_shaped(event_name="")),
    ("surrogate in event_name", ingest_shaped(event_name="Buy\ud800")),
    ("unknown action_source", ingest_shaped(action_source="shop")),
    ("int event_id", ingest_shaped(event_id=1001)),
    ("int opt_out", ingest_shaped(opt_out=1)),
    ("bool as LDU country", ingest_shaped(data_processing_options_country=True)),
    ("user_data null", ingest_shaped(user_data=None)),
    ("user_data not a dict", ingest_shaped(user_data=[("em", "a@b.co")])),
    ("unknown user_data key", ingest_shaped(user_data={"emial": "a@b.co"})),
    ("both names of a field", ingest_shaped(user_data={"em": "a@b.co", "email": "c@d.co"})),
    ("int phone", ingest_shaped(user_data={"ph": 16505551212})),
    ("int in a list", ingest_shaped(user_data={"zp": ["94025", 94026]})),
    ("tuple of emails", ingest_shaped(user_data={"em": ("a@b.co",)})),
    ("list for a single-value key", ingest_shaped(user_data={"fi": ["m"]})),
    ("int fb_login_id", ingest_shaped(user_data={"fb_login_id": 12345})),
    ("numeric string amount", ingest_shaped(custom_data={"value": "12.50"})),
    ("bool amount", ingest_shaped(custom_data={"value": True})),
    ("segment in custom_data", ingest_shaped(custom_data={"customer_segmentation": "x"})),
    ("event-level segment", ingest_shaped(customer_segmentation="new_customer_to_business")),
    ("app_data", ingest_shaped(app_data={"advertiser_tracking_enabled": True})),
    ("original_event_data", ingest_shaped(original_event_data={"event_name": "Lead"})),
    ("float quantity", ingest_shaped(custom_data={"contents": [{"id": "a", "quantity": 2.0}]})),
    ("bool item_price", ingest_shaped(custom_data={"contents": [{"item_price": True}]})),
    ("huge int item_price", ingest_shaped(custom_data={"contents": [{"item_price": 2**60}]})),
    ("content not a dict", ingest_shaped(custom_data={"contents": ["sku-1"]})),
    ("non-text custom key", ingest_shaped(custom_data={1: "x"})),
    ("unknown delivery", ingest_shaped(custom_data={"delivery_category": "drone"})),
    ("dict subclass", type("Sub", (dict,), {})(ingest_shaped())),
]


@pytest.mark.parametrize(("why", "raw"), NEEDS_THE_MODEL, ids=[w for w, _ in NEEDS_THE_MODEL])
def test_unusual_input_goes_through_the_model_with_the_same_result(why: str, raw: Any) -> None:
    if type(raw) is dict:
        assert _prepare._fast_wire(raw, None) is None, why
    assert_same_as_model(raw)


# Shapes the fast path serves itself; each must equal the model's output byte for byte.
FAST_PATH_CASES = [
    ("bench shape", ingest_shaped(), None),
    ("keys in another order", dict(reversed(ingest_shaped().items())), None),
    (
        "user_data keys out of wire order",
        with_user(fbp="fb.1.2.3", zp="SW1A 1AA", country="GB", em="x@y.uk"),
        None,
    ),
    ("readable names", with_user(email="A@B.co", zip_code="94025"), None),
    ("unknown two-letter country", with_user(country="zz", ph="(650) 555-1212"), "US"),
    ("blank two-character country", with_user(country="  ", st="Ontario"), "CA"),
    ("padded one-letter country", with_user(country=" u", zp="94025"), None),
    ("country name as the hint", with_user(country="Canada", st="Ontario"), None),
    ("national phone, event country", with_user(ph="020 7946 0958", country="gb"), "US"),
    ("national phone, default country", with_user(ph="(650) 555-1212"), "US"),
    ("hashed country, default's region", with_user(country=sha("us"), st="Ontario"), "CA"),
    ("bad values become problems", with_user(em="nope", ph="12", ge="?"), None),
    ("lists deduplicate", with_user(em=["A@b.co", "a@b.co", " "], country=["zz", "US"]), None),
    ("blank and None values", with_user(em="", ph=None, fbc="  "), None),
    ("single-value keys", with_user(f5first="Maryann", fi="M", doby="1997"), None),
    ("already hashed", with_user(em=sha("a@b.co").upper(), ph="0" * 32), None),
    ("empty user_data", ingest_shaped(user_data={}), None),
    ("no user_data", {"event_name": "Lead", "event_time": T0}, None),
    ("invalid currency", ingest_shaped(custom_data={"currency": "usdollars", "value": 3}), None),
    ("problems in wire order", ingest_shaped(user_data={"em": "x"}, custom_data={"currency": "?"})
     , None),
    (
        "custom properties and every declared key",
        ingest_shaped(
            custom_data={
                "gift": {"wrap": True, "tags": ("a", "b")},
                "note": "",
                "skip": None,
                "value": 0,
                "net_revenue": 3,
                "currency": " eur ",
                "content_name": "",
                "content_category": "shoes",
                "content_ids": "sku-1",
                "content_type": "product",
                "order_id": "1001",
                "predicted_ltv": 99.5,
                "num_items": 0,
                "status": "paid",
                "search_string": "red shoes",
                "delivery_category": "curbside",
                "item_number": "7",
                "contents": [
                    {"extra": None, "id": 42, "quantity": 1, "item_price": 5, "title": ""},
                    {},
                    {"brand": "Acme", "description": "d", "category": "c"},
                    {"delivery_category": "in_store"},
                ],
            }
        ),
        None,
    ),
    ("empty lists dropped", ingest_shaped(custom_data={"content_ids": [], "contents": []}), None),
    ("custom_data null", ingest_shaped(custom_data=None), None),
    (
        "every plain event field",
        ingest_shaped(
            referrer_url="https://shop.example/cart",
            opt_out=False,
            data_processing_options=["LDU"],
            data_processing_options_country=0,
            data_processing_options_state=1000,
            advanced_measurement_table="amt",
            messaging_channel="whatsapp",
            event_id="",
        ),
        None,
    ),
    ("LDU as one string", ingest_shaped(data_processing_options="LDU"), None),
    ("LDU explicitly off", ingest_shaped(data_processing_options=[]), None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("why", "raw", "default_country"), FAST_PATH_CASES, ids=[w for w, _, _ in FAST_PATH_CASES]
)
def test_prepare_wire_equals_the_model_path(
    why: str, raw: dict[str, Any], default_country: str | None
) -> None:
    assert _prepare._fast_wire(raw, default_country) is not None, why
    assert_same_as_model(raw, default_country)


def test_the_fast_path_knows_every_field_the_models_declare() -> None:
    """A field added to a model must be added to the fast path's tables (or be refused)."""
    assert list(_prepare._CUSTOM_DATA_KINDS) == list(CustomData.model_fields)
    assert list(_prepare._CONTENT_KINDS) == list(Content.model_fields)
    event_keys = {key for key, _ in _prepare._EVENT_KINDS}
    left_to_model = {"app_data", "original_event_data", "attribution_data", "customer_segmentation"}
    assert event_keys | left_to_model == set(Event.model_fields)
    accepted = set(_prepare._USER_DATA_FIELDS)
    assert {name for name in accepted if name in UserData.model_fields} == set(
        UserData.model_fields
    )


# Values the generated events draw from: the common shapes, the edge cases each rule has,
# and types the model coerces or refuses.
TEXT = st.one_of(
    st.sampled_from(
        [
            "", " ", "Mary", "O'Neil", "Zoë", "a@b.co", " A.B@Example.COM ", "nope",
            "+1 (650) 555-1212", "(650) 555-1212", "020 7946 0958", "12", "US", "gb",
            "Ontario", "United Kingdom", "CA", "94025", "SW1A 1AA", "m", "Female", "x",
            "1997-02-16", "19970216", "usd", "EUR", "xyz", "website", "whatsapp",
            "curbside", "LDU", sha("a@b.co"), "d41d8cd98f00b204e9800998ecf8427e",
        ]
    ),
    st.text(max_size=12),
)  # fmt: skip
ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(TEXT, max_size=3),
    st.tuples(TEXT),
)
VALUE = st.one_of(TEXT, TEXT, TEXT, ODD)
USER_KEYS = [*sorted(_prepare._USER_DATA_FIELDS), "emial"]
USER_DATA = st.dictionaries(st.sampled_from(USER_KEYS), VALUE, max_size=8)
CONTENT = st.dictionaries(st.sampled_from([*Content.model_fields, "extra"]), VALUE, max_size=4)
CUSTOM_DATA = st.dictionaries(
    st.sampled_from([*CustomData.model_fields, "gift"]),
    VALUE | st.lists(CONTENT, max_size=3),
    max_size=6,
)
EVENT_EXTRAS = st.dictionaries(
    st.sampled_from([*(key for key, _ in _prepare._EVENT_KINDS if "_data" not in key), "evnt"]),
    VALUE,
    max_size=4,
)  # fmt: skip


# Well-typed events, the ones the fast path must serve itself: each key gets a value of
# the type the model stores, so only the values (not the types) vary.
TEXTS = st.lists(TEXT, max_size=3)
LIST_KEYS = [name for name, spec in _prepare._USER_DATA_FIELDS.items() if spec[2]]
TYPED_USER_DATA = st.dictionaries(
    st.sampled_from(sorted(_prepare._USER_DATA_FIELDS)), TEXT | st.none(), max_size=9
) | st.dictionaries(st.sampled_from(LIST_KEYS), TEXT | TEXTS, max_size=6)
AMOUNT = st.integers(-(10**6), 10**6) | st.floats(-1e6, 1e6)
ENUM_TEXT = st.sampled_from(["in_store", "curbside", "home_delivery"])
TYPED_CONTENT = st.fixed_dictionaries(
    {},
    optional={
        "id": TEXT | st.integers(0, 10**12),
        "quantity": st.integers(0, 100),
        "item_price": AMOUNT,
        "title": TEXT,
        "brand": TEXT,
        "delivery_category": ENUM_TEXT,
        "extra": TEXT | st.none() | st.lists(st.integers(), max_size=2),
    },
)
TYPED_CUSTOM_DATA = st.fixed_dictionaries(
    {},
    optional={
        "value": AMOUNT,
        "net_revenue": AMOUNT,
        "currency": st.sampled_from(["usd", " EUR ", "gbp", "xyz", "", "dollars"]),
        "content_name": TEXT,
        "content_ids": TEXT | TEXTS,
        "contents": st.lists(TYPED_CONTENT, max_size=3),
        "num_items": st.integers(0, 10),
        "delivery_category": ENUM_TEXT,
        "order_id": TEXT,
        "gift": st.none() | TEXT | st.dictionaries(TEXT, st.integers(), max_size=2),
    },
)
TYPED_EVENT = st.fixed_dictionaries(
    {"event_name": st.sampled_from(["Purchase", "Lead", " "]), "event_time": st.integers(0, 2**40)},
    optional={
        "action_source": st.sampled_from([member.value for member in ActionSource]),
        "event_id": TEXT,
        "event_source_url": TEXT,
        "opt_out": st.booleans(),
        "data_processing_options": st.just("LDU") | TEXTS,
        "data_processing_options_country": st.integers(0, 1),
        "messaging_channel": st.sampled_from(["whatsapp", "messenger", "instagram"]),
        "user_data": TYPED_USER_DATA,
        "custom_data": TYPED_CUSTOM_DATA | st.none(),
    },
)


@st.composite
def any_event(draw: st.DrawFn) -> dict[str, Any]:
    raw: dict[str, Any] = {"event_name": "Purchase", "event_time": T0, **draw(EVENT_EXTRAS)}
    user_data = draw(USER_DATA | st.none())
    if user_data is not None:
        raw["user_data"] = user_data
    custom_data = draw(CUSTOM_DATA | st.none())
    if custom_data is not None:
        raw["custom_data"] = custom_data
    return raw


@settings(max_examples=500, deadline=None)
@given(
    raw=st.one_of(TYPED_EVENT, TYPED_EVENT, TYPED_EVENT, any_event()),
    default_country=st.sampled_from([None, "US", "gb", "nowhere"]),
)
def test_prepare_wire_and_the_model_agree_on_any_event(
    raw: dict[str, Any], default_country: str | None
) -> None:
    assert_same_as_model(raw, default_country)
