"""Declarative mappings: transforms, rule selection, field building, and load errors that name
FILE:LINE:FIELD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from capirelay.sources._toml_lines import KeyLines
from capirelay.sources._transforms import TRANSFORMS, TransformError, currency_exponent
from capirelay.sources.mapping import (
    MappingLoadError,
    load_mapping,
    parse_mapping,
    redacted_summary,
)
from capirelay.sources.webhooks import PRESETS

REPO = Path(__file__).resolve().parents[2]
NOW = 1_714_600_000.0

# ---------------------------------------------------------------------------
# Transforms, as a table: (name, argument, currency, input, expected)

TRANSFORM_CASES: list[tuple[str, str | None, str | None, Any, Any]] = [
    ("str", None, None, 450789469, "450789469"),
    ("str", None, None, 12.0, "12"),
    ("str", None, None, 12.5, "12.5"),
    ("str", None, None, True, "true"),
    ("str", None, None, [1, "a", None], ["1", "a", None]),
    ("str", None, None, None, None),
    ("int", None, None, "42", 42),
    ("int", None, None, 7.0, 7),
    ("float", None, None, "238.90", 238.9),
    ("float", None, None, 3, 3.0),
    ("lower", None, None, "Jane@Example.COM", "jane@example.com"),
    ("lower", None, None, ["A", "B"], ["a", "b"]),
    ("upper", None, None, "usd", "USD"),
    ("strip", None, None, "  x  ", "x"),
    ("html_unescape", None, None, "Idea &ndash; Color: Black", "Idea \u2013 Color: Black"),
    ("html_unescape", None, None, ["Tom &amp; Jerry", "O&#039;Neil"], ["Tom & Jerry", "O'Neil"]),
    ("html_unescape", None, None, "Plain \u2013 decoded", "Plain \u2013 decoded"),
    ("first", None, None, ["a", "b"], "a"),
    ("first", None, None, [], None),
    ("first", None, None, "solo", "solo"),
    ("join", None, None, ["a", 2, None, ""], "a,2"),
    ("join", " ", None, ["Jane", "Doe"], "Jane Doe"),
    ("join", None, None, [], None),
    ("default", "EUR", None, None, "EUR"),
    ("default", "EUR", None, "", "EUR"),
    ("default", "EUR", None, "USD", "USD"),
    ("cents_to_units", None, None, 4900, 49.0),
    ("cents_to_units", None, None, "1999", 19.99),
    ("minor_to_units", None, "usd", 4900, 49.0),
    ("minor_to_units", None, "JPY", 5400, 5400.0),
    ("minor_to_units", None, "kwd", 12345, 12.345),
    ("iso8601_to_unix", None, None, "2024-03-15T11:58:12-05:00", 1710521892),
    ("iso8601_to_unix", None, None, "2024-03-15T16:58:12Z", 1710521892),
    # No offset: UTC (WooCommerce's *_gmt fields).
    ("iso8601_to_unix", None, None, "2024-03-15T16:58:12", 1710521892),
    ("iso8601_to_unix", None, None, 1710521892, 1710521892),
]


@pytest.mark.parametrize(("name", "argument", "currency", "value", "expected"), TRANSFORM_CASES)
def test_transform(
    name: str, argument: str | None, currency: str | None, value: Any, expected: Any
) -> None:
    assert TRANSFORMS[name](value, argument, currency) == expected


TRANSFORM_FAILURES: list[tuple[str, str | None, Any]] = [
    ("int", None, "4.5"),
    ("int", None, "abc"),
    ("float", None, {"a": 1}),
    ("float", None, True),
    ("float", None, "NaN"),
    ("lower", None, 12),
    ("html_unescape", None, 12),
    ("iso8601_to_unix", None, "last tuesday"),
    ("iso8601_to_unix", None, 1.5),
    ("minor_to_units", None, 100),  # no currency found
]


@pytest.mark.parametrize(("name", "currency", "value"), TRANSFORM_FAILURES)
def test_transform_failure_names_the_type_not_the_value(
    name: str, currency: str | None, value: Any
) -> None:
    with pytest.raises(TransformError) as caught:
        TRANSFORMS[name](value, None, currency)
    if isinstance(value, str):
        assert value not in str(caught.value)


PLACED = "2024-03-01T10:00:00-05:00"  # 1709305200
TEN_DAYS_LATER = "2024-03-11T10:00:00-05:00"  # 1710169200


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        # Paid ten days after it was placed (bank transfer): the payment's update.
        ({"created_at": PLACED, "processed_at": PLACED, "updated_at": TEN_DAYS_LATER}, 1710169200),
        # Placed and paid at checkout: a few seconds later.
        (
            {"created_at": PLACED, "processed_at": PLACED, "updated_at": "2024-03-01T15:00:02Z"},
            1709305202,
        ),
        # Imported with its original date (processed_at ten days before Shopify created it).
        (
            {"created_at": TEN_DAYS_LATER, "processed_at": PLACED, "updated_at": TEN_DAYS_LATER},
            1709305200,
        ),
        # A few seconds between processed_at and created_at is no import.
        (
            {"created_at": "2024-03-01T15:00:03Z", "processed_at": PLACED, "updated_at": None},
            1709305203,
        ),
        ({"processed_at": PLACED}, 1709305200),
        ({}, None),
        (None, None),
    ],
)
def test_shopify_paid_at(order: dict[str, Any] | None, expected: int | None) -> None:
    assert TRANSFORMS["shopify_paid_at"](order, None, None) == expected


@pytest.mark.parametrize("order", ["2024-03-01T10:00:00Z", {"updated_at": "soon"}])
def test_shopify_paid_at_needs_an_order_with_dates(order: Any) -> None:
    with pytest.raises(TransformError):
        TRANSFORMS["shopify_paid_at"](order, None, None)


@pytest.mark.parametrize(
    ("code", "exponent"), [("USD", 2), ("eur", 2), ("JPY", 0), ("krw", 0), ("KWD", 3), ("ISK", 2)]
)
def test_currency_exponent(code: str, exponent: int) -> None:
    assert currency_exponent(code) == exponent


# ---------------------------------------------------------------------------
# Applying a mapping

ORDER_MAPPING = """
[defaults]
action_source = "system_generated"

