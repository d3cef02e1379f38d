"""Server-side SVG charts: scale, stacking, escaping."""

from __future__ import annotations

import re

import pytest

from capirelay.dashboard.charts import HEIGHT, Series, bar_chart, line_chart, nice_ceiling

T = 1_790_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 1), (0.4, 1), (1, 1), (1.5, 2), (2, 2), (2.1, 2.5), (3, 5), (7, 10), (11, 20), (21, 25),
     (26, 50), (999, 1000), (1001, 2000)],
)  # fmt: skip
def test_nice_ceiling(value: float, expected: float) -> None:
    assert nice_ceiling(value) == expected


def _points(*values: float) -> list[tuple[float, float]]:
    return [(T + 60 * i, v) for i, v in enumerate(values)]


def test_line_chart_draws_one_polyline_per_series_scaled_to_the_peak() -> None:
    svg = line_chart([Series("sent", _points(0, 5, 10)), Series("received", _points(1, 1, 1))],
                     title="Throughput")  # fmt: skip
    lines = re.findall(r'<polyline class="line series-(\d)" points="([^"]+)"', svg)
    assert [index for index, _ in lines] == ["0", "1"]
    ys = [float(p.split(",")[1]) for p in lines[0][1].split()]
    assert ys[0] == HEIGHT - 22  # zero sits on the x axis
    assert ys[2] == 10  # the peak (10 = the nice ceiling) touches the top
    assert ">10<" in svg and 'sent <span class="muted">15</span>' in svg


def test_bar_chart_stacks_series() -> None:
    svg = bar_chart([Series("a", _points(1, 0)), Series("b", _points(1, 2))], title="Errors")
    bars = re.findall(
        r'<rect class="bar series-(\d)" x="[^"]+" y="([^"]+)" width="[^"]+" height="([^"]+)"', svg
    )
    assert len(bars) == 3  # the zero is not drawn
    first_a, first_b = bars[0], bars[1]
    assert float(first_b[1]) + float(first_b[2]) == pytest.approx(float(first_a[1]))


def test_labels_are_escaped() -> None:
    svg = line_chart([Series("<script>", _points(1))], title='x" onload="y')
    assert "<script>" not in svg
    assert 'onload="y' not in svg


def test_empty_chart_renders() -> None:
    svg = line_chart([], title="Nothing yet")
    assert svg.startswith('<figure class="chart-box lines">') and "</svg>" in svg
