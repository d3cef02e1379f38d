"""The example Grafana dashboard and docs/metrics.md stay in step with ``Metrics``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from capirelay.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "examples" / "grafana" / "capirelay-dashboard.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"

# Sample names a family exposes, by Prometheus type.
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def families() -> dict[str, str]:
    """Family name -> type, for every metric a gateway registers."""
    return {m.name: m.type for m in Metrics().registry.collect()}


def queryable_names() -> set[str]:
    return {name + suffix for name, kind in families().items() for suffix in _SUFFIXES[kind]}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(DASHBOARD.read_bytes())
    return loaded


def expressions() -> list[str]:
    return [
        target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])
    ]


def test_dashboard_is_a_grafana_dashboard_with_a_prometheus_variable() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panel_ids = [p["id"] for p in board["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"]


def test_every_queried_metric_exists() -> None:
    known = queryable_names()
    used = {name for expr in expressions() for name in re.findall(r"\bcapirelay_[a-z_]+", expr)}
    assert used, "the dashboard queries no capirelay metric"
    assert used <= known, f"unknown metrics in the dashboard: {sorted(used - known)}"


@pytest.mark.parametrize(
    "needle",
    [
        "capirelay_events_sent_total",  # throughput
        "capirelay_graph_errors_total",  # errors by code
        "capirelay_queue_depth",
        "capirelay_queue_oldest_age_seconds",
        "capirelay_queue_min_seconds_to_deadline",
        "capirelay_dlq_size",
        "capirelay_breaker_open",
        "histogram_quantile(0.99",  # latency p99
        "histogram_quantile(0.5",  # latency p50
    ],
)
def test_dashboard_covers(needle: str) -> None:
    assert any(needle in expr for expr in expressions())


def test_every_metric_is_documented() -> None:
    documented = set(re.findall(r"^\| `(capirelay_[a-z_]+)`", METRICS_DOC.read_text(), re.M))
    exposed = {name + ("_total" if kind == "counter" else "") for name, kind in families().items()}
    assert documented == exposed
