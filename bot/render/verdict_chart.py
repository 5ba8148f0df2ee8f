"""The judge's verdicts over a release as an inline SVG: one row per metric, one column per slice
of time, coloured by the worst outcome in it, under a band showing the canary's weight.

Drawn by code, with presentation attributes only (no ``style``), so the page's
Content-Security-Policy needs nothing for it; scaled by its viewBox to its box (which scrolls
on a phone rather than shrink the labels past reading).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

COLOURS = {"pass": "#2a9d55", "fail": "#d62839", "no_data": "#9aa0a6", "error": "#f08c00"}
# Worst first: a slice that held one failure among passes shows the failure.
_RANK = {"fail": 3, "error": 2, "no_data": 1, "pass": 0}
MAX_COLUMNS = 120  # long releases are summarised into this many slices of time
_W = 640
_LABEL_W = 150
_ROW_H = 18
_BAND_H = 34  # the weight band
_TOP = 8


def _outcomes(points: Sequence[dict[str, Any]]) -> tuple[list[str], list[float]]:
    names: list[str] = []
    times: list[float] = []
    for point in points:
        times.append(float(point.get("t", 0.0)))
        for name in point.get("m", {}):
            if name not in names:
                names.append(name)
    return names, times


def _columns(points: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The rounds split into at most MAX_COLUMNS consecutive slices."""
    size = max(1, -(-len(points) // MAX_COLUMNS))
    return [list(points[i : i + size]) for i in range(0, len(points), size)]


def _worst(column: Sequence[dict[str, Any]], metric: str) -> str:
    seen = [
        str(values[2]) for p in column if (values := p.get("m", {}).get(metric)) and len(values) > 2
    ]
    return max(seen, key=lambda o: _RANK.get(o, 0)) if seen else ""


def verdict_svg(points: Sequence[dict[str, Any]], *, title: str = "Verdicts over time") -> str:
    """The chart as SVG markup ("" when no round was judged). Metric names are escaped."""
    if not points:
        return ""
    names, times = _outcomes(points)
    if not names:
        return ""
    columns = _columns(points)
    plot_w = _W - _LABEL_W - 8
    col_w = plot_w / len(columns)
    height = _TOP + _BAND_H + 6 + _ROW_H * len(names) + 24
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" width="100%" '
        f'role="img" aria-labelledby="chart-title" class="chart">',
        f'<title id="chart-title">{escape(title)}</title>',
        f'<text x="4" y="{_TOP + _BAND_H - 10}" font-size="12" fill="#444">canary weight</text>',
    ]
    # The weight band: a step line from 0 % (bottom) to 100 % (top).
    path = []
    for i, column in enumerate(columns):
        weight = max(0, min(100, int(column[-1].get("weight", 0))))
        y = _TOP + _BAND_H - weight / 100 * _BAND_H
        x0, x1 = _LABEL_W + i * col_w, _LABEL_W + (i + 1) * col_w
        path.append(f"{'M' if i == 0 else 'L'}{x0:.1f},{y:.1f} L{x1:.1f},{y:.1f}")
    parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="#3a6ea5" stroke-width="2"/>')
    top = _TOP + _BAND_H + 6
    for row, name in enumerate(names):
        y = top + row * _ROW_H
        label = name if len(name) <= 22 else name[:21] + "…"
        parts.append(
            f'<text x="4" y="{y + _ROW_H - 5}" font-size="12" fill="#222">{escape(label)}</text>'
        )
        for i, column in enumerate(columns):
            outcome = _worst(column, name)
            if not outcome:
                continue
            colour = COLOURS.get(outcome, "#cccccc")
            parts.append(
                f'<rect x="{_LABEL_W + i * col_w:.1f}" y="{y + 2}" width="{max(col_w - 1, 1):.1f}" '
                f'height="{_ROW_H - 4}" fill="{colour}"><title>{escape(name)}: '
                f"{escape(outcome)}</title></rect>"
            )
    minutes = (times[-1] - times[0]) / 60 if len(times) > 1 else 0.0
    parts.append(
        f'<text x="{_LABEL_W}" y="{height - 6}" font-size="11" fill="#555">start</text>'
        f'<text x="{_W - 8}" y="{height - 6}" font-size="11" fill="#555" text-anchor="end">'
        f"+{minutes:.1f} min ({len(points)} rounds)</text>"
    )
    parts.append("</svg>")
    return "".join(parts)
