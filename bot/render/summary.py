"""The completion summary in words: the headline ("all metrics nominal" only when it is), the
time at each step, every metric's final numbers against its limits, and what happened on the
way. The thread's success message, the status message's final state and the announcement show
the same blocks; every number here is formatted from the record, none comes from a model.
"""

from __future__ import annotations

from typing import Any

from bot.judging.thresholds import fmt
from bot.release.durations import format_duration
from bot.release.summary import CompletionSummary, MetricFinal, Moment, MomentKind, Rule
from bot.render.kit import MAX_TEXT, context_block, section_block
from bot.render.mrkdwn import clip, esc, mention, text_units

MAX_MOMENT_LINES = 12  # the rest are counted, not listed: the thread stays readable
PAGE_LABEL = "Release page"
REASON_CHARS = 300  # a pause's reason in full is in the thread; here it is one line

# Failures first: what came closest to a rollback leads.
MOMENT_ORDER = [
    MomentKind.FAILED,
    MomentKind.WARNING,
    MomentKind.NEAR_MISS,
    MomentKind.NO_DATA,
    MomentKind.PAUSE,
    MomentKind.APPROVAL_WAIT,
    MomentKind.TRAFFIC_REPAIR,
]

_FLAGS = {"pass": "ok", "fail": "FAIL", "no_data": "n/a", "error": "ERR"}

_RULE_WORDS = {
    Rule.MAX: "max",
    Rule.MIN: "min",
    Rule.MAX_RATIO: "ratio",
    Rule.MAX_DIFF: "diff",
    Rule.WARN_MAX: "warn max",
    Rule.WARN_MIN: "warn min",
    Rule.WARN_RATIO: "warn ratio",
    Rule.WARN_DIFF: "warn diff",
}


def _is_ratio(rule: Rule | None) -> bool:
    return rule in (Rule.MAX_RATIO, Rule.WARN_RATIO)


def _is_diff(rule: Rule | None) -> bool:
    return rule in (Rule.MAX_DIFF, Rule.WARN_DIFF)


def limit_words(rule: Rule, value: float, unit: str) -> str:
    """'max 0.05', 'ratio 2x', 'diff +0.01', 'warn max 0.8 s'."""
    if _is_ratio(rule):
        return f"{_RULE_WORDS[rule]} {value:g}x"
    sign = "+" if _is_diff(rule) else ""
    return f"{_RULE_WORDS[rule]} {sign}{fmt(value, unit)}"


def _measured(rule: Rule | None, value: float | None, unit: str) -> str:
    """What was compared with a limit: a value, a ratio to the other side, or a difference."""
    if value is None:
        return "n/a"
    if _is_ratio(rule):
        return f"{value:.2f}x"
    if _is_diff(rule):
        return f"{'+' if value >= 0 else ''}{fmt(value, unit)}"
    return fmt(value, unit)


def _plural(n: int, word: str, many: str = "") -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def summary_note(summary: CompletionSummary) -> str:
    """The headline in a few plain words, for notification text: 'all metrics nominal', or
    what kept it from being so."""
    if summary.nominal:
        return "all metrics nominal"
    if not summary.judged:
        return "no metrics were judged"
    parts = []
    failing_now = [m for m in summary.judged if m.outcome != "pass"]
    if failing_now:
        parts.append(f"{_plural(len(failing_now), 'metric')} not passing at the last check")
    for kind, word, many in (
        (MomentKind.FAILED, "failed check that recovered", "failed checks that recovered"),
        (MomentKind.WARNING, "warning", ""),
        (MomentKind.NEAR_MISS, "near miss", "near misses"),
        (MomentKind.NO_DATA, "round without a verdict", "rounds without a verdict"),
    ):
        if n := sum(m.rounds for m in summary.of_kind(kind)):
            parts.append(_plural(n, word, many))
    if warned_last := [m for m in summary.judged if m.warning and m.outcome == "pass"]:
        parts.append(f"{_plural(len(warned_last), 'warning')} at the last check")
    if summary.partial:
        parts.append("part of the record could not be read")
    return ", ".join(parts) or "not every round could be judged"


def headline(summary: CompletionSummary) -> str:
    if summary.nominal:
        return (
            "✅ *All metrics nominal*: every judged metric passed within its limits, with no "
            "warning, near miss or failed check on the way."
        )
    if not summary.judged:
        return "⚠️ No metrics were judged: it shipped on time alone."
    return f"⚠️ *Not all nominal*: {esc(summary_note(summary))}."


def steps_line(summary: CompletionSummary) -> str:
    """'Time at each step: 1% 5m · 10% 5m · 100% 50m (bake); 40 rounds judged.' ("" when
    nothing was judged). The total is said by the message's first line."""
    spans = [f"{s.weight}% {format_duration(s.seconds)}" for s in summary.steps]
    if spans and summary.steps[-1].weight >= 100:
        spans[-1] += " (bake)"
    parts = [f"Time at each step: {' · '.join(spans)}"] if spans else []
    if summary.rounds:
        parts.append(f"{_plural(summary.rounds, 'round')} judged")
    return "; ".join(parts) + "." if parts else ""


def _limits_text(metric: MetricFinal) -> str:
    parts = [limit_words(lim.rule, lim.value, metric.unit) for lim in metric.limits]
    if metric.statistical:
        parts.append("mann-whitney")
    if metric.dry_run:
        parts.append("dry run")
    return ", ".join(parts)


