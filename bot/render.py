"""Plain-text rendering of releases and events, for the console and the logs."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bot.durations import format_duration
from bot.notify import ReleaseEvent
from bot.rollout import Release, State
from bot.thresholds import fmt

ICONS = {"pass": "ok ", "fail": "FAIL", "no_data": "n/a", "error": "ERR"}


def progress(release: Release) -> str:
    cells = []
    for i, w in enumerate(release.weights):
        done = i <= release.step and 0 < w <= release.weight
        cells.append(f"[{w}%]" if done else f" {w}% ")
    return "".join(cells)


def status_text(release: Release, now: float | None = None) -> str:
    now = now or time.time()
    head = (
        f"{release.label}  {release.state.value.upper()}  "
        f"{release.stable_version or 'stable'} → {release.version}  "
        f"canary {release.weight}%  risk {release.risk}  by {release.requested_by}"
    )
    lines = [head, f"  steps {progress(release)}"]
    if release.is_active and release.state is not State.ROLLING_BACK:
        in_step = format_duration(now - release.step_started_at)
        target = release.bake if release.state is State.BAKING else release.hold
        lines.append(f"  in step {in_step} of {format_duration(target)}")
    if release.reason:
        lines.append(f"  reason: {release.reason}")
    if release.last_score:
        lines.append(f"  {release.last_score.get('text', '')}")
    if release.last_checks:
        lines += ["  " + row for row in checks_table(release.last_checks)]
    return "\n".join(lines)


def checks_table(checks: Iterable[Mapping[str, Any]]) -> list[str]:
    rows = []
    for c in checks:
        flag = ICONS.get(str(c.get("outcome")), "?")
        extra = " (dry run)" if c.get("dry_run") else ""
        warn = f"  warning: {c['warning']}" if c.get("warning") else ""
        rows.append(
            f"{flag:<4} {c.get('metric', '?'):<14} canary {fmt(c.get('canary')):>8}  "
            f"control {fmt(c.get('control')):>8}  {c.get('limit') or ''}{extra}{warn}"
        )
        if c.get("outcome") != "pass":
            rows.append(f"       {c.get('reason', '')}")
    return rows


def event_text(event: ReleaseEvent) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
    lines = [
        f"[{stamp}] {event.release.label} · {event.kind.value.replace('_', ' ')}: {event.message}"
    ]
    if event.checks:
        if event.release.last_score:
            lines.append(f"    {event.release.last_score.get('text', '')}")
        lines += ["    " + row for row in checks_table(event.checks)]
    return "\n".join(lines)


def release_list(releases: Sequence[Release]) -> str:
    if not releases:
        return "no active releases"
    return "\n".join(
        f"{r.label}: {r.state.value} at {r.weight}% (by {r.requested_by})" for r in releases
    )
