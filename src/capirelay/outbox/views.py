"""The dashboard views of any outbox: its own :class:`~capirelay.outbox.base.OutboxViews`,
or :class:`ScanViews`, the same aggregates computed through the core contract
(:meth:`~capirelay.outbox.base.OutboxCore.stats` and ``dlq_list`` pages)."""

from __future__ import annotations

from dataclasses import replace

from capirelay.graph.errors import meta_says_of
from capirelay.outbox.base import DeadLetter, DLQGroup, LeasedEvent, Outbox, OutboxViews, QueueGroup

__all__ = ["ScanViews", "views_of"]


class ScanViews:
    """:class:`OutboxViews` of any :class:`Outbox`, through its core methods."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def queue_breakdown(self, *, now: float) -> list[QueueGroup]:
        """Per pixel only (``event_name="*"``), from :meth:`Outbox.stats`."""
        stats = await self._outbox.stats(now=now)
        return [
            QueueGroup(pixel_id, "*", depth, None, None)
            for pixel_id, depth in sorted(stats.depth_by_pixel.items())
            if depth
        ]

    async def dlq_breakdown(self, *, scan_limit: int = 100_000) -> list[DLQGroup]:
        """Aggregates :meth:`Outbox.dlq_list` pages (newest first), reading at most
        ``scan_limit`` letters."""
        groups: dict[tuple[str, str, str, int | None, int | None], DLQGroup] = {}
        offset = 0
        while offset < scan_limit and (
            page := await self._outbox.dlq_list(
                None, limit=min(500, scan_limit - offset), offset=offset
            )
        ):
            for letter in page:
                _add_to_group(groups, letter)
            offset += len(page)
        return sorted(groups.values(), key=lambda g: (-g.count, -g.last_dead_at))

    async def queue_sample(self, *, limit: int) -> list[LeasedEvent]:
        return []  # none: the dashboard then samples delivered events only


def views_of(outbox: Outbox) -> OutboxViews:
    """The dashboard views of ``outbox``: its own, or :class:`ScanViews` over it."""
    return outbox if isinstance(outbox, OutboxViews) else ScanViews(outbox)


def _add_to_group(
    groups: dict[tuple[str, str, str, int | None, int | None], DLQGroup], letter: DeadLetter
) -> None:
    error = letter.error or {}
    key = (letter.pixel_id, letter.event_name, letter.reason, error.get("code"),
           error.get("subcode"))  # fmt: skip
    known = groups.get(key)
    # Pages come newest first, so the first letter seen is the group's latest.
    latest = known or DLQGroup(
        *key,
        count=0,
        last_dead_at=letter.dead_at,
        message=meta_says_of(error),
        fbtrace_id=error.get("fbtrace_id"),
    )
    groups[key] = replace(latest, count=latest.count + 1)
