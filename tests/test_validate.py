"""Meta's acceptance rules, as a table: a tweak to a valid event -> the problem codes it causes."""

from __future__ import annotations

import copy
import enum
import hashlib
import math
from typing import Any

import pytest

from capirelay import browser_ids
from capirelay.problems import Severity
from capirelay.validate import (
    GENERIC_SUBCODE,
    MAX_EVENTS_PER_REQUEST,
    META_SUBCODES,
    RULES,
    deadline,
    meta_subcode,
    validate_batch,
    validate_event,
)

NOW = 1_790_000_000
DAY = 86_400
DELETE = object()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Text(str):
    """A str subclass: the checks' exact-type shortcuts must not reject it."""


class Seconds(enum.IntEnum):
    EVENT_TIME = NOW - 60


EM = sha("jane@example.com")
UA = "Mozilla/5.0 (X11; Linux x86_64)"
FBC = "fb.1.1789990000000.IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2o"
FBP = "fb.1.1789990000000.1098115397"
APP_DATA: dict[str, Any] = {
    "advertiser_tracking_enabled": 1,
    "extinfo": [
        "a2",
        "com.shop",
        "1.0",
        "1.0.0",
        "14",
        "Pixel 8",
        "en_US",
        "UTC",
        "",
        "1080",
        "2400",
        "2.6",
        "8",
        "128",
        "64",
        "Europe/Berlin",
    ],
}


def valid_event() -> dict[str, Any]:
    """A website Purchase that every rule accepts, with no warning."""
    return {
        "event_name": "Purchase",
        "event_time": NOW - 60,
        "event_id": "order-1001",
        "action_source": "website",
        "event_source_url": "https://www.example.com/checkout/thanks",
        "user_data": {
            "em": [EM],
            "ph": [sha("16505551212")],
            "client_ip_address": "2606:4700:4700::1111",
            "client_user_agent": UA,
            "fbc": FBC,
            "fbp": FBP,
        },
        "custom_data": {"value": 42.5, "currency": "USD"},
    }


def tweaked(changes: dict[str, Any]) -> dict[str, Any]:
    """``valid_event()`` with dotted paths set (or removed with ``DELETE``)."""
    event = copy.deepcopy(valid_event())
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        target = event
        for key in parents:
            target = target.setdefault(key, {})
        if value is DELETE:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return event


def codes(changes: dict[str, Any], **kwargs: Any) -> list[str]:
    return sorted(p.code for p in validate_event(tweaked(changes), now=NOW, **kwargs))


# Only the customer information named in a combination, on an event kind
# that needs nothing else (system_generated: no website requirements).
def customer_info_only(user_data: dict[str, Any]) -> dict[str, Any]:
    return {"action_source": "system_generated", "user_data": user_data}


BASELINE_INVALID: dict[str, dict[str, Any]] = {
    "ct+country+st+zp+ge+ua": {
        "ct": [sha("menlopark")],
        "country": [sha("us")],
        "st": [sha("ca")],
        "zp": [sha("94025")],
        "ge": [sha("f")],
        "client_user_agent": UA,
    },
    "db+ua": {"db": [sha("19970216")], "client_user_agent": UA},
    "fn+ge": {"fn": [sha("mary")], "ge": [sha("f")]},
    "ln+ge": {"ln": [sha("smith")], "ge": [sha("f")]},
}

