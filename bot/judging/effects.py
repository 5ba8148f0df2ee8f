"""Injected faults: an effect on one metric of the canary, written ``error_rate=+20%``,
``latency_p99=+300ms`` or ``latency_p99=x1.1``. Pure.

Three kinds: relative (``+20%``, ``-5%``: the value times 1.2 or 0.95), a factor (``x1.1``,
also ``*1.1``) and absolute (``+0.01`` in the metric's unit; ``+300ms`` / ``+0.3s`` for a
metric whose unit is ``s`` or ``ms``). A relative effect on a value of 0 is no effect: an
error ratio sitting at 0 needs an absolute one (``error_rate=+0.02``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from bot.errors import UserError
from bot.release.policy import Direction, Metric

EffectKind = Literal["relative", "factor", "absolute"]

_SYNTAX = re.compile(
    r"^\s*(?P<metric>[^=\s]+)\s*=\s*(?:"
    r"(?P<factor>[x*×])\s*(?P<f>\d+(?:\.\d+)?)"
    r"|(?P<sign>[+-])\s*(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>%|ms|s)?"
    r")\s*$"
)
_SECONDS = {"s": 1.0, "ms": 0.001}
EXAMPLES = "error_rate=+20%, latency_p99=+300ms, latency_p99=x1.1 or error_rate=+0.02"


@dataclass(frozen=True)
class Effect:
    metric: str
    kind: EffectKind
    amount: float  # relative: the fraction (0.2); factor: the factor; absolute: metric units
    text: str  # as the user wrote it, normalised (``error_rate=+20%``)

    def apply(self, value: float) -> float:
        if self.kind == "relative":
            return value * (1 + self.amount)
        if self.kind == "factor":
            return value * self.amount
        return value + self.amount

    @property
    def worsens_upwards(self) -> bool:
        """Whether the effect moves the metric up (else down)."""
        if self.kind == "factor":
            return self.amount > 1
        return self.amount > 0


def parse_effect(text: str, metrics: Sequence[Metric]) -> Effect:
    """One ``--inject`` value, checked against the policy's metrics; UserError saying how to
    write it otherwise."""
    match = _SYNTAX.match(text)
    if match is None:
        raise UserError(
            f"cannot read the effect `{text}`",
            hint=f"write METRIC=EFFECT, e.g. {EXAMPLES}",
        )
    name = match.group("metric")
    by_name = {m.name: m for m in metrics}
    metric = by_name.get(name)
    if metric is None:
        known = ", ".join(sorted(by_name)) or "none"
        raise UserError(
            f"`{name}` in `{text}` is not a metric of the policy",
            hint=f"inject into one of its metrics: {known}",
        )
    if match.group("factor"):
        factor = float(match.group("f"))
        if factor <= 0:
            raise UserError(f"the factor in `{text}` must be above 0", hint=f"e.g. {EXAMPLES}")
        effect = Effect(name, "factor", factor, f"{name}=x{factor:g}")
    else:
        effect = _signed(text, name, metric, match)
    _check_direction(effect, metric)
    return effect


def _signed(text: str, name: str, metric: Metric, match: re.Match[str]) -> Effect:
    sign = -1.0 if match.group("sign") == "-" else 1.0
    amount = float(match.group("amount"))
    unit = match.group("unit") or ""
    shown = f"{name}={match.group('sign')}{amount:g}{unit}"
    if unit == "%":
        if sign < 0 and amount >= 100:
            raise UserError(
                f"`{text}` would take the metric to 0 or below", hint="use -99% at most"
            )
        return Effect(name, "relative", sign * amount / 100, shown)
    if unit in _SECONDS:
        metric_unit = metric.unit.strip().lower()
        if metric_unit not in _SECONDS:
            raise UserError(
                f"`{text}` adds a duration, but `{name}` is measured in {metric.unit or 'no unit'}",
                hint=f"give its unit in the policy (unit: s), or a plain number: {name}=+0.3",
            )
        seconds = amount * _SECONDS[unit] / _SECONDS[metric_unit]
        return Effect(name, "absolute", sign * seconds, shown)
    return Effect(name, "absolute", sign * amount, shown)


def _check_direction(effect: Effect, metric: Metric) -> None:
    """An effect the metric does not count as worse would never be detected, and a 100%
    detection target could never be met: refuse it with the way round."""
    if effect.amount == (1.0 if effect.kind == "factor" else 0.0):
        raise UserError(f"`{effect.text}` changes nothing", hint=f"e.g. {EXAMPLES}")
    up = effect.worsens_upwards
    if up and metric.direction is Direction.DECREASE:
        raise UserError(
            f"`{effect.text}` raises `{metric.name}`, which the policy judges on decreases "
            "(higher is better)",
            hint=f"inject a decrease, e.g. {metric.name}=-5%",
        )
    if not up and metric.direction is Direction.INCREASE:
        raise UserError(
            f"`{effect.text}` lowers `{metric.name}`, which the policy judges on increases "
            "(lower is better)",
            hint=f"inject an increase, e.g. {metric.name}=+20%",
        )


def parse_effects(texts: Iterable[str], metrics: Sequence[Metric]) -> list[Effect]:
    effects = [parse_effect(t, metrics) for t in texts]
    for e in effects:
        if not math.isfinite(e.amount):
            raise UserError(f"`{e.text}` is not a finite effect", hint=f"e.g. {EXAMPLES}")
    return effects
