"""A policy judged on history: past releases replayed, A/A windows, injected faults. Pure.

* Past releases: each one's recorded steps (audit) replayed round by round under the policy
  being tested, compared with what happened to it.
* A/A: the stable version judged against itself ``offset`` seconds earlier, a whole simulated
  release (the policy's ladder, holds, bake and interval) per window. Nothing differs between
  the two sides but time, so every rollback is a false one. The offset is the longest window
  or lookback of the service's metrics: the two sides then share no raw sample (an overlap
  would make them agree by construction), and drift between them stays as short as it can.
* Faults: the same pairs with an effect applied to the canary side; a rollback is a detection.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from bot.judging.analysis import Plan, plan
from bot.judging.effects import Effect
from bot.judging.history import History
from bot.judging.replay import (
    AnalysisCache,
    Judge,
    Lens,
    Run,
    StepMove,
    replay,
    simulate,
    start_release,
)
from bot.release.plan import plan_release
from bot.release.policy import ServicePolicy
from bot.release.request import DeployOptions

DAY_S = 86400.0
ActualOutcome = Literal["rolled_back", "succeeded", "active", "other"]
Agreement = Literal[
    "both_rolled_back", "both_passed", "would_roll_back", "would_let_through", "no_data"
]


@dataclass(frozen=True)
class StableSpan:
    """``version`` was the stable (control) version from ``since`` on."""

    since: float
    version: str


def stable_at(spans: Sequence[StableSpan], moment: float) -> str:
    """The stable version at ``moment`` (the earliest known one before the first span)."""
    ordered = sorted(spans, key=lambda s: s.since)
    current = ordered[0].version if ordered else ""
    for span in ordered:
        if span.since <= moment:
            current = span.version
    return current


@dataclass(frozen=True)
class PastRelease:
    """A release as the audit recorded it: what was shipped, its steps, and how it ended."""

    release_id: str
    number: int
    version: str
    stable: str
    weights: tuple[int, ...]
    start: float
    moves: tuple[StepMove, ...]
    left_canary_at: float  # the rollback decision, the success, or the end of the history
    outcome: ActualOutcome
    decided_by: str = ""  # who rolled it back (the controller is "shipwatch")
    reason: str = ""


@dataclass(frozen=True)
class ReleaseReplay:
    past: PastRelease
    run: Run

    @property
    def agreement(self) -> Agreement:
        if not self.run.informative:
            return "no_data"
        actual = self.past.outcome == "rolled_back"
        if self.run.rolled_back:
            return "both_rolled_back" if actual else "would_roll_back"
        return "would_let_through" if actual else "both_passed"


def queries_of(p: Plan) -> set[str]:
    """Every PromQL text a round of this plan sends."""
    return {q.promql for q in p.instant} | {sq.query.promql for sq in p.series}


def ladder_seconds(sp: ServicePolicy) -> float:
    """How long a release takes when every round is green: each hold, then the bake, each
    rounded up to the round that ends it."""
    p = plan_release(sp, "ladder", "next", DeployOptions(stable="current"), [])

    def rounded(seconds: float) -> float:
        return max(1, math.ceil(seconds / sp.interval - 1e-9)) * sp.interval

    holds = [rounded(h) for w, h in zip(p.weights, p.holds, strict=True) if w < 100]
    return sum(holds) + (rounded(sp.bake) if p.weights[-1] >= 100 else 0.0)


def split_offset(sp: ServicePolicy) -> float:
    """The A/A split in time: the longest span any of the service's queries reads, so the
    canary side's samples all come before the control side's."""
    spans = [sp.window]
    for m in sp.metrics:
        spans.append(m.window or sp.window)
        if m.uses_statistics:
            spans.append(m.lookback)
    return max(spans)


def warmup(sp: ServicePolicy) -> float:
    """History a round needs behind it: the longest lookback or window."""
    return split_offset(sp)


def window_starts(
    history: History,
    *,
    offset: float,
    lead: float,
    ladder: float,
    count: int,
    data_from: float | None = None,
) -> list[float]:
    """``count`` release starts spread evenly over the history, each with room for the whole
    ladder after it and for the shifted canary side (``offset + lead``) before it, from when
    the data begins (``data_from``, default the history's start)."""
    earliest = max(history.start, data_from or history.start) + offset + lead
    latest = history.end - ladder
    if count <= 0 or latest < earliest:
        return []
    if count == 1:
        return [latest]
    gap = (latest - earliest) / (count - 1)
    return [earliest + i * gap for i in range(count)]


def upper_bound(failures: int, trials: int, confidence: float = 0.95) -> float | None:
    """The one-sided upper confidence bound of a rate (Clopper-Pearson): with 0 of 20 the rate
    may still be up to 14%. None without trials."""
    if trials <= 0:
        return None
    if failures >= trials:
        return 1.0
    alpha = 1 - confidence

    def cdf(p: float) -> float:  # P(X <= failures) for X ~ Binomial(trials, p)
        return sum(
            math.comb(trials, k) * p**k * (1 - p) ** (trials - k) for k in range(failures + 1)
        )

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if cdf(mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class AASummary:
    offset: float
    ladder: float
    runs: tuple[Run, ...]
    straddling: int = 0  # windows left out: the stable version changed during them

    @property
    def judged(self) -> list[Run]:
        return [r for r in self.runs if r.informative]

    @property
    def false_rollbacks(self) -> int:
        return sum(r.rolled_back for r in self.judged)

    @property
    def rate(self) -> float | None:
        judged = self.judged
        return self.false_rollbacks / len(judged) if judged else None

    @property
    def upper_95(self) -> float | None:
        return upper_bound(self.false_rollbacks, len(self.judged))

    @property
    def per_day(self) -> float | None:
        """False rollbacks per 24 h of canary time judged."""
        seconds = sum(r.seconds for r in self.judged)
        return self.false_rollbacks * DAY_S / seconds if seconds > 0 else None

    @property
    def failed_round_rate(self) -> float | None:
        rounds = [x for r in self.judged for x in r.rounds]
        return sum(bool(x.failing) for x in rounds) / len(rounds) if rounds else None

    @property
    def culprits(self) -> dict[str, int]:
        """What failed in the round that rolled back, per false rollback."""
        found: Counter[str] = Counter()
        for r in self.judged:
            last = r.ended_at
            if r.rolled_back and last is not None:
                found.update(last.failing)
        return dict(found.most_common())

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.runs)


@dataclass(frozen=True)
class FaultSummary:
    effect: Effect
    runs: tuple[Run, ...]

    @property
    def judged(self) -> list[Run]:
        return [r for r in self.runs if r.informative]

    @property
    def detected(self) -> list[Run]:
        return [r for r in self.judged if r.rolled_back]

    @property
    def rate(self) -> float | None:
        judged = self.judged
        return len(self.detected) / len(judged) if judged else None

    @property
    def rounds(self) -> list[int]:
        return [len(r.rounds) for r in self.detected]

    @property
    def seconds(self) -> list[float]:
        return [r.seconds for r in self.detected]

    @property
    def median_seconds(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


@dataclass(frozen=True)
class ServiceInputs:
    """Everything one service's backtest reads: the policy, the history, the stable versions
    over time, the recorded releases and the faults to inject."""

    service: str
    sp: ServicePolicy
    history: History
    stable: tuple[StableSpan, ...]
    releases: tuple[PastRelease, ...] = ()
    effects: tuple[Effect, ...] = ()
    aa_windows: int = 20
    offset: float | None = None  # None: split_offset(sp)

    @property
    def split(self) -> float:
        return self.offset if self.offset is not None else split_offset(self.sp)


@dataclass
class Caches:
    """Analyses shared between policy variants that differ only in failure limits."""

    by_lens: dict[str, AnalysisCache] = field(default_factory=dict)

    def get(self, name: str) -> AnalysisCache:
        return self.by_lens.setdefault(name, {})


def aa_and_faults(
    inputs: ServiceInputs, sp: ServicePolicy, caches: Caches | None = None
) -> tuple[AASummary, list[FaultSummary]]:
    """The A/A windows and the injected faults of one service under ``sp``."""
    caches = caches or Caches()
    offset = inputs.split
    ladder = ladder_seconds(sp)
    # Room behind the first window for the canary side's lookback; the whole history after
    # the last, plus rounds that held, so a window ends on its own decisions.
    versions = {span.version for span in inputs.stable}
    begun = inputs.history.data_from(
        q
        for version in versions
        for q in queries_of(plan(start_release(sp, inputs.service, version, version, 0.0), sp))
    )
    lead = warmup(sp)
    placed = window_starts(
        inputs.history,
        offset=offset,
        lead=lead,
        ladder=ladder,
        count=inputs.aa_windows,
        data_from=begun,
    )
    # A window during which the stable version changed is no A/A pair: its old version stops
    # serving mid-window (rounds without data), or its two sides are two versions.
    changes = [span.since for span in inputs.stable[1:]]
    starts = [t for t in placed if not any(t - offset - lead < c <= t + ladder for c in changes)]

    def runs(lens: Lens, cache: AnalysisCache) -> tuple[Run, ...]:
        judge = Judge(sp, lens, cache)
        out = []
        for start in starts:
            version = stable_at(inputs.stable, start)
            out.append(
                simulate(
                    judge,
                    service=inputs.service,
                    version=version,
                    stable=version,
                    start=start,
                    until=inputs.history.end,
                )
            )
        return tuple(out)

    aa = AASummary(
        offset,
        ladder,
        runs(Lens(inputs.history, offset), caches.get("aa")),
        straddling=len(placed) - len(starts),
    )
    faults = [
        FaultSummary(
            e,
            runs(Lens(inputs.history, offset, {e.metric: e}), caches.get(e.text)),
        )
        for e in inputs.effects
    ]
    return aa, faults


def replay_releases(inputs: ServiceInputs, sp: ServicePolicy) -> list[ReleaseReplay]:
    """Every recorded release of the service, replayed under ``sp`` on its recorded steps."""
    judge = Judge(sp, Lens(inputs.history))
    out = []
    for past in inputs.releases:
        run = replay(
            judge,
            service=inputs.service,
            version=past.version,
            stable=past.stable,
            weights=past.weights,
            start=past.start,
            moves=past.moves,
            until=min(past.left_canary_at, inputs.history.end),
        )
        out.append(ReleaseReplay(past, run))
    return out
