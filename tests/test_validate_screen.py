"""The validation screen (``capirelay.validate._screen``): a cheaper path for events no
rule objects to, never a different answer.  Differential: thousands of events mutated
from clean ones (a field removed, retyped, emptied, moved in time...) must get exactly
the problems the full rule table finds, and the screen may call an event clean only
when the table finds nothing at all."""

from __future__ import annotations

import copy
import math
import random
from typing import Any

import pytest

from capirelay.validate import engine, validate_event
from capirelay.validate._context import Context
from capirelay.validate._screen import SCREENED, clean

NOW = 1_764_000_000
SKEW = 300
DIGEST = "a" * 64
OTHER_DIGEST = "0123456789abcdef" * 4


def full_rules(event: Any, now: float = NOW) -> list[Any]:
    """Every rule of the table, without the screen."""
    ctx = Context.of(event, now, SKEW)
    return [problem for check in engine._CHECKS for problem in check(event, ctx)]


BASES: list[dict[str, Any]] = [
    {
        "event_name": "Purchase",
        "event_time": NOW - 60,
        "event_id": "order-1",
        "action_source": "website",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {
            "em": [DIGEST],
            "ph": [OTHER_DIGEST],
            "client_ip_address": "203.0.113.9",
            "client_user_agent": "Mozilla/5.0",
            "fbp": "fb.1.1700000000000.123456",
            "fbc": "fb.1.1700000000000.IwAR0abc",
        },
        "custom_data": {
            "value": 10.5,
            "currency": "usd",
            "contents": [{"id": "sku-1", "quantity": 1}, {"id": 42}],
        },
    },
    {
        "event_name": "Lead",
        "event_time": NOW,
        "event_id": "lead-9",
        "action_source": "system_generated",
        "user_data": {"external_id": [DIGEST], "country": [OTHER_DIGEST]},
    },
    {
        "event_name": "Visit",
        "event_time": NOW - 50 * 86400,
        "event_id": "v",
        "action_source": "physical_store",
        "user_data": {"em": DIGEST, "ct": [DIGEST]},
        "custom_data": {"value": 3, "currency": "EUR"},
        "opt_out": False,
        "referrer_url": "https://ref.example/",
        "original_event_data": {"event_name": "x"},
    },
    {
        "event_name": "AddToCart",
        "event_time": NOW + SKEW,
        "event_id": "c-1",
        "action_source": "website",
        "event_source_url": "https://shop.example/p",
        "user_data": {
            "client_ip_address": "2001:db8::1.AQQAAQMC",
            "client_user_agent": "UA",
            "fbp": "fb.2.1700000000001.99",
        },
    },
]

TOP_KEYS = sorted({key for base in BASES for key in base} | {
    "messaging_channel", "app_data", "data_processing_options",
    "data_processing_options_country", "data_processing_options_state", "attribution_data",
    "custom_key",
})  # fmt: skip
USER_KEYS = ["em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id",
             "client_ip_address", "client_user_agent", "fbc", "fbp", "subscription_id"]  # fmt: skip
CUSTOM_KEYS = ["value", "currency", "contents", "order_id"]


class Text(str):
    pass


VALUES: list[Any] = [
    None, "", " ", "x", "Purchase", "website", "app", "business_messaging", "physical_store",
    "usd", "XXX", "whatsapp", "LDU", 0, 1, -1, True, False, 1.5, math.nan, math.inf, 2**70,
    NOW, NOW - 8 * 86400, NOW + SKEW + 1, [], {}, [DIGEST], [DIGEST, "A" * 64], DIGEST.upper(),
    DIGEST, ["LDU"], [""], {"id": ""}, [{"id": " "}], [{"id": True}], [{"id": "s"}], ["s"],
    "fb.1.1700000000000.1", "fb.1.17.1", "fb.1.99999999999999.1", "10.0.0.1", "1.2.3.04",
    "::1", "300.1.1.1", Text("x"), Text("Purchase"), "https://a.example/", "\x00",
]  # fmt: skip


def mutate(rng: random.Random, event: dict[str, Any]) -> dict[str, Any]:
    event = copy.deepcopy(event)
    for _ in range(rng.randint(1, 3)):
        where = rng.random()
        if where < 0.45:
            target = event
            keys = TOP_KEYS
        elif where < 0.8:
            target = event.get("user_data")
            keys = USER_KEYS
        else:
            target = event.get("custom_data")
            keys = CUSTOM_KEYS
        if not isinstance(target, dict):
            continue
        key = rng.choice(keys)
        if rng.random() < 0.25:
            target.pop(key, None)
        elif key == "event_time" and rng.random() < 0.5:
            target[key] = NOW + rng.choice([-7 * 86400, -7 * 86400 - 1, -62 * 86400,
                                            -62 * 86400 - 1, SKEW, SKEW + 1, 0])  # fmt: skip
        else:
            target[key] = copy.deepcopy(rng.choice(VALUES))
    return event


def test_the_screen_stands_in_for_every_rule_of_the_table() -> None:
    assert frozenset(engine._CHECKS) == SCREENED
    assert engine._SCREEN_ON


@pytest.mark.parametrize("base", BASES, ids=lambda b: str(b["event_name"]))
def test_clean_events_are_screened_clean(base: dict[str, Any]) -> None:
    assert full_rules(base) == []
    assert clean(base, NOW, SKEW)


def test_mutated_events_get_exactly_the_rules_problems() -> None:
    rng = random.Random(17)
    screened = checked = 0
    for _ in range(6000):
        event = mutate(rng, rng.choice(BASES))
        expected = full_rules(event)
        if clean(event, NOW, SKEW):
            screened += 1
            assert expected == [], event
        assert validate_event(event, now=NOW, max_future_skew=SKEW) == expected, event
        checked += 1
    # Both paths were exercised.
    assert 500 < screened < checked - 500
