"""Golden files: a payload in, the exact events out (mapped, then normalized and hashed).

Each ``golden/<case>.in.json`` names a mapping (``preset:<name>`` or a path from
the repository root), a topic and a payload (inline, or a ``fixture`` path from
the repository root); ``<case>.out.json`` holds every event the mapping emits:
the rule, the raw mapped event, the mapping's problems and the wire form
``Event.to_wire`` makes of it.  The mapped time is fixed (``NOW``) so a rule
without ``event_time`` is reproducible.

After an intended change, regenerate with ``CAPIRELAY_UPDATE_GOLDEN=1`` and
review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from capirelay.events import Event
from capirelay.sources.mapping import EventMapping, load_mapping
from capirelay.sources.webhooks import PRESETS

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("golden")
NOW = 1_714_600_000.0
CASES = sorted(path.name.removesuffix(".in.json") for path in GOLDEN.glob("*.in.json"))


def mapping_for(name: str) -> EventMapping:
    if name.startswith("preset:"):
        mapping = PRESETS[name.removeprefix("preset:")].default_mapping()
        assert mapping is not None
        return mapping
    return load_mapping(REPO / name)


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    payload = case.get("payload")
    if payload is None:
        payload = json.loads((REPO / case["fixture"]).read_text(encoding="utf-8"))
    mapped = mapping_for(case["mapping"]).apply(payload, now=NOW, topic=case.get("topic"))
    events = []
    for item in mapped:
        wire = Event.model_validate(item.event).to_wire(case.get("default_country"))
        events.append(
            {
                "rule": item.rule,
                "event": item.event,
                "mapping_problems": [problem.to_dict() for problem in item.problems],
                "wire": wire.payload,
                "wire_problems": [problem.to_dict() for problem in wire.problems],
            }
        )
    return {"events": events}


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 10


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    case = json.loads((GOLDEN / f"{name}.in.json").read_text(encoding="utf-8"))
    actual = run_case(case)
    expected_path = GOLDEN / f"{name}.out.json"
    if os.environ.get("CAPIRELAY_UPDATE_GOLDEN"):
        text = json.dumps(actual, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        expected_path.write_text(text, encoding="utf-8")
    expected = json.loads(expected_path.read_text(encoding="utf-8"))
    assert actual == expected
