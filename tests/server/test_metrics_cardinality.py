"""Unauthenticated beacons cannot grow /metrics without bound (review finding 7).

``event_name`` arrives from anyone who can post to ``/v1/collect``; each new value
used to become a new Prometheus series on four counters.  The gateway runs for real
on a loopback port (module fixtures in ``conftest.py``).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from capirelay.config import RateLimit, RateLimitSettings, Settings
from capirelay.emulator.testing import RunningEmulator
from capirelay.metrics import (
    MAX_CUSTOM_EVENT_LABELS,
    MAX_EVENT_LABEL_CHARS,
    OTHER_EVENT_LABEL,
    STANDARD_EVENT_NAMES,
    Metrics,
)

from .conftest import PIXEL_ID, SHOP_ORIGIN, gateway_settings

# 300 beacons from one address: more than the default per-address burst, on purpose
# (this module tests label cardinality, not rate limits), so the limits are set here.
FLOOD_LIMITS = RateLimitSettings(
    collect_per_address=RateLimit(rate=10_000, burst=10_000),
    collect_per_pixel=RateLimit(rate=10_000, burst=10_000),
)


@pytest.fixture(scope="module")
def settings(
    db_path: Path,
    storage_url: str,
    emulator: RunningEmulator,
    secrets_in_env: pytest.MonkeyPatch,
) -> Settings:
    secrets_in_env.chdir(db_path.parent)
    return gateway_settings(storage_url, emulator.url, rate_limits=FLOOD_LIMITS)


BEACON_HEADERS = {
    "Origin": SHOP_ORIGIN,
    "Host": "track.shop.example",
    "User-Agent": "Mozilla/5.0 (Macintosh) Safari/605.1.15",
    "X-Forwarded-For": "8.8.4.4",
}


def _series(metrics_text: str, family: str) -> list[str]:
    return [line for line in metrics_text.splitlines() if line.startswith(family + "{")]


def test_three_hundred_beacon_names_make_a_bounded_number_of_series(gateway_url: str) -> None:
    with httpx.Client(base_url=gateway_url, timeout=10) as http:
        for i in range(300):
            body = {
                "pixel_id": PIXEL_ID,
                "event_name": f"x{i}-" + "A" * (10 if i % 2 else 200),
                "page_url": "https://shop.example/p",
            }
            response = http.post("/v1/collect", json=body, headers=BEACON_HEADERS)
            assert response.status_code == 202, response.text
        exposition = http.get("/metrics").text

    accepted = _series(exposition, "capirelay_events_accepted_total")
    # Custom names only up to the bound, plus "other"; standard names other tests sent.
    assert len(accepted) <= MAX_CUSTOM_EVENT_LABELS + 1 + len(STANDARD_EVENT_NAMES)
    assert any(f'event_name="{OTHER_EVENT_LABEL}"' in line for line in accepted)
    assert all(len(line) < 300 for line in accepted), "long names are not labels"


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("Purchase", "Purchase"),
        ("PageView", "PageView"),
        ("ViewContent", "ViewContent"),
        ("ClickedBanner", "ClickedBanner"),
        ("x" * MAX_EVENT_LABEL_CHARS, "x" * MAX_EVENT_LABEL_CHARS),
        ("x" * (MAX_EVENT_LABEL_CHARS + 1), OTHER_EVENT_LABEL),
    ],
)
def test_event_label(name: str, label: str) -> None:
    assert Metrics().event_label(name) == label


def test_custom_names_beyond_the_bound_are_other_and_standard_names_never_are() -> None:
    metrics = Metrics()
    labels = [metrics.event_label(f"custom{i}") for i in range(MAX_CUSTOM_EVENT_LABELS + 10)]
    assert labels[:MAX_CUSTOM_EVENT_LABELS] == [
        f"custom{i}" for i in range(MAX_CUSTOM_EVENT_LABELS)
    ]
    assert set(labels[MAX_CUSTOM_EVENT_LABELS:]) == {OTHER_EVENT_LABEL}
    assert metrics.event_label("custom3") == "custom3"  # a name seen before keeps its label
    assert metrics.event_label("Lead") == "Lead"