def _closest_text(metric: MetricFinal) -> str:
    if metric.closest_share is None or metric.closest_rule is None:
        return ""
    share = max(0.0, metric.closest_share)
    return f"peak {share:.0%} of {_RULE_WORDS[metric.closest_rule]}"


def metrics_table(summary: CompletionSummary, budget: int = MAX_TEXT - 200) -> str:
    """A code block: each metric's last canary and control (or baseline) numbers, its limits
    from the policy, and the closest any round came to a failing limit."""
    if not summary.metrics:
        return ""
    width = min(max([len(m.name) for m in summary.metrics] + [6]), 22)
    other = summary.compared_with
    head = f"{'':<4} {'metric':<{width}} {'canary':>9} {other:>9}  limits"
    lines = [esc(head)]
    used = text_units(head) + 8  # the fences
    for i, m in enumerate(summary.metrics):
        flag = "warn" if m.outcome == "pass" and m.warning else _FLAGS.get(m.outcome, "?")
        short = m.name if len(m.name) <= width else m.name[: width - 1] + "…"
        tail = " · ".join(t for t in (_limits_text(m), _closest_text(m)) if t)
        row = esc(
            f"{flag:<4} {short:<{width}} {fmt(m.canary, m.unit):>9} "
            f"{fmt(m.control, m.unit):>9}  {tail}"
        )
        if used + text_units(row) + 40 > budget:
            lines.append(f"… and {len(summary.metrics) - i} more metric(s)")
            break
        lines.append(row)
        used += text_units(row) + 1
    return "```\n" + "\n".join(lines) + "\n```"


def _by(who: str) -> str:
    return f" by {mention(who)}" if who and who != "shipwatch" else ""


def moment_line(m: Moment, units: dict[str, str]) -> str:
    """One thing that happened on the way, as a bullet (metric names and reasons escaped)."""
    name, unit = esc(m.metric), units.get(m.metric, "")
    rounds = _plural(m.rounds, "round")
    against = ""
    if m.rule is not None and m.limit is not None:
        against = f"{_measured(m.rule, m.value, unit)} against {limit_words(m.rule, m.limit, unit)}"
    if m.kind is MomentKind.FAILED:
        what = f" ({against})" if against else " (the statistical comparison)"
        limit = f"; it rolls back after {m.failure_limit} in a row" if m.failure_limit else ""
        return f"• *{name}* failed {rounds} at {m.weight}%{what} and recovered{limit}."
    if m.kind is MomentKind.WARNING:
        return f"• *{name}* crossed its warning level in {rounds} at {m.weight}%: worst {against}."
    if m.kind is MomentKind.NEAR_MISS:
        share = f"{m.share:.0%} of the way to its limit" if m.share is not None else "near"
        return f"• *{name}* came {share} in {rounds} at {m.weight}%: {against}."
    if m.kind is MomentKind.NO_DATA:
        return f"• *{name}* had no verdict in {rounds} at {m.weight}% (no data or a query error)."
    if m.kind is MomentKind.PAUSE:
        took = f" for {format_duration(m.seconds)}" if m.seconds is not None else ""
        why = f": {clip(esc(m.reason), REASON_CHARS)}" if m.reason else ""
        return f"• Paused at {m.weight}%{took}{_by(m.by)}{why}."
    if m.kind is MomentKind.APPROVAL_WAIT:
        took = format_duration(m.seconds or 0.0)
        approved = f", approved by {mention(m.by)}" if m.by else ""
        return f"• Waited {took} for approval of {m.weight}%{approved}."
    times = _plural(m.rounds, "time")
    return f"• The traffic engine lost {m.weight}% and was given it again ({times})."


def moment_lines(summary: CompletionSummary) -> list[str]:
    units = {m.name: m.unit for m in summary.metrics}
    order = MOMENT_ORDER
    moments = sorted(summary.moments, key=lambda m: (order.index(m.kind), m.weight, m.metric))
    lines = [moment_line(m, units) for m in moments[:MAX_MOMENT_LINES]]
    if len(moments) > MAX_MOMENT_LINES:
        lines.append(f"• … and {len(moments) - MAX_MOMENT_LINES} more")
    return lines


def page_link(page_url: str | None) -> str:
    """A mrkdwn link to the release page, or "" when there is none or it is not a plain web
    address (a link is made only from a URL we were given, never from text)."""
    url = (page_url or "").strip()
    if not url.startswith(("https://", "http://")) or any(c in url for c in " |<>\n"):
        return ""
    return f"<{url.replace('&', '&amp;')}|{PAGE_LABEL}>"


def summary_blocks(
    summary: CompletionSummary, *, page_url: str | None = None, table: bool = True
) -> list[dict[str, Any]]:
    """The summary's blocks: headline and steps, the metrics table, then what happened on the
    way; ``table=False`` where the message shows the last checks already."""
    steps = steps_line(summary)
    blocks = [section_block(f"{headline(summary)}\n{steps}" if steps else headline(summary))]
    if table and (rows := metrics_table(summary)):
        blocks.append(section_block(f"*Final numbers (canary vs {summary.compared_with})*\n{rows}"))
    if lines := moment_lines(summary):
        blocks.append(section_block("*On the way*\n" + "\n".join(lines)))
    if summary.partial:
        blocks.append(
            context_block(
                "Part of the record (older rounds or the audit) could not be read: the "
                "summary covers what could."
            )
        )
    if link := page_link(page_url):
        blocks.append(context_block(f"📄 {link}"))
    return blocks
