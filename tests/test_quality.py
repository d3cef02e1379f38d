"""Predicted match quality: coverage per key, malformed click/browser ids, score, hints."""

from __future__ import annotations

from typing import Any

import pytest

from capirelay.normalize import sha256_hex
from capirelay.ops.quality import MATCH_KEYS, OVERALL, predict_match_quality

EM = sha256_hex("jane@example.com")
PH = sha256_hex("15551234567")
FN = sha256_hex("jane")
LN = sha256_hex("doe")
FBC = "fb.1.1732600000000.IwAR2abcDEF"
FBP = "fb.1.1732600000000.1234567890"
UA = "Mozilla/5.0 (X11; Linux x86_64)"

FULL_USER_DATA: dict[str, Any] = {
    "em": EM,
    "ph": PH,
    "fn": FN,
    "ln": LN,
    "db": sha256_hex("19900101"),
    "ct": sha256_hex("paris"),
    "st": sha256_hex("idf"),
    "zp": sha256_hex("75001"),
    "country": sha256_hex("fr"),
    "external_id": "cust-42",
    "client_ip_address": "2001:db8::1",
    "client_user_agent": UA,
    "fbc": FBC,
    "fbp": FBP,
}


def event(name: str = "Purchase", **user_data: Any) -> dict[str, Any]:
    return {"event_name": name, "user_data": user_data}


# (user_data, key, expected coverage of one event, expected presence)
COVERAGE_CASES: list[tuple[dict[str, Any], str, float, float]] = [
    ({"em": EM}, "em", 1.0, 1.0),
    ({"em": "jane@example.com"}, "em", 0.0, 1.0),  # raw, not hashed
    ({"em": [EM[:63]]}, "em", 0.0, 1.0),  # truncated hash
    ({"em": ["not-a-hash", EM]}, "em", 1.0, 1.0),  # one valid value in a list suffices
    ({"em": ""}, "em", 0.0, 0.0),
    ({"em": []}, "em", 0.0, 0.0),
    ({"ph": PH}, "ph", 1.0, 1.0),
    ({"fn": FN}, "fn+ln", 0.0, 0.0),  # one name alone is not the pair
    ({"fn": FN, "ln": LN}, "fn+ln", 1.0, 1.0),
    ({"fn": FN, "ln": "doe"}, "fn+ln", 0.0, 1.0),
    ({"client_ip_address": "203.0.113.9"}, "client_ip_address", 1.0, 1.0),
    ({"client_ip_address": "2001:db8::1"}, "client_ip_address", 1.0, 1.0),
    ({"client_ip_address": "999.1.1.1"}, "client_ip_address", 0.0, 1.0),
    ({"client_ip_address": "unknown"}, "client_ip_address", 0.0, 1.0),
    ({"client_user_agent": UA}, "client_user_agent", 1.0, 1.0),
    ({"client_user_agent": "   "}, "client_user_agent", 0.0, 1.0),
    ({"external_id": "cust-42"}, "external_id", 1.0, 1.0),
    ({"external_id": ["a", "b"]}, "external_id", 1.0, 1.0),
    ({"fbc": FBC}, "fbc", 1.0, 1.0),
    ({"fbc": FBC + ".AQ"}, "fbc", 1.0, 1.0),  # Parameter Builder appendix
    ({"fbc": "IwAR2abcDEF"}, "fbc", 0.0, 1.0),  # bare fbclid
    ({"fbc": "fb.1..IwAR2"}, "fbc", 0.0, 1.0),  # creation time lost by a template
    ({"fbp": FBP}, "fbp", 1.0, 1.0),
    ({"fbp": "fb.1.abc.123"}, "fbp", 0.0, 1.0),
    ({"db": sha256_hex("19900101")}, "db", 1.0, 1.0),
    ({"zp": "75001"}, "zp", 0.0, 1.0),
    ({"country": sha256_hex("fr")}, "country", 1.0, 1.0),
]


@pytest.mark.parametrize(("user_data", "key", "coverage", "present"), COVERAGE_CASES)
def test_coverage_counts_only_present_and_valid_keys(
    user_data: dict[str, Any], key: str, coverage: float, present: float
) -> None:
    quality = predict_match_quality([event(**user_data)]).by_event["Purchase"]
    assert quality.coverage[key] == coverage
    assert quality.present[key] == present


# (user_data, expected score): weights documented in capirelay.ops.quality
SCORE_CASES: list[tuple[dict[str, Any], float]] = [
    ({}, 0.0),
    (FULL_USER_DATA, 10.0),
    ({"em": EM}, 2.5),
    ({"client_ip_address": "203.0.113.9"}, 1.0),
    ({"client_user_agent": UA}, 0.5),
    ({"client_ip_address": "203.0.113.9", "client_user_agent": UA}, 2.0),  # pair bonus
    ({"em": EM, "ph": PH, "fn": FN, "ln": LN}, 5.0),
    ({"fbc": FBC, "fbp": FBP}, 1.8),  # 1.75 rounded
    ({"fbc": "bogus", "fbp": FBP}, 0.8),
    ({"ct": sha256_hex("paris"), "zp": sha256_hex("75001")}, 0.1),
]


