"""Meta's acceptance rules for a server event, as data.

Meta rejects a whole request when one event in it is invalid, so every event is
checked here before it is queued or batched.  Each :class:`Rule` is one
documented rule (reference: Meta's server-event, customer-information,
custom-data, app-data, business-messaging and LDU pages, and the v13 "baseline
matching" rule); its check yields :class:`~capirelay.problems.Problem`\\ s
whose ``code`` is the rule's code.  Errors block the event; warnings travel
with it.

Input is the **wire** dict, as sent to Meta: identifiers already normalized and
SHA-256 hashed.  Messages name the field and the fix, never a value.

Validation runs on every event at ingest (and again in the emulator and on
DLQ replay), so everything that can be is precomputed (the ISO 4217 set, the
regexes, the baseline key sets, each field's accepted exact types), the
per-event facts every rule needs are read once into a :class:`Context`, and
each check settles the common, valid case with a dict lookup or two before it
does any real work.  A check answers the shared empty tuple when it finds
nothing, so a valid event allocates no problem lists.

The ``fbc``/``fbp`` grammar is :mod:`capirelay.browser_ids`' (one definition
for what we build and what we accept); that leaf module is this one's only
dependency besides :mod:`capirelay.problems`.

``META_SUBCODES`` maps each error code to the Graph ``error_subcode`` Meta
answers with (the local emulator uses it).  Only four are documented by
observation (RudderStack's map) plus 2804019 for an out-of-window time; the
rest use 2804050, the generic subcode observed for invalid events.
"""

from __future__ import annotations

import math
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeGuard

import pycountry

from capirelay.browser_ids import APPENDIX_RE, FBC_RE, FBP_RE
from capirelay.problems import Problem, error, warning

__all__ = [
    "ACTION_SOURCES",
    "GENERIC_SUBCODE",
    "MAX_EVENTS_PER_REQUEST",
    "META",
    "META_SUBCODES",
    "POLICY",
    "RULES",
    "Context",
    "Rule",
    "deadline",
    "meta_subcode",
    "validate_batch",
    "validate_event",
]

MAX_EVENTS_PER_REQUEST = 1000
DAY = 86_400
MAX_AGE = 7 * DAY
MAX_AGE_PHYSICAL_STORE = 62 * DAY
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

# Keys Meta requires SHA-256 hashed (customer information parameters).
HASHED_USER_DATA_KEYS = (
    "em",
    "ph",
    "fn",
    "ln",
    "db",
    "ge",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
    "f5first",
    "f5last",
    "fi",
    "dobd",
    "dobm",
    "doby",
)
UNHASHED_USER_DATA_KEYS = (
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
    "subscription_id",
    "fb_login_id",
    "lead_id",
    "anon_id",
    "madid",
    "page_id",
    "page_scoped_user_id",
    "ctwa_clid",
    "ig_account_id",
    "ig_sid",
    "whatsapp_business_account_id",
)
USER_DATA_KEYS = frozenset(HASHED_USER_DATA_KEYS + UNHASHED_USER_DATA_KEYS)
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

# The same table keyed by field, with the exact types that pass at a glance: a
# value of another type (a subclass, a bool) gets the full isinstance test.
_EXACT_FIELD_TYPES: dict[str, frozenset[type]] = {
    name: frozenset(types) for name, types, _ in FIELD_TYPES
}

SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")
_match_sha256_hex = SHA256_HEX_RE.fullmatch
EXTINFO_SLOTS = 16
EXTINFO_VERSIONS = frozenset({"i2", "a2"})

GENERIC_SUBCODE = 2804050  # observed for invalid events whose exact subcode is unknown
META_SUBCODES: dict[str, int] = {
    # Documented by observation (RudderStack's error map, reference Appendix A).
    "event_too_old": 2804003,
    "invalid_fbc": 2804001,
    "purchase_missing_value": 2804009,
    "ldu_location_required": 2804030,
    # A public project comments 2804019 as "event_time outside the window".
    "event_in_future": 2804019,
    # Meta's exact subcode unknown: the generic one observed for invalid events.
    "missing_field": GENERIC_SUBCODE,
    "invalid_type": GENERIC_SUBCODE,
    "invalid_action_source": GENERIC_SUBCODE,
    "invalid_event_time": GENERIC_SUBCODE,
    "missing_website_field": GENERIC_SUBCODE,
    "invalid_app_data": GENERIC_SUBCODE,
    "invalid_value": GENERIC_SUBCODE,
    "invalid_currency": GENERIC_SUBCODE,
    "invalid_messaging_channel": GENERIC_SUBCODE,
    "invalid_data_processing_options": GENERIC_SUBCODE,
    "missing_user_data": GENERIC_SUBCODE,
    "insufficient_customer_info": GENERIC_SUBCODE,
    "unhashed_pii": GENERIC_SUBCODE,
    "unhashed_external_id": GENERIC_SUBCODE,
    "invalid_contents": GENERIC_SUBCODE,
    "invalid_fbp": GENERIC_SUBCODE,
    "invalid_client_ip_address": GENERIC_SUBCODE,
}

