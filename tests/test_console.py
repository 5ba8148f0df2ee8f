"""The console on a real app (real redis-server, synthetic metrics, controller running): status
messages with numbered buttons, clicking them by number, stale and bad clicks."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from bot.app import App, build_app
from bot.config import Settings
from bot.console import Console, ConsoleNotifier
from bot.metrics.synthetic import SyntheticSource
from bot.release.policy import parse_policy
from bot.release.rollout import Release, State

# Holds of an hour: the controller runs (and judges) but never moves a release on its own,
# so what each test sees is what its typed lines did.
POLICY = """
defaults:
  steps: [1, 10, 25, 50, 100]
  hold: 1h
  interval: 200ms
  window: 1s
  bake: 1h
  oncall: S0ONCALL12
  metrics:
    - name: error_rate
      query: 'errors{service="{service}",version="{version}"}'
      unit: ratio
      max: 0.05
      max_diff: 0.01
    - name: latency_p99
      query: 'p99{service="{service}",version="{version}"}'
      unit: s
      max_ratio: 2
      critical: true
services:
  checkout: {}
  payments:
    risk: high
    approvers: [bob]
"""


@dataclass
class Rig:
    app: App
    out: io.StringIO

    async def type(self, lines: Iterable[str], user: str = "alice") -> str:
        """Run a console session over ``lines``; what it printed during this session."""
        script = iter([*lines, ""])  # "" is end of input
        start = len(self.out.getvalue())
        console = Console(self.app, user, out=self.out, read_line=lambda: next(script))
        assert await console.run() == 0
        return self.out.getvalue()[start:]

    async def release(self, service: str) -> Release:
        release = await self.app.service.status(service)
        assert release is not None
        return release


@pytest.fixture
async def rig(redis_client: aioredis.Redis, redis_url: str) -> AsyncIterator[Rig]:
    out = io.StringIO()
    settings = Settings.model_validate({"REDIS_URL": redis_url, "SHIPWATCH_CONTROLLER_TICK": 0.05})
    app = await build_app(
        settings,
        policy=parse_policy(POLICY, "test"),
        notifiers=[ConsoleNotifier(out)],
        source=SyntheticSource(),
    )
    try:
        yield Rig(app, out)
    finally:
        await app.close()


DEPLOY = "deploy checkout v2 --stable v1"


async def test_deploy_shows_the_status_message_with_numbered_buttons(rig: Rig) -> None:
    out = await rig.type([DEPLOY])

    assert "alice started checkout `v2` (replacing `v1`)" in out  # the started event
    assert "🚀 checkout v2" in out  # the status message's header
    assert "🔵 1%  ⬜ 10%  ⬜ 25%  ⬜ 50%  ⬜ 100%" in out
    assert "On-call: @S0ONCALL12" in out  # the policy reached the messages
    assert "[1] Advance  [2] Pause  [3] Roll back" in out
    # The started event comes before the status, as in Slack's message and thread.
    assert out.index("started checkout") < out.index("[1] Advance")


async def test_typing_the_number_of_pause_pauses_the_release(rig: Rig) -> None:
    out = await rig.type([DEPLOY, "2"])

    release = await rig.release("checkout")
    assert release.state is State.PAUSED
    assert (release.last.by, release.last.surface) == ("alice", "console")
    assert "paused at 1%" in out  # the paused event
    # The status is shown again with the buttons that apply now.
    assert out.rstrip().endswith("[1] Resume  [2] Roll back")


async def test_resume_then_roll_back_by_number(rig: Rig) -> None:
    await rig.type([DEPLOY, "2", "1"])
    assert (await rig.release("checkout")).state is State.PROGRESSING

    out = await rig.type(["status checkout", "3"])
    release = await rig.release("checkout")
    assert release.state in (State.ROLLING_BACK, State.ROLLED_BACK)
    assert release.reason == "manual rollback by alice"
    assert "Rolling back" in out


async def test_a_stale_number_says_what_happened_and_changes_nothing(rig: Rig) -> None:
    # The buttons are shown at step 1; a command moves the release to step 2 meanwhile.
    out = await rig.type([DEPLOY, "advance checkout", "1"])

    release = await rig.release("checkout")
    assert (release.state, release.step, release.weight) == (State.PROGRESSING, 1, 10)
    assert "✗ [1] Advance is out of date: checkout#" in out
    assert "is progressing at 10% (step 2/5), put there by alice via console" in out
    # ...and the current status follows, so the next number means what it says.
    assert out.rstrip().endswith("[1] Advance  [2] Pause  [3] Roll back")


async def test_a_button_of_a_rolled_back_release_is_stale(rig: Rig) -> None:
    # The buttons are shown, then the release is rolled back by a typed command.
    out = await rig.type([DEPLOY, "rollback checkout too slow", "2"])

    release = await rig.release("checkout")
    assert release.state in (State.ROLLING_BACK, State.ROLLED_BACK)
    assert release.last.action.value in ("rollback", "finish_rollback")  # not paused
    stale = out.split("✗ [2] Pause is out of date: ", 1)[1]
    assert stale.startswith("checkout#") and "too slow" in stale.splitlines()[0]
    # The fresh status of a finished release offers no buttons any more.
    assert "[1]" not in stale


async def test_bad_input_is_explained_and_changes_nothing(rig: Rig) -> None:
    out = await rig.type(["1", DEPLOY, "7", "0", "frob"])

    assert "✗ there is no button 1 to click" in out
    assert "✗ there is no button 7: the last ones were [1] Advance  [2] Pause  [3] Roll back" in out
    assert "✗ there is no button 0" in out
    assert "unknown command `frob`" in out
    release = await rig.release("checkout")
    assert (release.state, release.step, release.last.action.value) == (
        State.PROGRESSING,
        0,
        "start",
    )


async def test_approve_by_number_needs_someone_else(rig: Rig) -> None:
    out = await rig.type(["deploy payments p2 --stable p1"])
    assert "[1] Approve  [2] Pause  [3] Roll back" in out
    assert "Approvers: bob" in out and "alice started this release and cannot approve it" in out

    # The Console remembers its buttons per session: show them again, then click as alice.
    out = await rig.type(["status payments", "1"])
    assert "you may not approve your own release of `payments`" in out
    assert (await rig.release("payments")).state is State.PENDING_APPROVAL

    out = await rig.type(["status payments", "1"], user="bob")
    release = await rig.release("payments")
    assert (release.state, release.weight) == (State.PROGRESSING, 1)
    assert [a.by for a in release.approvals] == ["bob"]
    assert "bob approved *1%*" not in out  # rendered for the terminal: no mrkdwn stars
    assert "bob approved 1%" in out


# --- after a success: the post-release watch runs in the console too -------------------------

# Short holds, bake and watch: a release walks to 100%, succeeds, and its watch closes within
# a few seconds of the session.
WATCHED = """
defaults:
  steps: [50, 100]
  hold: 300ms
  interval: 100ms
  window: 1s
  bake: 300ms
  watch: {window: 1s, interval: 200ms}
  metrics:
    - name: error_rate
      query: 'errors{service="{service}",version="{version}"}'
      unit: ratio
      max: 0.05
      max_diff: 0.01
