"""Webhook step hooks end to end: the bot as `serve` runs it (the Slack rig, a real Redis), a
local CI stand-in that receives the signed POST and calls back over HTTP, and the release
moving (or not) on the job's answer. A person's /advance waits for the hooks too; a process
that takes over a release waits for the job already started instead of starting another.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bot.engine.ci_jobs import CiJobs, HookSubject
from bot.engine.hooks import HookRunner
from bot.engine.release_page import read_page
from bot.errors import HooksNotPassedError
from bot.release.hook_runs import CallState
from bot.release.policy import Hook, WebhookHook, parse_policy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, State
from bot.render.status import status_for
from bot.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from bot.store.store import Store
from handlers.server import AccessLog
from tests.support.github_api import GitHubStandIn
from tests.support.procs import free_port
from tests.support.slack_api import SlackStandIn
from tests.support.slack_rig import ALICE, CHECKOUT_CHANNEL, SlackRig, wait_until
from tests.support.standin import LocalServer

pytestmark = pytest.mark.timeout(60)

SECRET_ENV = "SHIPWATCH_TEST_CI_SECRET"
SECRET = "ci-hook-secret-0123456789"


class Ci(LocalServer):
    """A CI system's trigger endpoint: records each start, answers ``start_status``, and (when
    ``answer`` is set) calls the job's callback after ``delay`` seconds."""

    def __init__(
        self, *, start_status: int = 201, answer: dict[str, Any] | None = None, delay: float = 0.2
    ) -> None:
        super().__init__()
        self.start_status = start_status
        self.answer = answer
        self.delay = delay
        self.starts: list[tuple[dict[str, str], dict[str, Any], bool]] = []  # headers, body, signed
        self.callbacks: list[tuple[int, dict[str, Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/trigger", self._trigger)

    async def _trigger(self, request: web.Request) -> web.Response:
        raw = await request.read()
        headers = dict(request.headers)
        signed = verify_signature(
            SECRET, headers.get(TIMESTAMP_HEADER, ""), raw, headers.get(SIGNATURE_HEADER, "")
        )
        body = json.loads(raw)
        self.starts.append((headers, body, signed))
        if self.start_status < 300 and self.answer is not None:
            task = asyncio.create_task(self._call_back(body["callback"]["url"], self.answer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response({"pipeline": len(self.starts)}, status=self.start_status)

    async def _call_back(self, url: str, answer: dict[str, Any]) -> None:
        await asyncio.sleep(self.delay)
        self.callbacks.append(await post_callback(url, answer))


async def post_callback(url: str, answer: object) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, json=answer) as resp:
        return resp.status, await resp.json()


def policy_text(ci: Ci, *, timeout: str = "5s", on_failure: str = "hold") -> str:
    return f"""
defaults:
  steps: [10, {{weight: 50, hooks: [{{webhook: {{url: "{ci.base_url}/trigger",
    secret_env: {SECRET_ENV}, request_timeout: 1s}}, timeout: {timeout},
    on_failure: {on_failure}}}]}}, 100]
  hold: 300ms
  interval: 100ms
  window: 1s
  bake: 300ms
  metrics:
    - name: error_rate
      query: 'errors{{service="{{service}}",version="{{version}}"}}'
      max: 0.05
services:
  checkout:
    channel: "{CHECKOUT_CHANNEL}"
"""


@pytest.fixture(autouse=True)
def _ci_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret the policy's hooks sign with, where the composition root reads it."""
    monkeypatch.setenv(SECRET_ENV, SECRET)


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    async with SlackStandIn() as stand_in:
        yield stand_in


async def start_rig(slack: SlackStandIn, redis_url: str, ci: Ci, **policy: str) -> SlackRig:
    port = free_port()
    rig = SlackRig(
        slack,
        redis_url,
        policy=parse_policy(policy_text(ci, **policy), "webhook hooks"),
        extra_settings={"SHIPWATCH_PUBLIC_URL": f"http://127.0.0.1:{port}"},
        port=port,
    )
    await rig.start()
    assert rig.core.app.ci_jobs is not None
    rig.core.app.ci_jobs.poll = 0.05
    return rig


async def deploy(rig: SlackRig) -> str:
    result = await rig.core.app.service.deploy(
        ALICE_IN_SLACK, "checkout", "v2", DeployOptions(stable="v1")
    )
    return result.release.id


async def test_a_ci_job_that_passes_lets_the_release_through_and_pings_nobody(
    slack: SlackStandIn,
    redis_url: str,
    redis_client: aioredis.Redis,
) -> None:
    detail = "42 tests passed <!channel> <@U0EVIL01>\n\x1b[31m" + "x" * 400
    async with Ci(answer={"status": "passed", "detail": detail}, delay=0.6) as ci:
        rig = await start_rig(slack, redis_url, ci)
        try:
            release_id = await deploy(rig)
            rig.start_controller()
            await wait_until(lambda: bool(ci.starts), "the CI job's start")
            # While the job runs, a person's /advance waits for it like the controller does.
            with pytest.raises(HooksNotPassedError) as refused:
                await rig.core.app.service.advance(ALICE_IN_SLACK, "checkout")
            assert "the step hooks before it are running" in str(refused.value)
            store = rig.core.app.store
            # Past its hold, the status says what the release waits for.
            await wait_until(
                lambda: _waiting(store, release_id), "the release to wait on its hooks"
            )
            held = await store.get(release_id)
            assert held is not None
            card = str(status_for(held, rig.policy).blocks)
            assert "hold · waiting for the step hooks before 50%" in card
            await wait_until(
                lambda: _state_is(store, release_id, State.SUCCEEDED), "the release to succeed"
            )
            await rig.settle()
            page = await read_page(store, rig.policy, release_id)
            ts = await rig.status_ts(CHECKOUT_CHANNEL)
            thread = " ".join(str(m) for m in slack.thread(CHECKOUT_CHANNEL, ts))
            url = ci.starts[0][1]["callback"]["url"]
            again = await post_callback(url, {"status": "passed"})
            other = await post_callback(url, {"status": "failed"})
        finally:
            await rig.close()

    [(headers, body, signed)] = ci.starts
    assert signed and headers["Idempotency-Key"]
    assert body["type"] == "shipwatch.step_hook"
    assert body["release"] | {"id": None} == {
        "id": None,
        "service": "checkout",
        "version": "v2",
        "stable_version": "v1",
        "step": 1,
        "weight": 50,
    }
    token = body["callback"]["url"].rsplit("/", 1)[1]
    assert headers["Idempotency-Key"] == token
    # The release page lists the check with the job's words.
    assert page is not None and [p.weight for p in page.hooks] == [50]
    assert page.release.waiting_on == ""  # it moved on
    assert page.hooks[0].run is not None and page.hooks[0].run.passed
    [(status, answer)] = ci.callbacks
    assert status == 200 and answer["recorded"] is True and answer["weight"] == 50
    # The job's words arrive as one escaped line, cut short: no ping, no control characters.
    assert "the CI job passed: 42 tests passed &lt;!channel&gt;" in thread
    assert "<!channel>" not in thread and "<@U0EVIL01>" not in thread and "\x1b" not in thread
    # A CI retrying the same answer hears the same; a different one is refused.
    assert again[0] == 200 and again[1]["reason"] == "already recorded"
    assert other[0] == 409


async def test_a_ci_job_that_fails_rolls_back_when_its_policy_says_so(
    slack: SlackStandIn, redis_url: str, redis_client: aioredis.Redis
) -> None:
    async with Ci(answer={"status": "failed", "detail": "3 smoke tests failed"}) as ci:
        rig = await start_rig(slack, redis_url, ci, on_failure="rollback")
        try:
            release_id = await deploy(rig)
            rig.start_controller()
            store = rig.core.app.store
            await wait_until(
                lambda: _state_is(store, release_id, State.ROLLED_BACK), "the rollback"
            )
            release = await store.get(release_id)
        finally:
            await rig.close()
    assert release is not None and release.weight == 0
    assert "the CI job failed: 3 smoke tests failed" in release.reason
    assert len(ci.starts) == 1


async def test_a_ci_job_that_never_answers_times_out_and_a_late_answer_is_refused(
    slack: SlackStandIn, redis_url: str, redis_client: aioredis.Redis
) -> None:
    async with Ci(answer=None) as ci:
        rig = await start_rig(slack, redis_url, ci, timeout="1500ms", on_failure="pause")
        try:
            release_id = await deploy(rig)
            rig.start_controller()
            store = rig.core.app.store
            await wait_until(lambda: _state_is(store, release_id, State.PAUSED), "the pause")
            release = await store.get(release_id)
            [(_, body, _)] = ci.starts
            late = await post_callback(body["callback"]["url"], {"status": "passed"})
            forged = await post_callback(rig.url("/api/v1/hooks/" + "A" * 43), {"status": "passed"})
            junk = await post_callback(rig.url("/api/v1/hooks/short%3Cb%3E"), {"status": "passed"})
            invalid = await post_callback(body["callback"]["url"], {"status": "green"})
        finally:
            await rig.close()
    assert release is not None and release.weight == 10
    assert "timed out after 1.5s" in release.reason
    assert late[0] == 410 and "too late" in late[1]["error"]
    assert forged[0] == 404 and junk[0] == 404
    assert invalid[0] == 422 and "passed" in invalid[1]["error"]


async def test_a_ci_that_refuses_the_start_fails_the_hook_after_its_retries(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client)
    async with Ci(start_status=503) as ci:
        jobs = CiJobs(store.hook_runs, "http://127.0.0.1:1", backoff=(0.01, 0.01), poll=0.01)
        passed, detail = await jobs.run(
            WebhookHook(url=f"{ci.base_url}/trigger"), f"{ci.base_url}/trigger", 5.0, SUBJECT, 0, 0
        )
    assert not passed and detail == "the CI job was not started: HTTP 503"
    assert len(ci.starts) == 3  # the first try and two retries, none signed (no secret_env)
    assert not any(signed for _, _, signed in ci.starts)
    call = await store.hook_runs.latest_call(SUBJECT.release_id, SUBJECT.step, 0)
    assert call is not None and call.state is CallState.FAILED


async def test_without_a_public_url_or_a_secret_the_hook_fails_and_says_why(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client)
    hook = WebhookHook(url="http://127.0.0.1:1/trigger", secret_env=SECRET_ENV)
    nowhere = CiJobs(store.hook_runs, None)
    unsigned = CiJobs(store.hook_runs, "https://shipwatch.example", env={})
    assert await nowhere.run(hook, hook.url, 5.0, SUBJECT, 0, 0) == (
        False,
        "SHIPWATCH_PUBLIC_URL is not set, so a CI job has no URL to call back",
    )
    assert await unsigned.run(hook, hook.url, 5.0, SUBJECT, 0, 0) == (
        False,
        f"${SECRET_ENV} is not set, so the job cannot be started signed",
    )


async def test_a_process_taking_over_waits_for_the_job_already_started(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client)
    async with Ci(answer=None) as ci:
        hooks = [Hook(webhook=WebhookHook(url=f"{ci.base_url}/trigger"), timeout=30)]
        first = HookRunner(store.hook_runs, CiJobs(store.hook_runs, "http://sw", poll=0.02))
        assert first.status(SUBJECT, hooks) is None
        await wait_until(lambda: bool(ci.starts), "the CI job's start")
        await first.close()  # the process stops while the job runs

        second = HookRunner(store.hook_runs, CiJobs(store.hook_runs, "http://sw", poll=0.02))
        assert second.status(SUBJECT, hooks) is None
        await asyncio.sleep(0.2)
        assert len(ci.starts) == 1  # not started again
        token = ci.starts[0][1]["callback"]["url"].rsplit("/", 1)[1]
        jobs = CiJobs(store.hook_runs, "http://sw")  # the web process takes the answer
        said, _ = await jobs.answer(token, True, "ok")
        assert said.value == "recorded"
        await wait_until(lambda: second.status(SUBJECT, hooks) is not None, "the run to end")
        run = second.status(SUBJECT, hooks)
        await second.close()
    assert run is not None and run.passed
    assert run.results[0].detail == "the CI job passed: ok"
    progress = await store.hook_runs.get(SUBJECT.release_id, SUBJECT.step)
    assert progress is not None and progress.run is not None
    assert progress.run.to_dict() == run.to_dict()


ALICE_IN_SLACK = Actor(user=ALICE, surface="slack")
SUBJECT = HookSubject("r-1", "checkout", "v2", "v1", 1, 50)


async def _waiting(store: Store, release_id: str) -> bool:
    release = await store.get(release_id)
    return release is not None and release.waiting_on.startswith("waiting for the step hooks")


async def _state_is(store: Store, release_id: str, state: State) -> bool:
    release = await store.get(release_id)
    return release is not None and release.state is state


async def test_a_github_hook_starts_a_workflow_by_repository_dispatch(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client)
    jobs = CiJobs(store.hook_runs, "https://shipwatch.example", env={"GH_TOKEN": "ghs_ok"})
    jobs.poll = 0.02

    async with GitHubStandIn(token="ghs_ok") as github:

        async def workflow(event: dict[str, Any]) -> None:
            # The workflow reads its inputs from the client payload and calls back.
            callback = event["client_payload"]["callback"]["url"]
            await jobs.answer(callback.rsplit("/", 1)[1], True, "workflow run 7 passed")

        github.on_dispatch = workflow
        url = f"{github.api_url}/repos/acme/checkout/dispatches"
        hook = WebhookHook(url=url, format="github", token_env="GH_TOKEN")
        passed = await jobs.run(hook, url, 5.0, SUBJECT, 0, 0)
        wrong = WebhookHook(url=url, format="github", token_env="GH_OTHER")
        jobs.env = {"GH_OTHER": "ghs_wrong"}
        refused = await jobs.run(wrong, url, 5.0, SUBJECT, 1, 0)

    assert passed == (True, "the CI job passed: workflow run 7 passed")
    [event] = github.dispatches
    assert event["event_type"] == "shipwatch-step-hook"
    assert set(event["client_payload"]) == {"release", "callback"}
    assert event["client_payload"]["release"]["version"] == "v2"
    first = github.requests[0].headers
    assert first["authorization"] == "Bearer ghs_ok"
    assert first["accept"] == "application/vnd.github+json"
    assert first["x-github-api-version"] == "2022-11-28"
    # A token GitHub refuses is a final answer: said, not retried.
    assert refused == (False, "the CI job was not started: HTTP 401")
    assert len(github.requests) == 2


def test_the_access_log_leaves_a_callback_token_out(caplog: pytest.LogCaptureFixture) -> None:
    token = "T" * 43
    logger = logging.getLogger("test.access")
    access = AccessLog(logger, "")
    with caplog.at_level(logging.INFO, logger="test.access"):
        access.log(make_mocked_request("POST", f"/api/v1/hooks/{token}"), web.Response(), 0.01)
        access.log(make_mocked_request("GET", "/releases"), web.Response(), 0.01)
    assert [r.getMessage() for r in caplog.records] == [
        "POST /api/v1/hooks/… 200 10ms",
        "GET /releases 200 10ms",
    ]
