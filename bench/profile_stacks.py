"""Where a gateway process spends its time: py-spy's raw stacks, folded into ingest stages.

Record a running gateway under load (``bench/ingest_wrk.py`` or ``wrk`` directly), then
fold the samples::

    .venv/bin/py-spy record --pid PID -d 8 -r 250 -f raw -o prof.raw --threads --nonblocking
    .venv/bin/python bench/profile_stacks.py prof.raw [prof2.raw ...]

Each sample goes to the innermost frame that names a stage (walking from the leaf
towards the root), so time in orjson called by ``prepare_event`` counts as prepare, and
time in the event loop with no request frame counts as the loop itself.  Several files
(one per worker process) are added up.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

# (stage, pattern on one frame "function (file:line)"); the first stage whose pattern
# matches, walking from the leaf, takes the sample.
STAGES: list[tuple[str, re.Pattern[str]]] = [
    (stage, re.compile(pattern))
    for stage, pattern in [
        ("writer: dedup claim (upsert)", r"^claim_keys "),
        ("writer: insert rows", r"^_insert_queued "),
        ("writer: BEGIN/COMMIT (fsync)", r"^GroupCommitWriter\._(commit_group|commit_alone) "),
        ("writer: resolve futures (cross-thread)", r"^GroupCommitWriter\._resolve "),
        ("writer: other", r"^GroupCommitWriter\."),
        ("owner IPC (pack/unpack, socket)", r"capirelay/server/_owner|capirelay/server/_ipc"),
        ("prepare: validate_event", r"^validate_event "),
        ("prepare: derive_event_id", r"^derive_event_id "),
        ("prepare: prepare_wire (normalize+hash)", r"^prepare_wire "),
        ("prepare: other (encode, NewEvent)", r"^prepare_event "),
        (
            "beacon: browser ids, consent, bots",
            r"capirelay/(browser_ids|sources/consent)\.py|"
            r"crawlerdetect",
        ),
        ("JSON answer (render)", r"^JSONResponse\.|^Response\.__init__|^Response\.init_headers"),
        ("metrics (prometheus counters)", r"prometheus_client|^_count "),
        ("logging (access log)", r"/logging/|capirelay/logs\.py"),
        ("auth (ingest key)", r"^authenticate |^authorize_pixel |capirelay/server/auth\.py"),
        ("body read + JSON parse", r"^read_body |^parse_json |^Request\.(body|stream) "),
        ("enqueue hand-off (futures, event loop wakeup)", r"^commit_prepared |^SQLiteOutbox\."),
        ("route handler (other)", r"capirelay/server/routes_ingest\.py"),
        ("middleware (headers, timing)", r"capirelay/server/app\.py"),
        ("Starlette routing/middleware", r"starlette/"),
        ("uvicorn HTTP (httptools parse, transport)", r"uvicorn/protocols"),
        ("event loop (uvloop/asyncio)", r"asyncio/|uvloop|uvicorn/"),
    ]
]


def fold(lines: list[str]) -> tuple[Counter[str], Counter[str]]:
    """(samples per stage, samples per thread name)."""
    stages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
        threads[re.sub(r"_\d+$", "", thread)] += count
        stage = next(
            (
                name
                for frame in reversed(frames[1:])
                for name, pattern in STAGES
                if pattern.search(frame)
            ),
            f"other ({thread})",
        )
        stages[stage] += count
    return stages, threads


def main() -> None:
    lines: list[str] = []
    for name in sys.argv[1:]:
        lines.extend(Path(name).read_text().splitlines())
    stages, threads = fold(lines)
    total = sum(stages.values()) or 1
    print(f"{total} samples\n\n| stage | share |\n|---|---|")
    for stage, n in stages.most_common():
        print(f"| {stage} | {100 * n / total:.1f}% |")
    print("\n| thread | share |\n|---|---|")
    for thread, n in threads.most_common():
        print(f"| {thread} | {100 * n / total:.1f}% |")


if __name__ == "__main__":
    main()
