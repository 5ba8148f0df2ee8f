"""A backtest as a picture, PNG bytes: per service, the A/A false-rollback rate across the
calibration grid against the target, and how fast each injected fault was caught.

matplotlib is synchronous and CPU-bound: callers run `render_png` in a thread (or a CLI).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: render to memory only

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bot.judging.backtest_report import BacktestReport, ServiceReport
from bot.writing.chart import png_bytes

_LIMIT_COLOURS = ("#e63946", "#f4a261", "#2a9d8f", "#457b9d", "#6d597a")


def render_png(report: BacktestReport) -> bytes | None:
    """None when there is nothing to draw (no A/A window fitted any service's history)."""
    drawn = [s for s in report.services if s.aa.runs]
    if not drawn:
        return None
    fig, axes = plt.subplots(len(drawn), 2, figsize=(10, 3.4 * len(drawn)), dpi=100, squeeze=False)
    try:
        for row, s in zip(axes, drawn, strict=True):
            _rates(row[0], s)
            _detection(row[1], s)
        return png_bytes(fig)
    finally:
        plt.close(fig)


def _rates(ax: Axes, s: ServiceReport) -> None:
    """False-rollback rate against the margin scale, one line per failure limit."""
    ax.set_title(f"{s.service}: A/A false rollbacks per release", fontsize=10)
    ax.axhline(s.target * 100, color="#555555", linestyle="--", linewidth=0.9, label="target")
    if s.suggestion is None:
        ax.bar(["policy as written"], [(s.aa.rate or 0.0) * 100], color="#457b9d")
    else:
        limits = sorted({c.failure_limit for c in s.suggestion.candidates})
        for i, limit in enumerate(limits):
            points = sorted(
                (c.scale, (c.aa.rate or 0.0) * 100)
                for c in s.suggestion.candidates
                if c.failure_limit == limit
            )
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o",
                color=_LIMIT_COLOURS[i % len(_LIMIT_COLOURS)],
                label=f"failure_limit {limit}",
            )
        chosen = s.suggestion.chosen
        if chosen is not None:
            ax.scatter(
                [chosen.scale],
                [(chosen.aa.rate or 0.0) * 100],
                s=160,
                facecolors="none",
                edgecolors="black",
                label="suggested",
            )
        ax.set_xlabel("margin scale (× the policy's margins over the control)")
    ax.set_ylabel("% of A/A releases rolled back")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _detection(ax: Axes, s: ServiceReport) -> None:
    """Seconds from the start of each faulty release to its rollback, per injected effect."""
    ax.set_title(f"{s.service}: injected faults, time to rollback", fontsize=10)
    if not s.faults:
        ax.text(0.5, 0.5, "no --inject given", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    labels = [f"{f.effect.text}\n{(f.rate or 0.0):.0%} caught" for f in s.faults]
    data = [f.seconds or [float("nan")] for f in s.faults]
    ax.boxplot(data, tick_labels=labels, showfliers=True)
    ax.set_ylabel("seconds to rollback")
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(alpha=0.3)
