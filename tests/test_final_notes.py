"""The completion announcement says what the record says of the metrics, never a stock line."""

from __future__ import annotations

from bot.release.checks import CheckResult, Outcome
from bot.release.policy import Risk, Strategy
from bot.release.rollout import Actor, MetricCounters, Release, new_release
from bot.writing.narrator import WRITTEN_LIMIT, capped, how_it_went


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


def test_a_release_no_metric_judged_says_so() -> None:
    assert how_it_went(shipped([])) == "No metrics were judged."
    dry = [check("latency", Outcome.FAIL, dry_run=True)]
    assert how_it_went(shipped(dry)) == "No metrics were judged."


def test_all_passing_says_how_many() -> None:
    said = how_it_went(shipped([check("errors", Outcome.PASS), check("latency", Outcome.PASS)]))
    assert said == "2 of 2 metric(s) passed at the last check."


def test_warnings_and_failures_on_the_way_are_named() -> None:
    checks = [
        check("errors", Outcome.PASS, warning="near its limit"),
        check("latency", Outcome.PASS),
    ]
    counters = {"latency": MetricCounters(total_failures=2), "errors": MetricCounters()}
    said = how_it_went(shipped(checks, counters))
    assert said == (
        "2 of 2 metric(s) passed at the last check. Warnings: errors. "
        "Failed checks on the way: latency."
    )


def test_a_flood_from_the_model_is_cut_to_one_message_saying_so() -> None:
    flood = "word " * 20_000
    cut = capped(flood)
    assert len(cut) < WRITTEN_LIMIT + 120
    assert cut.endswith(
        "(cut: the model wrote more than one message holds; `/rollout status` has the record)"
    )
    assert capped("short answer") == "short answer"
