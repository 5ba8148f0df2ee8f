"""`shipwatch backtest`, the pure parts: history read back, effects, the replayed judgement,
A/A windows, injected faults, the calibration grid, the audit turned into releases, and the
text's escaping. Hand-built series, so every number is known in advance.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.cli import main
from bot.errors import UserError
from bot.judging.backtest import (
    PastRelease,
    ServiceInputs,
    StableSpan,
    aa_and_faults,
    ladder_seconds,
    replay_releases,
    split_offset,
    stable_at,
    upper_bound,
    window_starts,
)
from bot.judging.backtest_report import BacktestReport, backtest_service, to_dict
from bot.judging.calibrate import search, variant
from bot.judging.effects import parse_effect, parse_effects
from bot.judging.history import History, Samples
from bot.judging.replay import StepMove
from bot.observe.backtest import past_releases, queries_for, resolution
from bot.release.policy import ServicePolicy, parse_policy
from bot.render.backtest import render_report
from bot.store.audit import AuditEntry
from tests.support.procs import free_port

SERVICE = "shop"
ERRORS = 'errors{service="{service}",version="{version}"}'
LATENCY = 'latency{service="{service}",version="{version}"}'
T0 = 10_000.0


def service_policy(**overrides: Any) -> ServicePolicy:
    error_rate: dict[str, Any] = {
        "name": "error_rate",
        "query": ERRORS,
        "unit": "ratio",
        "max_diff": 0.01,
        "failure_limit": 3,
    }
    error_rate.update(overrides.pop("error_rate", {}))
    defaults: dict[str, Any] = {
        "steps": [10, 50, 100],
        "hold": "4s",
        "interval": "2s",
        "window": "5s",
        "bake": "4s",
        "metrics": [error_rate, *overrides.pop("metrics", [])],
        **overrides,
    }
    policy = parse_policy(yaml.safe_dump({"defaults": defaults, "services": {SERVICE: {}}}), "t")
    return policy.services[SERVICE]


def promql(template: str, version: str) -> str:
    return template.replace("{service}", SERVICE).replace("{version}", version)


def history(
    values: dict[str, Callable[[float], float]], seconds: int = 300, start: float = T0
) -> History:
    """One sample a second of each query, its value a function of the time since ``start``."""
    series = {
        q: Samples.of([(start + i, f(float(i))) for i in range(seconds + 1)])
        for q, f in values.items()
    }
    return History(start, start + seconds, 1.0, series)


def inputs(sp: ServicePolicy, h: History, **kw: Any) -> ServiceInputs:
    return ServiceInputs(SERVICE, sp, h, (StableSpan(0.0, "v1"),), **kw)


# --- history --------------------------------------------------------------------------------


def test_history_reads_the_latest_point_and_no_data_past_a_gap() -> None:
    h = History(0, 10, 1.0, {"q": Samples.of([(0, 1.0), (1, 2.0), (2, 3.0), (6, 7.0)])})
    assert h.at("q", 1.0) == 2.0
    assert h.at("q", 1.9) == 2.0  # a round between grid points reads the one before it
    assert h.at("q", 4.0) is None  # no point at 3 or 4: the query had no answer then
    assert h.at("q", -1.0) is None
    assert h.at("missing", 1.0) is None


def test_history_series_is_the_lookback_thinned_to_the_step_from_the_newest() -> None:
    h = History(0, 20, 1.0, {"q": Samples.of([(float(i), float(i)) for i in range(21)])})
    assert h.between("q", 10.0, 4.0, 1.0) == [6.0, 7.0, 8.0, 9.0, 10.0]
    assert h.between("q", 10.0, 6.0, 2.0) == [4.0, 6.0, 8.0, 10.0]


# --- effects --------------------------------------------------------------------------------


def test_effects_in_each_form() -> None:
    sp = service_policy(metrics=[{"name": "p99", "query": LATENCY, "unit": "s", "max": 1.0}])
    relative = parse_effect("error_rate=+20%", sp.metrics)
    assert (relative.kind, relative.amount, relative.apply(0.05)) == ("relative", 0.2, 0.06)
    assert parse_effect("p99=+300ms", sp.metrics).apply(0.1) == pytest.approx(0.4)
    assert parse_effect("p99=+0.3s", sp.metrics).apply(0.1) == pytest.approx(0.4)
    assert parse_effect("p99=x1.1", sp.metrics).apply(2.0) == pytest.approx(2.2)
    assert parse_effect("error_rate = +0.02", sp.metrics).text == "error_rate=+0.02"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("nope=+20%", "not a metric of the policy"),
        ("error_rate+20%", "cannot read the effect"),
        ("error_rate=20", "cannot read the effect"),
        ("error_rate=+300ms", "measured in ratio"),
        ("error_rate=-20%", "judges on increases"),
        ("error_rate=x1", "changes nothing"),
    ],
)
def test_bad_effects_say_how_to_write_them(text: str, says: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_effects([text], service_policy().metrics)
    assert says in str(caught.value)
    assert caught.value.hint


# --- the replayed judgement -----------------------------------------------------------------


def test_a_known_shift_is_rolled_back_at_the_round_the_failure_limit_says() -> None:
    # error_rate: max_diff 0.01, three consecutive failures roll back, a round at the start and
    # every 2 s. The canary is 0.02 above the control from the start: rounds 1, 2 and 3 (at 0,
    # 2 and 4 s) fail, the third rolls back.
    sp = service_policy()
    h = history({promql(ERRORS, "v1"): lambda t: 0.01})
    aa, faults = aa_and_faults(
        inputs(sp, h, effects=tuple(parse_effects(["error_rate=+0.02"], sp.metrics)), aa_windows=5),
        sp,
    )
    assert aa.false_rollbacks == 0 and len(aa.judged) == 5
    assert all(r.outcome == "succeeded" for r in aa.runs)
    (fault,) = faults
    assert fault.rate == 1.0
    assert fault.rounds == [3] * 5
    assert fault.seconds == [4.0] * 5
    assert "3 consecutive failed check(s) (limit 3)" in fault.runs[0].reason


def test_a_critical_metric_rolls_back_at_the_first_failed_round() -> None:
    sp = service_policy(error_rate={"critical": True})
    h = history({promql(ERRORS, "v1"): lambda t: 0.01})
    _, (fault,) = aa_and_faults(
        inputs(sp, h, effects=(parse_effect("error_rate=+0.05", sp.metrics),), aa_windows=3), sp
    )
    assert fault.rounds == [1, 1, 1] and fault.seconds == [0.0, 0.0, 0.0]


def test_a_too_small_effect_is_not_detected() -> None:
    sp = service_policy()
    h = history({promql(ERRORS, "v1"): lambda t: 0.01})
    _, (fault,) = aa_and_faults(
        inputs(sp, h, effects=(parse_effect("error_rate=+20%", sp.metrics),), aa_windows=4), sp
    )
    assert fault.rate == 0.0 and fault.rounds == []


def test_aa_counts_a_false_rollback_when_stable_itself_moves() -> None:
    # The stable error ratio steps up by 0.05 at t = 150 s and stays there. An A/A window whose
    # canary side (5 s earlier) and control side straddle the step sees a difference: the
    # *control* is the higher one, so an increase-is-bad metric never fails. Flip it: the ratio
    # drops at 150 s, the canary side (earlier) is higher, and the window that straddles it
    # fails for as long as the sides differ (5 s = 2 rounds, under the limit of 3).
    sp = service_policy()
    h = history({promql(ERRORS, "v1"): lambda t: 0.08 if t < 150 else 0.01})
    aa, _ = aa_and_faults(inputs(sp, h, aa_windows=40), sp)
    assert aa.false_rollbacks == 0
    assert aa.failed_round_rate is not None and aa.failed_round_rate > 0
    # With a failure limit of 2 the same history rolls back the straddling windows.
    strict = variant(sp, 2, 1.0)
    aa2, _ = aa_and_faults(inputs(sp, h, aa_windows=40), strict)
    assert aa2.false_rollbacks >= 1
    assert aa2.culprits == {"error_rate": aa2.false_rollbacks}
    assert aa2.rate == aa2.false_rollbacks / len(aa2.judged)


def test_windows_without_any_data_are_left_out_of_the_rates() -> None:
    sp = service_policy()
    aa, _ = aa_and_faults(inputs(sp, history({"other": lambda t: 1.0}), aa_windows=3), sp)
    assert len(aa.runs) == 3 and aa.judged == [] and aa.rate is None


def test_the_ladder_split_and_windows() -> None:
    sp = service_policy(
        metrics=[
            {
                "name": "lat",
                "query": LATENCY,
                "judge": "mann_whitney",
                "lookback": "30s",
                "step": "2s",
            }
        ]
    )
    assert ladder_seconds(sp) == 4 + 4 + 4  # two holds and the bake, whole rounds of 2 s
    assert split_offset(sp) == 30.0  # the longest lookback
    h = History(0.0, 100.0, 1.0, {})
    starts = window_starts(h, offset=30.0, lead=30.0, ladder=12.0, count=3)
    assert starts == [60.0, 74.0, 88.0]
    assert window_starts(h, offset=50.0, lead=50.0, ladder=12.0, count=3) == []


def test_upper_bound_of_a_rate() -> None:
    assert upper_bound(0, 20) == pytest.approx(1 - 0.05 ** (1 / 20), abs=1e-6)
    assert upper_bound(20, 20) == 1.0
    assert upper_bound(0, 0) is None


# --- past releases --------------------------------------------------------------------------


def past(outcome: str = "rolled_back", left: float = T0 + 40) -> PastRelease:
    return PastRelease(
        release_id="r1",
        number=1,
        version="v2",
        stable="v1",
        weights=(10, 50, 100),
        start=T0 + 10,
        moves=(StepMove(T0 + 16, 1),),
        left_canary_at=left,
        outcome=outcome,  # type: ignore[arg-type]
    )


def test_a_past_release_is_replayed_on_its_recorded_steps() -> None:
    # v2 is fine until T0 + 20, then 0.03 above v1: rounds every 2 s from T0 + 10; the rounds
    # at T0 + 20, 22 and 24 fail (a round reads the value at its time), so it rolls back at
    # T0 + 24, round 8, at 50% (the recorded move to step 2 came at T0 + 16).
    sp = service_policy()
    h = history(
        {
            promql(ERRORS, "v1"): lambda t: 0.01,
            promql(ERRORS, "v2"): lambda t: 0.01 if t < 20 else 0.04,
        }
    )
    (item,) = replay_releases(inputs(sp, h, releases=(past(),)), sp)
    assert item.run.outcome == "rolled_back"
    assert item.run.end == T0 + 24 and len(item.run.rounds) == 8
    assert item.run.rounds[-1].weight == 50
    assert item.agreement == "both_rolled_back"
    # The same history for a release that shipped: this policy would have rolled it back.
    (shipped,) = replay_releases(inputs(sp, h, releases=(past("succeeded"),)), sp)
    assert shipped.agreement == "would_roll_back"
    # A looser policy lets the rolled-back one through.
    loose = service_policy(error_rate={"max_diff": 0.05})
    (through,) = replay_releases(inputs(loose, h, releases=(past(),)), loose)
    assert through.agreement == "would_let_through"
    assert through.run.outcome == "unfinished" and len(through.run.rounds) == 16


def test_the_audit_becomes_releases_with_their_steps_and_end() -> None:
    def entry(action: str, at: float, **kw: Any) -> AuditEntry:
        return AuditEntry(
            action=action,
            actor="alice",
            surface="console",
            service=SERVICE,
            release_id="r1",
            at=at,
            **kw,
        )

    entries = [
        entry(
            "deploy",
            T0,
            to_state="progressing",
            detail={"version": "v2", "stable": "v1", "steps": [10, 50, 100]},
        ),
        entry("traffic", T0 + 1, detail={"weight": 10}),
        entry("decision:advance", T0 + 5, from_state="progressing", to_state="progressing"),
        entry("traffic", T0 + 6, detail={"weight": 50}),
        entry(
            "decision:rollback",
            T0 + 9,
            from_state="progressing",
            to_state="rolling_back",
            reason="error_rate: 0.04 is 0.03 above control",
        ),
        entry("rolled_back", T0 + 10, to_state="rolled_back"),
        # A deploy whose version could be PromQL: never queried.
        AuditEntry(
            action="deploy",
            actor="x",
            surface="api",
            service=SERVICE,
            release_id="r2",
            at=T0 + 20,
            detail={"version": 'v3"} or vector(1) #', "stable": "v1", "steps": [100]},
        ),
    ]
    found = past_releases(entries, T0 + 100)
    (release,) = found[SERVICE]
    assert release.version == "v2" and release.stable == "v1"
    assert release.moves == (StepMove(T0 + 6, 1),)
    assert (release.outcome, release.left_canary_at) == ("rolled_back", T0 + 9)
    assert release.reason.startswith("error_rate")


def test_stable_version_over_time() -> None:
    spans = (StableSpan(100.0, "v1"), StableSpan(200.0, "v2"))
    assert [stable_at(spans, t) for t in (50.0, 150.0, 250.0)] == ["v1", "v1", "v2"]


# --- the grid -------------------------------------------------------------------------------


def test_the_suggestion_is_the_most_sensitive_setting_that_stays_quiet_and_catches_all() -> None:
    # A stable ratio with a blip: every 30 s it reads 0.012 higher for 4 s. A/A windows whose
    # canary side holds a blip fail two rounds in a row, never three (rounds every 2 s).
    sp = service_policy()
    h = history({promql(ERRORS, "v1"): lambda t: 0.022 if int(t) % 30 < 4 else 0.01}, 600)
    ins = inputs(sp, h, effects=(parse_effect("error_rate=+0.02", sp.metrics),), aa_windows=30)
    suggestion = search(ins, target=0.0)
    by_key = {(c.failure_limit, c.scale): c for c in suggestion.candidates}
    # One failure rolls back: a margin under the blip (0.005 to 0.01) rolls back the windows
    # that read one (15 of 30); 0.015 does not and still sees the fault, 0.02 misses it (a
    # 0.02 shift is not above a 0.02 margin) except where a blip adds to it.
    rollbacks = [by_key[(1, s)].aa.false_rollbacks for s in (0.5, 0.75, 1.0, 1.5, 2.0)]
    assert rollbacks == [15, 15, 15, 0, 0]
    assert by_key[(1, 1.5)].meets and not by_key[(1, 2.0)].detects_all
    # Three in a row: a blip (two rounds) never rolls back, whatever the margin.
    assert all(by_key[(3, s)].aa.false_rollbacks == 0 for s in (0.5, 0.75, 1.0))
    chosen = suggestion.chosen
    assert chosen is not None and (chosen.failure_limit, chosen.scale) == (1, 1.5)
    assert suggestion.settings["error_rate"] == {"failure_limit": 1.0, "max_diff": 0.015}
    assert suggestion.current["error_rate"] == {"failure_limit": 3.0, "max_diff": 0.01}


# --- the report -----------------------------------------------------------------------------


def test_text_and_json_never_carry_terminal_escapes_from_outside() -> None:
    sp = service_policy()
    h = history({promql(ERRORS, "v1"): lambda t: 0.01, promql(ERRORS, "v2"): lambda t: 0.05})
    evil = PastRelease(
        release_id="r\x1b[2J1",
        number=1,
        version="v2",
        stable="v1",
        weights=(10, 50, 100),
        start=T0 + 10,
        moves=(),
        left_canary_at=T0 + 40,
        outcome="rolled_back",
        decided_by="mallory\x1b]0;pwned\x07\nfake row",
        reason="\x1b[31mred\x1b[0m",
    )
    rep = backtest_service(inputs(sp, h, releases=(evil,), aa_windows=2), 0.01, suggest=False)
    report = BacktestReport("p", "http://x\x1b[1m", T0, T0 + 300, 1.0, 0.01, (rep,), "read")
    text = render_report(report)
    assert "\x1b" not in text and "\x07" not in text
    assert "mallory]0;pwned fake row" in text  # the text stays, its controls go
    assert "\nfake row" not in text
    data = to_dict(report)
    assert json.loads(json.dumps(data))["services"][SERVICE]["releases"][0]["agreement"] == (
        "both_rolled_back"
    )


def test_queries_and_resolution() -> None:
    sp = service_policy(
        metrics=[
            {
                "name": "lat",
                "query": LATENCY,
                "judge": "mann_whitney",
                "lookback": "30s",
                "step": "5s",
            }
        ]
    )
    assert queries_for(sp, SERVICE, ["v1"]) == {promql(ERRORS, "v1"), promql(LATENCY, "v1")}
    assert resolution([sp], 3600.0) == 2.0  # the round interval is the finest
    assert resolution([sp], 7 * 86400.0) == 7.0  # a week at 2 s would be 300,000 points


# --- the command's refusals (no services needed) ----------------------------------------------


def write_policy(tmp_path: Path) -> Path:
    path = tmp_path / "shipwatch.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "defaults": {
                    "metrics": [{"name": "error_rate", "query": ERRORS, "max_diff": 0.01}]
                },
                "services": {SERVICE: {}},
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--inject", "latency=+20%"], "not a metric of the policy"),
        (["--inject", "error_rate=20"], "cannot read the effect"),
        (["--since", "soon"], "not a duration"),
        (["--service", "shoes"], "unknown service"),
        (["--target-false-rate", "2"], "not a rate"),
        (["--stable", 'v1"}'], "not a version"),
    ],
)
def test_bad_input_is_one_message_exit_2_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], says: str
) -> None:
    out = tmp_path / "out.json"
    args = ["backtest", "--policy", str(write_policy(tmp_path)), "--no-audit"]
    args += ["--prometheus-url", "http://127.0.0.1:9", "--json", str(out), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not out.exists()


def test_an_unreachable_prometheus_is_exit_2_with_how_to_fix_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    url = f"http://127.0.0.1:{free_port()}"
    args = ["backtest", "--policy", str(write_policy(tmp_path)), "--no-audit", "--stable", "v1"]
    assert main([*args, "--prometheus-url", url, "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "connection refused" in err and "--prometheus-url" in err
    assert not out.exists()


def test_a_policy_error_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  hold: soon\nservices:\n  shop: {}\n")
    assert main(["backtest", "--policy", str(bad), "--prometheus-url", "http://x"]) == 2
    assert "hold" in capsys.readouterr().err
