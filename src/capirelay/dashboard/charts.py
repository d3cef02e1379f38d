"""Inline SVG charts rendered on the server: no JavaScript, no chart library, no image files.

A chart is a handful of ``<polyline>``/``<rect>`` elements scaled into a fixed
``viewBox``; the browser stretches it to the page width, so it stays sharp on
a phone.  Colours come from CSS classes (``series-0`` ...) in the dashboard's
stylesheet, so the strict Content-Security-Policy (no inline styles) holds.
Every chart carries a ``<title>`` and a text legend for screen readers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from markupsafe import Markup, escape

__all__ = ["Series", "bar_chart", "line_chart", "nice_ceiling"]

WIDTH: Final = 640
HEIGHT: Final = 180
_PAD_LEFT: Final = 44
_PAD_RIGHT: Final = 8
_PAD_TOP: Final = 10
_PAD_BOTTOM: Final = 22


@dataclass(frozen=True, slots=True)
class Series:
    """One line (or bar stack layer): ``points`` are ``(unix time, value)``, oldest first."""

    label: str
    points: Sequence[tuple[float, float]]


def nice_ceiling(value: float) -> float:
    """The smallest 1/2/2.5/5 x 10^n at or above ``value`` (at least 1), for a readable y axis."""
    if value <= 1:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return float(step * magnitude)
    return float(10 * magnitude)


def line_chart(series: Sequence[Series], *, title: str, unit: str = "per minute") -> Markup:
    """Lines over a shared time axis; each series gets the colour class ``series-<i>``."""
    frame = _Frame.for_series(series, stacked=False)
    shapes = []
    for index, one in enumerate(series):
        coords = " ".join(
            f"{frame.x(i):.1f},{frame.y(value):.1f}" for i, (_, value) in enumerate(one.points)
        )
        shapes.append(f'<polyline class="line series-{index}" points="{coords}"/>')
    return _svg(title, unit, frame, shapes, series, "lines")


def bar_chart(series: Sequence[Series], *, title: str, unit: str = "per minute") -> Markup:
    """Stacked bars, one per time bucket; each layer gets the colour class ``series-<i>``."""
    frame = _Frame.for_series(series, stacked=True)
    slot = frame.plot_width / max(frame.buckets, 1)
    bar_width = max(slot * 0.8, 1.0)
    shapes = []
    base = [0.0] * frame.buckets
    for index, one in enumerate(series):
        for i, (_, value) in enumerate(one.points):
            if value <= 0:
                continue
            top = frame.y(base[i] + value)
            bottom = frame.y(base[i])
            x = _PAD_LEFT + i * slot + (slot - bar_width) / 2
            shapes.append(
                f'<rect class="bar series-{index}" x="{x:.1f}" y="{top:.1f}" '
                f'width="{bar_width:.1f}" height="{max(bottom - top, 0.5):.1f}"/>'
            )
            base[i] += value
    return _svg(title, unit, frame, shapes, series, "bars")


@dataclass(frozen=True, slots=True)
class _Frame:
    buckets: int
    y_max: float
    start: float | None
    end: float | None

    @classmethod
    def for_series(cls, series: Sequence[Series], *, stacked: bool) -> _Frame:
        buckets = max((len(s.points) for s in series), default=0)
        if stacked:
            peak = max(
                (sum(s.points[i][1] for s in series if i < len(s.points)) for i in range(buckets)),
                default=0.0,
            )
        else:
            peak = max((v for s in series for _, v in s.points), default=0.0)
        times = [t for s in series for t, _ in s.points]
        return cls(
            buckets=buckets,
            y_max=nice_ceiling(peak),
            start=min(times) if times else None,
            end=max(times) if times else None,
        )

    @property
    def plot_width(self) -> float:
        return WIDTH - _PAD_LEFT - _PAD_RIGHT

    @property
    def plot_height(self) -> float:
        return HEIGHT - _PAD_TOP - _PAD_BOTTOM

    def x(self, index: int) -> float:
        span = max(self.buckets - 1, 1)
        return _PAD_LEFT + self.plot_width * index / span

    def y(self, value: float) -> float:
        return _PAD_TOP + self.plot_height * (1 - min(value, self.y_max) / self.y_max)


def _svg(
    title: str,
    unit: str,
    frame: _Frame,
    shapes: list[str],
    series: Sequence[Series],
    kind: str,
) -> Markup:
    total = {one.label: sum(v for _, v in one.points) for one in series}
    summary = ", ".join(f"{label}: {int(n)}" for label, n in total.items())
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'preserveAspectRatio="none" aria-label="{escape(title)}">',
        f"<title>{escape(title)} ({escape(unit)}; {escape(summary)})</title>",
        *_axes(frame),
        *shapes,
        "</svg>",
    ]
    legend = "".join(
        f'<li><span class="swatch series-{i}"></span>{escape(one.label)} '
        f'<span class="muted">{int(total[one.label])}</span></li>'
        for i, one in enumerate(series)
    )
    # Every interpolated text (title, unit, labels) went through escape(); numbers are ours.
    return Markup(  # noqa: S704
        f'<figure class="chart-box {kind}"><figcaption>{escape(title)} '
        f'<span class="muted">({escape(unit)})</span></figcaption>'
        f'{"".join(parts)}<ul class="legend">{legend}</ul></figure>'
    )


def _axes(frame: _Frame) -> list[str]:
    bottom = HEIGHT - _PAD_BOTTOM
    lines = [
        f'<line class="axis" x1="{_PAD_LEFT}" y1="{_PAD_TOP}" x2="{_PAD_LEFT}" y2="{bottom}"/>',
        f'<line class="axis" x1="{_PAD_LEFT}" y1="{bottom}" x2="{WIDTH - _PAD_RIGHT}" '
        f'y2="{bottom}"/>',
    ]
    # Integer counts: a half tick is only drawn when it is a whole number.
    ticks = (frame.y_max / 2, frame.y_max) if frame.y_max >= 2 else (frame.y_max,)
    for value in ticks:
        y = frame.y(value)
        lines.append(
            f'<line class="grid" x1="{_PAD_LEFT}" y1="{y:.1f}" x2="{WIDTH - _PAD_RIGHT}" '
            f'y2="{y:.1f}"/>'
        )
        lines.append(
            f'<text class="tick" x="{_PAD_LEFT - 4}" y="{y + 4:.1f}" '
            f'text-anchor="end">{_number(value)}</text>'
        )
    lines.append(
        f'<text class="tick" x="{_PAD_LEFT - 4}" y="{bottom + 4}" text-anchor="end">0</text>'
    )
    if frame.start is not None and frame.end is not None:
        lines.append(
            f'<text class="tick" x="{_PAD_LEFT}" y="{HEIGHT - 6}">{_clock(frame.start)}</text>'
        )
        lines.append(
            f'<text class="tick" x="{WIDTH - _PAD_RIGHT}" y="{HEIGHT - 6}" '
            f'text-anchor="end">{_clock(frame.end)} UTC</text>'
        )
    return lines


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M", time.gmtime(ts))