@pytest.mark.parametrize(("user_data", "score"), SCORE_CASES)
def test_score_is_the_sum_of_covered_weights(user_data: dict[str, Any], score: float) -> None:
    assert predict_match_quality([event(**user_data)]).by_event["Purchase"].score == score


def test_weights_sum_to_ten_with_the_pair_bonus() -> None:
    assert sum(key.weight for key in MATCH_KEYS) + 0.5 == 10.0


def test_per_event_name_and_overall() -> None:
    payloads = [event("Purchase", em=EM, ph=PH)] * 3 + [event("Lead", em=EM)]
    report = predict_match_quality(payloads)
    assert sorted(report.by_event) == ["Lead", "Purchase"]
    assert report.by_event["Purchase"].count == 3
    assert report.by_event["Purchase"].coverage["ph"] == 1.0
    assert report.by_event["Lead"].coverage["ph"] == 0.0
    assert report.overall.event_name == OVERALL
    assert report.overall.count == 4
    assert report.overall.coverage["ph"] == 0.75
    assert report.overall.score == 3.6  # (3 * 4.0 + 2.5) / 4 = 3.625


def test_malformed_share_is_of_present_values() -> None:
    payloads = [event(fbc=FBC)] * 7 + [event(fbc="IwAR-bare-click-id")] * 3 + [event(em=EM)] * 10
    quality = predict_match_quality(payloads).by_event["Purchase"]
    assert quality.present["fbc"] == 0.5
    assert quality.coverage["fbc"] == 0.35
    assert quality.malformed == {"fbc": 0.3, "fbp": 0.0}


def test_hints_exact_strings_in_order_of_expected_impact() -> None:
    base = {"em": EM, "client_ip_address": "203.0.113.9", "client_user_agent": UA, "fbp": FBP}
    base |= {"fn": FN, "ln": LN, "external_id": "c1", "db": sha256_hex("19900101")}
    location = {k: FULL_USER_DATA[k] for k in ("ct", "st", "zp", "country")}
    payloads = (
        [event(**base, **location, ph=PH, fbc=FBC)] * 38
        + [event(**base, **location, fbc=FBC)] * 32
        + [event(**base, **location, fbc="IwAR-bare-click-id")] * 30
    )
    report = predict_match_quality(payloads)
    assert report.by_event["Purchase"].hints == [
        "62% of Purchase events lack a phone",
        "30% of Purchase fbc values are malformed",
    ]
    assert report.hints == report.by_event["Purchase"].hints
    assert report.overall.hints == [
        "62% of events lack a phone",
        "30% of fbc values are malformed",
    ]


def test_report_hints_rank_across_event_names_by_volume() -> None:
    # A missing email weighs more per event, but PageView carries nine times the traffic.
    payloads = [event("PageView", **{**FULL_USER_DATA, "ph": ""})] * 90 + [
        event("Purchase", **{**FULL_USER_DATA, "em": ""})
    ] * 10
    assert predict_match_quality(payloads).hints == [
        "100% of PageView events lack a phone",
        "100% of Purchase events lack an email",
    ]


def test_in_store_sales_are_not_asked_for_what_only_a_browser_has() -> None:
    # A till has no user agent, no _fbp/_fbc cookie and no buyer's IP: Meta matches
    # physical_store events on customer information, and hints asked for them anyway.
    browser = ("client_user_agent", "client_ip_address", "fbc", "fbp")
    customer = {k: v for k, v in FULL_USER_DATA.items() if k not in browser and k != "ph"}
    in_store = {**event(**customer), "action_source": "physical_store"}
    online = {**event(**customer), "action_source": "website"}
    assert predict_match_quality([in_store] * 10).hints == ["100% of Purchase events lack a phone"]
    # Mixed with website sales, only those are said to lack the browser's keys.
    hints = predict_match_quality([in_store] * 6 + [online] * 4).hints
    assert "40% of Purchase events lack a user agent" in hints
    assert "100% of Purchase events lack a phone" in hints
    assert not any("lack a user agent" in h and not h.startswith("40%") for h in hints)
    # A malformed value is still told: it was sent, and Meta cannot use it.
    bad = {**in_store, "user_data": {**customer, "ph": PH, "fbc": "IwAR-bare-click-id"}}
    assert predict_match_quality([bad] * 10).hints == ["100% of Purchase fbc values are malformed"]


def test_small_gaps_give_no_hint() -> None:
    payloads = [event(**FULL_USER_DATA)] * 96 + [event(**{**FULL_USER_DATA, "ph": ""})] * 4
    assert predict_match_quality(payloads).hints == []


def test_events_without_name_or_user_data_are_counted_not_crashed_on() -> None:
    report = predict_match_quality([{}, {"event_name": "Lead", "user_data": "oops"}])
    assert report.by_event["(no event_name)"].score == 0.0
    assert report.by_event["Lead"].count == 1
    assert report.overall.count == 2


def test_empty_sample() -> None:
    report = predict_match_quality([])
    assert report.by_event == {}
    assert report.overall.count == 0
    assert report.overall.score == 0.0
    assert report.hints == []
    assert report.to_dict()["overall"]["count"] == 0
