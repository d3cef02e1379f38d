"""Golden files: a payload in, the exact events out (mapped, then normalized and hashed).

Each ``golden/<case>.in.json`` names a mapping (``preset:<name>`` or a path from
the repository root), a topic and a payload (inline, or a ``fixture`` path from
the repository root); ``<case>.out.json`` holds every event the mapping emits:
the rule, the raw mapped event, the mapping's problems and the wire form
``Event.to_wire`` makes of it.  The mapped time is fixed (``NOW``) so a rule
without ``event_time`` is reproducible.

After an intended change, regenerate them with ``make golden`` (which runs this
file as a script: ``python tests/sources/test_mapping_golden.py``) and review the
diff.  The test itself only compares: it fails when ``CAPIRELAY_UPDATE_GOLDEN`` is
set, so that a run which rewrites the expectations can never count as a pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    expected = json.loads((GOLDEN / f"{name}.out.json").read_text(encoding="utf-8"))
    assert actual == expected


@pytest.fixture(autouse=True)
def never_in_update_mode() -> None:
    """Every test here fails while ``CAPIRELAY_UPDATE_GOLDEN`` is set (see the docstring)."""
    if os.environ.get("CAPIRELAY_UPDATE_GOLDEN"):
        pytest.fail(
            "CAPIRELAY_UPDATE_GOLDEN is set, but the golden test only compares: regenerate "
            "the files with `make golden` (python tests/sources/test_mapping_golden.py), "
            "review the diff, then run the tests without the variable"
        )


def test_update_mode_makes_the_golden_tests_fail() -> None:
    case = f"{__file__}::test_golden[{CASES[0]}]"
    env = {**os.environ, "CAPIRELAY_UPDATE_GOLDEN": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", case],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1, run.stdout
    assert "make golden" in run.stdout


def update_golden() -> list[str]:
    """Rewrite every ``<case>.out.json`` from the current code; the names that changed."""
    changed = []
    for name in CASES:
        case = json.loads((GOLDEN / f"{name}.in.json").read_text(encoding="utf-8"))
        text = json.dumps(run_case(case), indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        path = GOLDEN / f"{name}.out.json"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    return changed


if __name__ == "__main__":
    updated = update_golden()
    print(f"{len(updated)} of {len(CASES)} golden files rewritten: {', '.join(updated) or '-'}")
