"""The completion announcement says what the record says of the metrics, never a stock line."""

from __future__ import annotations

from bot.judging.summary import summarize
from bot.release.checks import CheckResult, Outcome
from bot.release.policy import Metric, Risk, Strategy
from bot.release.rollout import Actor, MetricCounters, Release, new_release
from bot.release.summary import CompletionSummary
from bot.render.summary import summary_note
from bot.writing.narrator import WRITTEN_LIMIT, capped


def shipped(
    checks: list[CheckResult], counters: dict[str, MetricCounters] | None = None
) -> Release:
    release = new_release(
        release_id="r1",
        number=1,
        service="checkout",
        version="v2",
        stable_version="v1",
        weights=[100],
        holds=[60.0],
        interval=5.0,
        bake=60.0,
        strategy=Strategy.CANARY,
        risk=Risk.NORMAL,
        notes="",
        actor=Actor(user="alice"),
        now=0.0,
    )
    return release.model_copy(update={"last_checks": checks, "counters": counters or {}})


def check(metric: str, outcome: Outcome, **more: object) -> CheckResult:
    return CheckResult(metric=metric, outcome=outcome, canary=1.0, control=1.0, reason="", **more)  # type: ignore[arg-type]


def summary_of(release: Release, metrics: list[Metric]) -> CompletionSummary:
    return summarize(release, metrics, [], [])


def metric(name: str, **more: object) -> Metric:
    return Metric(name=name, query='q{v="{version}"}', max=2.0, **more)


def test_a_release_no_metric_judged_says_so() -> None:
    assert summary_note(summary_of(shipped([]), [])) == "no metrics were judged"
    dry = [check("latency", Outcome.FAIL, dry_run=True)]
    said = summary_note(summary_of(shipped(dry), [metric("latency", dry_run=True)]))
    assert said == "no metrics were judged"


def test_all_passing_is_nominal() -> None:
    checks = [check("errors", Outcome.PASS), check("latency", Outcome.PASS)]
    summary = summary_of(shipped(checks), [metric("errors"), metric("latency")])
    assert summary_note(summary) == "all metrics nominal"


def test_a_warning_at_the_last_check_is_named() -> None:
    checks = [
        check("errors", Outcome.PASS, warning="near its limit"),
        check("latency", Outcome.PASS),
    ]
    summary = summary_of(shipped(checks), [metric("errors"), metric("latency")])
    assert not summary.nominal
    assert summary_note(summary) == "1 warning at the last check"


def test_a_flood_from_the_model_is_cut_to_one_message_saying_so() -> None:
    flood = "word " * 20_000
    cut = capped(flood)
    assert len(cut) < WRITTEN_LIMIT + 120
    assert cut.endswith(
        "(cut: the model wrote more than one message holds; `/rollout status` has the record)"
    )
    assert capped("short answer") == "short answer"
