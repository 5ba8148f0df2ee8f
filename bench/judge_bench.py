"""Benchmark of bot.judging.statistical: the cost of one ``classify`` call as the series grow.

Run from the project root::

    .venv/bin/python -m bench.judge_bench

Each metric of a release is classified once per analysis round, on one range series per
side, so this is the judge's cost per metric per round. Data are latency-like: p99 series
in seconds, log-normal around 120 ms, the canary 3% slower, and eight different pairs per
size (the root finder's iteration count depends on the data), cycled through the calls.
Sizes are samples per side: 30 (5 min at a 10 s step), 300 and 3,000.

Prints a table, then one JSON object on the last line (for CI to parse).
"""

from __future__ import annotations

import gc
import json
import math
import platform
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass

from bot.judging.statistical import JudgeConfig, classify

SIZES = (30, 300, 3_000)
PAIRS = 8
REPEATS = 7
# Aim each repeat at ~0.3 s, so the timer's resolution and one-off stalls do not matter.
TARGET_REPEAT_S = 0.3
MEDIAN_LATENCY_S = 0.120
SPREAD = 0.25  # sigma of log(latency)
CANARY_SLOWDOWN = 1.03

Pair = tuple[list[float], list[float]]  # (control, canary)


def latency_pairs(size: int, seed: int = 42) -> list[Pair]:
    rng = random.Random(seed * 1_000_003 + size)
    mu = math.log(MEDIAN_LATENCY_S)

    def series(factor: float) -> list[float]:
        return [rng.lognormvariate(mu, SPREAD) * factor for _ in range(size)]

    return [(series(1.0), series(CANARY_SLOWDOWN)) for _ in range(PAIRS)]


def time_calls(pairs: list[Pair], calls: int, config: JudgeConfig) -> float:
    """Seconds per classify() call over ``calls`` calls cycling through ``pairs``."""
    gc.collect()
    started = time.perf_counter()
    for i in range(calls):
        control, canary = pairs[i % len(pairs)]
        classify(control, canary, config, name="latency_p99")
    return (time.perf_counter() - started) / calls


@dataclass(frozen=True)
class Row:
    samples_per_side: int
    us_per_call_median: float
    us_per_call_min: float
    us_per_call_max: float
    calls_per_repeat: int
    repeats: int
    verdicts: dict[str, int]


def bench_size(size: int, config: JudgeConfig) -> Row:
    pairs = latency_pairs(size)
    # Warm up and calibrate: one pass over every pair.
    per_call = time_calls(pairs, len(pairs), config)
    calls = max(len(pairs), round(TARGET_REPEAT_S / per_call))
    samples = [time_calls(pairs, calls, config) for _ in range(REPEATS)]
    verdicts = Counter(classify(c, x, config).classification.value for c, x in pairs)
    return Row(
        samples_per_side=size,
        us_per_call_median=round(statistics.median(samples) * 1e6, 1),
        us_per_call_min=round(min(samples) * 1e6, 1),
        us_per_call_max=round(max(samples) * 1e6, 1),
        calls_per_repeat=calls,
        repeats=REPEATS,
        verdicts=dict(sorted(verdicts.items())),
    )


def render(rows: list[Row]) -> str:
    header = (
        f"{'samples/side':>12}  {'µs/call (median)':>16}  {'min':>10}  {'max':>10}  "
        f"{'calls x repeats':>15}  verdicts of the {PAIRS} pairs"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        verdicts = ", ".join(f"{k} {v}" for k, v in row.verdicts.items())
        runs = f"{row.calls_per_repeat} x {row.repeats}"
        lines.append(
            f"{row.samples_per_side:>12,}  {row.us_per_call_median:>16,.1f}  "
            f"{row.us_per_call_min:>10,.1f}  {row.us_per_call_max:>10,.1f}  "
            f"{runs:>15}  {verdicts}"
        )
    return "\n".join(lines)


def main() -> int:
    started = time.monotonic()
    config = JudgeConfig(direction="increase")
    rows = [bench_size(size, config) for size in SIZES]
    print(render(rows))
    summary = {
        "bench": "judge",
        "classify_us_per_call_median": {
            str(row.samples_per_side): row.us_per_call_median for row in rows
        },
        "rows": [asdict(row) for row in rows],
        "canary_slowdown": CANARY_SLOWDOWN,
        "pairs_per_size": PAIRS,
        "python": platform.python_version(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
