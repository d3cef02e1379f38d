"""Property tests of Meta's acceptance rules (capirelay.validate) beyond the example tables
in tests/test_validate.py: no input makes a rule raise, the 7/62-day boundary holds for
every timestamp, and messages never quote an identifier."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capirelay.problems import Severity
from capirelay.validate import deadline, validate_batch, validate_event

from .strategies import ACTION_SOURCES, MARKER, event_like, json_values

NOW = 1_764_000_000
DAY = 86400


# Found by this suite: an unhashable messaging_channel made the rule raise TypeError (and
# the emulator, which validates with these rules, answer 500).
def test_an_unhashable_messaging_channel_is_a_problem_not_a_crash() -> None:
    problems = validate_event({"messaging_channel": ["whatsapp"]}, now=NOW)
    assert any(p.field == "messaging_channel" for p in problems)


@settings(max_examples=250, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=12), json_values, max_size=8) | event_like(NOW))
def test_no_payload_makes_a_rule_raise(payload: dict[str, Any]) -> None:
    for problem in validate_event(payload, now=NOW):
        assert isinstance(problem.code, str) and problem.code
        assert isinstance(problem.field, str)
        assert problem.severity in (Severity.ERROR, Severity.WARNING)
        assert MARKER.lower() not in problem.message.lower()


@settings(max_examples=200, deadline=None)
@given(payload=json_values)
def test_a_non_object_is_one_error(payload: Any) -> None:
    problems = validate_event(payload, now=NOW)
    if not isinstance(payload, dict):
        assert [p.severity for p in problems] == [Severity.ERROR]


@settings(max_examples=300, deadline=None)
@given(
    event_time=st.integers(min_value=0, max_value=2**40),
    action_source=st.sampled_from(ACTION_SOURCES) | st.none() | st.integers(),
)
def test_deadline_is_event_time_plus_the_window(event_time: int, action_source: Any) -> None:
    window = 62 * DAY if action_source == "physical_store" else 7 * DAY
    assert deadline({"event_time": event_time, "action_source": action_source}) == (
        event_time + window
    )


def _too_old(problems: list[Any]) -> bool:
    return any(p.field == "event_time" and p.is_error and "old" in p.code for p in problems)


@settings(max_examples=300, deadline=None)
@given(
    action_source=st.sampled_from(ACTION_SOURCES),
    margin=st.integers(min_value=60, max_value=30 * DAY),
)
def test_the_age_boundary_holds_on_both_sides(action_source: str, margin: int) -> None:
    window = 62 * DAY if action_source == "physical_store" else 7 * DAY
    base = {"event_name": "Lead", "action_source": action_source}
    inside = validate_event({**base, "event_time": NOW - window + margin}, now=NOW)
    outside = validate_event({**base, "event_time": NOW - window - margin}, now=NOW)
    assert not _too_old(inside)
    assert _too_old(outside)


@settings(max_examples=50, deadline=None)
@given(events=st.lists(event_like(NOW), max_size=20))
def test_batch_is_per_event_and_order_preserving(events: list[dict[str, Any]]) -> None:
    assert validate_batch(events, now=NOW) == [validate_event(e, now=NOW) for e in events]


def test_more_than_1000_events_is_a_request_level_error() -> None:
    with pytest.raises(ValueError, match="1000"):
        validate_batch([{}] * 1001, now=NOW)
