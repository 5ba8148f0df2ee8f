"""docker/waves.yaml, the seeds' four-wave rollout plan as a policy: it loads with the project's
loader, and check-config's words for it say each rule of the plan (one sentence per rule)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.release.policy import Strategy, load_policy, require_judged
from bot.render.policy_words import explain_service

pytestmark = pytest.mark.timeout(30)

WAVES = Path(__file__).resolve().parent.parent / "docker" / "waves.yaml"

# (the plan's rule, the sentence check-config says for it)
RULES = [
    # The waves: 10% → 25% → 50% → 100%, monitored every 15 / 10 / 5 / 1 minutes, each a
    # go/no-go decision.
    (
        "wave 1: 24 hours, every 15 min",
        "at 10%: holds 1d, judged every 15m, approval required before it starts",
    ),
    ("wave 2: 48 hours, every 10 min", "at 25%: holds 2d, judged every 10m, approval required"),
    ("wave 3: 48 hours, every 5 min", "at 50%: holds 2d, judged every 5m, approval required"),
    ("wave 4: every 1-5 min", "at 100%: judged every 1m, approval required"),
    # Rollback triggers.
    (
        "wave 1: error rate > 10% for > 5 min",
        "rolls back when error_rate > 10% for 5 minutes at every other step (and once it has "
        "failed 2 checks in a row or 5 in the release: both must hold)",
    ),
    (
        "any CRITICAL alert",
        "rolls back when critical_alerts > 0 at every step, at its first failing check (critical)",
    ),
    (
        "customer data corruption / data integrity issues",
        "rolls back when invariant_violations > 0 at every step, at its first failing check "
        "(critical)",
    ),
    (
        "memory leak detected",
        "at every step: memory_mb fails when it rises faster than 10 MB per hour over the step "
        "(95% confidence, judged from 8 rounds on)",
    ),
    (
        "unexpected resource usage spike",
        "rolls back when memory_mb is more than 2x the control's at every step, after 3 failing "
        "checks in a row or 5 in the release",
    ),
    (
        "wave 2: performance degradation > 50%",
        "at 25%: rolls back when latency_p99 is more than 1.5x the control's at 25%, after 3 "
        "failing checks in a row or 5 in the release",
    ),
    (
        "wave 3: error rate > 10% (no duration)",
        "at 50%: rolls back when error_rate > 10% at 50%, after 2 failing checks in a row or 5 "
        "in the release",
    ),
    # Go/no-go criteria, stricter wave by wave.
    (
        "wave 1: error rate < 5%",
        "warns when error_rate > 5% at every other step (shown, never acted on)",
    ),
    (
        "wave 1: P95 latency < 500ms",
        "rolls back when latency_p95 > 0.5 s at every step, after 3 failing checks in a row or 5 "
        "in the release",
    ),
    (
        "wave 2: P99 latency acceptable",
        "at 25%: rolls back when latency_p99 > 0.8 s at 25%, after 3 failing checks in a row or "
        "5 in the release",
    ),
    (
        "wave 4: system performance below SLO (error rate < 2%)",
        "at 100%: rolls back when error_rate > 2% for 5 minutes at 100% (and once it has failed 2 "
        "checks in a row or 5 in the release: both must hold)",
    ),
    (
        "wave 4: system performance below SLO (P99 < 500ms)",
        "at 100%: rolls back when latency_p99 > 0.5 s at 100%, after 3 failing checks in a row or "
        "5 in the release",
    ),
    (
        "wave 4: performance vs baseline (at 100% no user is left on the stable version)",
        "at 100%: rolls back when latency_p99 is more than 1.5x the pre-release baseline's at "
        "100%, after 3 failing checks in a row or 5 in the release",
    ),
    # Against the previous wave, and the trend.
    (
        "wave 2: error rate increases > 5% from wave 1",
        "at 25%: error_rate must not rise more than 5% over its value at the end of 10%",
    ),
    (
        "wave 2: error rate trending down",
        "at 25%: error_rate fails when it rises faster than 0.5% per hour over the step (95% "
        "confidence, judged from 5 rounds on)",
    ),
    (
        "wave 3: metrics stable or improving",
        "at 50%: latency_p99 must not rise more than 10% over its value at the end of 25%",
    ),
    # Synthetic tests and checks before a wave moves users.
    (
        "wave 1: run synthetic tests (load with known patches)",
        "before 25%: synthetic load on http://batch-patches-canary.internal/synthetic/{version}, "
        "20/s for 5 minutes (timeout 10 minutes; on failure: pause)",
    ),
    (
        "wave 1: all ALARM tests pass",
        "before 25%: CI job started by a POST to https://ci.internal/hooks/batch-patches/"
        "alarm-tests (signed with $CI_HOOK_SECRET); passes when the job calls back with `passed` "
        "(timeout 1 hour; on failure: pause)",
    ),
    (
        "wave 3: monitoring coverage verified",
        "before 50%: smoke test GET https://batch-patches-canary.internal/healthz?version="
        "{version} (2xx passes) (timeout 30 seconds; on failure: pause)",
    ),
    # Wave 4's 48 hours, the two weeks after, paging and the daily standup.
    (
        "wave 4: 48 hours at 100%",
        "at 100%: bakes for 48 hours against the pre-release baseline (still judged: it can roll "
        "back) before the release succeeds",
    ),
    (
        "continuous monitoring 24/7 for 2 weeks; 14 days stable",
        "after 100%: watched for 14 days against the pre-release baseline, judged every 5 minutes",
    ),
    (
        "PagerDuty integration active",
        "an automatic rollback pages PagerDuty (routing key from $PAGERDUTY_ROUTING_KEY, severity "
        "critical); resolved when the release ends",
    ),
    (
        "daily standup 9:00 AM PT",
        "daily digest in #batch-patches-releases at 09:00 America/Los_Angeles, listing releases "
        "on steps that hold 1 day or more",
    ),
]


def test_the_plan_loads_as_one_judged_canary_service() -> None:
    policy = load_policy(WAVES)
    require_judged(policy)  # what check-config and serve refuse otherwise
    sp = policy.service("batch-patches")
    assert (sp.strategy, sp.weights) == (Strategy.CANARY, [10, 25, 50, 100])
    assert [sp.interval_at(w) for w in sp.weights] == [900.0, 600.0, 300.0, 60.0]
    assert (sp.bake, sp.watch.window) == (48 * 3600.0, 14 * 86400.0)
    # Only the variables' names are in the file; their values are read when they are used.
    assert policy.secret_envs() == {"PAGERDUTY_ROUTING_KEY", "CI_HOOK_SECRET"}
    assert policy.has_webhook_hooks()


@pytest.mark.parametrize(("rule", "sentence"), RULES, ids=[rule for rule, _ in RULES])
def test_check_config_says_each_rule_of_the_plan(rule: str, sentence: str) -> None:
    lines = explain_service(load_policy(WAVES).service("batch-patches"))
    assert sentence in lines, f"{rule}:\n" + "\n".join(lines)


def test_check_config_names_what_the_plan_needs_from_the_environment() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PAGERDUTY_ROUTING_KEY", "CI_HOOK_SECRET", "SHIPWATCH_PUBLIC_URL")
    }
    result = subprocess.run(
        [sys.executable, "-m", "bot", "check-config", str(WAVES)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: $CI_HOOK_SECRET is not set here; `serve` needs it (the policy names it)",
        "note: $PAGERDUTY_ROUTING_KEY is not set here; `serve` needs it (the policy names it)",
        "note: $SHIPWATCH_PUBLIC_URL is not set here; the CI jobs of webhook hooks call back on "
        "it, so `serve` needs it or those hooks fail",
    ]
