"""What a deploy will do, settled before anything is written: the version checked, the control
version it is judged against, the risk, the strategy and the steps with their holds. Pure: a
bad request is refused here with how to fix it, and nothing has changed yet."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bot.errors import UserError
from bot.release.policy import Risk, ServicePolicy, Step, Strategy
from bot.release.request import DeployOptions
from bot.release.rollout import Release, State

# A version is a tag or a build id: letters, digits and . _ - + : / @ ~, starting with a letter
# or a digit, at most 128 characters. Nothing else, because it is written into PromQL label
# matchers and shown in chat, where a quote, a brace or an angle bracket would be code.
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:/@~-]{0,127}")
VERSION_HINT = (
    "give a tag like v2.4.1: letters, digits and . _ - + : / @ ~, starting with a letter or a "
    "digit, at most 128 characters"
)


@dataclass(frozen=True)
class Plan:
    version: str
    stable: str  # the control: the version running now ("" when none is known)
    risk: Risk
    strategy: Strategy
    weights: list[int]
    holds: list[float]


def plan_release(
    sp: ServicePolicy,
    service: str,
    version: str,
    opts: DeployOptions,
    previous: Sequence[Release],
) -> Plan:
    """The plan for ``version`` of ``service``; ``previous`` is its history, newest first."""
    version = checked_version(version)
    strategy = opts.strategy or sp.strategy
    steps = _steps(sp, strategy, opts)
    stable = checked_version(opts.stable) if opts.stable else ""
    stable = stable or next((r.version for r in previous if r.state is State.SUCCEEDED), "")
    if not stable and any(m.max_ratio or m.max_diff is not None for m in sp.metrics):
        # Without a control, the rules against the control could not judge anything; a
        # silent pass would let a slow canary through, so ask for the control version.
        raise UserError(
            f"no earlier release of `{service}` is known: nothing to compare the canary with",
            hint=f"name the version running now: /deploy {service} {version} --stable <v>",
        )
    if stable == version:
        raise UserError(
            f"`{service}` already runs {version}",
            hint="deploy a different version, or /rollout status to see it",
        )
    hold = sp.hold if opts.hold is None else opts.hold
    return Plan(
        version=version,
        stable=stable,
        risk=opts.risk or sp.risk,
        strategy=strategy,
        weights=[s.weight for s in steps],
        holds=[hold if s.hold is None else s.hold for s in steps],
    )


def step_settings(sp: ServicePolicy, weights: Sequence[int]) -> tuple[list[float], list[bool]]:
    """Each step's analysis interval and whether entering it waits for a person, found by
    weight in the policy's steps (the ladder may be --steps or sized to the traffic)."""
    return [sp.interval_at(w) for w in weights], [sp.approval_at(w) for w in weights]


def checked_version(version: str) -> str:
    """``version`` without surrounding blanks; UserError naming what a version may hold."""
    version = version.strip()
    if not VERSION.fullmatch(version):
        shown = version if len(version) <= 40 else version[:40] + "…"
        raise UserError(f"`{shown}` is not a version", hint=VERSION_HINT)
    return version


def _steps(sp: ServicePolicy, strategy: Strategy, opts: DeployOptions) -> list[Step]:
    if strategy is Strategy.BLUE_GREEN:
        # Pre-switch checks on the new version at 0%, then one switch to 100%.
        return [Step(weight=0), Step(weight=100)]
    if opts.steps is None:
        return list(sp.steps)
    weights = opts.steps
    if (
        not weights
        or any(not 0 < w <= 100 for w in weights)
        or weights[-1] != 100
        or any(b <= a for a, b in itertools.pairwise(weights))
    ):
        raise UserError(
            f"bad --steps {','.join(map(str, weights))}",
            hint="rising percentages ending at 100, e.g. --steps 1,10,25,50,100",
        )
    if hooked := sp.hooks_before(strategy, weights[0]):
        # A release enters its first step as it starts: checks meant to run before that step
        # would never run. Refused rather than skipped: someone wanted them.
        lower = ",".join(str(w) for w in [*(s.weight for s in sp.steps[:1]), *weights])
        raise UserError(
            f"--steps starts at {weights[0]}%, but the policy checks {len(hooked)} step "
            f"hook(s) before a release enters {weights[0]}%, which cannot run before a deploy",
            hint=f"start below it, e.g. --steps {lower}",
        )
    return [Step(weight=w) for w in weights]