ROWS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("valid event", {}, []),
    # required fields
    ("no event_name", {"event_name": DELETE}, ["missing_field"]),
    ("empty event_name", {"event_name": ""}, ["missing_field"]),
    ("no event_time", {"event_time": DELETE}, ["missing_field"]),
    ("no action_source", {"action_source": DELETE}, ["missing_field"]),
    ("no user_data", {"user_data": DELETE, "action_source": "other"}, ["missing_field"]),
    # types
    ("event_id is a number", {"event_id": 1001}, ["invalid_type"]),
    ("custom_data is a list", {"event_name": "Lead", "custom_data": []}, ["invalid_type"]),
    ("opt_out is a string", {"opt_out": "yes"}, ["invalid_type"]),
    ("event_name is a str subclass", {"event_name": Text("Purchase")}, []),
    ("opt_out is a bool", {"opt_out": False}, []),
    ("event_id is a bool", {"event_id": True}, ["invalid_type"]),
    # action_source enum
    ("action_source not in the enum", {"action_source": "web"}, ["invalid_action_source"]),
    ("action_source wrong case", {"action_source": "Website"}, ["invalid_action_source"]),
    # event_time
    ("event_time as a string", {"event_time": str(NOW)}, ["invalid_event_time"]),
    ("event_time as a float", {"event_time": NOW + 0.5}, ["invalid_event_time"]),
    ("event_time as a bool", {"event_time": True}, ["invalid_event_time"]),
    ("event_time as an int enum", {"event_time": Seconds.EVENT_TIME}, []),
    ("exactly 7 days old", {"event_time": NOW - 7 * DAY}, []),
    ("7 days and 1 s old", {"event_time": NOW - 7 * DAY - 1}, ["event_too_old"]),
    ("event_time in ms is far future", {"event_time": NOW * 1000}, ["event_in_future"]),
    (
        "physical_store 8 days old",
        {"action_source": "physical_store", "event_time": NOW - 8 * DAY},
        [],
    ),
    (
        "physical_store exactly 62 days old",
        {"action_source": "physical_store", "event_time": NOW - 62 * DAY},
        [],
    ),
    (
        "physical_store 62 days and 1 s old",
        {"action_source": "physical_store", "event_time": NOW - 62 * DAY - 1},
        ["event_too_old"],
    ),
    ("300 s ahead (default skew)", {"event_time": NOW + 300}, []),
    ("301 s ahead", {"event_time": NOW + 301}, ["event_in_future"]),
    # website requirements
    ("website without URL", {"event_source_url": DELETE}, ["missing_website_field"]),
    ("website with an empty URL", {"event_source_url": ""}, ["missing_website_field"]),
    (
        "website without UA",
        {"user_data.client_user_agent": DELETE},
        ["missing_website_field"],
    ),
    ("email event needs no URL", {"action_source": "email", "event_source_url": DELETE}, []),
    # app events
    ("app event without app_data", {"action_source": "app"}, ["invalid_app_data"]),
    ("app event with app_data", {"action_source": "app", "app_data": APP_DATA}, []),
    (
        "app event without ATT flag",
        {"action_source": "app", "app_data": {"extinfo": APP_DATA["extinfo"]}},
        ["invalid_app_data"],
    ),
    (
        "app event with 15-slot extinfo",
        {"action_source": "app", "app_data": {**APP_DATA, "extinfo": APP_DATA["extinfo"][:15]}},
        ["invalid_app_data"],
    ),
    (
        "app event with extinfo[0] not i2/a2",
        {
            "action_source": "app",
            "app_data": {**APP_DATA, "extinfo": ["x1", *APP_DATA["extinfo"][1:]]},
        },
        ["invalid_app_data"],
    ),
    (
        "app event without OS version",
        {
            "action_source": "app",
            "app_data": {
                **APP_DATA,
                "extinfo": [*APP_DATA["extinfo"][:4], "", *APP_DATA["extinfo"][5:]],
            },
        },
        ["invalid_app_data"],
    ),
    # Purchase value and currency
    ("Purchase without value", {"custom_data.value": DELETE}, ["purchase_missing_value"]),
    ("Purchase with string value", {"custom_data.value": "42.5"}, ["purchase_missing_value"]),
    ("Purchase with bool value", {"custom_data.value": True}, ["purchase_missing_value"]),
    ("Purchase with NaN value", {"custom_data.value": math.nan}, ["purchase_missing_value"]),
    ("Purchase with integer value", {"custom_data.value": 42}, []),
    ("Purchase with zero value", {"custom_data.value": 0}, []),
    ("Lead without value", {"event_name": "Lead", "custom_data": DELETE}, []),
    ("Lead with string value", {"event_name": "Lead", "custom_data.value": "x"}, ["invalid_value"]),
    ("Purchase without currency", {"custom_data.currency": DELETE}, ["invalid_currency"]),
    ("lowercase currency", {"custom_data.currency": "eur"}, []),
    ("unknown currency", {"custom_data.currency": "XYZ"}, ["invalid_currency"]),
    ("2-letter currency", {"custom_data.currency": "US"}, ["invalid_currency"]),
    (
        "Lead with unknown currency",
        {"event_name": "Lead", "custom_data.currency": "ABC"},
        ["invalid_currency"],
    ),
    # business messaging
    (
        "business_messaging without channel",
        {"action_source": "business_messaging"},
        ["invalid_messaging_channel"],
    ),
    (
        "business_messaging via whatsapp",
        {"action_source": "business_messaging", "messaging_channel": "whatsapp"},
        [],
    ),
    (
        "business_messaging via sms",
        {"action_source": "business_messaging", "messaging_channel": "sms"},
        ["invalid_messaging_channel"],
    ),
    # Limited Data Use
    ("no LDU", {"data_processing_options": []}, []),
    ("processing options sent as null", {"data_processing_options": None}, []),
    ("a state without a country", {"data_processing_options_state": 1000}, []),
    (
        "LDU with country and state",
        {
            "data_processing_options": ["LDU"],
            "data_processing_options_country": 1,
            "data_processing_options_state": 1000,
        },
        [],
    ),
    (
        "LDU with geolocation",
        {
            "data_processing_options": ["LDU"],
            "data_processing_options_country": 0,
            "data_processing_options_state": 0,
        },
        [],
    ),
    (
        "LDU without country or state",
        {"data_processing_options": ["LDU"]},
        ["ldu_location_required", "ldu_location_required"],
    ),
    (
        "LDU with a country but no state",
        {"data_processing_options": ["LDU"], "data_processing_options_country": 1},
        ["ldu_location_required"],
    ),
    (
        "a country without a state",
        {"data_processing_options_country": 1},
        ["ldu_location_required"],
    ),
    (
        "unknown processing option",
        {"data_processing_options": ["GDPR"]},
        ["invalid_data_processing_options"],
    ),
    (
        "country as a string",
        {
            "data_processing_options": ["LDU"],
            "data_processing_options_country": "1",
            "data_processing_options_state": 1000,
        },
        ["invalid_data_processing_options"],
    ),
    # customer information
    (
        "empty user_data",
        {"action_source": "system_generated", "user_data": {}},
        ["missing_user_data"],
    ),
    (
        "only blank customer information",
        customer_info_only({"em": [], "client_user_agent": "", "fn": None}),
        ["missing_user_data"],
    ),
    (
        "a blank key beside a baseline-invalid pair",
        customer_info_only({"db": [sha("19970216")], "client_user_agent": UA, "em": []}),
        ["insufficient_customer_info"],
    ),
    (
        "zero is a value, not a blank",
        customer_info_only({"client_ip_address": 0}),
        ["invalid_client_ip_address"],
    ),
    (
        "only unknown user_data keys",
        {"action_source": "system_generated", "user_data": {"favourite_colour": "blue"}},
        ["missing_user_data"],
    ),
    *[
        (f"baseline-invalid {name}", customer_info_only(combo), ["insufficient_customer_info"])
        for name, combo in BASELINE_INVALID.items()
    ],
    *[
        (
            f"subset of baseline-invalid {name}",
            customer_info_only(dict(list(combo.items())[:1])),
            ["insufficient_customer_info"],
        )
        for name, combo in BASELINE_INVALID.items()
    ],
    *[
        (f"{name} + em is valid", customer_info_only({**combo, "em": [EM]}), [])
        for name, combo in BASELINE_INVALID.items()
    ],
    *[
        (
            f"{name} + client_ip_address is valid",
            customer_info_only({**combo, "client_ip_address": "8.8.8.8"}),
            [],
        )
        for name, combo in BASELINE_INVALID.items()
    ],
    # hashing
    ("raw email", {"user_data.em": "jane@example.com"}, ["unhashed_pii"]),
    ("one raw email in a list", {"user_data.em": [EM, "jane@example.com"]}, ["unhashed_pii"]),
    ("uppercase hex digest", {"user_data.em": [EM.upper()]}, ["unhashed_pii"]),
    ("raw phone", {"user_data.ph": ["16505551212"]}, ["unhashed_pii"]),
    ("raw external_id", {"user_data.external_id": "cust-77"}, ["unhashed_external_id"]),
    ("hashed external_id", {"user_data.external_id": [sha("cust-77")]}, []),
    # contents (Meta requires id in each)
    ("contents with ids", {"custom_data.contents": [{"id": "SKU-1", "quantity": 1}]}, []),
    ("numeric content id", {"custom_data.contents": [{"id": 42, "quantity": 1}]}, []),
    ("content without id", {"custom_data.contents": [{"quantity": 1}]}, ["invalid_contents"]),
    ("content with blank id", {"custom_data.contents": [{"id": " "}]}, ["invalid_contents"]),
    ("content not an object", {"custom_data.contents": ["SKU-1"]}, ["invalid_contents"]),
    ("contents not a list", {"custom_data.contents": {"id": "SKU-1"}}, ["invalid_contents"]),
    ("raw country", {"user_data.country": "us"}, ["unhashed_pii"]),
    ("number where a hash belongs", {"user_data.zp": 94025}, ["unhashed_pii"]),
    ("number in a list of hashes", {"user_data.em": [EM, 5]}, ["unhashed_pii"]),
    ("digest as a str subclass", {"user_data.em": [Text(EM)]}, []),
    ("digest not in a list", {"user_data.em": EM}, []),
    (
        "two raw keys, two problems",
        {"user_data.em": "a", "user_data.ph": "1"},
        ["unhashed_pii"] * 2,
    ),
    # fbc / fbp grammar
    ("fbc 4 segments mixed case", {"user_data.fbc": "fb.1.1789990000000.AbCdEf-_GhIJ"}, []),
    ("fbc 5 segments (8-char appendix)", {"user_data.fbc": f"{FBC}.AQIDAQMC"}, []),
    ("fbc 5 segments (legacy token)", {"user_data.fbc": f"{FBC}.Ag"}, []),
    ("fbc unknown 2-char token", {"user_data.fbc": f"{FBC}.ZZ"}, ["invalid_fbc"]),
    ("fbc 6-char appendix", {"user_data.fbc": f"{FBC}.AQIDAQ"}, ["invalid_fbc"]),
    ("fbc 3 segments", {"user_data.fbc": "fb.1.1789990000000"}, ["invalid_fbc"]),
    ("fbc wrapped twice", {"user_data.fbc": f"fb.1.1789990000000.{FBC}"}, ["invalid_fbc"]),
    ("bare fbclid as fbc", {"user_data.fbc": "IwAR2F4-dbP0l7Mn1Iaw"}, ["invalid_fbc"]),
    (
        "fbc with junk in the click id",
        {"user_data.fbc": "fb.1.1789990000000.Iw$AR"},
        ["invalid_fbc"],
    ),
    ("fbc creation time in seconds", {"user_data.fbc": "fb.1.1789990000.IwAR"}, ["invalid_fbc"]),
    ("fbc created at the first ms time", {"user_data.fbc": "fb.1.1000000000000.IwAR"}, []),
    ("fbc created 1 ms before it", {"user_data.fbc": "fb.1.999999999999.IwAR"}, ["invalid_fbc"]),
    ("fbc created 300 s ahead", {"user_data.fbc": f"fb.1.{(NOW + 300) * 1000}.IwAR"}, []),
    (
        "fbc created 301 s ahead",
        {"user_data.fbc": f"fb.1.{(NOW + 301) * 1000}.IwAR"},
        ["invalid_fbc"],
    ),
    ("fbc not a string", {"user_data.fbc": 12}, ["invalid_fbc"]),
    ("fbp 5 segments", {"user_data.fbp": f"{FBP}.AQICAQMC"}, []),
    ("fbp with a non-numeric id", {"user_data.fbp": "fb.1.1789990000000.abc"}, ["invalid_fbp"]),
    ("fbp 3 segments", {"user_data.fbp": "fb.1.1789990000000"}, ["invalid_fbp"]),
    ("fbp in the future", {"user_data.fbp": f"fb.1.{(NOW + 3600) * 1000}.1"}, ["invalid_fbp"]),
    # client IP
    ("IPv4 is fine without a warning", {"user_data.client_ip_address": "8.8.8.8"}, []),
    ("IP with builder appendix", {"user_data.client_ip_address": "8.8.8.8.AQQAAQMC"}, []),
    ("IPv6 with builder appendix", {"user_data.client_ip_address": "2001:db8::5.AQQCAQMC"}, []),
    ("invalid IPv4", {"user_data.client_ip_address": "999.1.1.1"}, ["invalid_client_ip_address"]),
    ("IP with a space", {"user_data.client_ip_address": " 8.8.8.8"}, ["invalid_client_ip_address"]),
    ("two IPs", {"user_data.client_ip_address": "8.8.8.8, 1.1.1.1"}, ["invalid_client_ip_address"]),
    (
        "IPv6 zone id",
        {"user_data.client_ip_address": "fe80::1%eth0"},
        ["invalid_client_ip_address"],
    ),
    ("hashed IP", {"user_data.client_ip_address": sha("8.8.8.8")}, ["invalid_client_ip_address"]),
    # warnings
    ("no event_id", {"event_id": DELETE}, ["missing_event_id"]),
    (
        "website without fbp or fbc",
        {"user_data.fbp": DELETE, "user_data.fbc": DELETE},
        ["missing_browser_ids"],
    ),
    ("website with fbp only", {"user_data.fbc": DELETE}, []),
    # A custom name that looks like a standard event: counted as custom by Meta.
    ("lowercase purchase", {"event_name": "purchase"}, ["custom_event_like_standard"]),
    ("a typo of Purchase", {"event_name": "Purchse"}, ["custom_event_like_standard"]),
    ("snake_case add to cart", {"event_name": "add_to_cart"}, ["custom_event_like_standard"]),
    ("a custom event of its own", {"event_name": "QuoteRequested"}, []),
    ("a short custom name near Lead", {"event_name": "Leed"}, []),
    # Words built on a standard name, often its opposite: not typos to "fix".
    ("Unsubscribe is no Subscribe", {"event_name": "Unsubscribe"}, []),
    ("IncompleteRegistration", {"event_name": "IncompleteRegistration"}, []),
    ("Repurchase", {"event_name": "Repurchase"}, []),
    ("RestartTrial", {"event_name": "RestartTrial"}, []),
]


