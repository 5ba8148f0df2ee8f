"""What a page says, built from the release record alone and redacted before it leaves.

One release is one alert: its key (PagerDuty's ``dedup_key``, Opsgenie's ``alias``) is
``shipwatch-<release id>``, so a page sent twice (a retry, two processes) stays one incident,
and the resolve at the release's end finds it. Everything in it is typed data from the record
(versions, weights, the failing checks' numbers); the only link is the Slack thread's permalink,
which shipwatch builds from the ids it stored, never a URL someone typed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.errors import DependencyError
from bot.redact import redact, redact_obj
from bot.release.checks import CheckResult, Outcome
from bot.release.rollout import Release

KEY_PREFIX = "shipwatch-"
# PagerDuty keeps a summary of at most 1024 characters; longer is refused as an invalid event.
SUMMARY_LIMIT = 1024


class PageError(DependencyError):
    """A paging service did not take a page or its resolve (after its retries)."""


@dataclass(frozen=True)
class Alert:
    key: str  # one per release: the dedup key and the alias
    summary: str  # one line: what happened to which service
    service: str  # the affected system (PagerDuty's source, Opsgenie's entity)
    details: dict[str, Any] = field(default_factory=dict)  # typed data, redacted
    thread_url: str = ""  # the release's Slack thread, when known
    finding: bool = False  # a finding after the release, not a rollback


def page_key(release: Release) -> str:
    """The release's alert key, the same for its trigger and its resolve."""
    return f"{KEY_PREFIX}{release.id}"


def rollback_alert(release: Release, thread_url: str = "") -> Alert:
    """The page for an automatic rollback of ``release``."""
    weight = release.weights[release.step] if release.weights else release.weight
    failing = [c for c in release.last_checks if c.outcome is Outcome.FAIL and not c.dry_run]
    summary = (
        f"shipwatch rolled back {release.service} {release.version} automatically at "
        f"{weight}%{_cause(release, failing)}"
    )
    details = {
        **_release_details(release),
        "weight": weight,
        "reason": release.reason,
        "decided_at": _when(release.rollback_started_at),
        "failing_checks": [
            {
                "metric": c.metric,
                "canary": c.canary,
                "control": c.control,
                "limit": c.limit,
                "critical": c.critical,
            }
            for c in failing
        ],
    }
    return _alert(release, summary, details, thread_url, finding=False)


def finding_alert(
    release: Release, summary: str, details: Mapping[str, Any], thread_url: str = ""
) -> Alert:
    """The page for a finding about ``release`` after it shipped (the post-release watch):
    the same key and path as a rollback's page, with the finding's own summary and data."""
    return _alert(
        release, summary, {**_release_details(release), **details}, thread_url, finding=True
    )


def _alert(
    release: Release, summary: str, details: dict[str, Any], thread_url: str, *, finding: bool
) -> Alert:
    return Alert(
        key=page_key(release),
        summary=redact(" ".join(summary.split()))[:SUMMARY_LIMIT],
        service=release.service,
        details=redact_obj({**details, **({"thread": thread_url} if thread_url else {})}),
        thread_url=thread_url,
        finding=finding,
    )


def _release_details(release: Release) -> dict[str, Any]:
    return {
        "service": release.service,
        "version": release.version,
        "stable_version": release.stable_version,
        "release": release.label,
        "release_id": release.id,
    }


def _cause(release: Release, failing: list[CheckResult]) -> str:
    """The first failing check's numbers, or the decision's reason when none failed (a
    critical no-data rule, say)."""
    if not failing:
        return f": {release.reason}" if release.reason else ""
    c = failing[0]
    limit = f" (limit {c.limit})" if c.limit else ""
    return f": {c.metric} {_number(c.canary)} vs {_number(c.control)} on the control{limit}"


def _number(value: float | None) -> str:
    return "no data" if value is None else f"{value:.4g}"


def _when(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()
