"""Benchmark of bot.judging.statistical: the cost of one ``classify`` call as the series grow,
side by side with a numpy + scipy port of the same judgement (bench/judge_peer.py).

Run from the project root::

    .venv/bin/python -m bench.judge_bench

Each metric of a release is classified once per analysis round, on one range series per
side, so this is the judge's cost per metric per round. Data are latency-like: p99 series
in seconds, log-normal around 120 ms, the canary 3% slower, and eight different pairs per
size (the root finder's iteration count depends on the data), cycled through the calls.
Sizes are samples per side: 30 (5 min at a 10 s step), 240 and 3,000. The two judges are
timed in alternating repeats, and their verdicts on the same pairs compared.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass

from bench import judge_peer
from bot.judging.statistical import JudgeConfig, classify

SIZES = (30, 240, 3_000)
PAIRS = 8
REPEATS = 7
# Aim each repeat at ~0.3 s, so the timer's resolution and one-off stalls do not matter.
TARGET_REPEAT_S = 0.3
MEDIAN_LATENCY_S = 0.120
SPREAD = 0.25  # sigma of log(latency)
CANARY_SLOWDOWN = 1.03

Pair = tuple[list[float], list[float]]  # (control, canary)
Judge = Callable[[list[float], list[float]], object]


def latency_pairs(size: int, seed: int = 42) -> list[Pair]:
    rng = random.Random(seed * 1_000_003 + size)
    mu = math.log(MEDIAN_LATENCY_S)

    def series(factor: float) -> list[float]:
        return [rng.lognormvariate(mu, SPREAD) * factor for _ in range(size)]

    return [(series(1.0), series(CANARY_SLOWDOWN)) for _ in range(PAIRS)]


def time_calls(
    pairs: list[Pair], calls: int, judge: Callable[[list[float], list[float]], object]
) -> float:
    """Seconds per call over ``calls`` calls cycling through ``pairs``."""
    gc.collect()
    started = time.perf_counter()
    for i in range(calls):
        control, canary = pairs[i % len(pairs)]
        judge(control, canary)
    return (time.perf_counter() - started) / calls


@dataclass(frozen=True)
class Row:
    samples_per_side: int
    us_per_call_median: float
    us_per_call_min: float
    us_per_call_max: float
    peer_us_per_call_median: float
    peer_over_ours: float  # > 1: the port is slower
    calls_per_repeat: int
    repeats: int
    verdicts: dict[str, int]
    verdicts_agree: int  # of the pairs


def bench_size(size: int, config: JudgeConfig) -> Row:
    pairs = latency_pairs(size)

    def ours(control: list[float], canary: list[float]) -> str:
        return classify(control, canary, config, name="latency_p99").classification.value

    def peer(control: list[float], canary: list[float]) -> str:
        return judge_peer.classify(control, canary, tolerance=config.tolerance)

    # Warm up and calibrate on the slower of the two: one pass over every pair each.
    per_call = max(time_calls(pairs, len(pairs), ours), time_calls(pairs, len(pairs), peer))
    calls = max(len(pairs), round(TARGET_REPEAT_S / per_call))
    samples: list[float] = []
    peer_samples: list[float] = []
    for _ in range(REPEATS):  # alternating, so both see the same machine
        samples.append(time_calls(pairs, calls, ours))
        peer_samples.append(time_calls(pairs, calls, peer))
    verdicts = Counter(ours(c, x) for c, x in pairs)
    agree = sum(ours(c, x) == peer(c, x) for c, x in pairs)
    median, peer_median = statistics.median(samples), statistics.median(peer_samples)
    return Row(
        samples_per_side=size,
        us_per_call_median=round(median * 1e6, 1),
        us_per_call_min=round(min(samples) * 1e6, 1),
        us_per_call_max=round(max(samples) * 1e6, 1),
        peer_us_per_call_median=round(peer_median * 1e6, 1),
        peer_over_ours=round(peer_median / median, 2),
        calls_per_repeat=calls,
        repeats=REPEATS,
        verdicts=dict(sorted(verdicts.items())),
        verdicts_agree=agree,
    )


def render(rows: list[Row]) -> str:
    header = (
        f"{'samples/side':>12}  {'µs/call (median)':>16}  {'min':>9}  {'max':>9}  "
        f"{'numpy+scipy port µs':>19}  {'port/ours':>9}  {'agree':>5}  verdicts"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        verdicts = ", ".join(f"{k} {v}" for k, v in row.verdicts.items())
        lines.append(
            f"{row.samples_per_side:>12,}  {row.us_per_call_median:>16,.1f}  "
            f"{row.us_per_call_min:>9,.1f}  {row.us_per_call_max:>9,.1f}  "
            f"{row.peer_us_per_call_median:>19,.1f}  {row.peer_over_ours:>9.2f}  "
            f"{row.verdicts_agree:>2}/{PAIRS:<2}  {verdicts}"
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
