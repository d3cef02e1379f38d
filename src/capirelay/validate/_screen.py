"""One pass that recognises an event no rule has anything to say about.

:func:`capirelay.validate.validate_event` runs every rule of the table on every event;
nearly every event the gateway sees breaks none of them, and for those most of the
cost is the ~25 calls and the per-event :class:`~capirelay.validate._context.Context`.
:func:`clean` settles that common case in one function: it answers ``True`` only when
each rule would find nothing (errors and warnings alike), and ``False`` whenever it is
not sure (app or messaging events, data processing options, a field of an unusual
type...), and then the rules run as before.  So it can make validation cheaper, never
different; ``tests/validate/test_screen.py`` checks that over thousands of mutated
events, and :data:`SCREENED` names the checks it stands in for, so a rule added to the
table without being added here turns the screen off (``engine`` compares them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from capirelay.browser_ids import FBC_RE, FBP_RE
from capirelay.meta_facts import STANDARD_EVENTS
from capirelay.validate._context import (
    _BASELINE_KEYS,
    _EXACT_FIELD_TYPE,
    ACTION_SOURCES,
    BASELINE_INVALID_COMBINATIONS,
    CURRENCIES,
    MIN_CLICK_COOKIE_TIME_MS,
    _is_filled,
    _is_number,
    _max_age,
    _present_user_data_keys,
)
from capirelay.validate.checks import (
    _all_hashed,
    _all_lowercase_sha256,
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
    _is_ip_address,
    near_standard_event,
)

__all__ = ["SCREENED", "clean"]

# Every check :func:`clean` answers for.
SCREENED: Final = frozenset(
    {
        _check_required,
        _check_types,
        _check_action_source,
        _check_event_time_type,
        _check_too_old,
        _check_in_future,
        _check_website,
        _check_app,
        _check_purchase_value,
        _check_value,
        _check_currency,
        _check_messaging_channel,
        _check_processing_options,
        _check_ldu_location,
        _check_any_user_data,
        _check_baseline,
        _check_hashed,
        _check_external_id_hashed,
        _check_contents,
        _check_fbc,
        _check_fbp,
        _check_client_ip,
        _check_event_id,
        _check_event_name_spelling,
        _check_browser_ids,
    }
)

_NOT_SCREENED_SOURCES = frozenset({"app", "business_messaging"})
_PROCESSING_FIELDS = (
    "data_processing_options",
    "data_processing_options_country",
    "data_processing_options_state",
)
_CLICK_COOKIES = (("fbc", FBC_RE), ("fbp", FBP_RE))


def clean(event: Mapping[str, Any], now: float, max_future_skew: int) -> bool:
    """``True`` only if no rule finds a problem in ``event`` (see the module docstring)."""
    # Required fields and their types (missing_field, invalid_type, invalid_action_source,
    # invalid_event_time).
    event_name = event.get("event_name")
    event_time = event.get("event_time")
    user_data = event.get("user_data")
    action_source = event.get("action_source")
    if (
        type(event_name) is not str
        or not event_name
        or type(event_time) is not int
        or type(user_data) is not dict
        or type(action_source) is not str
        or action_source not in ACTION_SOURCES
        or action_source in _NOT_SCREENED_SOURCES
    ):
        return False
    exact_type = _EXACT_FIELD_TYPE.get
    for name, value in event.items():
        value_type = type(value)
        if value_type is not exact_type(name, value_type) and value is not None:
            return False
    # The time window (event_too_old, event_in_future).
    if now - event_time > _max_age(action_source) or event_time - now > max_future_skew:
        return False
    # Per action_source (missing_website_field; app and messaging events are not screened).
    website = action_source == "website"
    if website and not (event.get("event_source_url") and user_data.get("client_user_agent")):
        return False
    if event.get("messaging_channel") is not None:
        return False
    # custom_data (purchase_missing_value, invalid_value, invalid_currency, invalid_contents).
    custom_data = event.get("custom_data")
    if custom_data is not None:
        value = custom_data.get("value")
        currency = custom_data.get("currency")
        contents = custom_data.get("contents")
    else:
        value = currency = contents = None
    purchase = event_name == "Purchase"
    if (purchase or value is not None) and not _is_number(value):
        return False
    if currency is None:
        if purchase:
            return False
    elif not (isinstance(currency, str) and currency.upper() in CURRENCIES):
        return False
    if contents is not None and not _contents_clean(contents):
        return False
    # Limited Data Use fields are not screened.
    for name in _PROCESSING_FIELDS:
        if name in event:
            return False
    # Customer information (missing_user_data, insufficient_customer_info, unhashed_pii,
    # unhashed_external_id).
    present = _present_user_data_keys(user_data)
    if not present:
        return False
    if present <= _BASELINE_KEYS and any(
        present <= combo for combo in BASELINE_INVALID_COMBINATIONS
    ):
        return False
    if not _all_hashed(user_data):
        return False
    external_id = user_data.get("external_id")
    if external_id is not None and not _all_lowercase_sha256(external_id):
        return False
    # Browser ids and the address (invalid_fbc, invalid_fbp, invalid_client_ip_address).
    newest_ms = (now + max_future_skew) * 1000
    for key, pattern in _CLICK_COOKIES:
        cookie = user_data.get(key)
        if cookie is None:
            continue
        match = pattern.fullmatch(cookie) if isinstance(cookie, str) else None
        if match is None or not MIN_CLICK_COOKIE_TIME_MS <= int(match.group(2)) <= newest_ms:
            return False
    address = user_data.get("client_ip_address")
    if address is not None and not (isinstance(address, str) and _is_ip_address(address)):
        return False
    # Warnings (missing_event_id, custom_event_like_standard, missing_browser_ids).
    if not _is_filled(event.get("event_id")):
        return False
    if event_name not in STANDARD_EVENTS and near_standard_event(event_name) is not None:
        return False
    return not website or _is_filled(user_data.get("fbp")) or _is_filled(user_data.get("fbc"))


def _contents_clean(contents: Any) -> bool:
    if not isinstance(contents, list):
        return False
    for content in contents:
        if not isinstance(content, dict):
            return False
        item_id = content.get("id")
        item_type = type(item_id)
        if item_type is not int and (item_type is not str or not str(item_id).strip()):
            return False
    return True
