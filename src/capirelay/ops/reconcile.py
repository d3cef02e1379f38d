"""Sent versus counted: what capirelay delivered against what Meta's ``/stats`` counts.

Per pixel, event name and hour, three numbers meet:

* **acknowledged**: events Meta's ``events_received`` confirmed for requests
  capirelay sent (``capirelay_delivered_hourly``, test events excluded);
* **server** and **browser**: what ``/stats?aggregation=event_source`` counts as
  ``SERVER`` and ``WEB`` events;
* **deduplicated**: ``/stats?aggregation=event_processing_results``, the events
  Meta merged with a twin sharing ``event_name`` and ``event_id``.

Meta's counts settle after a delay, so only hours that ended more than
``lag_hours`` ago are *compared*; newer hours are shown but never alerted on.

Meta discards a server copy that shares ``event_name`` and ``event_id`` with a
browser event it received first; whether ``/stats`` then leaves that copy out of
its ``SERVER`` count is not documented (UNVERIFIED,
``docs/reference/meta-diagnostics.md`` §3).  If it does, dedup working looks
like a gap.  So the gap is weighed against Meta's deduplicated count of the same
hours:

* an *undercount* alert fires when, over the compared hours, the gap *beyond*
  the deduplicated count (``unexplained``) exceeds ``tolerance`` of what was
  acknowledged (and at least ``min_events`` were acknowledged, so one lost event
  in a quiet hour is not an alert): no reading of dedup explains it.  The gap is
  weighed per event name over the compared hours, each name's acknowledged
  events against its own server and deduplicated counts: dedup of one event
  (PageViews reloaded, another sender's copies) never explains a gap in another
  (Purchases lost), while an event capirelay counted in one hour and Meta in the
  next (a reply that came after the hour ended, a backlog sent late, if Meta
  buckets by ``event_time``) is no gap;
* a gap over ``tolerance`` but within the deduplicated count is
  ``gap_within_dedup``: said, not alarmed, since it may be dedup working or a
  loss of up to that many events, and only the dedup rate tells which.

A *had_pii* alert fires at once, whatever the hour, when
``/stats?aggregation=had_pii`` reports events that carried unhashed personal
data: that is data capirelay (or another sender on the pixel) must never send.

Dedup coverage: deduplicated events over the smaller of the browser count and
the server side (the share of the pair that Meta recognised as one event),
capped at 1.  The server side is the larger of Meta's server count and what it
acknowledged: a server count that leaves deduplicated copies out would
otherwise hide the very rate that explains the gap.

Vocabulary and bucketing are those of ``docs/reference/meta-diagnostics.md``.
When Meta's rows carry no ``event`` name, everything is compared as one
``(all events)`` series.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from capirelay.graph._pixel import StatsBucket
from capirelay.ops.meta_store import DeliveredHour

__all__ = ["ALL_EVENTS", "HOUR", "HourRow", "Reconciliation", "reconcile"]

HOUR = 3600
ALL_EVENTS = "(all events)"


@dataclass(slots=True)
class HourRow:
    hour: int
    event_name: str
    acknowledged: int = 0
    server: int = 0
    browser: int = 0
    deduplicated: int = 0
    had_pii: int = 0
    compared: bool = False

    @property
    def gap(self) -> int:
        return self.acknowledged - self.server

    @property
    def unexplained(self) -> int:
        """This row's gap beyond its own deduplicated count (0 when there is no gap)."""
        return max(0, self.gap - self.deduplicated)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hour": self.hour,
            "event_name": self.event_name,
            "acknowledged": self.acknowledged,
            "server": self.server,
            "browser": self.browser,
            "deduplicated": self.deduplicated,
            "had_pii": self.had_pii,
            "compared": self.compared,
            "gap": self.gap,
        }