@pytest.mark.parametrize(
    ("changes", "expected"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS]
)
def test_rule_table(changes: dict[str, Any], expected: list[str]) -> None:
    assert codes(changes) == sorted(expected)


def test_every_rule_has_a_row_in_the_table() -> None:
    covered = {code for _, _, expected in ROWS for code in expected}
    assert {rule.code for rule in RULES} <= covered


def test_rule_codes_are_unique_and_each_problem_carries_its_rule_code() -> None:
    rule_codes = [rule.code for rule in RULES]
    assert len(rule_codes) == len(set(rule_codes))
    for _, changes, _ in ROWS:
        for problem in validate_event(tweaked(changes), now=NOW):
            assert problem.code in rule_codes


WARNING_CODES = {"missing_event_id", "missing_browser_ids", "custom_event_like_standard"}


def test_only_dedup_browser_id_and_event_name_advice_are_warnings() -> None:
    for _, changes, _ in ROWS:
        for problem in validate_event(tweaked(changes), now=NOW):
            expected = Severity.WARNING if problem.code in WARNING_CODES else Severity.ERROR
            assert problem.severity is expected, problem


def test_every_error_code_has_a_meta_subcode() -> None:
    error_codes = {rule.code for rule in RULES} - WARNING_CODES
    assert set(META_SUBCODES) == error_codes


