"""The completion summary from hand-built records, rounds and moves (pure), and how it reads:
"all metrics nominal" only when it is, warnings, near misses, failed rounds that recovered,
pauses and approvals with their numbers formatted by code, untrusted text escaped."""

from __future__ import annotations

from typing import Any

import pytest

from bot.engine.events import EventKind, ReleaseEvent
from bot.judging.summary import Move, Round, rounds_from_points, summarize
from bot.judging.thresholds import fmt
from bot.release.checks import CheckResult, Outcome
from bot.release.policy import Metric, Risk, Strategy
from bot.release.rollout import CONTROLLER, Actor, Release, new_release, succeed
from bot.release.summary import CompletionSummary, MomentKind, Rule
from bot.render.status import status_message
from bot.render.summary import page_link, summary_blocks, summary_note
from bot.render.thread import event_message
from bot.writing.completion import summary_facts, without_numbers
from tests.test_blocks import all_text, assert_valid

pytestmark = pytest.mark.timeout(10)

ERRORS = Metric(
    name="error_rate",
    query='errors{version="{version}"}',
    max=0.05,
    max_diff=0.01,
    warn_max=0.02,
    failure_limit=3,
)
LATENCY = Metric(
    name="latency_p99", query='p99{version="{version}"}', unit="s", max_ratio=2.0, critical=True
)
METRICS = [ERRORS, LATENCY]

START = 1_000.0
# Steps 10% (entered at the start), 50% (at START+60) and 100% (at START+150), done at +240.
STEP_TIMES = {10: 60.0, 50: 90.0, 100: 90.0}


def healthy(weight: int, t: float, errors: float = 0.004, errors_control: float = 0.004) -> Round:
    return Round(
        t=t,
        weight=weight,
        values={
            "error_rate": (errors, errors_control, "pass"),
            "latency_p99": (0.25, 0.25, "pass"),
        },
    )


def rounds(*special: Round) -> list[Round]:
    """A round every 30 s over the three steps, with ``special`` rounds replacing their t."""
    plan = [
        (10, 30.0),
        (10, 59.0),
        (50, 60.0),
        (50, 90.0),
        (50, 120.0),
        (100, 150.0),
        (100, 180.0),
        (100, 210.0),
    ]
    by_t = {START + r.t: r for r in special}
    return [by_t.get(START + t, healthy(w, START + t)) for w, t in plan]


def finished(
    last: list[CheckResult] | None = None, *, evaluations: int = 9, notes: str = ""
) -> Release:
    release = new_release(
        release_id="r1",
        number=7,
        service="checkout",
        version="v2",
        stable_version="v1",
        weights=[10, 50, 100],
        holds=[60.0, 60.0, 60.0],
        interval=30.0,
        bake=90.0,
        strategy=Strategy.CANARY,
        risk=Risk.NORMAL,
        notes=notes,
        actor=Actor(user="U0ALICE"),
        now=START,
    )
    checks = last or [
        CheckResult("error_rate", Outcome.PASS, 0.0041, 0.0039, "ok"),
        CheckResult("latency_p99", Outcome.PASS, 0.251, 0.249, "ok"),
    ]
    baking = release.model_copy(
        update={
            "step": 2,
            "weight": 100,
            "state": "baking",
            "baseline": {"error_rate": 0.0039, "latency_p99": 0.249},
            "last_checks": checks,
            "last_eval_at": START + 240,
            "evaluations": evaluations,
        }
    )
    return succeed(baking, CONTROLLER, START + 240)


def shift(summary_rounds: list[Round]) -> list[Round]:
    # Rounds are written with START added; the specials above are given relative to it.
    return [Round(r.t if r.t > START else START + r.t, r.weight, r.values) for r in summary_rounds]


def build(*special: Round, moves: list[Move] | None = None, **kw: object) -> CompletionSummary:
    return summarize(finished(**kw), METRICS, shift(rounds(*special)), moves or [])  # type: ignore[arg-type]


def text_of(blocks: list[dict[str, object]]) -> str:
    return "\n".join(str(b["text"]["text"]) for b in blocks if "text" in b)  # type: ignore[index]


def test_a_healthy_release_is_nominal_with_its_steps_and_final_numbers() -> None:
    summary = build()

    assert summary.nominal
    assert summary.moments == []
    assert summary.duration == 240.0
    assert {s.weight: s.seconds for s in summary.steps} == STEP_TIMES
    assert summary.rounds == 9  # eight kept and the last one, from the record
    assert summary.compared_with == "baseline"
    errors, latency = summary.metrics
    assert (errors.canary, errors.control, errors.outcome) == (0.0041, 0.0039, "pass")
    assert [(lim.rule, lim.value) for lim in errors.limits] == [
        (Rule.MAX, 0.05),
        (Rule.MAX_DIFF, 0.01),
        (Rule.WARN_MAX, 0.02),
    ]
    assert latency.closest_rule is Rule.MAX_RATIO
    shown = text_of(summary_blocks(summary))
    assert "*All metrics nominal*" in shown
    assert "Time at each step: 10% 1m · 50% 1m30s · 100% 1m30s (bake); 9 rounds judged." in shown
    assert fmt(0.0041) in shown and fmt(0.251, "s") in shown
    assert "max 0.05, diff +0.01, warn max 0.02" in shown
    assert summary_note(summary) == "all metrics nominal"


