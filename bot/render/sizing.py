"""First-step sizing in words: the deploy reply, the thread, a refusal and check-config.

Every function returns plain text built from a ``Sizing``'s numbers; a surface that shows
mrkdwn escapes it (service and version names come from people and CI).
"""

from __future__ import annotations

import math

from bot.judging.sizing import Shortfall, Sizing, SizingOutcome, Unsized, counted
from bot.release.durations import format_duration
from bot.release.policy import FirstStep, NoDataPolicy, ServicePolicy, Strategy


def sizing_note(s: Sizing) -> str:
    """What the deploy reply and the thread add about the first step; "" when it gets enough."""
    if s.outcome is SizingOutcome.ENOUGH:
        return ""
    if s.outcome is SizingOutcome.UNSIZED:
        return (
            f"could not size the first step of {s.service}: {_why_unsized(s)}; it starts at "
            f"{s.first}% as planned (first_step: {s.mode.value})"
        )
    short = s.shortfall
    assert short is not None  # TOO_FEW and RAISED always carry one
    thin = _shortfall(s, s.planned[0], short)
    if s.outcome is SizingOutcome.RAISED:
        at = _count(s.expected_at(s.first))
        return (
            f"starts at {s.first}% instead of {s.planned[0]}% (first_step: auto): {thin}; at "
            f"{s.first}% it would see {at} per window"
        )
    kept = " (auto keeps the --steps given with the deploy)" if s.explicit else ""
    return f"⚠️ {thin}: {_consequence(s, short)}. {_remedy(s)}{kept}"


def with_sizing(text: str, sizing: Sizing | None) -> str:
    """A deploy's reply with what its sizing adds, on a line of its own."""
    note = sizing_note(sizing) if sizing is not None else ""
    return f"{text}\n{note}" if note else text


def sizing_refusal(s: Sizing) -> str:
    """Why ``first_step: require`` refused the deploy, and how to get it through."""
    head = f"cannot deploy {s.service} {s.version}"
    if s.outcome is SizingOutcome.UNSIZED:
        if s.unsized is Unsized.NO_STABLE:
            fix = f"Name the version running now: `/deploy {s.service} {s.version} --stable <v>`"
        else:
            fix = "Try again once the metrics source answers"
        return (
            f"{head}: could not size its first step: {_why_unsized(s)}. Nothing was changed: "
            f"the policy of {s.service} (first_step: require) refuses a first step it cannot "
            f"size. {fix}."
        )
    short = s.shortfall
    assert short is not None
    return (
        f"{head}: {_shortfall(s, s.planned[0], short)}: {_consequence(s, short)}. Nothing was "
        f"changed: the policy of {s.service} (first_step: require) wants a first step that "
        f"gets a verdict. {_remedy(s)}"
    )


def first_step_setting(sp: ServicePolicy, service: str) -> str:
    """What ``check-config`` says about a service's first_step setting."""
    mode = sp.first_step
    if mode is FirstStep.FIXED:
        return "first step: fixed (starts where the steps say, not sized to traffic)"
    if sp.strategy is not Strategy.CANARY:
        return f"first step: {mode.value}, not sized ({sp.strategy.value} starts at 0%)"
    needs = counted(sp.metrics)
    if not needs:
        return f"first step: {mode.value}, not sized (no metric sets min_requests)"
    top = max(needs, key=lambda m: m.min_requests)
    does = {
        FirstStep.WARN: "warns when",
        FirstStep.REQUIRE: "refuses the deploy when it cannot tell or when",
        FirstStep.AUTO: "starts higher (the smallest step that gives enough) when",
    }[mode]
    return (
        f"first step: {mode.value}: a deploy reads {_of(service)} requests in the last "
        f"{format_duration(sp.window)} (requests_query, stable version) and {does} "
        f"{sp.weights[0]}% of them would be fewer than {top.min_requests} ({top.name}'s "
        "min_requests)"
    )


def _shortfall(s: Sizing, weight: int, short: Shortfall) -> str:
    return (
        f"at {weight}% {_of(s.service)} {short.side.value} would see {_count(short.expected)} "
        f"requests in each {format_duration(s.window)} window, fewer than the {short.need} that "
        f"{short.metric}'s min_requests needs"
    )


def _consequence(s: Sizing, short: Shortfall) -> str:
    at = f"{s.planned[0]}%"
    if short.no_data is NoDataPolicy.FAIL:
        return f"{short.metric} would count each round as a failed check and roll back at {at}"
    if short.no_data is NoDataPolicy.PAUSE:
        return f"the release would pause at {at} without a verdict"
    return f"the release would hold at {at} without a verdict"


def _remedy(s: Sizing) -> str:
    if s.suggestion is not None:
        steps = ",".join(str(w) for w in s.suggestion)
        at = _count(s.expected_at(s.suggestion[0]))
        return (
            f"Consider starting at {s.suggestion[0]}% ({at} requests per window there): "
            f"`/deploy {s.service} {s.version} --steps {steps}`"
        )
    if not s.total:
        return (
            f"{s.service} served no requests in the last {format_duration(s.window)}: no step "
            "can be judged until it does"
        )
    rate = _rate(s.rate or 0.0)
    needed = s.window_needed()
    longer = (
        f", or lengthen `window` (at least {format_duration(math.ceil(needed))} gives enough at "
        f"{s.planned[0]}%)"
        if needed is not None
        else ""
    )
    return f"No step below 100% gives enough at {rate} requests/s: lower min_requests{longer}"


def _why_unsized(s: Sizing) -> str:
    if s.unsized is Unsized.NO_STABLE:
        return "no stable version is known whose traffic could be read"
    what = (
        "the request count returned no data"
        if s.unsized is Unsized.NO_DATA
        else ("reading the request count failed")
    )
    detail = f" ({s.error})" if s.error else ""
    return f"{what}{detail}; query: `{s.query}`"


def _of(name: str) -> str:
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def _count(value: float | None) -> str:
    if value is None:
        return "unknown"
    if value == 0:
        return "0"
    if value < 1:
        return "<1"
    return f"~{value:,.0f}"


def _rate(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.1f}".removesuffix(".0")
    return f"{value:.2g}"
