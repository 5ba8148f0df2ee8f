"""A backtest as terminal text: past releases, A/A false rollbacks, injected faults and the
suggested setting, in tables.

Versions, reasons and query errors come from outside (people's /deploy and /rollback text, the
audit, Prometheus labels quoted in errors): every one goes through ``_safe`` so no escape
sequence or control character reaches the terminal, and a newline cannot forge a table row.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Sequence

from bot.judging.backtest import AASummary, FaultSummary, ReleaseReplay
from bot.judging.backtest_report import BacktestReport, ServiceReport
from bot.judging.calibrate import GRID_TEXT, Suggestion
from bot.judging.replay import Run
from bot.release.durations import format_duration
from bot.render.mrkdwn import shown

_MAX_CELL = 120

AGREEMENT = {
    "both_rolled_back": "agrees (rolled back)",
    "both_passed": "agrees (no rollback)",
    "would_roll_back": "WOULD ROLL BACK",
    "would_let_through": "WOULD LET IT THROUGH",
    "no_data": "no data to judge",
}


def _safe(text: object, limit: int = _MAX_CELL) -> str:
    clean = " ".join(shown(str(text)).split())
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def _when(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(moment))


def _pct(rate: float | None) -> str:
    if rate is None:
        return "n/a"
    return f"{rate:.0%}" if rate == 0 or rate >= 0.1 else f"{rate:.1%}"


def _secs(seconds: float | None) -> str:
    return "n/a" if seconds is None else format_duration(seconds)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "    ") -> list[str]:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    out = []
    for row in [header, *rows]:
        out.append(
            indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )
    return out


def _replayed(run: Run) -> str:
    last = run.ended_at
    if run.rolled_back and last is not None:
        return (
            f"rolls back at {last.weight}%, round {len(run.rounds)}, "
            f"+{_secs(run.seconds)}: {', '.join(last.failing) or 'see reason'}"
        )
    if run.outcome == "paused" and last is not None:
        return f"pauses at {last.weight}%, +{_secs(run.seconds)}"
    if run.outcome == "succeeded":
        return f"succeeds, +{_secs(run.seconds)}"
    return f"no rollback in {len(run.rounds)} rounds"


def _actual(item: ReleaseReplay) -> str:
    past = item.past
    if past.outcome == "rolled_back":
        by = _safe(past.decided_by, 30) or "?"
        return f"rolled back +{_secs(past.left_canary_at - past.start)} by {by}"
    if past.outcome == "succeeded":
        return f"succeeded +{_secs(past.left_canary_at - past.start)}"
    return past.outcome


def releases_lines(items: Sequence[ReleaseReplay], audit: str) -> list[str]:
    if audit != "read":
        return [f"  Past releases: {_safe(audit, 300)}"]
    if not items:
        return ["  Past releases: none in the audit for this window of history"]
    rows = [
        [
            _safe(i.past.release_id, 16),
            _safe(i.past.version, 24),
            _actual(i),
            _replayed(i.run),
            AGREEMENT[i.agreement],
        ]
        for i in items
    ]
    lines = ["  Past releases (the policy under test on each one's recorded steps):"]
    lines += _table(["release", "version", "what happened", "this policy", "verdict"], rows)
    for i in items:
        if i.run.rolled_back:
            lines.append(f"    {_safe(i.past.release_id, 16)}: {_safe(i.run.reason, 300)}")
    return lines


def aa_lines(aa: AASummary) -> list[str]:
    judged = len(aa.judged)
    head = (
        f"  A/A: {len(aa.runs)} simulated releases of {_secs(aa.ladder)} each, the stable "
        f"version against itself {_secs(aa.offset)} earlier ({judged} with data)"
    )
    if not aa.runs:
        why = f" ({aa.straddling} left out: the stable version changed)" if aa.straddling else ""
        return [head, f"    no window fits in the history{why}"]
    lines = [
        head,
        f"    false rollbacks: {aa.false_rollbacks} of {judged} releases = {_pct(aa.rate)} per "
        f"release (95% upper bound {_pct(aa.upper_95)}), "
        f"{'n/a' if aa.per_day is None else f'{aa.per_day:.2g}'} per day of canary time; "
        f"rounds with a failed check: {_pct(aa.failed_round_rate)}",
    ]
    if aa.culprits:
        lines.append(
            "    what failed: " + ", ".join(f"{_safe(k, 40)} ×{v}" for k, v in aa.culprits.items())
        )
    if aa.straddling:
        lines.append(
            f"    left out: {aa.straddling} windows during which the stable version changed"
        )
    if aa.count("paused") or aa.count("unfinished"):
        lines.append(
            f"    paused (a person would decide): {aa.count('paused')}; "
            f"still holding when the history ended: {aa.count('unfinished')}"
        )
    return lines


def fault_lines(faults: Sequence[FaultSummary]) -> list[str]:
    if not faults:
        return ["  Injected faults: none asked for (--inject METRIC=EFFECT)"]
    rows = []
    for f in faults:
        rounds = f.rounds
        secs = f.seconds
        rows.append(
            [
                _safe(f.effect.text, 40),
                f"{len(f.detected)}/{len(f.judged)} {_pct(f.rate)}",
                f"{min(rounds)}–{max(rounds)}" if rounds else "n/a",
                f"{_secs(f.median_seconds)} (max {_secs(max(secs))})" if secs else "n/a",
            ]
        )
    lines = ["  Injected faults (on the canary side of the same A/A pairs, from the start):"]
    return lines + _table(["effect", "detected", "rounds", "time to rollback (median)"], rows)


def suggestion_lines(s: Suggestion, target: float) -> list[str]:
    lines = [
        f"  Suggestion (A/A false rollbacks ≤ {_pct(target)} per release, every fault caught):",
        *textwrap.wrap(GRID_TEXT + ".", 96, initial_indent="    ", subsequent_indent="    "),
    ]
    limits = sorted({c.failure_limit for c in s.candidates})
    scales = sorted({c.scale for c in s.candidates})
    by_key = {(c.failure_limit, c.scale): c for c in s.candidates}
    rows = []
    for limit in limits:
        row = [f"failure_limit {limit}"]
        for scale in scales:
            c = by_key[(limit, scale)]
            mark = " ok" if c.meets else ("" if c.detects_all else " miss")
            row.append(f"{_pct(c.aa.rate)}{mark}")
        rows.append(row)
    lines += _table(["", *(f"margin ×{s:g}" for s in scales)], rows)
    lines.append(
        "    cells: A/A false-rollback rate; ok = meets both, miss = a fault not always caught"
    )
    chosen = s.chosen
    if chosen is None:
        lines.append("    no point of the grid meets both: see the table for the trade-off")
        return lines
    lines.append(f"    suggested: failure_limit {chosen.failure_limit}, margin ×{chosen.scale:g}:")
    for metric, fields in s.settings.items():
        was = s.current.get(metric, {})
        parts = [
            f"{k} {v:g}" + (f" (now {was[k]:g})" if k in was and was[k] != v else "")
            for k, v in fields.items()
        ]
        lines.append(f"      {_safe(metric, 64)}: {', '.join(parts)}")
    judged = len(chosen.aa.judged)
    bound = chosen.aa.upper_95
    if bound is not None and bound > target:
        lines.append(
            f"    caveat: {judged} A/A releases only show the rate is under {_pct(bound)} "
            f"(95%); showing {_pct(target)} needs about {_needed(target)} of them"
        )
    return lines


def _needed(target: float) -> str:
    # With no false rollback at all, n releases bound the rate under about 3/n (95%).
    return f"{int(3 / target) + 1:,}" if target > 0 else "infinitely many"


def service_lines(s: ServiceReport, audit: str) -> list[str]:
    stable = ", ".join(_safe(x.version, 24) for x in s.stable[-3:])
    lines = [f"{_safe(s.service, 64)} (stable: {stable})"]
    lines += releases_lines(s.releases, audit)
    lines += aa_lines(s.aa)
    lines += fault_lines(s.faults)
    if s.suggestion is not None:
        lines += suggestion_lines(s.suggestion, s.target)
    return lines


def render_report(report: BacktestReport) -> str:
    span = report.end - report.start
    lines = [
        f"shipwatch backtest: policy {_safe(report.policy, 200)}, "
        f"Prometheus {_safe(report.prometheus, 200)}",
        f"history: {_when(report.start)} → {_when(report.end)} ({_secs(span)}, one point every "
        f"{report.resolution:g}s); audit: {_safe(report.audit, 300)}",
        "",
    ]
    for s in report.services:
        lines += service_lines(s, report.audit)
        lines.append("")
    for note in report.notes:
        lines.append(f"note: {_safe(note, 300)}")
    return "\n".join(lines).rstrip() + "\n"
