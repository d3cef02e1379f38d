"""The rule table: every acceptance rule, its problem code, who enforces it, Meta's subcode."""

from __future__ import annotations

from dataclasses import dataclass

from capirelay.meta_facts import (
    SUBCODE_EVENT_TIME_WINDOW,
    SUBCODE_EVENT_TOO_OLD,
    SUBCODE_INVALID_EVENT,
    SUBCODE_INVALID_FBC,
    SUBCODE_LDU_REQUIRED,
    SUBCODE_PURCHASE_MISSING_VALUE,
)
from capirelay.validate._context import Check
from capirelay.validate.checks import (
    _check_action_source,
    _check_any_user_data,
    _check_app,
    _check_baseline,
    _check_browser_ids,
    _check_client_ip,
    _check_contents,
    _check_currency,
    _check_event_id,
    _check_event_name_spelling,
    _check_event_time_type,
    _check_external_id_hashed,
    _check_fbc,
    _check_fbp,
    _check_hashed,
    _check_in_future,
    _check_ldu_location,
    _check_messaging_channel,
    _check_processing_options,
    _check_purchase_value,
    _check_required,
    _check_too_old,
    _check_types,
    _check_value,
    _check_website,
)

__all__ = ["GENERIC_SUBCODE", "META", "META_SUBCODES", "POLICY", "RULES", "Rule"]

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
        "custom_event_like_standard",
        "warning: a custom event_name that looks like a standard event (case, a typo)",
        _check_event_name_spelling,
        POLICY,
    ),
    Rule(
        "missing_browser_ids",
        "warning: website events should carry fbp or fbc",
        _check_browser_ids,
        POLICY,
    ),
)

GENERIC_SUBCODE = SUBCODE_INVALID_EVENT  # for invalid events whose exact subcode is unknown
META_SUBCODES: dict[str, int] = {
    # Documented by observation (RudderStack's error map, reference Appendix A).
    "event_too_old": SUBCODE_EVENT_TOO_OLD,
    "invalid_fbc": SUBCODE_INVALID_FBC,
    "purchase_missing_value": SUBCODE_PURCHASE_MISSING_VALUE,
    "ldu_location_required": SUBCODE_LDU_REQUIRED,
    # A public project comments 2804019 as "event_time outside the window".
    "event_in_future": SUBCODE_EVENT_TIME_WINDOW,
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
