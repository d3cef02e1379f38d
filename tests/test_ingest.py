"""capirelay.ingest.prepare_event: a raw CAPI-shaped event in, a hashed NewEvent or problems out."""

from __future__ import annotations

import hashlib
import tracemalloc
from typing import Any

import orjson
import pytest

from capirelay.config import PixelSettings
from capirelay.emulator._pixel_state import had_pii
from capirelay.ingest import DERIVED_EVENT_ID_PREFIX, PreparedEvent, derive_event_id, prepare_event

NOW = 1_790_000_000.0
PIXEL_ID = "1234567890"
RAW_EMAIL = "Jane.Doe@Example.com"
RAW_PHONE = "(650) 555-1212"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": int(NOW) - 60,
        "action_source": "website",
        "event_source_url": "https://shop.example/thank-you",
        "user_data": {
            "email": RAW_EMAIL,
            "phone": RAW_PHONE,
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "Mozilla/5.0",
            "fbp": "fb.1.1700000000000.123456789",
        },
        "custom_data": {"value": 25.0, "currency": "EUR"},
    }
    base.update(overrides)
    return base


def prepare(raw: Any, **kwargs: Any) -> PreparedEvent:
    options: dict[str, Any] = {
        "pixel_id": PIXEL_ID,
        "pixel": PixelSettings(default_country="US"),
        "now": NOW,
        "test_event_code": None,
        "source": "api",
        "max_future_skew": 300,
    }
    options.update(kwargs)
    return prepare_event(raw, **options)


def test_accepted_event_is_hashed_and_keeps_its_id() -> None:
    prepared = prepare(event(event_id="order-1"), test_event_code="TEST1", source="shop")

    assert prepared.new_event is not None
    new = prepared.new_event
    payload = orjson.loads(new.payload)
    assert payload["user_data"]["em"] == [sha("jane.doe@example.com")]
    assert payload["user_data"]["ph"] == [sha("16505551212")]
    assert RAW_EMAIL.encode() not in new.payload and b"555-1212" not in new.payload
    assert (new.event_id, payload["event_id"], prepared.event_id) == ("order-1",) * 3
    assert (new.pixel_id, new.event_name, new.event_time) == (PIXEL_ID, "Purchase", int(NOW) - 60)
    assert (new.test_event_code, new.source) == ("TEST1", "shop")
    assert new.deadline == new.event_time + 7 * 86400


def test_physical_store_deadline_is_62_days() -> None:
    raw = event(action_source="physical_store", event_source_url=None)
    prepared = prepare(raw)
    assert prepared.new_event is not None
    assert prepared.new_event.deadline == prepared.new_event.event_time + 62 * 86400


def test_missing_event_id_is_derived_from_hashed_content() -> None:
    first = prepare(event())
    respelled = event()
    respelled["user_data"] = {**respelled["user_data"], "email": "  JANE.DOE@example.COM "}
    second = prepare(respelled)
    other_value = prepare(event(custom_data={"value": 26.0, "currency": "EUR"}))

    assert first.event_id.startswith(DERIVED_EVENT_ID_PREFIX)
    assert first.event_id == second.event_id, "same person, same conversion: same id"
    assert first.event_id != other_value.event_id
    assert first.new_event is not None
    assert orjson.loads(first.new_event.payload)["event_id"] == first.event_id


def test_different_conversions_in_one_second_derive_different_ids() -> None:
    # Two pages viewed by one person in one second were one event: the second "duplicate".
    page = event(event_name="PageView", custom_data=None)
    first = prepare(page)
    other_page = prepare({**page, "event_source_url": "https://shop.example/cart"})
    # A phone-call Lead and a website Lead of one person in one second, likewise.
    call = prepare({**page, "event_name": "Lead", "action_source": "phone_call"})
    form = prepare({**page, "event_name": "Lead"})
    ids = [p.event_id for p in (first, other_page, call, form)]
    assert all(p.new_event is not None for p in (first, other_page, call, form)), ids
    assert len(set(ids)) == 4, ids
    assert prepare(page).event_id == first.event_id, "a retry derives the same id"


