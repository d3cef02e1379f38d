"""The dashboard's Diagnostics page: Meta's checks, their history, and sent versus counted.

Everything shown is what the scheduled run (:mod:`capirelay.ops.diagnostics`) stored,
so a page view costs two or three reads and never a Graph call.  Each failing
check shows Meta's own title, message and link beside capirelay's explanation
of what to change (:func:`capirelay.ops.meta_advice.advice_for`); the
reconciliation chart plots, per hour, what Meta acknowledged against what its
``/stats`` counts as server and browser events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response

from capirelay.dashboard import charts
from capirelay.ops.meta_advice import advice_for
from capirelay.ops.meta_store import CheckState, meta_store_for
from capirelay.ops.reconcile import HOUR, hourly_series

if TYPE_CHECKING:
    from capirelay.dashboard.auth import Principal
    from capirelay.dashboard.views import Views

__all__ = ["DiagnosticsPage", "reconciliation_chart"]

HISTORY_ROWS = 50


class DiagnosticsPage:
    """``GET /ui/diagnostics``."""

    def __init__(self, views: Views) -> None:
        self.views = views

    async def __call__(self, request: Request, principal: Principal) -> Response:
        outbox = request.app.state.outbox
        try:
            store = meta_store_for(outbox)
        except TypeError:
            store = None
        latest: list[CheckState] = []
        runs: dict[str, Any] = {}
        history: list[Any] = []
        if store is not None:
            latest = await store.latest_checks()
            runs = await store.runs()
            history = await store.check_history(limit=HISTORY_ROWS)
        config = self.views.settings.diagnostics
        pixels = []
        for pixel_id in sorted(set(self.views.settings.pixels) | set(runs)):
            run = runs.get(pixel_id)
            summary = run.summary if run else {}
            recon = summary.get("reconciliation")
            checks = [c for c in latest if c.pixel_id == pixel_id]
            pixels.append(
                {
                    "pixel_id": pixel_id,
                    "run": run,
                    "checks": [{"state": c, "advice": advice_for(c.key, c.title)} for c in checks],
                    "failing": sum(1 for c in checks if c.failing),
                    "reconciliation": recon,
                    "chart": reconciliation_chart(recon) if recon and recon["rows"] else None,
                    "quality": summary.get("dataset_quality") or {},
                    "settings": summary.get("settings"),
                }
            )
        return self.views.render(
            request,
            principal,
            "diagnostics.html",
            pixels=pixels,
            history=history,
            config=config,
        )


def reconciliation_chart(recon: dict[str, Any]) -> Markup:
    """Acknowledged vs Meta's server and browser counts per hour (all event names)."""
    series = hourly_series(recon["rows"])
    hours = sorted({h for points in series.values() for h, _ in points})
    first, last = hours[0], hours[-1]
    axis = list(range(int(first), int(last) + HOUR, HOUR))

    def aligned(key: str) -> list[tuple[float, float]]:
        values = dict(series.get(key, []))
        return [(float(h), values.get(h, 0.0)) for h in axis]

    return charts.line_chart(
        [
            charts.Series("acknowledged by Meta (events_received)", aligned("acknowledged")),
            charts.Series("Meta /stats: server events", aligned("server")),
            charts.Series("Meta /stats: browser events", aligned("browser")),
            charts.Series("deduplicated (browser + server pairs)", aligned("deduplicated")),
        ],
        title="Sent versus counted, per hour",
        unit="per hour",
    )