[[event]]
name = "paid"
topic = ["orders/paid", "orders/updated"]
when = "financial_status == 'paid'"

[event.set]
event_name = "Purchase"
custom_data.content_type = "product"

[event.map]
event_time = { path = "processed_at", transform = "iso8601_to_unix" }
event_id = { path = "id", transform = "str", format = "shop:{}:Purchase" }
action_source = "browser.ua && 'website' || `null`"
event_source_url = "browser.url"
user_data.email = { path = "email", transform = ["strip", "lower"] }
user_data.client_user_agent = "browser.ua"
custom_data.value = { path = "total", transform = "float" }
custom_data.currency = { path = "currency", default = "EUR" }
custom_data.num_items = "sum(items[].qty)"

[event.contents]
each = "items"
id = { path = "sku", transform = "str" }
quantity = "qty"

[[event]]
name = "always"

[event.set]
event_name = "OrderSeen"
"""


def order(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": 1001,
        "financial_status": "paid",
        "processed_at": "2024-05-01T12:00:00Z",
        "email": "  Jane@Example.com ",
        "total": "30.50",
        "currency": "USD",
        "items": [{"sku": 11, "qty": 2}, {"sku": 12, "qty": 1}, {"other": True}],
        "browser": {"ua": "Mozilla/5.0", "url": "https://shop.example/thanks"},
    }
    payload.update(overrides)
    return payload


def test_a_matching_rule_builds_the_event_from_constants_and_expressions() -> None:
    mapping = parse_mapping(ORDER_MAPPING)
    paid, seen = mapping.apply(order(), now=NOW, topic="orders/paid")
    assert paid.rule == "paid"
    assert paid.problems == []
    assert paid.event == {
        "event_name": "Purchase",
        "event_time": 1714564800,
        "event_id": "shop:1001:Purchase",
        "action_source": "website",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {"email": "jane@example.com", "client_user_agent": "Mozilla/5.0"},
        "custom_data": {
            "content_type": "product",
            "value": 30.5,
            "currency": "USD",
            "num_items": 3,
            "contents": [{"id": "11", "quantity": 2}, {"id": "12", "quantity": 1}],
        },
    }
    # A rule without topic or condition matches everything; it gets the time of receipt.
    assert seen.event == {
        "event_name": "OrderSeen",
        "action_source": "system_generated",
        "event_time": int(NOW),
    }


@pytest.mark.parametrize(
    ("topic", "overrides", "rules"),
    [
        ("orders/paid", {}, ["paid", "always"]),
        ("orders/updated", {}, ["paid", "always"]),
        ("orders/create", {}, ["always"]),
        (None, {}, ["always"]),
        ("orders/paid", {"financial_status": "pending"}, ["always"]),
        ("orders/paid", {"financial_status": None}, ["always"]),
    ],
)
def test_rules_are_selected_by_topic_and_condition(
    topic: str | None, overrides: dict[str, Any], rules: list[str]
) -> None:
    mapped = parse_mapping(ORDER_MAPPING).apply(order(**overrides), now=NOW, topic=topic)
    assert [item.rule for item in mapped] == rules


def test_missing_results_fall_back_to_defaults_or_are_left_out() -> None:
    payload = order(currency=None, browser=None, email=None)
    [paid, _] = parse_mapping(ORDER_MAPPING).apply(payload, now=NOW, topic="orders/paid")
    assert paid.event["action_source"] == "system_generated"  # [defaults] is the fallback
    assert paid.event["custom_data"]["currency"] == "EUR"  # the spec's default
    assert "event_source_url" not in paid.event
    assert "user_data" not in paid.event


def test_a_failed_transform_leaves_the_field_out_with_a_warning_and_no_value() -> None:
    payload = order(total="thirty", processed_at="yesterday-ish")
    [paid, _] = parse_mapping(ORDER_MAPPING).apply(payload, now=NOW, topic="orders/paid")
    assert "value" not in paid.event["custom_data"]
    assert paid.event["event_time"] == int(NOW)
    assert {(p.code, p.field, p.severity.value) for p in paid.problems} == {
        ("mapping_transform_failed", "custom_data.value", "warning"),
        ("mapping_transform_failed", "event_time", "warning"),
    }
    assert all("thirty" not in p.message and "yesterday" not in p.message for p in paid.problems)


def test_jmespath_truthiness_counts_zero_as_true() -> None:
    mapping = parse_mapping('[[event]]\nwhen = "count"\n[event.set]\nevent_name = "X"\n')
    assert [
        len(mapping.apply({"count": value}, now=NOW)) for value in (0, 1, None, False, "", [])
    ] == [
        1,
        1,
        0,
        0,
        0,
        0,
    ]


def test_a_condition_that_fails_on_the_payload_does_not_match() -> None:
    mapping = parse_mapping(
        '[[event]]\nwhen = "contains(tags, \'vip\')"\n[event.set]\nevent_name = "X"\n'
    )
    assert mapping.apply({"tags": None}, now=NOW) == []
    assert len(mapping.apply({"tags": ["vip"]}, now=NOW)) == 1


PAID_ONLY = """
[[event]]
name = "paid"
topic = ["orders/paid", "orders/updated"]
when = "financial_status == 'paid'"
[event.set]
event_name = "Purchase"
[event.map]
event_id = { path = "id", transform = "str", format = "shop:{}:Purchase" }