def test_a_warning_on_the_way_is_told_and_not_nominal() -> None:
    summary = build(
        healthy(50, 90.0, errors=0.031, errors_control=0.028),
        healthy(50, 120.0, errors=0.026, errors_control=0.024),
    )

    assert not summary.nominal
    [warned] = summary.moments
    assert (warned.kind, warned.metric, warned.rule, warned.weight) == (
        MomentKind.WARNING,
        "error_rate",
        Rule.WARN_MAX,
        50,
    )
    assert (warned.rounds, warned.value, warned.limit) == (2, 0.031, 0.02)
    shown = text_of(summary_blocks(summary))
    assert "All metrics nominal" not in shown
    assert (
        "*error_rate* crossed its warning level in 2 rounds at 50%: worst 0.031 against "
        "warn max 0.02." in shown
    )
    assert summary_note(summary) == "2 warnings"


def test_a_near_miss_is_a_check_within_80_percent_of_a_limit() -> None:
    # 0.013 against a control of 0.004: +0.009, 90% of the +0.01 difference allowed.
    summary = build(healthy(10, 30.0, errors=0.013))

    [near] = summary.moments
    assert (near.kind, near.rule, near.weight) == (MomentKind.NEAR_MISS, Rule.MAX_DIFF, 10)
    assert near.share == pytest.approx(0.9)
    shown = text_of(summary_blocks(summary))
    assert (
        "*error_rate* came 90% of the way to its limit in 1 round at 10%: +0.009 against "
        "diff +0.01." in shown
    )
    assert not summary.nominal


def test_a_failed_round_that_recovered_names_the_limit_it_did_not_reach() -> None:
    failed = Round(
        t=59.0,
        weight=10,
        values={"error_rate": (0.07, 0.004, "fail"), "latency_p99": (0.25, 0.25, "pass")},
    )
    summary = build(failed)

    [moment] = summary.of_kind(MomentKind.FAILED)
    assert (moment.metric, moment.rule, moment.value, moment.failure_limit) == (
        "error_rate",
        Rule.MAX,
        0.07,
        3,
    )
    shown = text_of(summary_blocks(summary))
    assert (
        "*error_rate* failed 1 round at 10% (0.07 against max 0.05) and recovered; it rolls "
        "back after 3 in a row." in shown
    )
    assert summary_note(summary) == "1 failed check that recovered"
    assert not summary.nominal


def test_pauses_approvals_and_traffic_repairs_come_from_the_moves() -> None:
    moves = [
        Move("deploy", "pending_approval", 5_000.0, by="U0ALICE"),
        Move("approve", "progressing", 5_120.0, weight=10, by="U0CAROL"),
        Move("traffic", "progressing", 5_121.0, weight=10),
        Move("traffic", "progressing", 5_150.0, weight=10),  # the engine had lost it
        Move("pause", "paused", 5_200.0, weight=10, by="U0BOBBY1", reason="<!channel> look & see"),
        Move("resume", "progressing", 5_290.0, weight=10, by="U0BOBBY1"),
        Move("traffic", "progressing", 5_300.0, weight=50),
    ]
    summary = build(moves=moves)

    kinds = {m.kind: m for m in summary.moments}
    assert kinds[MomentKind.APPROVAL_WAIT].seconds == 120.0
    assert kinds[MomentKind.PAUSE].seconds == 90.0
    assert kinds[MomentKind.TRAFFIC_REPAIR].rounds == 1
    # Pauses and waits are told, but the metrics themselves were nominal.
    assert summary.nominal
    shown = text_of(summary_blocks(summary))
    assert "• Paused at 10% for 1m30s by <@U0BOBBY1>: &lt;!channel&gt; look &amp; see." in shown
    assert "<!channel>" not in shown
    assert "• Waited 2m for approval of 10%, approved by <@U0CAROL>." in shown
    assert "• The traffic engine lost 10% and was given it again (1 time)." in shown