@pytest.mark.parametrize(
    ("code", "subcode"),
    [
        ("event_too_old", 2804003),
        ("invalid_fbc", 2804001),
        ("purchase_missing_value", 2804009),
        ("ldu_location_required", 2804030),
        ("event_in_future", 2804019),
        ("unhashed_pii", GENERIC_SUBCODE),
    ],
)
def test_known_meta_subcodes(code: str, subcode: int) -> None:
    assert META_SUBCODES[code] == subcode


def test_meta_subcode_is_the_first_errors() -> None:
    old_and_unhashed = tweaked({"event_time": NOW - 30 * DAY, "user_data.em": "raw"})
    assert meta_subcode(validate_event(old_and_unhashed, now=NOW)) == 2804003
    assert meta_subcode(validate_event(tweaked({"event_id": DELETE}), now=NOW)) is None


RAW_VALUES = {
    "user_data.em": "jane.doe@example.com",
    "user_data.ph": "+16505551212",
    "user_data.client_ip_address": "300.1.2.3",
    "user_data.fbc": "fb.1.123.secret-click",
    "user_data.external_id": "customer-8812",
}


@pytest.mark.parametrize(("path", "raw"), RAW_VALUES.items())
def test_messages_name_the_field_never_the_value(path: str, raw: str) -> None:
    problems = [p for p in validate_event(tweaked({path: raw}), now=NOW) if p.field == path]
    assert problems, path
    for problem in problems:
        assert raw not in problem.message
        assert path in problem.message


