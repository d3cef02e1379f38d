"""The checks: one function per acceptance rule, each yielding its rule's problems.

Each settles the common, valid case with a dict lookup or two before it does any
real work, and answers the shared empty tuple when it finds nothing.  Their
table (code, description, who enforces it) is :mod:`capirelay.validate.rules`.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Mapping
from typing import Any, Final

from capirelay.browser_ids import APPENDIX_RE, FBC_RE, FBP_RE
from capirelay.meta_facts import DAY, STANDARD_EVENTS
from capirelay.problems import Problem, error, warning
from capirelay.validate._context import (
    _BASELINE_KEYS,
    _EXACT_FIELD_TYPE,
    _META_HASHED_KEYS,
    _NO_PROBLEMS,
    ACTION_SOURCES,
    BASELINE_INVALID_COMBINATIONS,
    CURRENCIES,
    EXTINFO_SLOTS,
    EXTINFO_VERSIONS,
    FIELD_TYPES,
    MESSAGING_CHANNELS,
    MIN_CLICK_COOKIE_TIME_MS,
    REQUIRED_FIELDS,
    Context,
    _is_blank,
    _is_filled,
    _is_int,
    _is_number,
    _match_sha256_hex,
    _max_age,
)

_ITEM_ID_TYPES = (str, int)  # a tuple: ``str | int`` in the call is built on every call

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
    exact_type = _EXACT_FIELD_TYPE.get
    for name, value in event.items():
        value_type = type(value)
        # A field outside the table gets its own type back, so it always passes.
        if value_type is not exact_type(name, value_type) and value is not None:
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
            "them; a param builder's hashed value, with its '.' suffix, passes as it is); "
            "normalize and hash the value before sending",
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
        if not (isinstance(item_id, _ITEM_ID_TYPES) and not isinstance(item_id, bool)) or (
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


def _check_event_name_spelling(event: Mapping[str, Any], ctx: Context) -> Iterable[Problem]:
    name = event.get("event_name")
    if not isinstance(name, str) or name in STANDARD_EVENTS:
        return _NO_PROBLEMS
    meant = near_standard_event(name)
    if meant is None:
        return _NO_PROBLEMS
    return [
        warning(
            "custom_event_like_standard",
            "event_name",
            f"event_name is not a standard event but looks like {meant}: Meta counts it as a "
            f"custom event (it matches standard names exactly, case included), so it does not "
            f"optimize or report as {meant}; send exactly {meant!r} if that is what it is",
        )
    ]


def near_standard_event(name: str) -> str | None:
    """The standard event ``name`` was probably meant to be (another case, spaces or
    underscores, one or two letters off), or ``None``."""
    if len(name) > _LONGEST_STANDARD + 2:
        return None
    folded = _fold_name(name)
    meant = _FOLDED_STANDARD.get(folded)
    if meant is not None:
        return meant
    if len(folded) < 5:  # "Lead" and "Donate" are short: a near miss there is a new word
        return None
    for standard_folded, standard in _FOLDED_STANDARD.items():
        # A name holding the standard one whole is another word built on it (Unsubscribe,
        # IncompleteRegistration, Repurchase, Purchased), often its opposite: not a typo.
        if standard_folded not in folded and _within_two_edits(folded, standard_folded):
            return standard
    return None


def _fold_name(name: str) -> str:
    return name.replace("_", "").replace(" ", "").replace("-", "").lower()


def _within_two_edits(a: str, b: str) -> bool:
    """Levenshtein distance of ``a`` and ``b`` at most 2 (a banded dynamic program)."""
    if abs(len(a) - len(b)) > 2:
        return False
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        if min(current) > 2:
            return False
        previous = current
    return previous[-1] <= 2


_FOLDED_STANDARD: Final = {_fold_name(name): name for name in sorted(STANDARD_EVENTS)}
_LONGEST_STANDARD: Final = max(len(name) for name in STANDARD_EVENTS)


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