def test_no_data_rounds_and_a_final_warning_are_not_nominal() -> None:
    blind = Round(t=30.0, weight=10, values={"error_rate": (None, None, "no_data")})
    last = [
        CheckResult("error_rate", Outcome.PASS, 0.03, 0.028, "ok", warning="warn_max"),
        CheckResult("latency_p99", Outcome.PASS, 0.25, 0.25, "ok"),
    ]
    summary = build(blind, last=last)

    assert [m.kind for m in summary.moments] == [MomentKind.NO_DATA, MomentKind.WARNING]
    assert summary.metrics[0].warning
    assert not summary.nominal


def test_rounds_no_longer_kept_make_it_partial_never_nominal() -> None:
    summary = build(evaluations=40)

    assert summary.partial and not summary.nominal
    assert "part of the record could not be read" in summary_note(summary)


def test_dry_run_metrics_are_shown_but_do_not_decide() -> None:
    shadow = Metric(name="shadow", query='s{v="{version}"}', max=1.0, dry_run=True)
    release = finished(
        last=[
            CheckResult("error_rate", Outcome.PASS, 0.004, 0.004, "ok"),
            CheckResult("latency_p99", Outcome.PASS, 0.25, 0.25, "ok"),
            CheckResult("shadow", Outcome.FAIL, 2.0, None, "over", dry_run=True),
        ]
    )
    summary = summarize(release, [*METRICS, shadow], shift(rounds()), [])

    assert summary.nominal
    assert "dry run" in text_of(summary_blocks(summary))


def test_the_summary_survives_the_record_round_trip() -> None:
    release = finished()
    summary = summarize(release, METRICS, shift(rounds()), [])
    kept = release.model_copy(update={"summary": summary})

    again = Release.model_validate_json(kept.model_dump_json())

    assert again.summary == summary
    assert again.summary is not None and again.summary.nominal


def test_points_as_the_store_keeps_them_become_rounds() -> None:
    points: list[dict[str, Any]] = [
        {"t": 2.0, "weight": 10, "m": {"error_rate": [0.01, 0.004, "pass"]}},
        {"t": 1.0, "weight": 10, "m": {"error_rate": [None, None, "no_data"]}},
        {"t": "bad"},
    ]
    got = rounds_from_points(points)

    assert [r.t for r in got] == [1.0, 2.0]
    assert got[1].values["error_rate"] == (0.01, 0.004, "pass")


def test_the_page_link_is_shown_only_for_a_web_address() -> None:
    blocks = summary_blocks(build(), page_url="https://ship.example/r/1?a=1&b=2")
    assert "<https://ship.example/r/1?a=1&amp;b=2|Release page>" in str(blocks[-1])
    assert "Release page" not in str(summary_blocks(build()))
    assert page_link("javascript:alert(1)") == ""
    assert page_link("https://x.example/a|<!channel>") == ""
    assert page_link(None) == ""


def test_the_model_is_told_words_and_its_numbers_are_dropped() -> None:
    summary = build(healthy(50, 90.0, errors=0.031, errors_control=0.03))
    facts = summary_facts(summary)
    assert "On the way, metric error_rate crossed its warning level." in facts
    told = " ".join(facts).replace("latency_p99", "")
    assert not any(c.isdigit() for c in told)

    said = without_numbers(
        "Checkout v2 is out. Errors peaked at 42% at 10%.\nLatency stayed calm! Took 3 hours.",
        ("checkout", "v2"),
    )
    assert said == "Checkout v2 is out. Latency stayed calm!"


def test_the_success_the_announcement_and_the_status_are_valid_block_kit() -> None:
    moves = [
        Move("pause", "paused", 5_200.0, weight=10, by="U0BOBBY1", reason="x" * 2500),
        Move("resume", "progressing", 5_290.0, weight=10, by="U0BOBBY1"),
    ]
    noisy = [healthy(10, 30.0, errors=0.013)] + [
        healthy(50, t, errors=0.031, errors_control=0.03) for t in (60.0, 90.0, 120.0)
    ]
    release = finished(notes="<!here> & *bold*")
    summary = summarize(release, METRICS, shift(rounds(*noisy)), moves)
    done = release.model_copy(update={"summary": summary})
    page = "https://ship.example/releases/checkout/r1?exp=1&v=ab"

    success = event_message(ReleaseEvent(EventKind.SUCCEEDED, done, ""), page_url=page)
    announced = event_message(
        ReleaseEvent(EventKind.NOTES_FINAL, done, "A paragraph.\n_(label)_"), page_url=page
    )
    status = status_message(done, page_url=page)

    for message in (success, announced, status):
        assert_valid(message)
        shown = all_text(message)
        assert "<!here>" not in shown
        assert "|Release page>" in shown
        assert "crossed its warning level" in shown and "came 90% of the way" in shown
    assert "is live for everyone. Took 4m." in all_text(success)
    assert "&lt;!here&gt; &amp; *bold*" in all_text(announced)
    assert announced.text == "checkout v2 shipped to 100% in 4m: 3 warnings, 1 near miss"
