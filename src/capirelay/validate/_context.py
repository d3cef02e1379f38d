"""What the checks share: the rule tables' constants, the per-event :class:`Context`.

Meta's own limits, windows and key lists come from :mod:`capirelay.meta_facts`;
what is here is how the checks use them (precomputed sets, exact-type tables).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, TypeGuard

import pycountry

from capirelay.meta_facts import (
    HASHED_USER_DATA_KEYS,
    HASHED_VALUE_PATTERN,
    MAX_EVENT_AGE_PHYSICAL_STORE_SECONDS,
    MAX_EVENT_AGE_SECONDS,
    USER_DATA_KEYS,
)
from capirelay.problems import Problem

DEFAULT_MAX_FUTURE_SKEW = 300
# fbc/fbp creation times are milliseconds; anything below this (2001-09-09)
# is a seconds timestamp or junk.
MIN_CLICK_COOKIE_TIME_MS = 1_000_000_000_000

ACTION_SOURCES = frozenset(
    {
        "email",
        "website",
        "app",
        "phone_call",
        "chat",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    }
)
MESSAGING_CHANNELS = frozenset({"messenger", "whatsapp", "instagram"})
CURRENCIES = frozenset(currency.alpha_3 for currency in pycountry.currencies)
REQUIRED_FIELDS = ("event_name", "event_time", "user_data", "action_source")

# Keys Meta requires SHA-256 hashed (capirelay.meta_facts).
_HASHED_KEYS = frozenset(HASHED_USER_DATA_KEYS)
# Meta refuses these unhashed; external_id it only recommends hashing (capirelay's policy).
_META_HASHED_KEYS = _HASHED_KEYS - {"external_id"}

# Since v13, an event whose customer information is only (a subset of) one of
# these combinations is invalid (Best Practices, "baseline matching").
BASELINE_INVALID_COMBINATIONS = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)
# A key outside every combination (em, ph, fbp...) settles the rule at once.
_BASELINE_KEYS = frozenset().union(*BASELINE_INVALID_COMBINATIONS)

# (field, accepted types, what to send) for optional top-level fields.
FIELD_TYPES: tuple[tuple[str, tuple[type, ...], str], ...] = (
    ("event_name", (str,), "a string"),
    ("user_data", (dict,), "an object"),
    ("action_source", (str,), "a string"),
    ("custom_data", (dict,), "an object"),
    ("app_data", (dict,), "an object"),
    ("original_event_data", (dict,), "an object"),
    ("attribution_data", (dict,), "an object"),
    ("event_source_url", (str,), "a string"),
    ("referrer_url", (str,), "a string"),
    ("event_id", (str,), "a string"),
    ("messaging_channel", (str,), "a string"),
    ("opt_out", (bool,), "true or false"),
)

# The same table keyed by field, with the one exact type that passes at a glance: a
# value of another type (a subclass, a bool) gets the full isinstance test.
_EXACT_FIELD_TYPE: dict[str, type] = {name: types[0] for name, types, _ in FIELD_TYPES}
assert all(len(types) == 1 for _, types, _ in FIELD_TYPES), "one exact type per field"

# A lowercase SHA-256 hex digest, or the param builder's hashed output (the digest, "."
# and the builder's appendix), which Meta takes as it is (capirelay.meta_facts).
HASHED_VALUE_RE = re.compile(HASHED_VALUE_PATTERN)
_match_sha256_hex = HASHED_VALUE_RE.fullmatch
EXTINFO_SLOTS = 16
EXTINFO_VERSIONS = frozenset({"i2", "a2"})


_EMPTY_MAPPING: Mapping[str, Any] = {}
_NUMBER_TYPES = (int, float)  # a tuple: ``int | float`` in the call is built on every call
_NO_PROBLEMS: tuple[Problem, ...] = ()


def _is_blank(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _is_filled(value: Any) -> bool:
    """``not _is_blank(value)``; a truthy value (nearly every one) answers at once."""
    return bool(value) or not _is_blank(value)


def _present_user_data_keys(user_data: Mapping[str, Any]) -> frozenset[str]:
    known = USER_DATA_KEYS.intersection(user_data)
    for key in known:
        if not user_data[key]:  # rare: only then can a blank value hide among them
            return frozenset([key for key in known if _is_filled(user_data[key])])
    return known


class Context(NamedTuple):
    """What every rule needs besides the event, computed once per event.

    A named tuple, not a dataclass: it is built for every event validated, and
    a tuple is the cheapest immutable record to build.
    """

    now: float
    max_future_skew: int
    action_source: str | None
    user_data: Mapping[str, Any]
    custom_data: Mapping[str, Any]
    present_user_data_keys: frozenset[str]

    @classmethod
    def of(cls, event: Mapping[str, Any], now: float, max_future_skew: int) -> Context:
        action_source = event.get("action_source")
        user_data = event.get("user_data")
        custom_data = event.get("custom_data")
        user_data = user_data if isinstance(user_data, dict) else _EMPTY_MAPPING
        return cls(
            now,
            max_future_skew,
            action_source if isinstance(action_source, str) else None,
            user_data,
            custom_data if isinstance(custom_data, dict) else _EMPTY_MAPPING,
            _present_user_data_keys(user_data),
        )


Check = Callable[[Mapping[str, Any], Context], Iterable[Problem]]


def _is_int(value: Any) -> TypeGuard[int]:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _is_number(value: Any) -> bool:
    value_type = type(value)
    if value_type is float:
        return math.isfinite(value)
    if value_type is int:
        return True
    if isinstance(value, bool) or not isinstance(value, _NUMBER_TYPES):
        return False
    return math.isfinite(value)


def _max_age(action_source: str | None) -> int:
    return (
        MAX_EVENT_AGE_PHYSICAL_STORE_SECONDS
        if action_source == "physical_store"
        else MAX_EVENT_AGE_SECONDS
    )
