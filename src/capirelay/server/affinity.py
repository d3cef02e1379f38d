"""``capirelay serve --cpu-affinity``: each gateway process kept on one CPU.

Measured on the 2-core benchmark machine (docs/benchmarks.md, "Workers kept on a
core"): with ``--workers 2`` and nothing pinned, the machine stayed 12-15% idle under a
steady single-event load; with each worker (all of its threads) kept on a CPU of its own
it was 4-7% idle and the same code served more single events and beacons (batches the
same).  Why the scheduler left that time idle is not established (the threads rarely
changed CPU unpinned).  It is off by default: it helps where the gateway has its CPUs
to itself (a machine, or a container given a CPU *set*) with one worker per CPU, and it
did not help where the database shared those CPUs, since a pinned worker cannot move
away from another busy program.  A CPU *quota* does not narrow the CPUs a process may
use, so ``auto`` in several quota-limited containers on one host would put each one's
worker ``i`` on the same CPU ``i``: give each replica its own list instead.

The value is ``off``, ``auto`` (worker ``i`` on the ``i``-th CPU this process may run
on, round robin) or a Linux CPU list such as ``0-3,6`` (worker ``i`` on the ``i``-th CPU
of the list, round robin); every CPU named must be one the gateway may run on.
"""

from __future__ import annotations

import logging
import os
import re

from capirelay.config import ConfigError

__all__ = [
    "WORKER_CPU_ENV",
    "cpus_for_workers",
    "pin_from_environment",
    "pin_this_process",
    "worker_cpu",
]

log = logging.getLogger("capirelay.server")

# The CPU the supervisor assigns to a worker it spawns (read by the worker at start).
WORKER_CPU_ENV = "CAPIRELAY_WORKER_CPU"
# How errors name the setting (``capirelay serve`` also reads it from the environment).
_OPTION = "--cpu-affinity (or CAPIRELAY_CPU_AFFINITY)"

# One part of a CPU list: ``3`` or ``0-3`` (ASCII digits only: ``int`` alone would take
# ``1_0``, ``+1`` or other scripts' digits).
_CPU_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?", re.ASCII)


def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return []


def cpus_for_workers(value: str) -> list[int] | None:
    """The CPUs ``--cpu-affinity value`` names, in worker order, or None for ``off``.

    Raises :class:`ConfigError` naming the option and the CPUs this process may use
    when the value cannot be read or names a CPU it may not run on.
    """
    text = value.strip().lower()
    if text in ("", "off", "none"):
        return None
    allowed = _allowed_cpus()
    if not allowed:
        raise ConfigError(
            f"{_OPTION}: this platform does not let a process choose its CPUs; leave it off"
        )
    allowed_text = _cpu_list_text(allowed)
    if text == "auto":
        return allowed
    allowed_set = set(allowed)
    cpus: list[int] = []
    for part in text.split(","):
        match = _CPU_RANGE.fullmatch(part.strip())
        if match is None:
            raise ConfigError(
                f"{_OPTION}: expected 'off', 'auto' or a CPU list such as '0-3,6', got {value!r}"
            )
        low = int(match[1])
        high = int(match[2]) if match[2] is not None else low
        if high < low:
            raise ConfigError(
                f"{_OPTION}: {part.strip()!r} is not a CPU range (write the lower "
                f"CPU first, as in '0-3')"
            )
        # Checked before the range is spelled out: '0-100000000' is refused at once.
        outside = [cpu for cpu in (low, high) if cpu not in allowed_set] or [
            cpu for cpu in range(low, high + 1) if cpu not in allowed_set
        ]
        if outside:
            raise ConfigError(
                f"{_OPTION}: CPU {outside[0]} is not one this gateway may run on "
                f"(allowed: {allowed_text}); name CPUs from that list or use 'auto'"
            )
        cpus.extend(range(low, high + 1))
    return list(dict.fromkeys(cpus))


def _cpu_list_text(cpus: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2,5``."""
    parts: list[str] = []
    start = previous = cpus[0]
    for cpu in [*cpus[1:], None]:
        if cpu is not None and cpu == previous + 1:
            previous = cpu
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if cpu is not None:
            start = previous = cpu
    return ",".join(parts)


def worker_cpu(cpus: list[int], index: int) -> int:
    """The CPU worker ``index`` (from 0) is kept on: the list's, round robin."""
    return cpus[index % len(cpus)]


def pin_this_process(cpu: int) -> bool:
    """Keep every thread of this process, and those it starts later, on ``cpu``.

    Threads inherit the affinity of the thread that starts them, so this runs before
    the gateway starts its writer, sync and delivery threads; threads already running
    are moved too.  A CPU the process may no longer use (the container's CPU set changed
    since the supervisor looked) leaves the process unpinned, with a warning: the
    gateway runs either way.
    """
    try:
        tasks = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # pragma: no cover - no /proc
        tasks = [0]
    before = os.sched_getaffinity(0)
    try:
        _set_affinity(tasks, {cpu})
    except (OSError, ValueError) as exc:
        _set_affinity(tasks, before)  # none half pinned
        log.warning(
            "could not keep process %d on CPU %d (%s); it runs unpinned", os.getpid(), cpu, exc
        )
        return False
    return True


def _set_affinity(tasks: list[int], cpus: set[int]) -> None:
    for tid in tasks:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue


def pin_from_environment() -> None:
    """In a worker: keep it on the CPU its supervisor assigned, if any."""
    assigned = os.environ.pop(WORKER_CPU_ENV, None)
    if assigned is None:
        return
    if not assigned.isascii() or not assigned.isdigit():
        log.warning(
            "%s=%r is not a CPU number; this worker runs unpinned", WORKER_CPU_ENV, assigned
        )
        return
    pin_this_process(int(assigned))