_EMPTY_MAPPING: Mapping[str, Any] = {}
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


META = "meta"
POLICY = "capirelay"


@dataclass(frozen=True, slots=True)
class Rule:
    """One acceptance rule; every problem its ``check`` yields carries ``code``.

    ``enforced_by`` says who refuses an event breaking it: ``"meta"`` (Graph does;
    the emulator applies these and only these) or ``"capirelay"`` (the gateway's
    own policy, stricter than Graph, e.g. hashing ``external_id``, which Meta only
    recommends; warnings are advice, so they are capirelay's too).
    """

    code: str
    description: str
    check: Check
    enforced_by: str = META


def _is_int(value: Any) -> TypeGuard[int]:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _is_number(value: Any) -> bool:
    value_type = type(value)
    if value_type is float:
        return math.isfinite(value)
    if value_type is int:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def _max_age(action_source: str | None) -> int:
    return MAX_AGE_PHYSICAL_STORE if action_source == "physical_store" else MAX_AGE


# ---------------------------------------------------------------------------
# Checks: shape of the event


def _check_required(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    # An empty user_data object is present; missing_user_data reports it.
    for name in REQUIRED_FIELDS:
        value = event.get(name)
        if value is None or value == "":
            break
    else:
        return _NO_PROBLEMS
    return [
        error("missing_field", name, f"{name} is required on every server event; set it")
        for name in REQUIRED_FIELDS
        if event.get(name) is None or event.get(name) == ""
    ]


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # bool is an int subclass; true is never a valid number or string here
    return isinstance(value, types)


def _check_types(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    for name, value in event.items():
        exact = _EXACT_FIELD_TYPES.get(name)
        if exact is not None and value is not None and type(value) not in exact:
            break
    else:
        return _NO_PROBLEMS
    return [
        error("invalid_type", name, f"{name} must be {expected}; send it as {expected}")
        for name, types, expected in FIELD_TYPES
        if (value := event.get(name)) is not None and not _has_type(value, types)
    ]


def _check_action_source(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    if ctx.action_source is None or ctx.action_source in ACTION_SOURCES:
        return _NO_PROBLEMS
    return [
        error(
            "invalid_action_source",
            "action_source",
            "action_source must be one of " + ", ".join(sorted(ACTION_SOURCES)),
        )
    ]


def _check_event_time_type(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    value = event.get("event_time")
    if value is None or _is_int(value):
        return _NO_PROBLEMS
    return [
        error(
            "invalid_event_time",
            "event_time",
            "event_time must be an integer Unix timestamp in seconds (GMT)",
        )
    ]


def _check_too_old(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    event_time = event.get("event_time")
    if not _is_int(event_time):
        return _NO_PROBLEMS
    max_age = _max_age(ctx.action_source)
    if ctx.now - event_time <= max_age:
        return _NO_PROBLEMS
    days = max_age // DAY
    return [
        error(
            "event_too_old",
            "event_time",
            f"event_time is more than {days} days in the past; Meta rejects the whole request "
            "for it, so drop the event or send it sooner",
        )
    ]


def _check_in_future(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    event_time = event.get("event_time")
    if not _is_int(event_time) or event_time - ctx.now <= ctx.max_future_skew:
        return _NO_PROBLEMS
    return [
        error(
            "event_in_future",
            "event_time",
            f"event_time is more than {ctx.max_future_skew} s in the future; send the time "
            "the event happened, in seconds, from a synchronized clock",
        )
    ]


# ---------------------------------------------------------------------------
# Checks: per action_source and per event


def _check_website(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    if ctx.action_source != "website" or (
        event.get("event_source_url") and ctx.user_data.get("client_user_agent")
    ):
        return _NO_PROBLEMS
    problems = []
    if _is_blank(event.get("event_source_url")):
        problems.append(
            error(
                "missing_website_field",
                "event_source_url",
                "website events need event_source_url; send the page URL the event happened on",
            )
        )
    if _is_blank(ctx.user_data.get("client_user_agent")):
        problems.append(
            error(
                "missing_website_field",
                "user_data.client_user_agent",
                "website events need user_data.client_user_agent; send the browser's "
                "User-Agent header",
            )
        )
    return problems


def _extinfo_problems(extinfo: Any) -> list[Problem]:
    if (
        not isinstance(extinfo, list)
        or len(extinfo) != EXTINFO_SLOTS
        or not all(isinstance(slot, str) for slot in extinfo)
    ):
        return [
            error(
                "invalid_app_data",
                "app_data.extinfo",
                "app_data.extinfo must be a list of 16 strings; fill unknown slots with ''",
            )
        ]
    problems = []
    if extinfo[0] not in EXTINFO_VERSIONS:
        problems.append(
            error(
                "invalid_app_data",
                "app_data.extinfo[0]",
                "app_data.extinfo[0] must be 'i2' (iOS) or 'a2' (Android)",
            )
        )
    if not extinfo[4]:
        problems.append(
            error(
                "invalid_app_data",
                "app_data.extinfo[4]",
                "app_data.extinfo[4] must hold the OS version",
            )
        )
    return problems


def _check_app(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    if ctx.action_source != "app":
        return _NO_PROBLEMS
    app_data = event.get("app_data")
    if not isinstance(app_data, dict):
        return [
            error(
                "invalid_app_data",
                "app_data",
                "app events need app_data with advertiser_tracking_enabled and extinfo",
            )
        ]
    problems = []
    if app_data.get("advertiser_tracking_enabled") not in (0, 1):  # also True/False
        problems.append(
            error(
                "invalid_app_data",
                "app_data.advertiser_tracking_enabled",
                "app_data.advertiser_tracking_enabled is required for app events: 1 or 0 "
                "(the ATT status)",
            )
        )
    problems.extend(_extinfo_problems(app_data.get("extinfo")))
    return problems


def _check_purchase_value(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    if event.get("event_name") != "Purchase" or _is_number(ctx.custom_data.get("value")):
        return _NO_PROBLEMS
    return [
        error(
            "purchase_missing_value",
            "custom_data.value",
            "Purchase events need custom_data.value as a number (the monetary amount)",
        )
    ]


def _check_value(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    value = ctx.custom_data.get("value")
    if value is None or event.get("event_name") == "Purchase" or _is_number(value):
        return _NO_PROBLEMS
    return [
        error(
            "invalid_value",
            "custom_data.value",
            "custom_data.value must be a finite number (the monetary amount)",
        )
    ]


def _check_currency(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    currency = ctx.custom_data.get("currency")
    if currency is None:
        if event.get("event_name") != "Purchase":
            return _NO_PROBLEMS
        message = "Purchase events need custom_data.currency, an ISO 4217 code such as USD"
    elif isinstance(currency, str) and currency.upper() in CURRENCIES:
        return _NO_PROBLEMS
    else:
        message = "custom_data.currency must be an ISO 4217 three-letter code such as USD"
    return [error("invalid_currency", "custom_data.currency", message)]


def _check_messaging_channel(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    channel = event.get("messaging_channel")
    if channel is None and ctx.action_source != "business_messaging":
        return _NO_PROBLEMS
    if isinstance(channel, str) and channel in MESSAGING_CHANNELS:
        return _NO_PROBLEMS
    return [
        error(
            "invalid_messaging_channel",
            "messaging_channel",
            "business_messaging events need messaging_channel: messenger, whatsapp or instagram",
        )
    ]


# ---------------------------------------------------------------------------
# Checks: Limited Data Use


def _has_ldu(event: Mapping[str, Any]) -> bool:
    options = event.get("data_processing_options")
    return isinstance(options, list) and "LDU" in options


def _has_processing_fields(event: Mapping[str, Any]) -> bool:
    return (
        "data_processing_options" in event
        or "data_processing_options_country" in event
        or "data_processing_options_state" in event
    )


def _check_processing_options(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    if not _has_processing_fields(event):
        return _NO_PROBLEMS
    problems = []
    options = event.get("data_processing_options")
    if options is not None and (
        not isinstance(options, list) or any(option != "LDU" for option in options)
    ):
        problems.append(
            error(
                "invalid_data_processing_options",
                "data_processing_options",
                'data_processing_options must be ["LDU"] or []',
            )
        )
    for name in ("data_processing_options_country", "data_processing_options_state"):
        value = event.get(name)
        if value is not None and not (_is_int(value) and value >= 0):
            problems.append(
                error(
                    "invalid_data_processing_options",
                    name,
                    f"{name} must be an integer (0 lets Meta geolocate)",
                )
            )
    return problems


def _check_ldu_location(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    if not _has_processing_fields(event):
        return _NO_PROBLEMS
    country_set = event.get("data_processing_options_country") is not None
    problems = []
    if _has_ldu(event) and not country_set:
        problems.append(
            error(
                "ldu_location_required",
                "data_processing_options_country",
                "with LDU set, send data_processing_options_country (1 = USA, 0 = geolocate)",
            )
        )
    if (_has_ldu(event) or country_set) and event.get("data_processing_options_state") is None:
        problems.append(
            error(
                "ldu_location_required",
                "data_processing_options_state",
                "with LDU or a country set, send data_processing_options_state "
                "(1000 = California, 0 = geolocate)",
            )
        )
    return problems


# ---------------------------------------------------------------------------
# Checks: customer information


def _check_any_user_data(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    if not isinstance(event.get("user_data"), dict) or ctx.present_user_data_keys:
        return _NO_PROBLEMS
    return [
        error(
            "missing_user_data",
            "user_data",
            "user_data must hold at least one customer information parameter "
            "(em, ph, external_id, client_ip_address with client_user_agent, fbc, fbp...)",
        )
    ]


def _check_baseline(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    present = ctx.present_user_data_keys
    if not present or not present <= _BASELINE_KEYS:
        return _NO_PROBLEMS
    if not any(present <= combo for combo in BASELINE_INVALID_COMBINATIONS):
        return _NO_PROBLEMS
    return [
        error(
            "insufficient_customer_info",
            "user_data",
            "user_data holds only " + "+".join(sorted(present)) + ", which Meta treats as "
            "invalid on its own; add em, ph, external_id, fbp/fbc or client_ip_address",
        )
    ]


def _is_lowercase_sha256(value: Any) -> bool:
    return isinstance(value, str) and _match_sha256_hex(value) is not None


def _all_lowercase_sha256(value: Any) -> bool:
    if isinstance(value, list):
        for item in value:
            # Inlined _is_lowercase_sha256: two calls saved per identifier.
            if not isinstance(item, str) or _match_sha256_hex(item) is None:
                return False
        return True
    return _is_lowercase_sha256(value)


def _all_hashed(user_data: Mapping[str, Any]) -> bool:
    """True when every hashed key holds digests; the one-pass screen of :func:`_check_hashed`."""
    for key, value in user_data.items():
        if key in _META_HASHED_KEYS and value is not None and not _all_lowercase_sha256(value):
            return False
    return True


def _check_hashed(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    if _all_hashed(ctx.user_data):
        return _NO_PROBLEMS
    unhashed = [
        key
        for key, value in ctx.user_data.items()
        if key in _META_HASHED_KEYS and value is not None and not _all_lowercase_sha256(value)
    ]
    if not unhashed:
        return _NO_PROBLEMS
    return [
        error(
            "unhashed_pii",
            f"user_data.{key}",
            f"user_data.{key} must be a lowercase SHA-256 hex digest (or a list of "
            "them); normalize and hash the value before sending",
        )
        for key in unhashed
    ]


def _check_external_id_hashed(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    value = ctx.user_data.get("external_id")
    if value is None or _all_lowercase_sha256(value):
        return _NO_PROBLEMS
    return [
        error(
            "unhashed_external_id",
            "user_data.external_id",
            "user_data.external_id must be a lowercase SHA-256 hex digest (capirelay hashes "
            "it at ingest; Meta recommends it): send the raw id through capirelay, or hash it",
        )
    ]


def _check_contents(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    contents = ctx.custom_data.get("contents")
    if contents is None:
        return _NO_PROBLEMS
    if not isinstance(contents, list):
        return [
            error(
                "invalid_contents",
                "custom_data.contents",
                "custom_data.contents must be an array of objects with id and quantity",
            )
        ]
    problems: list[Problem] = []
    for index, content in enumerate(contents):
        where = f"custom_data.contents[{index}]"
        if not isinstance(content, dict):
            problems.append(
                error("invalid_contents", where, f"{where} must be an object with id and quantity")
            )
            continue
        item_id = content.get("id")
        if not (isinstance(item_id, str | int) and not isinstance(item_id, bool)) or (
            str(item_id).strip() == ""
        ):
            problems.append(
                error(
                    "invalid_contents",
                    f"{where}.id",
                    f"{where}.id is required: the product id of your catalog; set it, or "
                    "leave the item out",
                )
            )
    return problems


def _click_cookie_problems(
    code: str, key: str, pattern: re.Pattern[str], ctx: Context
) -> Iterable[Problem]:
    value = ctx.user_data.get(key)
    if value is None:
        return _NO_PROBLEMS
    # The grammar is browser_ids' (one definition); matched here without
    # building a ParsedClickCookie because this runs on every event.
    match = pattern.fullmatch(value) if isinstance(value, str) else None
    parsed_time_ms = int(match.group(2)) if match else None
    if (
        parsed_time_ms is not None
        and MIN_CLICK_COOKIE_TIME_MS <= parsed_time_ms <= (ctx.now + ctx.max_future_skew) * 1000
    ):
        return _NO_PROBLEMS
    path = f"user_data.{key}"
    if parsed_time_ms is None:
        return [
            error(
                code,
                path,
                f"{path} must be fb.{{subdomain_index}}.{{creation_time_ms}}.{{id}} with an "
                f"optional appendix; send the _{key} cookie unchanged",
            )
        ]
    if parsed_time_ms < MIN_CLICK_COOKIE_TIME_MS:
        return [error(code, path, f"{path} creation time must be in milliseconds")]
    if parsed_time_ms > (ctx.now + ctx.max_future_skew) * 1000:
        return [error(code, path, f"{path} creation time is in the future; check the clock")]
    return _NO_PROBLEMS


def _check_fbc(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    return _click_cookie_problems("invalid_fbc", "fbc", FBC_RE, ctx)


def _check_fbp(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    return _click_cookie_problems("invalid_fbp", "fbp", FBP_RE, ctx)


def _is_ip_literal(text: str) -> bool:
    # inet_pton is an order of magnitude faster than ipaddress and, like Meta,
    # refuses zone ids, spaces and IPv4 octets with leading zeros.
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except (OSError, ValueError):
        return False
    return True


def _is_ip_address(value: str) -> bool:
    # Meta documents client_ip_address values carrying the Parameter Builder's
    # appendix (``1.2.3.4.AQQAAQMC``), so that form is accepted too.
    if _is_ip_literal(value):
        return True
    head, dot, tail = value.rpartition(".")
    return bool(dot) and APPENDIX_RE.fullmatch(tail) is not None and _is_ip_literal(head)


def _check_client_ip(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    value = ctx.user_data.get("client_ip_address")
    if value is None or (isinstance(value, str) and _is_ip_address(value)):
        return _NO_PROBLEMS
    return [
        error(
            "invalid_client_ip_address",
            "user_data.client_ip_address",
            "user_data.client_ip_address must be one IPv4 or IPv6 address, unhashed, no spaces",
        )
    ]


# ---------------------------------------------------------------------------
# Warnings


def _check_event_id(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    if _is_filled(event.get("event_id")):
        return _NO_PROBLEMS
    return [
        warning(
            "missing_event_id",
            "event_id",
            "event_id is missing: Meta cannot deduplicate this event against the Pixel's; "
            "send the same id as the Pixel's eventID",
        )
    ]


def _check_browser_ids(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    if ctx.action_source != "website":
        return _NO_PROBLEMS
    if _is_filled(ctx.user_data.get("fbp")) or _is_filled(ctx.user_data.get("fbc")):
        return _NO_PROBLEMS
    return [
        warning(
            "missing_browser_ids",
            "user_data.fbp",
            "website event without user_data.fbp or user_data.fbc: match quality suffers; "
            "forward the _fbp and _fbc cookies",
        )
    ]


RULES: tuple[Rule, ...] = (
    Rule(
        "missing_field",
        "event_name, event_time, user_data, action_source are required",
        _check_required,
    ),
    Rule("invalid_type", "top-level fields have their documented JSON types", _check_types),
    Rule("invalid_action_source", "action_source is one of Meta's values", _check_action_source),
    Rule("invalid_event_time", "event_time is an integer of Unix seconds", _check_event_time_type),
    Rule("event_too_old", "event_time at most 7 days old (62 for physical_store)", _check_too_old),
    Rule("event_in_future", "event_time at most max_future_skew seconds ahead", _check_in_future),
    Rule(
        "missing_website_field",
        "website events need event_source_url and client_user_agent",
        _check_website,
    ),
    Rule(
        "invalid_app_data", "app events need app_data: ATT flag and a 16-slot extinfo", _check_app
    ),
    Rule(
        "purchase_missing_value",
        "Purchase needs a numeric custom_data.value",
        _check_purchase_value,
    ),
    Rule("invalid_value", "custom_data.value, when sent, is a number", _check_value),
    Rule("invalid_currency", "currency is ISO 4217; Purchase needs one", _check_currency),
    Rule(
        "invalid_messaging_channel",
        "business_messaging needs messenger/whatsapp/instagram",
        _check_messaging_channel,
    ),
    Rule(
        "invalid_data_processing_options",
        'data_processing_options is ["LDU"] or [], country/state integers',
        _check_processing_options,
    ),
    Rule(
        "ldu_location_required", "LDU needs a country; a country needs a state", _check_ldu_location
    ),
    Rule(
        "missing_user_data",
        "user_data holds at least one customer information parameter",
        _check_any_user_data,
    ),
    Rule(
        "insufficient_customer_info",
        "not only a subset of a baseline-invalid combination",
        _check_baseline,
    ),
    Rule("unhashed_pii", "hashed keys hold lowercase SHA-256 hex digests", _check_hashed),
    Rule(
        "unhashed_external_id",
        "external_id is hashed (Meta recommends it; capirelay requires it)",
        _check_external_id_hashed,
        POLICY,
    ),
    Rule("invalid_contents", "custom_data.contents items are objects with an id", _check_contents),
    Rule("invalid_fbc", "fbc follows fb.{idx}.{ms}.{fbclid}[.{appendix}]", _check_fbc),
    Rule("invalid_fbp", "fbp follows fb.{idx}.{ms}.{random}[.{appendix}]", _check_fbp),
    Rule(
        "invalid_client_ip_address", "client_ip_address is one IPv4/IPv6 address", _check_client_ip
    ),
    Rule(
        "missing_event_id",
        "warning: event_id enables dedup with the Pixel",
        _check_event_id,
        POLICY,
    ),
    Rule(
        "missing_browser_ids",
        "warning: website events should carry fbp or fbc",
        _check_browser_ids,
        POLICY,
    ),
)

_CHECKS: tuple[Check, ...] = tuple(rule.check for rule in RULES)
_META_CHECKS: tuple[Check, ...] = tuple(rule.check for rule in RULES if rule.enforced_by == META)


def validate_event(
    payload: Mapping[str, Any],
    *,
    now: float | None = None,
    max_future_skew: int = DEFAULT_MAX_FUTURE_SKEW,
    meta_only: bool = False,
) -> list[Problem]:
    """Every problem the rules find in one wire event, in rule order.

    ``meta_only``: only the rules Graph itself enforces (``Rule.enforced_by ==
    "meta"``), as the emulator answers; the gateway applies capirelay's policy too.
    """
    if not isinstance(payload, dict):
        return [error("invalid_type", "data[]", "each event must be a JSON object")]
    ctx = Context.of(payload, time.time() if now is None else now, max_future_skew)
    problems: list[Problem] = []
    for check in _META_CHECKS if meta_only else _CHECKS:
        found = check(payload, ctx)
        if found:
            problems.extend(found)
    return problems


def validate_batch(
    payloads: Sequence[Mapping[str, Any]],
    *,
    now: float | None = None,
    max_future_skew: int = DEFAULT_MAX_FUTURE_SKEW,
) -> list[list[Problem]]:
    """Problems per event, in order, all against the same clock reading.

    Raises :class:`ValueError` over :data:`MAX_EVENTS_PER_REQUEST` events: that
    is a request-level error, not any one event's.
    """
    if len(payloads) > MAX_EVENTS_PER_REQUEST:
        raise ValueError(
            f"a request carries at most {MAX_EVENTS_PER_REQUEST} events; "
            f"got {len(payloads)}, split it"
        )
    clock = time.time() if now is None else now
    return [validate_event(p, now=clock, max_future_skew=max_future_skew) for p in payloads]


def deadline(payload: Mapping[str, Any]) -> float:
    """Unix time after which Meta rejects the event: ``event_time`` + 7 d (62 d physical_store)."""
    event_time = payload.get("event_time")
    if not _is_int(event_time):
        raise ValueError("event_time must be an integer Unix timestamp to compute a deadline")
    action_source = payload.get("action_source")
    return float(event_time + _max_age(action_source if isinstance(action_source, str) else None))


def meta_subcode(problems: Iterable[Problem]) -> int | None:
    """The subcode Meta would answer for the first error, ``None`` when there is none."""
    for problem in problems:
        if problem.is_error:
            return META_SUBCODES.get(problem.code, GENERIC_SUBCODE)
    return None
