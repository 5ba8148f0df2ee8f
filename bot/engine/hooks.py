"""Step hooks: the checks a release must pass before its traffic moves to the next step.

A hook is a smoke-test URL (2xx passes), synthetic load against the canary (or, for a
blue-green release, the idle colour) for some seconds, so the judge has requests to read while
the step waits, or a CI job started through a webhook and waited for until it calls back
(bot.engine.ci_jobs). Hooks run in background tasks, never on the decision path: the controller
asks ``HookRunner.status`` each round and gets "still running" or the finished run at once.
Every hook runs under its own timeout; a hook that times out has failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from urllib.parse import quote

import aiohttp

from bot.engine.ci_jobs import CiJobs, HookSubject
from bot.engine.load import LoadGenerator
from bot.errors import DependencyError
from bot.judging.decision import Decision, Verdict
from bot.redact import redact, redact_url
from bot.release.hook_runs import HookResult, HookRun
from bot.release.policy import Hook, HookFailure, WebhookHook
from bot.store.hook_runs import HookRuns
from bot.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# A load hook passes when at least this share of its requests got an answer from the service:
# whether the answers are good is the judge's business (its metrics), not the hook's.
MIN_ANSWERED_SHARE = 0.9
# One load request never waits longer than this, whatever the hook's timeout.
LOAD_REQUEST_TIMEOUT = 2.0

Said = tuple[bool, str]  # passed, and what happened in a few words
# Starts a webhook hook's CI job (its url, the hook's timeout) and waits for its answer.
CiJob = Callable[[WebhookHook, str, float], Awaitable[Said]]


def fill(template: str, *, service: str, version: str) -> str:
    """A hook URL with its placeholders filled; the values are quoted as path segments, so a
    version cannot change which host or path is called."""
    return template.replace("{service}", quote(service, safe="")).replace(
        "{version}", quote(version, safe="")
    )


async def run_hook(
    hook: Hook,
    *,
    service: str,
    version: str,
    ci_job: CiJob | None = None,
) -> HookResult:
    """One hook under its timeout; never raises (a failure is a result). ``ci_job`` starts and
    waits for a webhook hook's job (url, timeout) for the release and step at hand."""
    started = time.monotonic()
    kind = hook.kind
    target = fill(_template(hook), service=service, version=version)
    # What the thread, the audit, the page and the log show: a CI trigger URL often carries its
    # token in the query, so a webhook's is shown without query or credentials.
    shown = redact_url(target) if hook.webhook is not None else redact(target)
    try:
        async with asyncio.timeout(hook.timeout):
            if hook.load is not None:
                passed, detail = await _load(target, hook.load.seconds, hook.load.rate)
            elif hook.webhook is not None:
                if ci_job is None:
                    passed, detail = False, "CI jobs cannot be started from here"
                else:
                    passed, detail = await ci_job(hook.webhook, target, hook.timeout)
            else:
                passed, detail = await _call(target, hook.method, hook.timeout)
    except TimeoutError:
        return HookResult(
            kind,
            shown,
            False,
            f"timed out after {hook.timeout:g}s",
            time.monotonic() - started,
            timed_out=True,
            on_failure=hook.on_failure,
        )
    return HookResult(
        kind, shown, passed, detail, time.monotonic() - started, on_failure=hook.on_failure
    )