[[event]]
name = "checkout"
topic = "checkouts/create"
[event.set]
event_name = "InitiateCheckout"
"""


def test_unmapped_names_the_rule_and_the_condition_that_did_not_hold() -> None:
    mapping = parse_mapping(PAID_ONLY)
    voided = order(financial_status="voided")
    assert mapping.apply(voided, now=NOW, topic="orders/paid") == []
    why = mapping.unmapped(voided, topic="orders/paid")
    assert why.reason == "condition_false"
    assert [rule.to_dict() for rule in why.rules] == [
        {"rule": "paid", "when": "financial_status == 'paid'", "event_id": "shop:1001:Purchase"}
    ]
    assert why.event_ids == ["shop:1001:Purchase"]
    assert "rule 'paid' only when financial_status == 'paid'" in why.message
    assert "topic 'orders/paid'" in why.message
    # The message quotes the mapping, never the payload.
    assert "voided" not in why.message and "jane" not in why.message.lower()


def test_unmapped_tells_a_topic_without_rule_from_a_false_condition() -> None:
    mapping = parse_mapping(PAID_ONLY)
    refund = mapping.unmapped(order(), topic="refunds/create")
    assert (refund.reason, refund.rules) == ("no_rule_for_topic", ())
    assert refund.message == (
        "no rule of the mapping is for topic 'refunds/create' "
        "(its rules are for: checkouts/create, orders/paid, orders/updated)"
    )
    assert mapping.unmapped(order(), topic=None).reason == "no_rule_for_topic"
    assert "has no topic" in mapping.unmapped(order(), topic=None).message


def test_unmapped_says_when_a_condition_cannot_be_evaluated() -> None:
    mapping = parse_mapping(
        '[[event]]\nname = "vip"\nwhen = "contains(tags, \'vip\')"\n[event.set]\nevent_name = "X"\n'
    )
    why = mapping.unmapped({"tags": None}, topic=None)
    assert why.reason == "condition_false"
    assert why.rules[0].failed and why.rules[0].event_id is None
    assert "cannot be evaluated on this payload" in why.message


def test_constants_are_not_shared_between_events() -> None:
    mapping = parse_mapping('[[event]]\n[event.set]\nevent_name = "X"\ncustom_data.tags = ["a"]\n')
    first = mapping.apply({}, now=NOW)[0].event
    first["custom_data"]["tags"].append("mutated")
    assert mapping.apply({}, now=NOW)[0].event["custom_data"]["tags"] == ["a"]


def test_redacted_summary_keeps_field_names_and_drops_values() -> None:
    event = {
        "event_name": "Lead",
        "user_data": {"email": "jane@example.com", "phone": ["+1 650 555 1212", "+1 650 555 0000"]},
        "custom_data": {"value": 1},
    }
    summary = redacted_summary(event)
    assert summary["user_data"] == {"email": "<redacted>", "phone": "<redacted x2>"}
    assert summary["custom_data"] == {"value": 1}
    assert "jane" not in str(summary) and "555" not in str(summary)
    assert event["user_data"]["email"] == "jane@example.com"  # the input is untouched


# ---------------------------------------------------------------------------
# Load errors: (mapping text, line, field, words the message must contain)

GOOD_RULE_HEAD = '[[event]]\n[event.set]\nevent_name = "Purchase"\n[event.map]\n'

LOAD_ERRORS: list[tuple[str, str, int | None, str, str]] = [
    (
        "bad JMESPath",
        GOOD_RULE_HEAD + 'event_time = "created_at"\ncustom_data.value = "total[?"\n',
        6,
        "event[0].map.custom_data.value",
        "invalid JMESPath",
    ),
    (
        "bad JMESPath in a spec's path",
        GOOD_RULE_HEAD + 'custom_data.value = { path = "a ^ b", transform = "float" }\n',
        5,
        "event[0].map.custom_data.value.path",
        "invalid JMESPath",
    ),
    (
        "unknown transform",
        GOOD_RULE_HEAD + 'custom_data.value = { path = "total", transform = "flaot" }\n',
        5,
        "event[0].map.custom_data.value.transform",
        "unknown transform 'flaot'",
    ),
    (
        "argument to a transform that takes none",
        GOOD_RULE_HEAD + 'custom_data.value = { path = "total", transform = "float:2" }\n',
        5,
        "event[0].map.custom_data.value.transform",
        "takes no argument",
    ),
    (
        "unknown event field",
        GOOD_RULE_HEAD + 'event_tme = "created_at"\n',
        5,
        "event[0].map.event_tme",
        "unknown Conversions API event field",
    ),
    (
        "unknown user_data field",
        GOOD_RULE_HEAD + 'user_data.emial = "email"\n',
        5,
        "event[0].map.user_data.emial",
        "unknown user_data field",
    ),
    (
        "unknown contents field",
        GOOD_RULE_HEAD + '[event.contents]\neach = "items"\nsku = "sku"\n',
        7,
        "event[0].contents.sku",
        "unknown contents field",
    ),
    (
        "missing event_name in the second rule",
        GOOD_RULE_HEAD + 'event_time = "t"\n\n[[event]]\nname = "oops"\n[event.map]\n'
        'event_time = "t"\n',
        7,
        "event[1]",
        "event_name is missing",
    ),
    (
        "unknown key in a rule",
        '[[event]]\nwhen = "x"\nmaps = {}\n[event.set]\nevent_name = "A"\n',
        3,
        "event[0].maps",
        "unknown key",
    ),
    (
        "minor_to_units without currency",
        GOOD_RULE_HEAD + 'custom_data.value = { path = "a", transform = "minor_to_units" }\n',
        5,
        "event[0].map.custom_data.value.transform",
        "needs currency",
    ),
    (
        "format without a placeholder",
        GOOD_RULE_HEAD + 'event_id = { path = "id", format = "shop-id" }\n',
        5,
        "event[0].map.event_id.format",
        "{}",
    ),
    (
        "both set and map",
        GOOD_RULE_HEAD + 'event_name = "kind"\n',
        5,
        "event[0].map.event_name",
        "both set and map",
    ),
    (
        "spec without path",
        GOOD_RULE_HEAD + 'custom_data.value = { transform = "float" }\n',
        5,
        "event[0].map.custom_data.value",
        "needs path",
    ),
    ("no rules", '[defaults]\naction_source = "website"\n', None, "event", "at least one"),
    ("unknown top-level key", "version = 2\n" + GOOD_RULE_HEAD, 1, "version", "unknown top-level"),
    (
        "bad topic type",
        '[[event]]\ntopic = 3\n[event.set]\nevent_name = "A"\n',
        2,
        "event[0].topic",
        "topic",
    ),
    ("TOML syntax", GOOD_RULE_HEAD + "event_time = \n", 5, "", "not valid TOML"),
]


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [case[1:] for case in LOAD_ERRORS],
    ids=[case[0] for case in LOAD_ERRORS],
)
def test_load_errors_name_file_line_and_field(
    tmp_path: Path, text: str, line: int | None, field: str, words: str
) -> None:
    path = tmp_path / "shop.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MappingLoadError) as caught:
        load_mapping(path)
    matching = [issue for issue in caught.value.issues if issue.field == field]
    assert matching, [str(issue) for issue in caught.value.issues]
    issue = matching[0]
    assert issue.file == str(path)
    assert issue.line == line
    assert words in issue.message
    where = f"{path}:{line}" if line is not None else str(path)
    assert str(issue).startswith(f"{where}: ")
    assert str(issue) in str(caught.value)


def test_every_mistake_is_reported_at_once() -> None:
    text = (
        GOOD_RULE_HEAD
        + 'user_data.emial = "e"\ncustom_data.value = { path = "v", transform = "x" }\n'
    )
    with pytest.raises(MappingLoadError) as caught:
        parse_mapping(text, source="m.toml")
    assert [(i.line, i.field) for i in caught.value.issues] == [
        (5, "event[0].map.user_data.emial"),
        (6, "event[0].map.custom_data.value.transform"),
    ]


def test_an_unreadable_file_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(MappingLoadError, match="cannot read"):
        load_mapping(tmp_path / "missing.toml")


# ---------------------------------------------------------------------------
# The line scanner


def test_key_lines_follow_arrays_of_tables_dotted_and_quoted_keys() -> None:
    text = "\n".join(
        [
            "# comment",  # 1
            "[defaults]",  # 2
            'action_source = "website"',  # 3
            "[[event]]",  # 4
            'note = """',  # 5
            "fake = 1",  # 6: inside a multi-line string
            '"""',  # 7
            "[event.map]",  # 8
            'user_data . "em" = "x"',  # 9
            "[[event]]",  # 10
            "[event.map]",  # 11
            "custom_data.value = { path = 'v' }",  # 12
        ]
    )
    lines = KeyLines(text)
    assert lines.line_of(("defaults", "action_source")) == 3
    assert lines.line_of(("event", 0)) == 4
    assert lines.line_of(("event", 0, "fake")) == 4  # not the line inside the string
    assert lines.line_of(("event", 0, "map", "user_data", "em")) == 9
    assert lines.line_of(("event", 1, "map")) == 11
    assert lines.line_of(("event", 1, "map", "custom_data", "value", "path")) == 12
    assert lines.line_of(("nowhere",)) is None


# ---------------------------------------------------------------------------
# Shipped mappings load


@pytest.mark.parametrize("name", sorted(name for name, p in PRESETS.items() if p.mapping_path))
def test_preset_mappings_load(name: str) -> None:
    mapping = PRESETS[name].default_mapping()
    assert mapping is not None and mapping.rules


def test_example_mapping_loads() -> None:
    mapping = load_mapping(REPO / "examples" / "mappings" / "crm.toml")
    assert [rule.label for rule in mapping.rules] == ["form submitted", "deal won"]
