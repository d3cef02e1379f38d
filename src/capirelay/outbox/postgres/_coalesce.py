"""Enqueues made in one event-loop iteration go to PostgreSQL as ONE transaction.

Each HTTP request enqueues its own events and waits for their durable COMMIT before it
answers.  On PostgreSQL each such call was a transaction of its own: a round trip, a
statement and a commit (a WAL flush) per request, however small, and the pool's size
bounded how many were in progress.  With 32 clients sending one event each a gateway
process reached about 1,100 requests a second on PostgreSQL against 5,000 on SQLite,
whose writer groups the commits of concurrent requests.

:class:`EnqueueCoalescer` does the same for PostgreSQL: the first enqueue of an
iteration opens a group, the others of that iteration join it, and when the loop next
runs its callbacks the group goes out as one call of the enqueue statement (it already
takes arrays).  Each caller then gets the statuses of its own events, or the group's
exception, and only after the group's COMMIT: the durability of an answer is unchanged.

What a group keeps of sequential calls:

* dedup order: events are concatenated in call order, and the statement keeps the first
  occurrence of a repeated key, so of two requests sending one key the earlier queues
  it and the later is told "duplicate", as if they had run one after the other;
* bad data: the enqueue bisects a request whose values cannot be stored down to the
  rows at fault, so one request's unstorable value rejects that value only;
* time: the group uses the latest ``now`` among its calls.  Calls join a group only
  when their ``now`` is within :data:`NOW_TOLERANCE` of the group's first, so an event's
  recorded time is at most that much later than its own call's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from capirelay.outbox.base import EnqueueStatus, NewEvent

__all__ = ["MAX_GROUP_EVENTS", "NOW_TOLERANCE", "EnqueueCoalescer"]

# A request larger than this goes alone; a group stops taking calls at this size.
MAX_GROUP_EVENTS: Final = 1000
# Calls of one iteration are microseconds apart in production; an injected clock may
# pass anything, and calls further apart than this are not merged.
NOW_TOLERANCE: Final = 1.0

RunGroup = Callable[[Sequence[NewEvent], float], Awaitable[list[EnqueueStatus]]]


@dataclass
class _Group:
    first_now: float
    now: float
    events: list[NewEvent] = field(default_factory=list)
    # (start, count, future) per call, in call order.
    calls: list[tuple[int, int, asyncio.Future[list[EnqueueStatus]]]] = field(default_factory=list)

    def fits(self, events: Sequence[NewEvent], now: float) -> bool:
        return (
            abs(now - self.first_now) <= NOW_TOLERANCE
            and len(self.events) + len(events) <= MAX_GROUP_EVENTS
        )


class EnqueueCoalescer:
    """Groups the enqueues each event loop makes in one iteration into one ``run`` call
    (see the module's docstring).  ``run(events, now)`` returns one status per event."""

    def __init__(self, run: RunGroup) -> None:
        self._run = run
        # The group each loop is filling in its current iteration; only that loop's
        # thread touches its own entry.
        self._open: dict[asyncio.AbstractEventLoop, _Group] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.groups = 0  # groups sent (each one transaction, before retries)

    async def enqueue(self, events: Sequence[NewEvent], now: float) -> list[EnqueueStatus]:
        if not events:
            return []
        if len(events) >= MAX_GROUP_EVENTS:
            self.groups += 1
            return await self._run(events, now)
        loop = asyncio.get_running_loop()
        group = self._open.get(loop)
        if group is None or not group.fits(events, now):
            group = _Group(first_now=now, now=now)
            self._open[loop] = group
            loop.call_soon(self._send, loop, group)
        future: asyncio.Future[list[EnqueueStatus]] = loop.create_future()
        group.calls.append((len(group.events), len(events), future))
        group.events.extend(events)
        group.now = max(group.now, now)
        # The group runs in a task of its own: a caller cancelled while it waits cancels
        # its own future only, not the others' transaction (its events may still commit,
        # as they would have had it been alone and cancelled after sending).
        return await future

    def _send(self, loop: asyncio.AbstractEventLoop, group: _Group) -> None:
        if self._open.get(loop) is group:
            del self._open[loop]
        self.groups += 1
        task = loop.create_task(self._run_group(group), name="capirelay-enqueue-group")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_group(self, group: _Group) -> None:
        try:
            statuses = await self._run(group.events, group.now)
        except asyncio.CancelledError:  # the loop is shutting down
            for _start, _count, future in group.calls:
                future.cancel()
            raise
        except Exception as exc:
            for _start, _count, future in group.calls:
                if not future.done():
                    future.set_exception(exc)
            return
        for start, count, future in group.calls:
            if not future.done():
                future.set_result(statuses[start : start + count])
