"""Hypothesis strategies shared by the property tests: JSON values, event-shaped dicts whose
identifier leaves carry a marker, so a test can tell whether a raw value leaked."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# No hash, timestamp or id produced by the code under test can contain this.
MARKER = "Zq9marker"

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

EVENT_KEYS = [
    "event_name", "event_time", "event_id", "action_source", "event_source_url",
    "user_data", "custom_data", "opt_out", "data_processing_options",
    "data_processing_options_country", "data_processing_options_state", "app_data",
    "referrer_url", "messaging_channel", "original_event_data", "attribution_data",
]  # fmt: skip
HASHED_USER_KEYS = [
    "em", "ph", "fn", "ln", "ct", "st", "zp", "country", "external_id", "db", "ge",
    "email", "phone", "first_name", "last_name", "city", "state", "zip_code",
]  # fmt: skip
ACTION_SOURCES = ["website", "app", "email", "phone_call", "chat", "physical_store",
                  "system_generated", "business_messaging", "other"]  # fmt: skip

marked_text = st.text(min_size=1, max_size=20).map(lambda text: MARKER + text)


@st.composite
def marked_user_data(draw: st.DrawFn) -> dict[str, Any]:
    """user_data with marked raw identifiers (strings or lists of them) plus browser fields."""
    keys = draw(st.lists(st.sampled_from(HASHED_USER_KEYS), unique=True, max_size=6))
    data: dict[str, Any] = {
        key: draw(marked_text | st.lists(marked_text, min_size=1, max_size=3)) for key in keys
    }
    if draw(st.booleans()):
        data["client_ip_address"] = draw(st.sampled_from(["203.0.113.7", "2001:db8::1", "x"]))
    if draw(st.booleans()):
        data["client_user_agent"] = "Mozilla/5.0 (fuzz)"
    return data


@st.composite
def event_like(draw: st.DrawFn, now: int) -> dict[str, Any]:
    """Mostly well-formed events with any field possibly wrong in type or value."""
    event: dict[str, Any] = {
        "event_name": draw(
            st.sampled_from(["Purchase", "Lead", "PageView"]) | st.text(max_size=10)
        ),
        "event_time": draw(
            st.integers(min_value=now - 70 * 86400, max_value=now + 3600) | json_scalars
        ),
        "action_source": draw(st.sampled_from(ACTION_SOURCES) | json_scalars),
        "user_data": draw(marked_user_data()),
    }
    if draw(st.booleans()):
        event["event_id"] = draw(st.text(max_size=30) | json_scalars)
    if draw(st.booleans()):
        event["event_source_url"] = draw(st.just("https://shop.example/p") | st.text(max_size=20))
    if draw(st.booleans()):
        event["custom_data"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "value": json_scalars,
                    "currency": st.sampled_from(["EUR", "usd", "XXX"]) | json_scalars,
                    "contents": json_values,
                    "extra": json_values,
                },
            )
        )
    for key in draw(st.lists(st.sampled_from(EVENT_KEYS), max_size=3)):
        event.setdefault(key, draw(json_values))
    return event