def _template(hook: Hook) -> str:
    if hook.load is not None:
        return hook.load.url
    if hook.webhook is not None:
        return hook.webhook.url
    return hook.url or ""


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

    Where they stand is kept in Redis (bot.store.hook_runs): the web process reads it to refuse
    a person's move past hooks that have not passed. A process that takes a release over (a
    restart, a lease moving) uses a run already finished, and otherwise runs the step's url and
    load hooks again (a smoke test or a load burst tolerates that) while waiting for the CI jobs
    already started rather than starting them again.
    """

    def __init__(
        self, runs: HookRuns, ci: CiJobs | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.runs = runs
        self.ci = ci or CiJobs(runs, None)
        self.clock = clock
        self._tasks: dict[tuple[str, int], asyncio.Task[HookRun]] = {}
        # Finished runs already said in the thread: (release id, step, finished at).
        self._reported: set[tuple[str, int, float]] = set()

    def status(self, subject: HookSubject, hooks: Sequence[Hook]) -> HookRun | None:
        """The finished run of ``hooks`` before the subject's step, starting it on first ask;
        None while it runs (or after it could not be run: it is tried again on the next ask)."""
        key = (subject.release_id, subject.step)
        task = self._tasks.get(key)
        if task is None:
            self._tasks[key] = asyncio.create_task(
                self._run(subject, hooks), name=f"hooks-{subject.release_id}-{subject.step}"
            )
            return None
        if not task.done():
            return None
        if task.cancelled() or task.exception() is not None:
            del self._tasks[key]
            log.warning(
                "the step hooks before %d%% could not be run: %r", subject.weight,
                None if task.cancelled() else task.exception(),
            )  # fmt: skip
            return None
        return task.result()

    def is_new(self, run: HookRun) -> bool:
        """Whether ``run`` has not been said (and audited) yet."""
        return _run_key(run) not in self._reported

    async def mark_reported(self, run: HookRun) -> None:
        self._reported.add(_run_key(run))
        try:
            await self.runs.finished(run, reported=True)
        except DependencyError as exc:
            # Only a takeover's second report of the run is at stake: never the release.
            log.warning("could not mark the step hooks before %d%% as said: %s", run.weight, exc)

    async def forget(self, release_id: str, step: int) -> None:
        """Drop a finished run, so that the hooks run again on the next ask (after a hold, or
        when a paused release is resumed)."""
        key = (release_id, step)
        task = self._tasks.get(key)
        if task is not None and task.done():
            del self._tasks[key]
            await self.runs.cleared(release_id, step)

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

    async def _run(self, subject: HookSubject, hooks: Sequence[Hook]) -> HookRun:
        progress = await self.runs.get(subject.release_id, subject.step)
        if progress is not None and progress.run is not None:
            # Finished by the process that drove the release before: said once, not twice.
            if progress.reported:
                self._reported.add(_run_key(progress.run))
            return progress.run
        if progress is not None:
            since = progress.started_at  # started before: wait for its CI jobs, not new ones
        else:
            since = self.clock()
            await self.runs.started(subject.release_id, subject.step, subject.weight, since)

        def ci_job(index: int) -> CiJob:
            async def start_and_wait(hook: WebhookHook, url: str, timeout: float) -> Said:
                return await self.ci.run(hook, url, timeout, subject, index, since)

            return start_and_wait

        results = await asyncio.gather(
            *(
                run_hook(h, service=subject.service, version=subject.version, ci_job=ci_job(i))
                for i, h in enumerate(hooks)
            )
        )
        for r in results:
            log.info(
                "hook %s %s before %d%%: %s (%s)",
                r.kind,
                r.target,
                subject.weight,
                "passed" if r.passed else "failed",
                r.detail,
            )
        finished = self.clock()
        run = HookRun(
            subject.release_id, subject.step, subject.weight, tuple(results), finished, since
        )
        await self.runs.finished(run)
        return run


def _run_key(run: HookRun) -> tuple[str, int, float]:
    return (run.release_id, run.step, run.finished_at)


_MOVES = frozenset({Verdict.ADVANCE, Verdict.REQUEST_APPROVAL})


def held_by_hooks(judged: Decision, gate: Decision) -> str:
    """What keeps a release from the move its judge decided (the gate's reason), or ""."""
    return gate.reason if judged.verdict in _MOVES and gate.verdict is Verdict.HOLD else ""


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
    failed = run.first_failure
    assert failed is not None
    reason = f"a step hook before {weight}% failed: {failed.kind} {failed.target}: {failed.detail}"
    if run.on_failure is HookFailure.ROLLBACK:
        return replace(decision, verdict=Verdict.ROLLBACK, reason=reason)
    if run.on_failure is HookFailure.PAUSE:
        return replace(decision, verdict=Verdict.PAUSE, reason=reason, outage=False)
    if decision.verdict in _MOVES:
        return replace(decision, verdict=Verdict.HOLD, reason=reason)
    return decision
