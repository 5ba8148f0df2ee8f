"""What the post-release watch says in a release's thread: its one finding, its end when a newer
release took over, and its closing report. The numbers come from the watch record."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.judging.thresholds import fmt
from bot.release.buttons import ButtonAction, button_value
from bot.release.durations import format_duration
from bot.release.policy import Metric
from bot.release.rollout import Release
from bot.release.watch import WatchRecord
from bot.render.kit import button_element, section_block
from bot.render.mrkdwn import esc
from bot.render.status import release_title

_Reply = tuple[list[dict[str, Any]], str]


def _units(metrics: Sequence[Metric]) -> dict[str, str]:
    return {m.name: m.unit for m in metrics}


def finding_summary(release: Release, watch: WatchRecord, metrics: Sequence[Metric] = ()) -> str:
    """One line for the finding: the page's summary and the message's notification text."""
    f = watch.finding
    if f is None:
        return f"{release.service} {release.version}: the post-release watch found a problem"
    unit = _units(metrics).get(f.metric, "")
    return (
        f"{release.service} {release.version} after release: {f.metric} {fmt(f.value, unit)} "
        f"vs {fmt(f.baseline, unit)} before ({f.limit or f.reason})"
    )


def finding_reply(release: Release, watch: WatchRecord, metrics: Sequence[Metric]) -> _Reply:
    f = watch.finding
    since = format_duration(max(0.0, (f.at if f else watch.started_at) - watch.started_at))
    lines = [f"🚨 The watch after {release_title(release)} found a problem {since} after release."]
    if f is not None:
        unit = _units(metrics).get(f.metric, "")
        limit = f" (limit {esc(f.limit)})" if f.limit else ""
        lines.append(
            f"*{esc(f.metric)}* is {fmt(f.value, unit)} against {fmt(f.baseline, unit)} before "
            f"the release{limit}: {esc(f.reason)}"
        )
    if watch.previous_version:
        lines.append(
            f"The button (or `/deploy {esc(release.service)} {esc(watch.previous_version)} "
            "--steps 100`) goes back to the previous version in one step, judged as any release. "
            "The watch goes on and reports when it closes."
        )
    blocks = [section_block("\n".join(lines))]
    if watch.previous_version:
        button = button_element(
            f"Roll back to {watch.previous_version}"[:75],
            ButtonAction.ROLL_BACK_TO,
            button_value(release),
            style="danger",
        )
        blocks.append({"type": "actions", "elements": [button]})
    return blocks, finding_summary(release, watch, metrics)


def superseded_reply(release: Release, watch: WatchRecord, newer_version: str) -> _Reply:
    watched = format_duration(
        max(0.0, (watch.last_round_at or watch.started_at) - watch.started_at)
    )
    line = (
        f"⏹️ The watch after {release_title(release)} ended after {watched}: a newer release "
        f"(`{esc(newer_version)}`) of `{esc(release.service)}` started and is judged on its own."
    )
    return [
        section_block(line)
    ], f"{release.service} {release.version}: watch ended by {newer_version}"


def report_words(watch: WatchRecord, metrics: Sequence[Metric]) -> str:
    """ "Watched 24h: error_rate 0.4% vs 0.5% before, p95 238 ms vs 235 ms; no anomalies"."""
    units = _units(metrics)
    means = watch.means()
    parts = [
        f"{name} {fmt(means.get(name), units.get(name, ''))} vs "
        f"{fmt(watch.baseline.get(name), units.get(name, ''))} before"
        for name in sorted(set(means) | set(watch.baseline))
    ]
    numbers = ", ".join(parts) if parts else "no metric read"
    f = watch.finding
    verdict = (
        "no anomalies"
        if f is None
        else f"1 finding ({f.metric}, {format_duration(f.at - watch.started_at)} in)"
    )
    return f"Watched {format_duration(watch.window)}: {numbers}; {verdict}"


def closed_reply(release: Release, watch: WatchRecord, metrics: Sequence[Metric]) -> _Reply:
    words = report_words(watch, metrics)
    icon = "✅" if watch.finding is None else "⚠️"
    line = f"{icon} {release_title(release)}: {esc(words)} ({watch.rounds} rounds)."
    return [section_block(line)], f"{release.service} {release.version}: {words}"