def test_every_message_names_its_field() -> None:
    for _, changes, _ in ROWS:
        for problem in validate_event(tweaked(changes), now=NOW):
            assert problem.field in problem.message, problem


def test_max_future_skew_is_a_parameter() -> None:
    assert codes({"event_time": NOW + 60}, max_future_skew=30) == ["event_in_future"]
    assert codes({"event_time": NOW + 600}, max_future_skew=900) == []


def test_now_defaults_to_the_clock() -> None:
    import time

    now = int(time.time())
    event = tweaked({"event_time": now, "user_data.fbc": f"fb.1.{now * 1000}.IwAR"})
    event["user_data"]["fbp"] = f"fb.1.{now * 1000}.42"
    assert validate_event(event) == []
    assert [p.code for p in validate_event({**event, "event_time": now - 8 * DAY})] == [
        "event_too_old"
    ]


def test_non_object_event_is_one_error() -> None:
    [problem] = validate_event(["not", "an", "event"])  # type: ignore[arg-type]
    assert (problem.code, problem.is_error) == ("invalid_type", True)


def test_batch_of_1000_is_validated_per_event() -> None:
    events = [valid_event() for _ in range(MAX_EVENTS_PER_REQUEST)]
    events[7] = tweaked({"custom_data.value": DELETE})
    results = validate_batch(events, now=NOW)
    assert len(results) == MAX_EVENTS_PER_REQUEST
    assert [p.code for p in results[7]] == ["purchase_missing_value"]
    assert sum(1 for problems in results if problems) == 1


