"""Property tests of the declarative mapping engine (capirelay.sources.mapping): compiled
mappings (the shipped presets and the example) applied to any JSON payload never raise and
are deterministic; a rule fires only for its topics; and the loader answers any text with
a compiled mapping or a MappingLoadError, never another exception."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capirelay.sources.mapping import EventMapping, MappingLoadError, load_mapping, parse_mapping

from .strategies import json_values

REPO = Path(__file__).resolve().parents[2]
MAPPING_FILES = sorted(
    [*(REPO / "src" / "capirelay" / "sources" / "webhooks").glob("*/mapping.toml"),
     *(REPO / "examples" / "mappings").glob("*.toml")]
)  # fmt: skip
MAPPINGS = {path.parent.name + "/" + path.name: load_mapping(path) for path in MAPPING_FILES}
FIXTURES = [
    path for path in (REPO / "src" / "capirelay" / "sources" / "webhooks").glob("*/fixtures/*.json")
]
NOW = 1_764_000_000.0


def test_there_is_something_to_fuzz() -> None:
    assert len(MAPPINGS) >= 4
    assert len(FIXTURES) >= 10


def _apply(mapping: EventMapping, payload: Any, topic: str | None) -> list[Any]:
    return [(m.rule, m.event, m.problems) for m in mapping.apply(payload, now=NOW, topic=topic)]


@pytest.mark.parametrize("name", sorted(MAPPINGS))
@settings(max_examples=150, deadline=None)
@given(
    payload=json_values, topic=st.none() | st.sampled_from(["orders/paid", "order.updated", "x"])
)
def test_any_payload_maps_without_raising_and_deterministically(
    name: str, payload: Any, topic: str | None
) -> None:
    mapping = MAPPINGS[name]
    first = _apply(mapping, payload, topic)
    assert first == _apply(mapping, copy.deepcopy(payload), topic)
    for _, event, _ in first:
        assert isinstance(event, dict)


def _leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaf_paths(v, (*path, k))] or [path]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaf_paths(v, (*path, i))] or [path]
    return [path]


@st.composite
def mutated_fixture(draw: st.DrawFn) -> Any:
    """A real webhook payload with a few leaves swapped for arbitrary JSON values."""
    import json

    payload = json.loads(draw(st.sampled_from(FIXTURES)).read_text(encoding="utf-8"))
    paths = _leaf_paths(payload)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(paths))
        if not path:
            return draw(json_values)
        target = payload
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = draw(json_values)
    return payload


@pytest.mark.parametrize("name", sorted(MAPPINGS))
@settings(max_examples=100, deadline=None)
@given(payload=mutated_fixture(), topic=st.none() | st.sampled_from(["orders/paid", "x"]))
def test_real_payloads_with_wrong_types_map_without_raising(
    name: str, payload: Any, topic: str | None
) -> None:
    _apply(MAPPINGS[name], payload, topic)


TOPIC_MAPPING = parse_mapping(
    """
[[event]]
topic = ["orders/paid"]
[event.set]
event_name = "Purchase"
[event.map]
event_id = "id"
"""
)


@settings(max_examples=100, deadline=None)
@given(payload=json_values, topic=st.none() | st.text(max_size=12))
def test_a_rule_fires_only_for_its_topics(payload: Any, topic: str | None) -> None:
    emitted = TOPIC_MAPPING.apply(payload, now=NOW, topic=topic)
    if topic != "orders/paid":
        assert emitted == []


FRAGMENTS = st.sampled_from([
    "[[event]]\n", "[event.set]\n", "[event.map]\n", "[event.contents]\n", "[defaults]\n",
    'event_name = "Purchase"\n', 'topic = ["a"]\n', 'when = "x == `1`"\n', "when = '[['\n",
    'event_id = { path = "id", transform = "str" }\n', 'x = { path = "a", transform = "nope" }\n',
    'each = "items"\n', "custom_data.value = 3\n", 'user_data.email = "email"\n',
    "= broken\n", "[[event]\nname = 1\n", 'unknown_key = "v"\n', "value = [1, {}]\n",
])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(FRAGMENTS | st.text(max_size=20), max_size=10))
def test_the_loader_answers_any_text_with_a_mapping_or_a_load_error(parts: list[str]) -> None:
    try:
        mapping = parse_mapping("".join(parts), source="fuzz.toml")
    except MappingLoadError as error:
        assert str(error)
        return
    assert isinstance(mapping, EventMapping)
