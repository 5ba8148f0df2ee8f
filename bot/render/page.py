"""The release page: one release as HTML for people who do not read the Slack thread.

The same facts as the status message (bot.render.status) from the same record: state, weight,
the ladder with the time each step was reached, the canary against its control, the verdicts
over time, who decided what, the notes and the diagnosis. Pure: a PageView in, markup out.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from bot.engine.release_page import PageView, Rung
from bot.judging.thresholds import fmt
from bot.release.checks import CheckResult, Outcome
from bot.release.durations import format_duration
from bot.release.policy import Metric
from bot.release.rollout import Release, State
from bot.render.checks import control_label_of, limit_text
from bot.render.hooks import hook_kind
from bot.render.page_kit import document, h, when
from bot.render.status import STATE_BADGE
from bot.render.verdict_chart import COLOURS, verdict_svg
from bot.store.audit import AuditEntry

_OUTCOME_WORDS = {"pass": "pass", "fail": "FAIL", "no_data": "no data", "error": "error"}

# The audit's actions in words; an action added later shows as itself.
_ACTIONS = {
    "deploy": "started the release",
    "advance": "advanced",
    "decision:advance": "advanced: the canary held",
    "approve": "approved the next step",
    "decision:request_approval": "asked for approval",
    "pause": "paused",
    "decision:pause": "paused",
    "resume": "resumed",
    "decision:resume": "resumed: metrics readable again",
    "rollback": "rolled back",
    "decision:rollback": "rolled back: the canary failed",
    "rolled_back": "traffic back on the stable version",
    "decision:succeed": "succeeded: the bake passed",
    "traffic": "traffic applied",
    "edit_notes": "edited the notes",
    "hand_back": "handed back to the stable pool",
}


def _what(entry: AuditEntry) -> str:
    words = _ACTIONS.get(entry.action, entry.action)
    if entry.action == "traffic" and isinstance(entry.detail.get("weight"), int):
        words = f"traffic at {entry.detail['weight']}%"
    elif isinstance(entry.detail.get("step"), int) and entry.action in ("advance", "approve"):
        words += f" (step {entry.detail['step'] + 1})"
    if entry.outcome not in ("ok", ""):
        words += f" — {entry.outcome}"
    return words


def _header(r: Release, now: float) -> str:
    badge, words = STATE_BADGE[r.state]
    stable = r.stable_version or "stable"
    return (
        '<header class="card">'
        f'<h1>{h(r.service)} <span class="version">{h(r.version)}</span></h1>'
        f'<p><span class="badge state-{h(r.state.value)}" id="state">{badge} {h(words)}</span></p>'
        f'<p class="meta">#{r.number} · <span class="version">{h(stable)}</span> → '
        f'<span class="version">{h(r.version)}</span> · {h(r.strategy)} · risk {h(r.risk)}</p>'
        f'<p class="meta">started by {h(r.requested_by)} via {h(r.surface)} '
        f"{when(r.created_at)} ({format_duration(max(0.0, now - r.created_at))} ago)</p>"
        "</header>"
    )


def _time_text(r: Release, now: float) -> str:
    if r.state in (State.PROGRESSING, State.BAKING):
        held = format_duration(max(0.0, now - r.step_started_at))
        window = r.hold if r.state is State.PROGRESSING else r.bake
        kind = "hold" if r.state is State.PROGRESSING else "bake"
        waiting = f" · {r.waiting_on}" if r.waiting_on and r.state is State.PROGRESSING else ""
        return f"{held} of {format_duration(window)} {kind}{waiting}"
    if r.finished_at is not None:
        return f"took {format_duration(max(0.0, r.finished_at - r.created_at))}"
    return f"{r.state.value.replace('_', ' ')} for {format_duration(max(0.0, now - r.last.at))}"


def _weight(r: Release, now: float) -> str:
    applied = r.applied_weight
    lag = ""
    if r.is_active and applied is not None and applied != r.weight:
        lag = f'<p class="meta">traffic still at {applied}% (being applied)</p>'
    return (
        '<section aria-labelledby="h-weight"><h2 id="h-weight">Canary weight</h2>'
        f'<div class="weight" id="weight">{r.weight}%</div>'
        '<svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" width="100%" '
        'height="10" aria-hidden="true"><rect width="100" height="10" rx="3" fill="#e3e5e8"/>'
        f'<rect width="{r.weight}" height="10" rx="3" fill="#3a6ea5"/></svg>'
        f'<p class="meta">of users on <span class="version">{h(r.version)}</span> · step '
        f"{r.step + 1}/{len(r.weights)} · {h(_time_text(r, now))}</p>{lag}</section>"
    )


def _rung(rung: Rung) -> str:
    kind = "current" if rung.current else "done" if rung.reached_at is not None else "todo"
    reached = when(rung.reached_at) if rung.reached_at is not None else "not reached"
    here = ' aria-current="step"' if rung.current else ""
    return f'<li class="{kind}"{here}><b>{rung.weight}%</b>{reached}</li>'


def _ladder(view: PageView) -> str:
    rungs = "".join(_rung(r) for r in view.ladder)
    return (
        '<section aria-labelledby="h-ladder"><h2 id="h-ladder">Steps</h2>'
        f'<ol class="ladder" id="ladder">{rungs}</ol></section>'
    )


def _why(r: Release) -> str:
    if not r.reason or r.state not in (State.PAUSED, State.ROLLING_BACK, State.ROLLED_BACK):
        return ""
    what = {State.PAUSED: "Paused", State.ROLLING_BACK: "Rolling back"}.get(r.state, "Rolled back")
    return f'<section class="why"><h2>{what}</h2><p class="reason">{h(r.reason)}</p></section>'


def _check_row(check: CheckResult, metric: Metric | None) -> str:
    unit = metric.unit if metric else ""
    limit = limit_text(metric) if metric else check.limit
    outcome = check.outcome.value
    flag = _OUTCOME_WORDS.get(outcome, outcome)
    if check.outcome is Outcome.PASS and check.warning:
        flag = "warn"
    if check.dry_run:
        flag += " (dry run)"
    note = check.warning if check.outcome is Outcome.PASS else check.reason
    return (
        f'<tr><th scope="row">{h(check.metric)}</th><td class="o-{h(outcome)}">{h(flag)}</td>'
        f'<td class="num">{h(fmt(check.canary, unit))}</td>'
        f'<td class="num">{h(fmt(check.control, unit))}</td>'
        f'<td>{h(limit)}</td><td class="reason">{h(note)}</td></tr>'
    )


def _checks(r: Release, metrics: Sequence[Metric], now: float) -> str:
    if not r.last_checks:
        body = '<p class="meta">No round judged yet.</p>'
    else:
        by_name = {m.name: m for m in metrics}
        rows = "".join(_check_row(c, by_name.get(c.metric)) for c in r.last_checks)
        label = control_label_of(r)
        seen = ""
        if r.last_eval_at is not None:
            seen = (
                f'<p class="meta">latest round {when(r.last_eval_at)} '
                f"({format_duration(max(0.0, now - r.last_eval_at))} ago)</p>"
            )
        score = f'<p class="meta">{h(r.last_score.text)}</p>' if r.last_score else ""
        body = (
            f'{seen}<div class="scroll"><table id="checks"><thead><tr><th scope="col">metric</th>'
            f'<th scope="col">outcome</th><th scope="col">canary</th><th scope="col">{h(label)}'
            f'</th><th scope="col">limit</th><th scope="col">why</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></div>{score}"
        )
    return (
        '<section aria-labelledby="h-checks"><h2 id="h-checks">Canary vs '
        f"{h(control_label_of(r))}</h2>{body}</section>"
    )


def _hooks(view: PageView, now: float) -> str:
    """The step hooks: what each checked before its step, and how it went (or that it runs)."""
    if not view.hooks:
        return ""
    rows = []
    for p in view.hooks:
        before = f"before {p.weight}%"
        if p.run is None:
            since = format_duration(max(0.0, now - p.started_at))
            rows.append(
                f"<tr><td>{before}</td><td>…</td><td>running</td>"
                f'<td class="reason">started {when(p.started_at)} ({since} ago)</td></tr>'
            )
            continue
        rows += [
            f"<tr><td>{before}</td><td>{h(hook_kind(r))} <code>{h(r.target)}</code></td>"
            f"<td>{'passed' if r.passed else 'failed'}</td>"
            f'<td class="reason">{h(r.detail)} ({r.seconds:.1f}s)</td></tr>'
            for r in p.run.results
        ]
    return (
        '<section aria-labelledby="h-hooks"><h2 id="h-hooks">Step checks</h2>'
        '<div class="scroll"><table id="hooks"><thead><tr><th scope="col">when</th>'
        '<th scope="col">check</th><th scope="col">result</th><th scope="col">detail</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _chart(view: PageView) -> str:
    svg = verdict_svg(view.points)
    if not svg:
        return ""
    legend = " ".join(
        f'<span><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" '
        f'fill="{colour}"/></svg> {h(_OUTCOME_WORDS[name])}</span>'
        for name, colour in COLOURS.items()
    )
    return (
        '<section aria-labelledby="h-chart"><h2 id="h-chart">Verdicts over time</h2>'
        f'<div class="scroll">{svg}</div><p class="legend meta">{legend}</p></section>'
    )


def _timeline(entries: Sequence[AuditEntry]) -> str:
    if not entries:
        rows = '<tr><td colspan="4">Nothing recorded (the audit may have been trimmed).</td></tr>'
    else:
        rows = "".join(
            f"<tr><td>{when(e.at)}</td><td>{h(_what(e))}</td><td>{h(e.actor)}"
            f' <span class="meta">via {h(e.surface)}</span></td>'
            f'<td class="reason">{h(e.reason)}</td></tr>'
            for e in entries
        )
    return (
        '<section aria-labelledby="h-timeline"><h2 id="h-timeline">Decisions</h2>'
        '<div class="scroll"><table id="timeline"><thead><tr><th scope="col">when</th>'
        '<th scope="col">what</th><th scope="col">who</th><th scope="col">why</th></tr>'
        f"</thead><tbody>{rows}</tbody></table></div></section>"
    )


def _safe_url(url: object) -> str:
    """A change's link, only when it is plain http(s): a ``javascript:`` URL never becomes a
    link."""
    text = str(url or "").strip()
    return text if text.lower().startswith(("https://", "http://")) else ""


def _writing(r: Release, diagnosis: str) -> str:
    out = []
    if r.notes.strip():
        out.append(
            '<section aria-labelledby="h-notes"><h2 id="h-notes">Notes</h2>'
            f'<p class="text" id="notes">{h(r.notes.strip())}</p></section>'
        )
    if r.changes:
        items = []
        for change in r.changes:
            title = h(change.get("title", ""))
            url = _safe_url(change.get("url"))
            shown = f'<a href="{h(url)}" rel="noopener noreferrer">{title}</a>' if url else title
            pr = f" #{h(change['pr'])}" if change.get("pr") else ""
            by = f" by {h(change['author'])}" if change.get("author") else ""
            items.append(f'<li class="reason">{shown}{pr}{by}</li>')
        out.append(f"<section><h2>Changes</h2><ul>{''.join(items)}</ul></section>")
    if diagnosis.strip():
        out.append(
            '<section aria-labelledby="h-diagnosis"><h2 id="h-diagnosis">Diagnosis</h2>'
            f'<p class="text" id="diagnosis">{h(diagnosis.strip())}</p></section>'
        )
    return "".join(out)


def release_main(view: PageView, *, events_url: str = "", now: float | None = None) -> str:
    """The page's ``<main>``: what a live page fetches and swaps in when the release changed.
    ``events_url`` (same origin) makes it update itself while the release is active."""
    now = time.time() if now is None else now
    r = view.release
    events = f' data-events="{h(events_url)}"' if events_url and r.is_active else ""
    return (
        f'<main id="release" data-rev="{r.rev}" data-state="{h(r.state.value)}"{events}>'
        f"{_header(r, now)}{_why(r)}{_weight(r, now)}{_ladder(view)}"
        f"{_checks(r, view.metrics, now)}{_hooks(view, now)}{_chart(view)}"
        f"{_timeline(view.timeline)}"
        f"{_writing(r, view.diagnosis)}"
        f'<p class="meta">As of {when(now)} (revision {r.rev}).</p>'
        '<p class="live-note">This page updates by itself while the release runs.</p>'
        "</main>"
    )


def release_page(
    view: PageView, nonce: str, *, events_url: str = "", now: float | None = None
) -> str:
    """The page of one release; without ``events_url`` (or once the release ended) it is a
    snapshot."""
    r = view.release
    live = bool(events_url) and r.is_active
    body = release_main(view, events_url=events_url, now=now)
    title = f"{h(r.service)} {h(r.version)}: {h(STATE_BADGE[r.state][1])} · shipwatch"
    return document(title, body, nonce, live=live)