def test_batch_of_1001_is_a_request_level_error() -> None:
    with pytest.raises(ValueError, match="1000"):
        validate_batch([valid_event()] * (MAX_EVENTS_PER_REQUEST + 1), now=NOW)


def test_batch_passes_skew_through() -> None:
    [problems] = validate_batch([tweaked({"event_time": NOW + 60})], now=NOW, max_future_skew=10)
    assert [p.code for p in problems] == ["event_in_future"]


@pytest.mark.parametrize(
    ("action_source", "days"),
    [("website", 7), ("app", 7), ("system_generated", 7), ("physical_store", 62)],
)
def test_deadline(action_source: str, days: int) -> None:
    event = {"event_time": NOW, "action_source": action_source}
    assert deadline(event) == NOW + days * DAY


@pytest.mark.parametrize("event_time", [None, "1790000000", 1.5, True])
def test_deadline_needs_an_integer_event_time(event_time: Any) -> None:
    with pytest.raises(ValueError, match="event_time"):
        deadline({"event_time": event_time, "action_source": "website"})


def test_deadline_matches_the_too_old_rule_edge() -> None:
    event = tweaked({"action_source": "physical_store"})
    limit = deadline(event)
    assert validate_event(event, now=limit) == []
    assert [p.code for p in validate_event(event, now=limit + 1)] == ["event_too_old"]


def test_browser_ids_output_passes_the_grammar_rules() -> None:
    context = browser_ids.from_request(
        url="https://shop.example.co.uk/p?fbclid=IwAR_MiXeD-Case",
        headers={"user-agent": UA},
        cookies={},
        remote_addr="8.8.8.8",
        now_ms=NOW * 1000,
    )
    event = tweaked({"user_data": {"em": [EM], **context.user_data()}})
    assert event["user_data"]["fbc"].endswith(".IwAR_MiXeD-Case")
    assert validate_event(event, now=NOW) == []


def test_rules_say_who_enforces_them() -> None:
    policy = {rule.code for rule in RULES if rule.enforced_by == "capirelay"}
    assert policy == {
        "unhashed_external_id",
        "missing_event_id",
        "missing_browser_ids",
        "custom_event_like_standard",
    }
    assert {rule.enforced_by for rule in RULES} == {"meta", "capirelay"}


def test_meta_only_leaves_out_capirelays_policy() -> None:
    event = tweaked({"user_data.external_id": "cust-77"})
    assert [p.code for p in validate_event(event, now=NOW)] == ["unhashed_external_id"]
    assert validate_event(event, now=NOW, meta_only=True) == []
