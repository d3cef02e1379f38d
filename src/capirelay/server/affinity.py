"""``capirelay serve --cpu-affinity``: each gateway process kept on one CPU.

Measured on the 2-core benchmark machine (docs/benchmarks.md, "Workers kept on a
core"): with ``--workers 2`` and nothing pinned, the scheduler left 13-14% of the
machine idle under a steady load, because a worker's event loop, its SQLite writer
thread and its WAL sync thread hand work to each other many times per group commit and
each hand-off woke a thread wherever the scheduler put it.  With each worker (all of its
threads) kept on a CPU of its own, the idle share fell to about 5% and the same code
served more requests per second.  It is off by default: it helps where the gateway has
the machine (or the container's CPUs) to itself with one worker per CPU, and it can
hurt where other busy programs share those CPUs, since a pinned worker cannot move
away from them.

The value is ``off``, ``auto`` (worker ``i`` on the ``i``-th CPU this process may run
on, round robin) or a Linux CPU list such as ``0-3,6`` (worker ``i`` on the ``i``-th CPU
of the list, round robin); every CPU named must be one the gateway may run on.
"""

from __future__ import annotations

import logging
import os

from capirelay.config import ConfigError

__all__ = ["WORKER_CPU_ENV", "cpus_for_workers", "pin_from_environment", "pin_this_process"]

log = logging.getLogger("capirelay.server")

# The CPU the supervisor assigns to a worker it spawns (read by the worker at start).
WORKER_CPU_ENV = "CAPIRELAY_WORKER_CPU"


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
            "--cpu-affinity: this platform does not let a process choose its CPUs; leave it off"
        )
    allowed_text = _cpu_list_text(allowed)
    if text == "auto":
        return allowed
    cpus: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise ConfigError(
                f"--cpu-affinity: expected 'off', 'auto' or a CPU list such as "
                f"'0-3,6', got {value!r}"
            ) from None
        if low < 0 or high < low:
            raise ConfigError(f"--cpu-affinity: {part.strip()!r} is not a CPU range")
        cpus.extend(range(low, high + 1))
    outside = sorted(set(cpus) - set(allowed))
    if outside:
        raise ConfigError(
            f"--cpu-affinity: CPU {_cpu_list_text(outside)} is not one this gateway may "
            f"run on (allowed: {allowed_text}); name CPUs from that list or use 'auto'"
        )
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
    if assigned is not None:
        pin_this_process(int(assigned))
