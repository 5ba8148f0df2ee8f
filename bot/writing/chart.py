"""A picture of a failing metric: canary against control over the release, as PNG bytes.

matplotlib is synchronous and CPU-bound: callers run `render_png` in a thread.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to memory only

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def render_png(
    metric: str, points: Sequence[dict[str, Any]], *, unit: str = "", title: str = ""
) -> bytes | None:
    """Canary and control values of ``metric`` from the release's recorded rounds.

    Returns None when there is nothing to draw (no round judged this metric)."""
    times: list[float] = []
    canary: list[float | None] = []
    control: list[float | None] = []
    weights: list[int] = []
    for point in points:
        values = point.get("m", {}).get(metric)
        if not values:
            continue
        times.append(float(point["t"]))
        canary.append(values[0])
        control.append(values[1])
        weights.append(int(point.get("weight", 0)))
    if not times or all(v is None for v in canary):
        return None
    start = times[0]
    minutes = [(t - start) / 60 for t in times]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    try:
        ax.plot(minutes, [_nan(v) for v in control], label="control", color="#457b9d")
        ax.plot(minutes, [_nan(v) for v in canary], label="canary", color="#e63946")
        # Mark where the canary's weight changed, so a jump can be tied to a step.
        for i in range(1, len(weights)):
            if weights[i] != weights[i - 1]:
                ax.axvline(minutes[i], color="#999999", linewidth=0.8, linestyle=":")
                ax.annotate(
                    f"{weights[i]}%",
                    (minutes[i], 1),
                    xycoords=("data", "axes fraction"),
                    fontsize=7,
                    color="#666666",
                    ha="left",
                    va="top",
                )
        ax.set_xlabel("minutes since the release started")
        ax.set_ylabel(f"{metric}{f' ({unit})' if unit and unit != 'ratio' else ''}")
        ax.set_title(title or f"{metric}: canary vs control", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
        return png_bytes(fig)
    finally:
        plt.close(fig)


def png_bytes(fig: Figure) -> bytes:
    """``fig`` laid out and encoded as PNG, stamped with who drew it and on which day."""
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(
        out,
        format="png",
        metadata={"Software": "shipwatch", "Creation Time": time.strftime("%Y-%m-%d")},
    )
    return out.getvalue()


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