def test_derived_id_is_documented_formula() -> None:
    payload = {"event_name": "Lead", "event_time": 1, "user_data": {"em": [sha("a@b.c")]}}
    basis = {
        "action_source": None,
        "custom_data": {},
        "event_name": "Lead",
        "event_source_url": None,
        "event_time": 1,
        "pixel_id": PIXEL_ID,
        "user_data": {"em": [sha("a@b.c")]},
    }
    expected = sha(orjson.dumps(basis, option=orjson.OPT_SORT_KEYS).decode())[:32]
    assert derive_event_id(PIXEL_ID, payload) == DERIVED_EVENT_ID_PREFIX + expected
    assert derive_event_id("999", payload) != derive_event_id(PIXEL_ID, payload)


def test_already_hashed_identifiers_are_not_hashed_again() -> None:
    hashed = sha("jane.doe@example.com")
    raw = event()
    raw["user_data"] = {**raw["user_data"], "email": hashed}
    prepared = prepare(raw)
    assert prepared.new_event is not None
    assert orjson.loads(prepared.new_event.payload)["user_data"]["em"] == [hashed]


def test_param_builder_values_are_sent_as_the_builder_made_them() -> None:
    # capi-param-builder's getNormalizedAndHashedPII gives "<sha256 hex>.<appendix>";
    # Meta asks for the builder's values to be sent as they are.  They were dropped
    # (em, ph: not an email or phone) or hashed again (every other key).
    em = sha("jane.doe@example.com") + ".AQQCAQMC"
    ph = sha("16505551212") + ".AQQCAQMC"
    fn = sha("jane").upper() + ".Bg"
    raw = event()
    raw["user_data"] = {**raw["user_data"], "email": em, "phone": [ph], "first_name": fn,
                        "external_id": sha("cust-1") + ".AQIAAQMC"}  # fmt: skip
    prepared = prepare(raw)
    assert prepared.new_event is not None, prepared.problems
    assert not [p for p in prepared.problems if p.is_error]
    user_data = orjson.loads(prepared.new_event.payload)["user_data"]
    assert user_data["em"] == [em] and user_data["ph"] == [ph]
    assert user_data["fn"] == [sha("jane") + ".Bg"]
    assert user_data["external_id"] == [sha("cust-1") + ".AQIAAQMC"]
    assert not had_pii(orjson.loads(prepared.new_event.payload))  # the emulator takes them


def test_uuid_hex_external_id_no_longer_refuses_the_event() -> None:
    raw = event()
    raw["user_data"] = {**raw["user_data"], "external_id": "A1B2C3D4E5F6A7B8C9D0E1F2A3B4C5D6"}
    prepared = prepare(raw)
    assert prepared.new_event is not None, prepared.problems
    user_data = orjson.loads(prepared.new_event.payload)["user_data"]
    assert user_data["external_id"] == [sha("a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6")]


@pytest.mark.parametrize("depth", [300, 1200])  # past orjson's limit; past Python's recursion
def test_values_nested_too_deep_are_refused_naming_the_field(depth: int) -> None:
    nested: dict[str, Any] = {}
    inner = nested
    for _ in range(depth):
        inner["a"] = {}
        inner = inner["a"]
    prepared = prepare(event(custom_data={"value": 1, "currency": "EUR", "deep": nested}))
    [problem] = prepared.problems
    assert prepared.new_event is None and problem.code == "invalid_value"
    # The field was "" (an outside review's find): now the sender can find it.
    assert problem.field == "custom_data.deep.a.a..." and "flatten it" in problem.message


def test_finding_the_field_takes_memory_of_the_depth_not_of_the_values() -> None:
    # The first walk kept a path per value: a wide list deep inside custom_data made a
    # request's worth of gigabytes (a reviewer measured 873 MB for a 1 MB body).
    from capirelay.ingest import _unencodable_at

    wide: Any = [0] * 100_000
    for _ in range(200):
        wide = [wide]
    tracemalloc.start()
    try:
        found = _unencodable_at({"custom_data": {"wide": wide}})  # every value walked
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found is None
    assert peak < 1_000_000, peak


