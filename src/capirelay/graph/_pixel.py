"""Pixel settings, ``da_checks`` and ``/stats``: requests and typed answers.

Shapes follow ``docs/reference/meta-diagnostics.md`` (the official SDK's
``AdsPixel``, ``DACheck`` and ``AdsPixelStatsResult`` objects and Meta's
reference pages).  Everything here is I/O-free: the clients in
:mod:`capirelay.graph._client` send what these functions build and hand the
JSON back to them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

__all__ = [
    "AAM_FIELDS",
    "COOKIE_DISABLED",
    "COOKIE_ENABLED",
    "PIXEL_SETTINGS_FIELDS",
    "STATS_AGGREGATIONS",
    "AdsPixelSettings",
    "DACheck",
    "StatsBucket",
    "StatsRow",
    "parse_da_checks",
    "parse_pixel_settings",
    "parse_stats",
    "pixel_update_params",
    "stats_params",
]

# SDK AdsPixel.AutomaticMatchingFields
AAM_FIELDS: Final = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id")
COOKIE_ENABLED: Final = "FIRST_PARTY_COOKIE_ENABLED"
COOKIE_DISABLED: Final = "FIRST_PARTY_COOKIE_DISABLED"
COOKIE_STATUSES: Final = (COOKIE_ENABLED, COOKIE_DISABLED, "EMPTY")
PIXEL_SETTINGS_FIELDS: Final = (
    "id,name,enable_automatic_matching,automatic_matching_fields,first_party_cookie_status"
)
# SDK AdsPixelStatsResult.Aggregation (the ones capirelay asks for are first)
STATS_AGGREGATIONS: Final = (
    "event_source",
    "event_processing_results",
    "had_pii",
    "match_keys",
    "event",
    "event_total_counts",
)
CONNECTION_METHODS: Final = ("ALL", "APP", "BROWSER", "SERVER")
FAILING_RESULTS: Final = frozenset({"failed", "warning"})


@dataclass(frozen=True, slots=True)
class AdsPixelSettings:
    """The AAM and first-party cookie settings of one pixel, as Graph reports them."""

    pixel_id: str
    name: str | None
    enable_automatic_matching: bool | None
    automatic_matching_fields: tuple[str, ...]
    first_party_cookie_status: str | None

    @property
    def aam_on(self) -> bool:
        return bool(self.enable_automatic_matching)

    @property
    def cookies_disabled(self) -> bool:
        return self.first_party_cookie_status == COOKIE_DISABLED

    def to_dict(self) -> dict[str, Any]:
        return {
            "pixel_id": self.pixel_id,
            "name": self.name,
            "enable_automatic_matching": self.enable_automatic_matching,
            "automatic_matching_fields": list(self.automatic_matching_fields),
            "first_party_cookie_status": self.first_party_cookie_status,
        }


@dataclass(frozen=True, slots=True)
class DACheck:
    """One server diagnostics check (SDK ``DACheck``)."""

    key: str
    title: str
    description: str
    result: str
    user_message: str
    action_uri: str

    @property
    def failing(self) -> bool:
        return self.result.lower() in FAILING_RESULTS

    def to_dict(self) -> dict[str, str]:
        return {
            "key": self.key,
            "title": self.title,
            "description": self.description,
            "result": self.result,
            "user_message": self.user_message,
            "action_uri": self.action_uri,
        }


@dataclass(frozen=True, slots=True)
class StatsRow:
    value: str
    count: int
    event: str | None = None


@dataclass(frozen=True, slots=True)
class StatsBucket:
    """One hour of one aggregation (SDK ``AdsPixelStatsResult``)."""

    aggregation: str
    start_time: float  # epoch seconds
    rows: list[StatsRow] = field(default_factory=list)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_pixel_settings(pixel_id: str, payload: Mapping[str, Any]) -> AdsPixelSettings:
    fields = payload.get("automatic_matching_fields")
    enabled = payload.get("enable_automatic_matching")
    cookie = payload.get("first_party_cookie_status")
    name = payload.get("name")
    return AdsPixelSettings(
        pixel_id=str(payload.get("id") or pixel_id),
        name=name if isinstance(name, str) else None,
        enable_automatic_matching=enabled if isinstance(enabled, bool) else None,
        automatic_matching_fields=tuple(
            str(f) for f in (fields if isinstance(fields, list) else [])
        ),
        first_party_cookie_status=cookie if isinstance(cookie, str) else None,
    )


def pixel_update_params(
    *,
    enable_automatic_matching: bool | None,
    automatic_matching_fields: Sequence[str] | None,
    first_party_cookie_status: str | None,
) -> dict[str, str]:
    """Form parameters of ``POST /{pixel_id}``; ValueError names a bad value and the fix."""
    params: dict[str, str] = {}
    if enable_automatic_matching is not None:
        params["enable_automatic_matching"] = "true" if enable_automatic_matching else "false"
    if automatic_matching_fields is not None:
        unknown = [f for f in automatic_matching_fields if f not in AAM_FIELDS]
        if unknown:
            raise ValueError(
                f"automatic_matching_fields: unknown field(s) {', '.join(unknown)}; "
                f"Meta accepts {', '.join(AAM_FIELDS)}"
            )
        if not automatic_matching_fields:
            raise ValueError("automatic_matching_fields: name at least one field")
        params["automatic_matching_fields"] = orjson.dumps(list(automatic_matching_fields)).decode()
    if first_party_cookie_status is not None:
        if first_party_cookie_status not in COOKIE_STATUSES:
            raise ValueError(
                f"first_party_cookie_status must be one of {', '.join(COOKIE_STATUSES)}"
            )
        params["first_party_cookie_status"] = first_party_cookie_status
    if not params:
        raise ValueError("nothing to update: pass at least one pixel setting")
    return params


def parse_da_checks(payload: Mapping[str, Any]) -> list[DACheck]:
    data = payload.get("data")
    checks = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            continue
        checks.append(
            DACheck(
                key=item["key"],
                title=_text(item.get("title")),
                description=_text(item.get("description")),
                result=_text(item.get("result")),
                user_message=_text(item.get("user_message")),
                action_uri=_text(item.get("action_uri")),
            )
        )
    return checks


def stats_params(
    aggregation: str, start_time: float, end_time: float, event_source: str | None
) -> dict[str, str]:
    if aggregation not in STATS_AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(STATS_AGGREGATIONS)}")
    if end_time <= start_time:
        raise ValueError("end_time must be after start_time")
    params = {
        "aggregation": aggregation,
        "start_time": str(int(start_time)),
        "end_time": str(int(end_time)),
    }
    if event_source is not None:
        if event_source not in ("WEB_ONLY", "SERVER_ONLY"):
            raise ValueError("event_source must be WEB_ONLY or SERVER_ONLY")
        params["event_source"] = event_source
    return params


def parse_time(value: Any) -> float | None:
    """Graph datetimes: ISO 8601 (``2026-12-04T10:00:00+0000``) or Unix seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    if value.isdigit():
        return float(value)
    text = value.replace("Z", "+00:00")
    if len(text) >= 5 and text[-5] in "+-" and text[-3] != ":":
        text = f"{text[:-2]}:{text[-2:]}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_stats(payload: Mapping[str, Any]) -> list[StatsBucket]:
    data = payload.get("data")
    buckets = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict):
            continue
        start = parse_time(item.get("start_time"))
        if start is None:
            continue
        rows = []
        raw_rows = item.get("data")
        for row in raw_rows if isinstance(raw_rows, list) else []:
            if not isinstance(row, dict):
                continue
            count = row.get("count")
            if isinstance(count, str) and count.isdigit():
                count = int(count)
            if not isinstance(count, int) or isinstance(count, bool):
                continue
            event = row.get("event")
            rows.append(
                StatsRow(
                    value=str(row.get("value", "")),
                    count=count,
                    event=event if isinstance(event, str) and event else None,
                )
            )
        buckets.append(StatsBucket(_text(item.get("aggregation")), start, rows))
    return buckets


def next_cursor(payload: Mapping[str, Any]) -> str | None:
    """The ``after`` cursor when Graph says there is a next page."""
    paging = payload.get("paging")
    if not isinstance(paging, dict) or not paging.get("next"):
        return None
    cursors = paging.get("cursors")
    after = cursors.get("after") if isinstance(cursors, dict) else None
    return after if isinstance(after, str) and after else None
