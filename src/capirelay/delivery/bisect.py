"""Bisection: find the events Meta refused in a batch, and only those.

Meta refuses a whole request for one bad event, so a batch refused with an error
that is the events' (:func:`capirelay.graph.errors.is_event_level`) is split until
each bad event stands alone.  The algorithm is pure: it talks to Meta through a
``send`` callable and reports every settled group to a :class:`Settlement` the
moment it is decided, so a lease that runs out half-way (``send`` raises) leaves
what was decided so far recorded.

* The left half is sent first.  If it is accepted, the right half must hold the
  culprit (the whole batch was refused), so it is split again without being sent;
  that keeps the extra requests near ``log2(n)`` per bad event and never above
  ``2·log2(n) + 1``.
* An event is only ever dead-lettered with an error Meta gave for that event sent
  alone: a lone event reached by inference is sent once more first, so a refusal
  that had nothing to do with it (a passing request-level error) cannot send it to
  the dead-letter queue.
* 100/2804001 (malformed ``fbc``): Meta's guidance is to drop the click id and send
  again, once; only if that is refused too is the event dead-lettered.
* If Meta's answer changes class mid-bisection (outage, throttle, token), the
  events concerned are handed back as :meth:`Settlement.refused`; the caller's
  rules for that class apply (retry, pause, breaker).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

import orjson

from capirelay.graph import EventsResponse, GraphError
from capirelay.graph.errors import CODE_100_SUBCODES, is_event_level
from capirelay.outbox import LeasedEvent

MALFORMED_FBC_SUBCODE: Final = CODE_100_SUBCODES[2804001].subcode

Send = Callable[[Sequence[LeasedEvent]], Awaitable[EventsResponse | GraphError]]


class Settlement(Protocol):
    """Where bisection reports each decision (the pixel worker records it in the outbox)."""

    async def delivered(self, events: Sequence[LeasedEvent], *, fbc_dropped: bool = False) -> None:
        """Meta accepted ``events`` (``fbc_dropped``: the lone event, sent without its fbc)."""
        ...

    async def refused(self, events: list[LeasedEvent], err: GraphError) -> None:
        """Meta refused ``events`` with an error that is not the events' (no split)."""
        ...

    async def dead_lettered(
        self, event: LeasedEvent, err: GraphError, *, fbc_dropped: bool = False
    ) -> None:
        """Meta refused ``event`` sent alone (``fbc_dropped``: also without its fbc)."""
        ...


def without_fbc(payload: bytes) -> bytes | None:
    """The event without ``user_data.fbc``; None when it has no fbc to drop."""
    event: Any = orjson.loads(payload)
    user_data = event.get("user_data") if isinstance(event, dict) else None
    if not isinstance(user_data, dict) or "fbc" not in user_data:
        return None
    event["user_data"] = {k: v for k, v in user_data.items() if k != "fbc"}
    return orjson.dumps(event)


class Bisection:
    """Splits one refused batch over ``send`` and reports each outcome to ``settle``."""

    def __init__(self, send: Send, settle: Settlement) -> None:
        self._send = send
        self._settle = settle

    async def run(self, events: list[LeasedEvent], err: GraphError) -> None:
        """``err``: Meta's event-level answer to exactly ``events`` sent together."""
        await self._isolate(events, err, sent_together=True)

    async def _isolate(
        self, events: list[LeasedEvent], err: GraphError, *, sent_together: bool
    ) -> None:
        """``sent_together``: ``err`` is Meta's answer to exactly ``events``; otherwise it
        was inferred (a sibling half was accepted) and nothing was sent as this group."""
        if len(events) == 1:
            await self._settle_lone(events[0], err if sent_together else None)
            return
        middle = len(events) // 2
        left, right = events[:middle], events[middle:]
        left_result = await self._send(left)
        if not isinstance(left_result, GraphError):
            await self._settle.delivered(left)
            await self._isolate(right, err, sent_together=False)
            return
        if not is_event_level(left_result):
            # The unsent right half shares the left half's fate.
            await self._settle.refused(left + right, left_result)
            return
        await self._isolate(left, left_result, sent_together=True)
        right_result = await self._send(right)
        await self._settle_sent(right, right_result)

    async def _settle_sent(
        self, events: list[LeasedEvent], result: EventsResponse | GraphError
    ) -> None:
        if not isinstance(result, GraphError):
            await self._settle.delivered(events)
        elif is_event_level(result):
            await self._isolate(events, result, sent_together=True)
        else:
            await self._settle.refused(events, result)

    async def _settle_lone(self, event: LeasedEvent, own_error: GraphError | None) -> None:
        """One suspect event: make sure Meta refused *it*, then dead-letter it."""
        if own_error is None:
            result = await self._send([event])
            if not isinstance(result, GraphError):
                await self._settle.delivered([event])
                return
            if not is_event_level(result):
                await self._settle.refused([event], result)
                return
            own_error = result
        if (
            own_error.code == 100
            and own_error.subcode == MALFORMED_FBC_SUBCODE
            and await self._resend_without_fbc(event)
        ):
            return
        await self._settle.dead_lettered(event, own_error)

    async def _resend_without_fbc(self, event: LeasedEvent) -> bool:
        """Meta: a malformed fbc (100/2804001) is dropped and the event sent again, once.

        True when the event is settled (delivered, refused or dead-lettered).
        """
        stripped = without_fbc(event.payload)
        if stripped is None:
            return False
        result = await self._send([dataclasses.replace(event, payload=stripped)])
        if not isinstance(result, GraphError):
            await self._settle.delivered([event], fbc_dropped=True)
        elif not is_event_level(result):
            await self._settle.refused([event], result)
        else:
            await self._settle.dead_lettered(event, result, fbc_dropped=True)
        return True