services:
  shop: {}
"""


@pytest.fixture
async def watched(redis_client: aioredis.Redis, redis_url: str) -> AsyncIterator[Rig]:
    out = io.StringIO()
    settings = Settings.model_validate(
        {"REDIS_URL": redis_url, "SHIPWATCH_CONTROLLER_TICK": 0.05, "SHIPWATCH_WATCH_TICK": 0.05}
    )
    app = await build_app(
        settings,
        policy=parse_policy(WATCHED, "test"),
        notifiers=[ConsoleNotifier(out)],
        source=SyntheticSource(seed=1),
    )
    try:
        yield Rig(app, out)
    finally:
        await app.close()


@pytest.mark.timeout(60)
async def test_a_release_that_succeeds_is_watched_and_its_closing_report_printed(
    watched: Rig,
) -> None:
    out = await watched.type(["deploy shop v2 --stable v1", "await shop", "wait 3s"])

    assert (await watched.release("shop")).state is State.SUCCEEDED
    # The watch's closing report (EventKind.WATCH_CLOSED), after the success it follows.
    assert "🎉 shop `v2` is live for everyone." in out, out
    closed = out.split("🎉 shop `v2` is live for everyone.", 1)[1]
    assert "✅ shop `v2`: Watched 1s: error_rate " in closed, out
    assert "before; no anomalies (" in closed and " rounds)." in closed
    stored = await watched.app.store.watches.get((await watched.release("shop")).id)
    assert stored is not None and stored.ended is not None and stored.rounds >= 1
