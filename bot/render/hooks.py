"""What the thread says about step hooks (bot.engine.hooks): each hook's result, and what a
failed one does to the release."""

from __future__ import annotations

from bot.release.hook_runs import HookResult, HookRun
from bot.release.policy import HookFailure
from bot.release.rollout import Release
from bot.render.mrkdwn import esc

_KIND = {"url": "smoke test", "load": "synthetic load on", "webhook": "CI job started at"}

_THEN = {
    HookFailure.HOLD: "it holds at {weight}% and runs its hooks again after the step's hold.",
    HookFailure.PAUSE: "it pauses at {weight}% (the hook's `on_failure: pause`).",
    HookFailure.ROLLBACK: "it rolls back (the hook's `on_failure: rollback`).",
}


def hook_kind(r: HookResult) -> str:
    """'smoke test', 'synthetic load on', 'CI job started at'."""
    return _KIND.get(r.kind, r.kind)


def result_line(r: HookResult) -> str:
    """'• smoke test `https://…/smoke` answered HTTP 200 (0.1s)'; the URL is the policy's,
    escaped all the same."""
    mark = "✅" if r.passed else "❌"
    what = hook_kind(r)
    return f"{mark} {what} `{esc(r.target)}`: {esc(r.detail)} ({r.seconds:.1f}s)"


def hooks_headline(release: Release, run: HookRun, title: str) -> str:
    if run.passed:
        return f"🪝 The step hooks before *{run.weight}%* passed for {title}."
    then = _THEN[run.on_failure].format(weight=release.weight)
    return f"🪝 A step hook before *{run.weight}%* failed for {title}: {then}"


def hooks_text(release: Release, run: HookRun) -> str:
    """The notification's plain text."""
    what = "passed" if run.passed else f"failed ({run.on_failure.value})"
    return f"{release.service} {release.version}: step hooks before {run.weight}% {what}"