def test_a_number_beyond_64_bits_is_refused_naming_the_field() -> None:
    custom = {"value": 1, "currency": "EUR", "contents": [{"id": "x", "quantity": 2**65}]}
    [problem] = prepare(event(custom_data=custom)).problems
    assert problem.field == "custom_data.contents.0.quantity"
    assert "beyond 64 bits" in problem.message and str(2**65) not in problem.message


# Each row: (description, event overrides, problem code, problem field).
REJECTIONS = [
    ("unknown top-level field", {"evnt_name": "x"}, "unknown_field", "evnt_name"),
    ("unknown user_data key", {"user_data": {"emial": "x"}}, "unknown_field", "user_data.emial"),
    (
        "wrong value type",
        {"custom_data": {"value": "lots", "currency": "EUR"}},
        "invalid_field",
        "custom_data.value",
    ),
    ("missing event_name", {"event_name": None}, "missing_field", "event_name"),
    ("bad action_source", {"action_source": "carrier_pigeon"}, "invalid_field", "action_source"),
    ("too old", {"event_time": int(NOW) - 8 * 86400}, "event_too_old", "event_time"),
    ("in the future", {"event_time": int(NOW) + 3600}, "event_in_future", "event_time"),
]


@pytest.mark.parametrize(
    ("overrides", "code", "field"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_rejections_name_the_field(overrides: dict[str, Any], code: str, field: str) -> None:
    raw = event(**overrides)
    raw = {key: value for key, value in raw.items() if value is not None}
    prepared = prepare(raw)

    assert prepared.new_event is None and prepared.rejected
    errors = [p for p in prepared.problems if p.is_error]
    assert (code, field) in {(p.code, p.field) for p in errors}, errors
    for problem in errors:
        assert problem.message and RAW_EMAIL not in problem.message
        assert "lots" not in problem.message and "carrier_pigeon" not in problem.message


def test_pydantic_message_names_path_and_never_echoes_input() -> None:
    prepared = prepare(event(custom_data={"value": "SECRET-VALUE", "currency": "EUR"}))
    [problem] = [p for p in prepared.problems if p.field == "custom_data.value"]
    # One sentence with the fix, not pydantic's "valid integer ... or valid number".
    assert problem.message.startswith("custom_data.value: must be a number such as 12.50")
    assert "integer" not in problem.message
    assert "SECRET-VALUE" not in problem.message


def test_a_decimal_comma_in_value_is_told_how_to_write_the_number() -> None:
    prepared = prepare(event(custom_data={"value": "12,50", "currency": "EUR"}))
    [problem] = [p for p in prepared.problems if p.field == "custom_data.value"]
    assert "a dot before the decimals" in problem.message
    # An integer-only field keeps pydantic's own sentence (no decimals to speak of).
    prepared = prepare(event(custom_data={"value": 1.0, "currency": "EUR", "num_items": "x"}))
    [problem] = [p for p in prepared.problems if p.field == "custom_data.num_items"]
    assert "12.50" not in problem.message


def test_not_an_object_is_rejected() -> None:
    prepared = prepare(["not", "an", "event"])
    assert prepared.rejected
    assert [p.code for p in prepared.problems] == ["invalid_type"]


def test_given_event_id_survives_rejection() -> None:
    prepared = prepare(event(event_id="order-9", bogus=1))
    assert prepared.rejected and prepared.event_id == "order-9"


def test_warnings_travel_with_an_accepted_event() -> None:
    raw = event()
    raw["user_data"] = {k: v for k, v in raw["user_data"].items() if k != "fbp"}
    prepared = prepare(raw)
    assert prepared.new_event is not None
    assert prepared.problems and not any(p.is_error for p in prepared.problems)


def test_unnormalizable_identifier_is_dropped_with_a_warning() -> None:
    raw = event()
    raw["user_data"] = {**raw["user_data"], "email": "not-an-email"}
    prepared = prepare(raw)
    assert prepared.new_event is not None
    assert "em" not in orjson.loads(prepared.new_event.payload)["user_data"]
    assert any(p.field.endswith("em") and not p.is_error for p in prepared.problems)
    assert all("not-an-email" not in p.message for p in prepared.problems)


def test_input_the_fast_path_declines_is_prepared_by_the_model() -> None:
    # An ISO 8601 event_time is not the fast path's exact shape; the model coerces it.
    iso = prepare(event(event_id="order-iso", event_time="2026-09-21T14:13:20+00:00"))
    unix = prepare(event(event_id="order-iso", event_time=1_790_000_000))
    assert iso.new_event is not None and unix.new_event is not None
    assert iso.new_event.payload == unix.new_event.payload
    assert iso.new_event.event_time == 1_790_000_000


def test_same_event_twice_gives_the_same_queued_bytes() -> None:
    raw = event()
    first, second = prepare(raw), prepare(raw)
    assert first.new_event is not None and second.new_event is not None
    assert first.new_event == second.new_event
    assert "event_id" not in raw, "the caller's dict is not modified"


def test_wire_problems_and_rule_problems_both_reach_the_result() -> None:
    raw = event(event_time=int(NOW) + 3600)
    raw["user_data"] = {**raw["user_data"], "email": "not-an-email"}
    prepared = prepare(raw)
    assert prepared.rejected
    by_code = {p.code: p for p in prepared.problems}
    assert by_code["event_in_future"].is_error
    assert any(p.field.endswith("em") and not p.is_error for p in prepared.problems)


@pytest.mark.parametrize(
    ("phone", "default_country", "warned"),
    [
        # Ten US digits that also read as Norway's +47 98570523: still a US number missing its 1.
        ("(479) 857-0523", None, True),
        ("(479) 857-0523", "US", False),
        ("+1 (479) 857-0523", None, False),
    ],
)
def test_a_us_phone_without_its_1_is_warned_about_when_no_country_is_known(
    phone: str, default_country: str | None, warned: bool
) -> None:
    raw = event()
    raw["user_data"] = {**raw["user_data"], "phone": phone}
    prepared = prepare(raw, pixel=PixelSettings(default_country=default_country))
    assert prepared.new_event is not None
    flagged = [p for p in prepared.problems if p.code == "phone_without_country_code"]
    assert len(flagged) == (1 if warned else 0)
    sent = orjson.loads(prepared.new_event.payload)["user_data"]["ph"]
    assert sent == [sha("4798570523" if warned else "14798570523")]
    if warned:
        [problem] = flagged
        assert problem.field == "user_data.ph" and not problem.is_error
        assert "country code" in problem.message and "default_country" in problem.message
        assert "4798570523" not in problem.message and "857" not in problem.message


@pytest.mark.parametrize(
    ("user_data", "dropped", "fix"),
    [
        ({"email": "not-an-email"}, "user_data.em", "name@example.com"),
        ({"phone": "call me"}, "user_data.ph", "country code"),
        ({"em": "not-an-email", "ph": "call me"}, "user_data.em", "user_data.ph"),
    ],
)
def test_an_event_whose_only_identifiers_were_dropped_says_which_and_why(
    user_data: dict[str, str], dropped: str, fix: str
) -> None:
    prepared = prepare(
        event(event_id="order-7", action_source="system_generated", user_data=user_data)
    )
    assert prepared.rejected
    [problem] = [p for p in prepared.problems if p.is_error]
    assert problem.field == "user_data"
    assert "is required" not in problem.message, "user_data was given; its values were dropped"
    assert dropped in problem.message and "dropped" in problem.message
    assert fix in problem.message
    assert all(v not in problem.message for v in ("not-an-email", "call me"))


def test_a_thin_user_data_also_names_what_was_dropped_from_it() -> None:
    user_data = {"email": "not-an-email", "client_user_agent": "Mozilla/5.0"}
    prepared = prepare(event(action_source="system_generated", user_data=user_data))
    [problem] = [p for p in prepared.problems if p.is_error]
    assert (problem.code, problem.field) == ("insufficient_customer_info", "user_data")
    assert "user_data.em" in problem.message and "name@example.com" in problem.message
    assert "not-an-email" not in problem.message


@pytest.mark.parametrize(
    ("phone", "reading"),
    [
        ("3212345678", "+32 (Belgium)"),  # Belgium's +32 12 34 56 78 written without "+"
        ("4798570523", "+47 (Norway)"),
        ("(479) 857-0523", "+47 (Norway)"),
        ("4687654321", "+46 (Sweden)"),
        ("3545512345", "+354 (Iceland)"),
    ],
)
def test_ten_digits_that_read_two_ways_are_warned_with_both_readings(
    phone: str, reading: str
) -> None:
    """Not "looks like a number without its country code": a Belgian number written with
    its code is no such thing.  The warning says both readings, which one was hashed (the
    hash is unchanged: the digits as written) and how to stop the guess, without the number."""
    raw = event()
    raw["user_data"] = {**raw["user_data"], "phone": phone}
    prepared = prepare(raw, pixel=PixelSettings(default_country=None))
    assert prepared.new_event is not None
    [problem] = [p for p in prepared.problems if p.code == "phone_without_country_code"]
    assert problem.field == "user_data.ph" and not problem.is_error
    digits = "".join(ch for ch in phone if ch.isdigit())
    assert orjson.loads(prepared.new_event.payload)["user_data"]["ph"] == [sha(digits)]
    message = problem.message
    assert f"written with its country code, {reading}, which is how it was hashed" in message
    assert "or as a US number without its 1" in message
    assert "+1" in message and "default_country" in message
    assert "looks like a number without its country code" not in message
    assert digits[2:] not in message and digits[-4:] not in message  # no raw number


@pytest.mark.parametrize("phone", ["6505551212", "020 7946 0958"])
def test_digits_that_read_only_as_a_national_number_keep_the_plain_warning(phone: str) -> None:
    raw = event()
    raw["user_data"] = {**raw["user_data"], "phone": phone}
    prepared = prepare(raw, pixel=PixelSettings(default_country=None))
    [problem] = [p for p in prepared.problems if p.code == "phone_without_country_code"]
    assert problem.message.startswith("user_data.ph looks like a number without its country code")


def test_values_dropped_from_one_field_are_told_once_in_the_error() -> None:
    """Three bad e-mails put the same ~150-character sentence three times into the error
    (a receipt keeps 500 characters); the field is named once with its count."""
    user_data = {"em": ["bad", "bad2", "bad3"], "ph": "call me"}
    prepared = prepare(event(action_source="system_generated", user_data=user_data))
    [problem] = [p for p in prepared.problems if p.is_error]
    message = problem.message
    assert message.startswith(
        "user_data was given but none of its values could be used: user_data.em (3 values) "
        "and user_data.ph could not be normalized and were dropped. Fix them, or add another "
        "customer information parameter"
    )
    assert message.count("user_data.em") == 2  # named, then its reason and fix
    assert message.count("exactly one '@'") == 1 and message.count("name@example.com") == 1
    assert message.count("contains no digits") == 1
    # A receipt keeps 500 characters: what was dropped and the way out come first.
    assert "fbp...). user_data.em: " in message[:500]
    assert all(v not in message for v in ("bad2", "bad3", "call me"))


# Three e-mails dropped for the one reason they share (no '@'); none of them may be echoed.
NO_AT_EMAILS = ["not-an-email", "also bad", "nope"]


def test_values_of_one_field_dropped_for_one_reason_are_one_warning_with_their_count() -> None:
    raw = event()
    raw["user_data"] = {**raw["user_data"], "email": NO_AT_EMAILS}
    prepared = prepare(raw)
    assert prepared.new_event is not None
    [problem] = [p for p in prepared.problems if p.code == "invalid_email"]
    assert (problem.field, problem.is_error, problem.count) == ("user_data.em", False, 3)
    assert problem.message.startswith(
        "3 values of user_data.em could not be normalized (must contain exactly one '@' "
        "(found 0)) and were dropped; send a full email address"
    )
    assert all(value not in problem.message for value in NO_AT_EMAILS)


def test_drops_of_different_fields_or_reasons_stay_apart_in_first_seen_order() -> None:
    raw = event()
    user_data = {"email": [*NO_AT_EMAILS[:2], "a@@b", "x@"], "phone": ["call me", "nope"]}
    raw["user_data"] = {**raw["user_data"], **user_data}
    prepared = prepare(raw)
    assert prepared.new_event is not None
    dropped = [
        (p.code, p.field, p.count) for p in prepared.problems if p.code.startswith("invalid")
    ]
    assert dropped == [
        ("invalid_email", "user_data.em", 2),  # no '@'
        ("invalid_email", "user_data.em", 1),  # two '@'
        ("invalid_email", "user_data.em", 1),  # no dot after the '@'
        ("invalid_phone", "user_data.ph", 2),
    ]
    single = [p.message for p in prepared.problems if p.count == 1 and p.field == "user_data.em"]
    assert all(m.startswith("user_data.em could not be normalized (") for m in single)


def test_the_user_data_error_counts_values_its_merged_warning_covers() -> None:
    user_data = {"em": NO_AT_EMAILS, "ph": "call me"}
    prepared = prepare(event(action_source="system_generated", user_data=user_data))
    assert prepared.rejected
    [warned_em, warned_ph] = [p for p in prepared.problems if not p.is_error]
    assert (warned_em.field, warned_em.count, warned_ph.field, warned_ph.count) == (
        "user_data.em",
        3,
        "user_data.ph",
        1,
    )
    [problem] = [p for p in prepared.problems if p.is_error]
    assert problem.message.startswith(
        "user_data was given but none of its values could be used: user_data.em (3 values) "
        "and user_data.ph could not be normalized and were dropped. Fix them"
    )
    assert problem.message.count("exactly one '@'") == 1
    assert all(value not in problem.message for value in [*NO_AT_EMAILS, "call me"])


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ({"custom_data": {"contents": [{"id": "@@", "quantity": 1}]}}, "custom_data.contents.0.id"),
        ({"custom_data": {"content_ids": ["7", "@@"]}}, "custom_data.content_ids.1"),
        ({"custom_data": {"order_id": "@@"}}, "custom_data.order_id"),
        ({"user_data": {"fb_login_id": "@@"}}, "user_data.fb_login_id"),
        ({"user_data": {"lead_id": "@@"}}, "user_data.lead_id"),
        ({"user_data": {"external_id": "@@"}}, "user_data.external_id"),
        ({"user_data": {"external_id": ["a", "@@"]}}, "user_data.external_id.1"),
        ({"event_id": "@@"}, "event_id"),  # the dedup key: the browser's copy would differ
        (
            {"original_event_data": {"event_name": "Purchase", "event_id": "@@"}},
            "original_event_data.event_id",
        ),
    ],
)
def test_an_id_beyond_what_json_carries_exactly_is_refused_asking_for_a_string(
    where: dict[str, Any], field: str
) -> None:
    # orjson reads 12345678901234567890123 as 1.2345678901234568e+22, which reached Meta
    # as that text: another id.  The body is parsed as the gateway parses it.
    raw = event()
    for part, values in where.items():
        raw[part] = {**raw[part], **values} if isinstance(raw.get(part), dict) else values
    body = orjson.dumps(raw).replace(b'"@@"', b"12345678901234567890123")
    prepared = prepare(orjson.loads(body))
    assert prepared.new_event is None, "a changed id must not be sent"
    problems = [p for p in prepared.problems if p.field.startswith(field)]
    assert problems, prepared.problems
    assert "send ids as strings" in problems[0].message


def test_an_id_that_json_carries_exactly_still_goes() -> None:
    raw = event(custom_data={"value": 1.0, "currency": "EUR", "order_id": 9007199254740991})
    raw["user_data"] = {**raw["user_data"], "fb_login_id": 123456789012345}
    prepared = prepare(orjson.loads(orjson.dumps(raw)))
    assert prepared.new_event is not None, prepared.problems
    sent = orjson.loads(prepared.new_event.payload)
    assert sent["custom_data"]["order_id"] == "9007199254740991"