@dataclass(slots=True)
class Reconciliation:
    rows: list[HourRow] = field(default_factory=list)
    acknowledged: int = 0  # over compared hours
    server: int = 0
    browser: int = 0
    deduplicated: int = 0
    had_pii: int = 0  # over every hour fetched
    undercount: bool = False  # the gap beyond the deduplicated count is over tolerance
    gap_within_dedup: bool = False  # a gap over tolerance, no larger than the dedup count
    tolerance: float = 0.02

    @property
    def gap(self) -> int:
        return max(0, self.acknowledged - self.server)

    @property
    def gap_ratio(self) -> float:
        return self.gap / self.acknowledged if self.acknowledged else 0.0

    def by_event_name(self) -> list[HourRow]:
        """Each event name's counts summed over the compared hours (``hour`` is the first of
        them), the names with the largest unexplained gap first."""
        totals: dict[str, HourRow] = {}
        for row in self.rows:
            if not row.compared:
                continue
            total = totals.get(row.event_name)
            if total is None:
                total = totals[row.event_name] = HourRow(row.hour, row.event_name, compared=True)
            total.acknowledged += row.acknowledged
            total.server += row.server
            total.browser += row.browser
            total.deduplicated += row.deduplicated
        return sorted(totals.values(), key=lambda t: (-t.unexplained, t.event_name))

    @property
    def unexplained(self) -> int:
        """The gap beyond Meta's deduplicated count, per event name over the compared
        hours: missing under any reading of dedup.  Only a name's own deduplicated events
        can explain its gap (a name capirelay acknowledged none of explains nothing)."""
        return sum(total.unexplained for total in self.by_event_name())

    @property
    def unexplained_ratio(self) -> float:
        return self.unexplained / self.acknowledged if self.acknowledged else 0.0

    @property
    def dedup_coverage(self) -> float | None:
        pair = min(self.browser, max(self.server, self.acknowledged))
        return min(1.0, self.deduplicated / pair) if pair else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [r.to_dict() for r in self.rows],
            "acknowledged": self.acknowledged,
            "server": self.server,
            "browser": self.browser,
            "deduplicated": self.deduplicated,
            "had_pii": self.had_pii,
            "gap_ratio": self.gap_ratio,
            "unexplained_ratio": self.unexplained_ratio,
            "dedup_coverage": self.dedup_coverage,
            "undercount": self.undercount,
            "gap_within_dedup": self.gap_within_dedup,
            "tolerance": self.tolerance,
        }


def reconcile(
    delivered: Iterable[DeliveredHour],
    stats: Sequence[StatsBucket],
    *,
    now: float,
    lag_hours: float,
    tolerance: float,
    min_events: int,
) -> Reconciliation:
    """Join delivered counts with Meta's buckets (see the module docstring)."""
    by_name = all(row.event is not None for bucket in stats for row in bucket.rows)
    table: dict[tuple[int, str], HourRow] = {}

    def row_for(hour: int, name: str | None) -> HourRow:
        key = (hour, (name or ALL_EVENTS) if by_name else ALL_EVENTS)
        found = table.get(key)
        if found is None:
            found = table[key] = HourRow(hour, key[1])
        return found

    for item in delivered:
        row_for(item.hour, item.event_name).acknowledged += item.acknowledged
    for bucket in stats:
        hour = int(bucket.start_time // HOUR) * HOUR
        for stat in bucket.rows:
            value = stat.value.lower()
            target = row_for(hour, stat.event)
            if bucket.aggregation == "event_source":
                if value == "server":
                    target.server += stat.count
                elif value == "web":
                    target.browser += stat.count
            elif bucket.aggregation == "event_processing_results":
                if "dedup" in value:
                    target.deduplicated += stat.count
            elif bucket.aggregation == "had_pii" and value == "true":
                target.had_pii += stat.count
    settled_before = now - lag_hours * HOUR
    result = Reconciliation(tolerance=tolerance)
    for row in sorted(table.values(), key=lambda r: (r.hour, r.event_name)):
        row.compared = row.hour + HOUR <= settled_before
        result.rows.append(row)
        result.had_pii += row.had_pii
        if row.compared:
            result.acknowledged += row.acknowledged
            result.server += row.server
            result.browser += row.browser
            result.deduplicated += row.deduplicated
    enough = result.acknowledged >= max(min_events, 1)
    result.undercount = enough and result.unexplained_ratio > tolerance
    result.gap_within_dedup = enough and not result.undercount and result.gap_ratio > tolerance
    return result


def hourly_series(rows: Iterable[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Acknowledged, Meta server and browser counts per hour (all event names summed)."""
    sums: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        hour = int(row["hour"])
        for key in ("acknowledged", "server", "browser", "deduplicated"):
            sums[key][hour] += float(row.get(key, 0))
    return {key: sorted(points.items()) for key, points in sums.items()}
