"""First-step sizing at deploy time: read the service's traffic through the metrics port, judge
the planned first step (``bot.judging.sizing``), and the refusals ``first_step: require`` makes.

Reading the traffic is a courtesy check on the way to a release, so it is bounded: a source
that fails or does not answer within ``SIZING_TIMEOUT`` is "could not size", which only
``require`` treats as a reason to refuse.
"""

from __future__ import annotations

import asyncio
import logging

from bot.errors import MetricsError, UserError
from bot.judging.sizing import Sizing, Unsized, size_first_step, total_query, wants_sizing
from bot.metrics.base import MetricSource, QueryResult
from bot.release.plan import Plan
from bot.release.policy import ServicePolicy

log = logging.getLogger(__name__)

SIZING_TIMEOUT = 5.0  # seconds a deploy waits for the traffic reading


class FirstStepTooThin(UserError):
    """``first_step: require`` and the first step would give the canary too few requests, or
    there is no stable version whose traffic could be read. ``sizing`` says by how much;
    ``bot.render.sizing`` says it in words. Nothing was changed."""

    def __init__(self, sizing: Sizing) -> None:
        super().__init__(
            f"first step of {sizing.service} {sizing.version} refused by first_step: require "
            f"({sizing.outcome.value})"
        )
        self.sizing = sizing


class FirstStepUnsized(MetricsError):
    """``first_step: require`` and the metrics source failed or returned nothing: refused, as
    the safe state, until the traffic can be read. Nothing was changed."""

    def __init__(self, sizing: Sizing) -> None:
        super().__init__(
            f"first step of {sizing.service} {sizing.version} could not be sized "
            f"({sizing.unsized.value if sizing.unsized else '?'}: {sizing.error})"
        )
        self.sizing = sizing


SizingRefusal = FirstStepTooThin | FirstStepUnsized


def refusal(sizing: Sizing) -> FirstStepTooThin | FirstStepUnsized:
    """The error a refused sizing raises: a metrics failure is a dependency's (try again);
    the rest is the request's, fixed by other steps or a stable version."""
    if sizing.unsized is not None and sizing.unsized is not Unsized.NO_STABLE:
        return FirstStepUnsized(sizing)
    return FirstStepTooThin(sizing)


async def size(
    source: MetricSource | None,
    sp: ServicePolicy,
    service: str,
    plan: Plan,
    *,
    explicit: bool,
    timeout: float = SIZING_TIMEOUT,
) -> Sizing | None:
    """The sizing of ``plan``'s first step, or None when nothing is sized (no metrics source,
    ``fixed``, no min_requests, blue-green, a 0% first step)."""
    if source is None or not wants_sizing(sp, plan.strategy, plan.weights):
        return None
    query = total_query(sp, service, plan.stable)
    reading: QueryResult | None = None
    if query is not None:
        try:
            [reading] = await asyncio.wait_for(source.query([query]), timeout)
        except TimeoutError:
            reading = QueryResult.failed(query, f"no answer within {timeout:g}s")
        except MetricsError as exc:  # the port reports failures as data; a source may not
            reading = QueryResult.failed(query, str(exc))
    sizing = size_first_step(
        service=service,
        version=plan.version,
        mode=sp.first_step,
        metrics=sp.metrics,
        window=sp.window,
        weights=plan.weights,
        holds=plan.holds,
        reading=reading,
        explicit=explicit,
        hooked=[w for w in plan.weights if sp.hooks_before(plan.strategy, w)],
    )
    log.info(
        "first step of %s %s: %s (%s), steps %s",
        service,
        plan.version,
        sizing.outcome.value,
        sizing.mode.value,
        list(sizing.weights),
    )
    return sizing


def audit_reason(sizing: Sizing) -> str:
    """The refusal's reason in the audit log: the numbers, tersely."""
    short = sizing.shortfall
    if short is not None:
        return (
            f"first_step require: {short.side.value} ~{short.expected:.0f} of "
            f"{short.need} requests per {sizing.window:g}s window at {sizing.planned[0]}%"
        )
    why = sizing.unsized.value if sizing.unsized else "unknown"
    return f"first_step require: could not size ({why})"
