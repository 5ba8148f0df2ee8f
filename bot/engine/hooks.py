"""Step hooks: the checks a release must pass before its traffic moves to the next step.

A hook is a smoke-test URL (2xx passes) or synthetic load against the canary (or, for a
blue-green release, the idle colour) for some seconds, so the judge has requests to read while
the step waits. Hooks run in background tasks, never on the decision path: the controller asks
``HookRunner.status`` each round and gets "still running" or the finished run at once.
Every hook runs under its own timeout; a hook that times out has failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from urllib.parse import quote

import aiohttp

from bot.engine.load import LoadGenerator
from bot.judging.decision import Decision, Verdict
from bot.release.policy import Hook, HookFailure
from bot.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# A load hook passes when at least this share of its requests got an answer from the service:
# whether the answers are good is the judge's business (its metrics), not the hook's.
MIN_ANSWERED_SHARE = 0.9
# One load request never waits longer than this, whatever the hook's timeout.
LOAD_REQUEST_TIMEOUT = 2.0


@dataclass(frozen=True)
class HookResult:
    """What one hook did."""

    kind: str  # "url" | "load"
    target: str  # the URL called or loaded, placeholders filled in (from the policy)
    passed: bool
    detail: str  # "HTTP 500", "timed out after 5s", "598 of 600 requests answered"
    seconds: float
    timed_out: bool = False
    on_failure: HookFailure = HookFailure.HOLD


@dataclass(frozen=True)
class HookRun:
    """The hooks run before a release enters one step, all finished."""

    release_id: str
    step: int  # the step the hooks guard (index into the release's weights)
    weight: int  # that step's weight
    results: tuple[HookResult, ...]
    finished_at: float

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def on_failure(self) -> HookFailure:
        """What the failed hooks ask for: the strictest of them (rollback > pause > hold)."""
        asked = {r.on_failure for r in self.results if not r.passed}
        for failure in (HookFailure.ROLLBACK, HookFailure.PAUSE):
            if failure in asked:
                return failure
        return HookFailure.HOLD

    def to_dict(self) -> dict[str, object]:
        """For the audit entry of the decision the run led to."""
        return {
            "step": self.step,
            "weight": self.weight,
            "passed": self.passed,
            "results": [
                {
                    "kind": r.kind,
                    "target": r.target,
                    "passed": r.passed,
                    "detail": r.detail,
                    "seconds": round(r.seconds, 3),
                    "timed_out": r.timed_out,
                }
                for r in self.results
            ],
        }


def fill(template: str, *, service: str, version: str) -> str:
    """A hook URL with its placeholders filled; the values are quoted as path segments, so a
    version cannot change which host or path is called."""
    return template.replace("{service}", quote(service, safe="")).replace(
        "{version}", quote(version, safe="")
    )


async def run_hook(hook: Hook, *, service: str, version: str) -> HookResult:
    """One hook under its timeout; never raises (a failure is a result)."""
    started = time.monotonic()
    kind = "load" if hook.load is not None else "url"
    template = hook.load.url if hook.load is not None else (hook.url or "")
    target = fill(template, service=service, version=version)
    try:
        async with asyncio.timeout(hook.timeout):
            if hook.load is not None:
                passed, detail = await _load(target, hook.load.seconds, hook.load.rate)
            else:
                passed, detail = await _call(target, hook.method, hook.timeout)
    except TimeoutError:
        return HookResult(
            kind,
            target,
            False,
            f"timed out after {hook.timeout:g}s",
            time.monotonic() - started,
            timed_out=True,
            on_failure=hook.on_failure,
        )
    return HookResult(
        kind, target, passed, detail, time.monotonic() - started, on_failure=hook.on_failure
    )


async def _call(url: str, method: str, timeout: float) -> tuple[bool, str]:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.request(method, url, allow_redirects=False) as response,
        ):
            return 200 <= response.status < 300, f"HTTP {response.status}"
    except aiohttp.ClientError as exc:
        # The exception's text names the host and port, never a secret: the URL is the policy's.
        return False, f"no answer ({type(exc).__name__})"


async def _load(target: str, seconds: float, rate: float) -> tuple[bool, str]:
    generator = LoadGenerator(
        [target],
        per_second=rate,
        timeout=min(LOAD_REQUEST_TIMEOUT, seconds),
        max_seconds=seconds,
    )
    generator.start()
    try:
        stats = await generator.finished()
    finally:
        await generator.stop()  # a timeout or a cancel must not leave requests running
    answered = sum(stats.answered.values())
    passed = stats.sent > 0 and answered >= MIN_ANSWERED_SHARE * stats.sent
    return passed, f"{answered} of {stats.sent} requests answered"


class HookRunner:
    """Runs each release's hooks for its next step in the background, once per step entry.

    Kept in memory: after a restart (or a lease moving to another process) the hooks of the
    step under way run again, which a smoke test or a load burst tolerates.
    """

    def __init__(self) -> None:
        self._tasks: dict[tuple[str, int], asyncio.Task[HookRun]] = {}
        # Finished runs already said in the thread: (release id, step, finished at).
        self._reported: set[tuple[str, int, float]] = set()

    def status(
        self,
        release_id: str,
        step: int,
        weight: int,
        hooks: Sequence[Hook],
        *,
        service: str,
        version: str,
    ) -> HookRun | None:
        """The finished run of ``hooks`` before ``step``, starting it on first ask; None while
        it runs."""
        key = (release_id, step)
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.create_task(
                self._run(release_id, step, weight, hooks, service, version),
                name=f"hooks-{release_id}-{step}",
            )
            self._tasks[key] = task
            return None
        if not task.done():
            return None
        return task.result()

    def is_new(self, run: HookRun) -> bool:
        """Whether ``run`` has not been said (and audited) yet."""
        return _run_key(run) not in self._reported

    def mark_reported(self, run: HookRun) -> None:
        self._reported.add(_run_key(run))

    def forget(self, release_id: str, step: int) -> None:
        """Drop a finished run, so that the hooks run again on the next ask (after a hold, or
        when a paused release is resumed)."""
        key = (release_id, step)
        task = self._tasks.get(key)
        if task is not None and task.done():
            del self._tasks[key]

    async def retain(self, active: Iterable[str]) -> None:
        """Stop and forget the hooks of releases no longer driven here."""
        keep = set(active)
        gone = [key for key in self._tasks if key[0] not in keep]
        tasks = [self._tasks.pop(key) for key in gone]
        self._reported = {k for k in self._reported if k[0] in keep}
        if tasks:
            await cancel_and_wait(tasks, 5.0)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._reported.clear()
        if tasks:
            await cancel_and_wait(tasks, 5.0)

    @staticmethod
    async def _run(
        release_id: str,
        step: int,
        weight: int,
        hooks: Sequence[Hook],
        service: str,
        version: str,
    ) -> HookRun:
        results = await asyncio.gather(
            *(run_hook(h, service=service, version=version) for h in hooks)
        )
        for r in results:
            log.info(
                "hook %s %s before %d%%: %s (%s)",
                r.kind,
                r.target,
                weight,
                "passed" if r.passed else "failed",
                r.detail,
            )
        return HookRun(release_id, step, weight, tuple(results), time.time())


def _run_key(run: HookRun) -> tuple[str, int, float]:
    return (run.release_id, run.step, run.finished_at)


_MOVES = frozenset({Verdict.ADVANCE, Verdict.REQUEST_APPROVAL})


def gated(decision: Decision, run: HookRun | None, weight: int) -> Decision:
    """The judge's decision with the step hooks before ``weight`` taken into account (pure).

    The judge's own rollback or pause comes first. Otherwise traffic moves only once every hook
    passed; a failed hook holds, pauses or rolls back as its policy says.
    """
    if decision.verdict in (Verdict.ROLLBACK, Verdict.PAUSE):
        return decision
    if run is None:
        if decision.verdict in _MOVES:
            return replace(
                decision,
                verdict=Verdict.HOLD,
                reason=f"waiting for the step hooks before {weight}%",
            )
        return decision
    if run.passed:
        return decision
    failed = next(r for r in run.results if not r.passed)
    reason = f"a step hook before {weight}% failed: {failed.kind} {failed.target}: {failed.detail}"
    if run.on_failure is HookFailure.ROLLBACK:
        return replace(decision, verdict=Verdict.ROLLBACK, reason=reason)
    if run.on_failure is HookFailure.PAUSE:
        return replace(decision, verdict=Verdict.PAUSE, reason=reason, outage=False)
    if decision.verdict in _MOVES:
        return replace(decision, verdict=Verdict.HOLD, reason=reason)
    return decision
