"""Enqueue on PostgreSQL: the order-ledger claim, dedup and queue in ONE statement.

The database does as little per event as it can: the caller (this module) keeps the
first event of an order key and the first occurrence of a dedup key repeated inside a
request, and ranks the keys in key order, so the ``enqueue`` statement
(``queries.sql``) neither deduplicates nor sorts text; it claims the order keys, then
each dedup key in rank order with the queue row id it assigns up front.

The statement runs on its own, on an autocommit connection: one round trip and one
implicit transaction (durable when the client reads the answer), where BEGIN, a ledger
statement, the enqueue and COMMIT took four.  One case takes two statements in a
transaction (:func:`enqueue_in_two_steps`): a dedup key repeated within a request (or a
coalesced group of them) with an order event among its occurrences, such as a browser's
Purchase and a shop webhook's sharing an event id.  Every order key of a call is
claimed, a duplicate's too, and which occurrence is the first to queue depends on
which orders the ledger lets through.

Most groups hold only new keys, and for them the one statement is sent without its
``ON CONFLICT`` clauses (``enqueue_fresh``): PostgreSQL then checks each key while
inserting it instead of probing for it first and confirming the row after, which
measured about 2 us less of the database's CPU per key, two keys per order event.
When a key exists after all, the statement fails as a whole (a unique violation,
nothing written) and the arbitrating ``enqueue`` runs instead; :class:`FreshClaims`
then sends arbitrating statements for a while, longer each time in a row that a
fresh one fails, so a stream with many duplicates costs a wasted statement only
rarely.  The outcome is the same either way: a fresh statement that succeeds claimed
every key, which is what the arbitrating one answers when every key is new.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

from psycopg import AsyncConnection

from capirelay.outbox.base import DEDUP_WINDOW_SECONDS, NewEvent

__all__ = ["FreshClaims", "Picked", "enqueue_in_one_statement", "enqueue_in_two_steps", "pick"]

# After a fresh statement fails, this many statements arbitrate before the next fresh
# one; doubled on each failure in a row, up to FRESH_BACKOFF_MAX.
FRESH_BACKOFF_FIRST: Final = 16
FRESH_BACKOFF_MAX: Final = 1024


class FreshClaims:
    """Whether the next one-statement enqueue is sent fresh (see the module's notes).

    A failed fresh statement costs the work it did before the conflict, and PostgreSQL
    logs it (``ERROR: duplicate key value violates unique constraint``, the key's event
    id, name and pixel id or the order key's digest in ``DETAIL``, the statement's text
    without its values): after a failure, :data:`FRESH_BACKOFF_FIRST` statements
    arbitrate, then one is tried fresh; each further failure before a fresh statement
    succeeds doubles that, up to :data:`FRESH_BACKOFF_MAX` (fresh statements in flight
    together that fail together count one each), and a success starts over.
    """

    def __init__(self) -> None:
        self._arbitrate = 0  # statements still to send arbitrating
        self._backoff = FRESH_BACKOFF_FIRST
        self.failures = 0  # fresh statements that met an existing key

    def fresh(self) -> bool:
        """Whether to send the next statement fresh (counts it down otherwise)."""
        if self._arbitrate:
            self._arbitrate -= 1
            return False
        return True

    def succeeded(self) -> None:
        self._backoff = FRESH_BACKOFF_FIRST

    def failed(self) -> None:
        self.failures += 1
        self._arbitrate = self._backoff
        self._backoff = min(self._backoff * 2, FRESH_BACKOFF_MAX)


class Picked(NamedTuple):
    """What of a request goes to the database (indexes into it, in request order)."""

    # Each order key's first event: the candidates (later ones are duplicates whatever
    # the database holds).
    candidates: list[int]
    # Of those, each dedup key's first occurrence: what one statement is sent.  None
    # when a repeated dedup key has an order event among its occurrences: the first
    # may be an order the ledger turns away (the next occurrence is then the first to
    # queue), and a later one's order must be claimed although its event is a duplicate
    # (every order key of a call is claimed); enqueue_in_two_steps does both.
    one_statement: list[int] | None


def pick(events: Sequence[NewEvent]) -> Picked:
    """Which events of a request the enqueue sends, and how (see :class:`Picked`)."""
    candidates: list[int] = []
    first: list[int] = []
    orders: set[bytes] = set()
    # Each dedup key seen, and whether its first occurrence carries an order key.
    keys: dict[tuple[str, str, str], bool] = {}
    undecided = False
    for index, event in enumerate(events):
        order = event.order_key
        if order is not None:
            if order in orders:
                continue
            orders.add(order)
        candidates.append(index)
        key = _key(event)
        if key in keys:
            undecided = undecided or keys[key] or order is not None
            continue
        keys[key] = order is not None
        first.append(index)
    return Picked(candidates, None if undecided else first)


def enqueue_params(
    events: Sequence[NewEvent], now: float, channel: str, *, with_orders: bool = True
) -> dict[str, Any]:
    """The ``enqueue`` statement's arrays for ``events`` (each key once, in request order);
    without ``with_orders`` the ledger part claims nothing and lets every event through."""
    order = sorted(range(len(events)), key=lambda i: _key(events[i]))
    ranks = [0] * len(events)
    for rank, index in enumerate(order):
        ranks[index] = rank
    orders = [e.order_key if with_orders else None for e in events]
    return {
        "order_keys": sorted({key for key in orders if key is not None}),
        "ranks": ranks,
        "pixel_ids": [e.pixel_id for e in events],
        "event_names": [e.event_name for e in events],
        "event_ids": [e.event_id for e in events],
        "payloads": [e.payload for e in events],
        # Binary typed arrays (%b in the statement): ints and floats, never mixed.
        "event_times": [int(e.event_time) for e in events],
        "deadlines": [float(e.deadline) for e in events],
        "test_event_codes": [e.test_event_code for e in events],
        "sources": [e.source for e in events],
        "event_order_keys": orders,
        "now": now,
        "cutoff": now - DEDUP_WINDOW_SECONDS,
        "channel": channel,
    }


def _key(event: NewEvent) -> tuple[str, str, str]:
    return (event.event_id, event.event_name, event.pixel_id)


async def enqueue_in_one_statement(
    conn: AsyncConnection[Any],
    queries: Mapping[str, str],
    events: Sequence[NewEvent],
    picked: Sequence[int],
    now: float,
    channel: str,
    *,
    with_orders: bool = True,
    fresh: bool = False,
) -> set[int]:
    """Queue the ``picked`` events (:attr:`Picked.one_statement`) whose order and dedup
    keys are new; the indexes of the queued ones.  On an autocommit connection this is
    the whole transaction.  Without ``with_orders`` the statement claims no order key
    (:func:`enqueue_in_two_steps` has claimed them).  ``fresh``: without arbitration,
    raising :class:`psycopg.errors.UniqueViolation` (nothing written, on an autocommit
    connection) if any key exists."""
    if not picked:
        return set()
    params = enqueue_params([events[i] for i in picked], now, channel, with_orders=with_orders)
    if fresh:
        # It succeeded, so every key was new and every event it was sent is queued.
        cur = await conn.execute(queries["enqueue_fresh"], params)
        row = await cur.fetchone()
        if row is None or row[0] != len(picked):
            raise RuntimeError(f"enqueue_fresh queued {row and row[0]} of {len(picked)} events")
        return set(picked)
    cur = await conn.execute(queries["enqueue"], params)
    return {picked[row[0] - 1] for row in await cur.fetchall()}


async def enqueue_in_two_steps(
    conn: AsyncConnection[Any],
    queries: Mapping[str, str],
    events: Sequence[NewEvent],
    picked: Sequence[int],
    now: float,
    channel: str,
) -> set[int]:
    """As :func:`enqueue_in_one_statement`, for the ``picked`` events
    (:attr:`Picked.candidates`), in a transaction: claim their order keys, then queue
    (dedup as usual) the events without a key or with a new one, each dedup key's first
    occurrence among those."""
    orders = sorted({order for i in picked if (order := events[i].order_key) is not None})
    cur = await conn.execute(queries["claim_order_keys"], {"keys": orders, "now": now})
    claimed = {bytes(row[0]) for row in await cur.fetchall()}
    through: list[int] = []
    seen: set[tuple[str, str, str]] = set()
    for index in picked:
        order = events[index].order_key
        key = _key(events[index])
        if (order is None or order in claimed) and key not in seen:
            seen.add(key)
            through.append(index)
    return await enqueue_in_one_statement(
        conn, queries, events, through, now, channel, with_orders=False
    )
