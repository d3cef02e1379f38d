"""Soak: bench/soak.py at a steady rate; memory and latency must stay flat, nothing lost.

Slow (``make soak``).  ``CAPIRELAY_SOAK_MINUTES`` (default 30) and
``CAPIRELAY_SOAK_RATE`` (events/s, default 500) size the run; the script's own
verdict decides: every accepted event delivered, no request refused, p99 of the last
quarter within 2x the first, RSS growing at most 5 MB over the last quarter.  The outbox's
SQLite page cache fills first (about 575,000 events to fill 64 MiB, 19 minutes at 500/s),
so a run much shorter than 30 minutes at this rate ends before RSS can level off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SOAK_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
MINUTES = float(os.environ.get("CAPIRELAY_SOAK_MINUTES", "30"))
RATE = float(os.environ.get("CAPIRELAY_SOAK_RATE", "500"))

pytestmark = pytest.mark.slow


@pytest.mark.timeout(int(MINUTES * 60 + 300))
def test_soak_memory_and_latency_stay_flat(tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    sample_seconds = max(5.0, min(60.0, MINUTES * 60 / 20))
    # fmt: off
    done = subprocess.run(
        [
            sys.executable,
            str(SOAK_SCRIPT),
            "--minutes", str(MINUTES),
            "--rate", str(RATE),
            "--sample-seconds", str(sample_seconds),
            "--warmup", str(min(30.0, MINUTES * 60 / 6)),
            "--json", str(report),
        ],
        capture_output=True,
        text=True,
        timeout=MINUTES * 60 + 240,
    )
    # fmt: on
    print("\n" + done.stdout)
    verdict = json.loads(report.read_text())["verdict"]
    assert verdict["lost"] == 0
    assert verdict["refused"] == 0
    assert verdict["flat"], verdict
    assert done.returncode == 0, done.stderr[-2000:]
