"""The garbage collector's settings for a serving gateway process.

CPython's cyclic collector runs a young-generation pass every 700 net allocations by
default; an ingest request allocates a few hundred objects (the parsed body, the wire
event, futures, the answer), so with 32 requests in flight a pass ran every few
requests and walked every young object still alive, on whichever thread allocated
(the event loop's or the SQLite writer's).  Measured in process
(``bench/ingest_cpu.py``, docs/benchmarks.md): about 10% of the event-loop thread's
CPU per request and a quarter of the writer thread's.

:func:`serving_collector` freezes what start-up built (modules, settings, the app:
alive for the whole process, so never worth a pass again) and makes the young
generation 20,000 allocations: garbage cycles are still collected, in fewer, larger
passes; the cycles held between two passes are bounded by that count.  Reference
counting frees everything else at once, as before.  The previous settings come back
when the server returns (the gateway run in a test process leaves it as it was).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

__all__ = ["SERVING_THRESHOLDS", "serving_collector", "tune_for_serving"]

SERVING_THRESHOLDS: Final = (20_000, 50, 100)


def tune_for_serving() -> None:
    """Apply the serving settings for the rest of this process (a worker process)."""
    gc.collect()  # start-up's own garbage, before the rest is frozen
    gc.freeze()
    gc.set_threshold(*SERVING_THRESHOLDS)


@contextmanager
def serving_collector() -> Iterator[None]:
    """The serving settings while the block runs (the single-process server)."""
    previous = gc.get_threshold()
    tune_for_serving()
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
