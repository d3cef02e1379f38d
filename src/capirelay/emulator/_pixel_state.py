"""What the emulator remembers about each pixel beyond its events: settings and hourly stats.

Shapes and vocabularies are those of ``docs/reference/meta-diagnostics.md``:
the AdsPixel fields ``enable_automatic_matching``, ``automatic_matching_fields``
and ``first_party_cookie_status``; hourly ``/stats`` counts by event source
(``WEB``/``SERVER``), processing result (``processed``/``deduplicated``) and
``had_pii`` (``true``/``false``).

Dedup between browser and server follows Meta's rule for the pair: the same
``event_name`` and ``event_id`` from the Pixel and from the server is one event,
the later copy is ``deduplicated``.  The browser side is simulated: tests (or a
user) post the Pixel fires they want Meta to have seen through
``POST /_emulator/pixels/{id}/browser_events``.  Test events
(``test_event_code``) are left out of ``/stats`` as they are out of Meta's
reporting.

Whether Meta's ``event_source`` ``SERVER`` count includes a server copy that was
deduplicated against the browser's event is not documented (UNVERIFIED,
``docs/reference/meta-diagnostics.md`` §3).  By default the emulator counts it;
``server_counts_deduplicated = False`` (on the book, ``EmulatorState.pixel_meta``) leaves
it out, so tests can check capirelay under either reading.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from capirelay.meta_facts import HASHED_VALUE_PATTERN

# New pixels start as Meta creates them today: AAM on for every field, first-party
# cookies on.  Tests turn either off through the same POST /{pixel_id} a user would.
DEFAULT_SETTINGS: Final[dict[str, Any]] = {
    "enable_automatic_matching": True,
    "automatic_matching_fields": [
        "em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id"
    ],
    "first_party_cookie_status": "FIRST_PARTY_COOKIE_ENABLED",
}  # fmt: skip
HASHED_KEYS: Final = ("em", "ph", "fn", "ln", "db", "ge", "ct", "st", "zp", "country")
# What Graph takes as hashed: a lowercase SHA-256 digest, with the param builder's
# appendix when the value came from the builder.
_SHA256 = re.compile(rf"^{HASHED_VALUE_PATTERN}$")
HOUR = 3600


def had_pii(event: dict[str, Any]) -> bool:
    """True when a key Meta expects hashed carries a value that is not a SHA-256 hex digest."""
    user_data = event.get("user_data")
    if not isinstance(user_data, dict):
        return False
    for key in HASHED_KEYS:
        value = user_data.get(key)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and v and not _SHA256.match(v) for v in values):
            return True
    return False


@dataclass(slots=True)
class PixelMeta:
    settings: dict[str, Any] = field(
        default_factory=lambda: {k: list(v) if isinstance(v, list) else v
                                 for k, v in DEFAULT_SETTINGS.items()}
    )  # fmt: skip
    # (hour start, aggregation, event name, value) -> count
    counts: Counter[tuple[int, str, str, str]] = field(default_factory=Counter)
    # (event_name, event_id) -> source that was seen first
    seen: dict[tuple[str, str], str] = field(default_factory=dict)


class PixelMetaBook:
    """Per-pixel settings and stats; callers hold the emulator state's lock."""

    def __init__(self) -> None:
        self._pixels: dict[str, PixelMeta] = {}
        # False: a server copy deduplicated against a browser event is left out of the
        # event_source SERVER count (one reading of Meta's undocumented behaviour).
        self.server_counts_deduplicated = True

    def meta(self, pixel_id: str) -> PixelMeta:
        return self._pixels.setdefault(pixel_id, PixelMeta())

    def reset_traffic(self) -> None:
        for meta in self._pixels.values():
            meta.counts.clear()
            meta.seen.clear()

    def record(
        self,
        pixel_id: str,
        source: str,
        events: Iterable[tuple[dict[str, Any], bool]],
        at: float,
    ) -> None:
        """Count events of ``source`` (``SERVER``/``WEB``); each comes with its
        already-known duplicate flag (same source, same key within 48 h)."""
        meta = self.meta(pixel_id)
        hour = int(at // HOUR) * HOUR
        for event, duplicate in events:
            name = str(event.get("event_name") or "")
            event_id = event.get("event_id")
            twin_first = False  # the other source's copy of this key came first
            if event_id is not None and not duplicate:
                first = meta.seen.setdefault((name, str(event_id)), source)
                duplicate = twin_first = first != source
            if not (twin_first and source == "SERVER" and not self.server_counts_deduplicated):
                meta.counts[(hour, "event_source", name, source)] += 1
            result = "deduplicated" if duplicate else "processed"
            meta.counts[(hour, "event_processing_results", name, result)] += 1
            meta.counts[(hour, "had_pii", name, "true" if had_pii(event) else "false")] += 1
            meta.counts[(hour, "event", name, name)] += 1

    def stats(
        self, pixel_id: str, aggregation: str, start: float, end: float, source_filter: str | None
    ) -> list[dict[str, Any]]:
        """``/stats`` buckets (one per hour with data), oldest first."""
        meta = self.meta(pixel_id)
        by_hour: dict[int, Counter[tuple[str, str]]] = {}
        wanted = {"WEB_ONLY": "WEB", "SERVER_ONLY": "SERVER"}.get(source_filter or "")
        for (hour, agg, name, value), count in meta.counts.items():
            if not start <= hour < end:
                continue
            if wanted is not None:
                source_count = meta.counts.get((hour, "event_source", name, wanted), 0)
                if source_count == 0:
                    continue
            if agg == aggregation:
                by_hour.setdefault(hour, Counter())[(name, value)] += count
        return [
            {
                "aggregation": aggregation,
                "start_time": _iso(hour),
                "data": [
                    {"value": value, "count": count, "event": name}
                    for (name, value), count in sorted(rows.items())
                ],
            }
            for hour, rows in sorted(by_hour.items())
        ]


def _iso(epoch: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")
