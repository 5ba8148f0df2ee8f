"""The canary against its control as text: the checks table, the failing metrics, the score
and the pre-release gates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.judging.thresholds import fmt
from bot.release.checks import CheckResult, Outcome
from bot.release.policy import Direction, Metric
from bot.release.rollout import GateRecord, Release, State
from bot.render.kit import MAX_TEXT, context_block, section_block
from bot.render.mrkdwn import esc, mention, text_units

_FLAGS = {"pass": "ok", "fail": "FAIL", "no_data": "n/a", "error": "ERR"}


def limit_text(metric: Metric) -> str:
    """The rules that judge a metric, in the words CheckResult.limit uses ("max 0.05")."""
    unit = metric.unit
    sign = {Direction.INCREASE: "+", Direction.DECREASE: "-", Direction.EITHER: "±"}[
        metric.direction
    ]
    parts = []
    if metric.max is not None:
        parts.append(f"max {fmt(metric.max, unit)}")
    if metric.min is not None:
        parts.append(f"min {fmt(metric.min, unit)}")
    if metric.max_ratio is not None:
        parts.append(f"ratio {metric.max_ratio:g}x")
    if metric.max_diff is not None:
        parts.append(f"diff {sign}{fmt(metric.max_diff, unit)}")
    if metric.uses_statistics:
        parts.append(f"mann-whitney {metric.confidence:.0%}")
    if metric.dry_run:
        parts.append("dry run")
    return ", ".join(parts)


def _number(value: Any, unit: str) -> str:
    return fmt(float(value), unit) if isinstance(value, int | float) else "n/a"


def checks_table(
    checks: Sequence[CheckResult],
    metrics: Sequence[Metric] = (),
    *,
    control_label: str = "control",
    budget: int = MAX_TEXT - 200,
) -> str:
    """A code block: one row per metric with the canary, the control and the limits.

    Rows that do not fit ``budget`` are counted in a last row instead of being cut mid-row.
    """
    by_name = {m.name: m for m in metrics}
    names = [c.metric for c in checks]
    width = min(max([len(n) for n in names] + [6]), 22)
    head = f"{'':<4} {'metric':<{width}} {'canary':>9} {control_label:>9}  limit"
    rows = []
    for check, name in zip(checks, names, strict=True):
        metric = by_name.get(name)
        unit = metric.unit if metric else ""
        flag = _FLAGS.get(check.outcome, "?")
        if check.outcome is Outcome.PASS and check.warning:
            flag = "warn"
        limit = limit_text(metric) if metric else check.limit
        if check.dry_run and "dry run" not in limit:
            limit = f"{limit}, dry run" if limit else "dry run"
        short = name if len(name) <= width else name[: width - 1] + "…"
        rows.append(
            f"{flag:<4} {short:<{width}} {_number(check.canary, unit):>9} "
            f"{_number(check.control, unit):>9}  {limit}"
        )
    lines = [esc(head)]
    used = text_units(head) + 8  # the fences
    for i, row in enumerate(rows):
        line = esc(row)
        left = len(rows) - i
        if used + text_units(line) + 1 > budget - 40 and left > 1:
            lines.append(f"… and {left} more metric(s)")
            break
        lines.append(line)
        used += text_units(line) + 1
    return "```\n" + "\n".join(lines) + "\n```"


def _problems(checks: Sequence[CheckResult]) -> list[str]:
    """One line per check that did not pass cleanly: its reason, or its warning."""
    out = []
    for check in checks:
        if check.outcome is not Outcome.PASS:
            mark = "🔴" if check.outcome is Outcome.FAIL else "⚪"
            dry = " (dry run, not acted on)" if check.dry_run else ""
            out.append(f"{mark} {esc(check.reason)}{dry}")
        elif check.warning:
            out.append(f"🟡 {esc(check.warning)}")
    return out


def failing_lines(
    checks: Sequence[CheckResult], metrics: Sequence[Metric], control_label: str
) -> list[str]:
    """'latency_p99: canary 1.9 s, limit ratio 2x, control 0.25 s' for each acted-on failure."""
    units = {m.name: m.unit for m in metrics}
    out = []
    for check in checks:
        if check.outcome is not Outcome.FAIL or check.dry_run:
            continue
        unit = units.get(check.metric, "")
        limit = check.limit or "see reason"
        out.append(
            f"• *{esc(check.metric)}*: canary *{_number(check.canary, unit)}*, "
            f"limit `{esc(limit)}`, {control_label} {_number(check.control, unit)}"
            f"{' (critical)' if check.critical else ''}\n"
            # No _italics_: metric names are full of underscores and would break them.
            f"   ↳ {esc(check.reason)}"
        )
    return out


def score_line(release: Release) -> str:
    score = release.last_score
    if score is None or not score.text:
        return ""
    mark = {"pass": "🟢", "marginal": "🟡", "fail": "🔴"}.get(score.verdict, "📊")
    return f"{mark} {esc(score.text)}"


def control_label_of(release: Release) -> str:
    return "baseline" if release.state is State.BAKING else "control"


def checks_blocks(
    release: Release,
    checks: Sequence[CheckResult],
    metrics: Sequence[Metric],
    title: str,
) -> list[dict[str, Any]]:
    if not checks:
        return []
    label = control_label_of(release)
    blocks = [section_block(f"{title}\n{checks_table(checks, metrics, control_label=label)}")]
    if problems := _problems(checks):
        blocks.append(section_block("\n".join(problems)))
    if score := score_line(release):
        blocks.append(context_block(score))
    return blocks


_GATE_MARK = {"passed": "✅", "failed": "❌", "pending": "⏳"}


def gates_text(gates: GateRecord) -> str:
    """'Gates: ✅ ci_build · ❌ security_scan' (names link to their CI runs when known)."""
    shown = []
    for name in gates.required:
        status = gates.results.get(name, "")
        mark = _GATE_MARK.get(status, "❔")
        link = gates.links.get(name)
        label = f"<{esc(link)}|{esc(name)}>" if link else esc(name)
        shown.append(f"{mark} {label}")
    return "🛡️ Gates: " + " · ".join(shown)


def forced_text(gates: GateRecord) -> str:
    """'⚠️ Forced by @alice past gates that had not passed: security_scan (failed)'."""
    past = ", ".join(f"{esc(g)} ({esc(why)})" for g, why in gates.overridden.items())
    text = f"⚠️ *Forced* by {mention(gates.forced_by)} past gates that had not passed: {past}"
    if gates.problem:
        text += f"\nThe gates could not be read: {esc(gates.problem)}"
    return text


def gate_blocks(release: Release) -> list[dict[str, Any]]:
    gates = release.gates
    if gates is None or not gates.required:
        return []
    blocks = [section_block(forced_text(gates))] if gates.forced else []
    return [*blocks, context_block(gates_text(gates))]
