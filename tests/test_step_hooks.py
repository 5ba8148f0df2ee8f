"""Step hooks against a real redis-server and local HTTP stand-ins: a smoke test that fails holds
the step until it passes, a hook that times out pauses or rolls back as its policy says, and a
load hook drives the product's load generator against a real sample service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bot.demo.service import DemoService
from bot.engine.actuator import TrafficActuator
from bot.engine.ci_jobs import HookSubject
from bot.engine.controller import Controller
from bot.engine.events import EventBus, EventKind, ReleaseEvent
from bot.engine.hooks import HookRunner, run_hook
from bot.engine.service import ReleaseService
from bot.errors import HooksNotPassedError, PolicyError, UserError
from bot.flags import FlagWriter
from bot.metrics.synthetic import SyntheticSource
from bot.release.hook_runs import HookResult, HookRun
from bot.release.policy import (
    Hook,
    HookFailure,
    LoadHook,
    Policy,
    Risk,
    Strategy,
    WebhookHook,
    parse_policy,
)
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, Release, State, new_release
from bot.render.policy_words import explain_service
from bot.render.thread import event_message
from bot.store.audit import AuditEntry
from bot.store.store import Store
from bot.traffic.flags import FlagsBackend
from tests.support.procs import free_port
from tests.support.recorder import Recorder
from tests.support.standin import LocalServer

pytestmark = pytest.mark.timeout(60)

TICK = 0.05
DEADLINE = 15.0
ALICE = Actor(user="alice", surface="slack")
BOB = Actor(user="bob", surface="slack")


def _policy(hook: str) -> str:
    return f"""
defaults:
  steps: [10, {{weight: 50, hooks: [{hook}]}}, 100]
  hold: 300ms
  interval: 100ms
  window: 1s
  bake: 300ms
  metrics:
    - name: error_rate
      query: 'errors{{service="{{service}}",version="{{version}}"}}'
      max: 0.05
services:
  checkout: {{}}
"""


class Smoke(LocalServer):
    """A smoke-test endpoint: answers ``statuses`` in turn (the last one from then on), or
    never answers while ``hang`` is set."""

    def __init__(self, statuses: list[int], *, hang: bool = False) -> None:
        super().__init__()
        self.statuses = statuses
        self.hang = hang
        self.calls: list[tuple[str, str]] = []  # (method, path with query)

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("*", "/smoke", self._smoke)

    async def _smoke(self, request: web.Request) -> web.Response:
        self.calls.append((request.method, request.path_qs))
        if self.hang:
            await self.stall()
        status = self.statuses[min(len(self.calls), len(self.statuses)) - 1]
        return web.Response(status=status, text="smoke")


@dataclass
class Rig:
    store: Store
    service: ReleaseService
    controller: Controller
    events: EventBus
    recorder: Recorder

    async def drive(self, release_id: str, until: Callable[[Release], bool]) -> Release:
        deadline = time.monotonic() + DEADLINE
        while not until(release := await self._get(release_id)):
            assert time.monotonic() < deadline, f"stuck: {release.describe_state()}"
            await self.controller.run_once()
            await asyncio.sleep(0.02)
        return release

    async def _get(self, release_id: str) -> Release:
        release = await self.store.get(release_id)
        assert release is not None
        return release

    async def hook_audits(self) -> list[AuditEntry]:
        entries = reversed(await self.store.audit_tail(10_000))
        return [e for e in entries if "hooks" in e.detail]


@pytest.fixture
async def make_rig(redis_client: aioredis.Redis) -> AsyncIterator[Callable[[str], Rig]]:
    made: list[tuple[TrafficActuator, EventBus, Controller]] = []

    def make(hook: str) -> Rig:
        policy = parse_policy(_policy(hook), "test")
        store = Store(redis_client)
        recorder = Recorder()
        events = EventBus([recorder])
        flags = FlagsBackend(FlagWriter(redis_client))
        actuator = TrafficActuator(store, lambda _service: flags, events)
        service = ReleaseService(store, policy, actuator, events)
        controller = Controller(
            store, policy, SyntheticSource(seed=1), actuator, events, tick=TICK, owner="a"
        )
        events.start()
        made.append((actuator, events, controller))
        return Rig(store, service, controller, events, recorder)

    yield make
    for actuator, events, controller in made:
        await controller.hooks.close()
        await actuator.close()
        await events.close()


async def test_a_failing_smoke_hook_holds_the_step_until_it_passes(
    make_rig: Callable[[str], Rig],
) -> None:
    async with Smoke([500, 200]) as smoke:
        url = f"{smoke.base_url}/smoke?v={{version}}"
        rig = make_rig(f'{{url: "{url}", method: POST, timeout: 2s}}')
        release = (
            await rig.service.deploy(ALICE, "checkout", "v2", DeployOptions(stable="v1"))
        ).release
        at_50 = await rig.drive(release.id, lambda r: r.weight >= 50)

    assert at_50.state is State.PROGRESSING
    # Called once (500: held), again after the step's hold (200: passed); POSTed, version filled.
    assert smoke.calls == [("POST", "/smoke?v=v2")] * 2
    await rig.events.drain()
    failed = next(e for e in rig.recorder.events if e.kind is EventKind.HOOK_FAILED)
    passed = next(e for e in rig.recorder.events if e.kind is EventKind.HOOKS_PASSED)
    advanced = [e for e in rig.recorder.events if e.kind is EventKind.STEP_ADVANCED]
    assert failed.release.weight == 10 and failed.hooks is not None
    assert failed.hooks.results[0].detail == "HTTP 500"
    assert rig.recorder.events.index(failed) < rig.recorder.events.index(passed)
    assert advanced[-1].release.weight == 50
    assert rig.recorder.events.index(passed) < rig.recorder.events.index(advanced[-1])
    # The thread says it, the URL escaped, and what happens next.
    said = event_message(failed).text
    assert "step hooks before 50% failed (hold)" in said
    blocks = str(event_message(failed).blocks)
    assert "holds at 10%" in blocks and "HTTP 500" in blocks
    # Each run is on the audit once: the failure, then the pass.
    audits = await rig.hook_audits()
    assert [a.detail["hooks"]["passed"] for a in audits] == [False, True]
    assert audits[0].detail["hooks"]["results"][0]["target"].endswith("/smoke?v=v2")


async def test_a_person_cannot_move_past_hooks_that_failed(
    make_rig: Callable[[str], Rig],
) -> None:
    async with Smoke([500]) as smoke:
        rig = make_rig(f'{{url: "{smoke.base_url}/smoke", timeout: 2s}}')
        release = (
            await rig.service.deploy(ALICE, "checkout", "v2", DeployOptions(stable="v1"))
        ).release
        deadline = time.monotonic() + DEADLINE
        while not await rig.hook_audits():
            assert time.monotonic() < deadline, "the hooks never finished"
            await rig.controller.run_once()
            await asyncio.sleep(0.02)
        with pytest.raises(HooksNotPassedError) as advanced:
            await rig.service.advance(ALICE, "checkout")
        with pytest.raises(HooksNotPassedError) as approved:
            await rig.service.approve(BOB, "checkout")  # an approval given ahead of the hold
        after = await rig._get(release.id)

    said = str(advanced.value)
    assert said.startswith(
        "checkout#1 (v2) cannot move to 50% yet: the step hooks before it failed"
    )
    assert f"(url {smoke.base_url}/smoke: HTTP 500)" in said and "Nothing was changed" in said
    assert isinstance(approved.value, HooksNotPassedError)
    assert after.weight == 10 and after.state is State.PROGRESSING  # nothing moved
    refusals = [e for e in await rig.store.audit_tail(100) if e.action in ("advance", "approve")]
    assert refusals and all("step hooks failed" in e.reason for e in refusals)


@pytest.mark.parametrize(
    ("on_failure", "ends_in"),
    [("pause", State.PAUSED), ("rollback", State.ROLLED_BACK)],
)
async def test_a_hook_that_times_out_does_what_its_policy_says(
    make_rig: Callable[[str], Rig], on_failure: str, ends_in: State
) -> None:
    async with Smoke([200], hang=True) as smoke:
        url = f"{smoke.base_url}/smoke"
        rig = make_rig(f'{{url: "{url}", timeout: 300ms, on_failure: {on_failure}}}')
        release = (
            await rig.service.deploy(ALICE, "checkout", "v2", DeployOptions(stable="v1"))
        ).release
        ended = await rig.drive(release.id, lambda r: r.state is ends_in)

    assert ended.weight in (0, 10)  # never 50: the traffic did not move past the hook
    assert (
        "a step hook before 50% failed" in ended.reason and "timed out after 0.3s" in ended.reason
    )
    await rig.events.drain()
    failed = next(e for e in rig.recorder.events if e.kind is EventKind.HOOK_FAILED)
    assert failed.hooks is not None and failed.hooks.results[0].timed_out
    assert not any(
        e.kind is EventKind.STEP_ADVANCED and e.release.weight == 50 for e in rig.recorder.events
    )
    [audit] = await rig.hook_audits()
    assert audit.detail["hooks"]["results"][0]["timed_out"] is True


async def test_a_load_hook_sends_the_sample_service_requests_for_the_named_version() -> None:
    svc = DemoService("search", "v1")
    await svc.start()
    try:
        hook = Hook(
            load=LoadHook(url=f"{svc.url}/preview/{{version}}", seconds=1.0, rate=50), timeout=5
        )
        result = await run_hook(hook, service="search", version="v2")
        async with aiohttp.ClientSession() as session, session.get(f"{svc.url}/metrics") as resp:
            exposition = await resp.text()
    finally:
        await svc.stop()
    assert result.passed, result
    assert result.kind == "load" and result.target == f"{svc.url}/preview/v2"
    answered = int(result.detail.split(" of ")[0])
    assert answered >= 30  # ~50 in a second, minus the slots a busy test machine drops
    # Served by the idle version, which no user reaches (the instance's own version is v1).
    served = {
        (s.labels["version"], s.labels["code"]): s.value
        for family in text_string_to_metric_families(exposition)
        if family.name == "http_requests"
        for s in family.samples
        if s.name == "http_requests_total"
    }
    assert served.get(("v2", "200"), 0) == answered
    assert served.get(("v1", "200"), 0) == 0


async def test_a_hook_to_nowhere_fails_fast_with_its_reason() -> None:
    hook = Hook(
        url=f"http://127.0.0.1:{free_port()}/smoke", timeout=2, on_failure=HookFailure.PAUSE
    )
    result = await run_hook(hook, service="checkout", version="v2")
    assert not result.passed and not result.timed_out
    assert result.detail.startswith("no answer (")


# --- the policy --------------------------------------------------------------------------


def test_check_config_says_each_hook_in_words() -> None:
    policy = parse_policy(
        _policy('{url: "https://smoke.internal/{version}", timeout: 10s, on_failure: pause}'),
        "test",
    )
    lines = explain_service(policy.service("checkout"))
    assert (
        "before 50%: smoke test GET https://smoke.internal/{version} (2xx passes) "
        "(timeout 10 seconds; on failure: pause)"
    ) in lines


def test_a_blue_green_service_checks_before_its_switch_only() -> None:
    text = _policy("{url: 'https://a.internal/'}").replace(
        "  checkout: {}",
        "  search:\n    strategy: blue_green\n    switch_hooks:\n"
        "      - load: {url: 'http://search.internal/preview/{version}', seconds: 5s}\n"
        "        timeout: 20s",
    )
    sp = parse_policy(text, "test").service("search")
    [hook] = sp.hooks_before(Strategy.BLUE_GREEN, 100)
    assert hook.load is not None and hook.load.rate == 20 and hook.on_failure is HookFailure.HOLD
    assert sp.hooks_before(Strategy.BLUE_GREEN, 0) == []
    assert len(sp.hooks_before(Strategy.CANARY, 50)) == 1  # a canary uses the steps' hooks


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        (
            "{url: 'https://a/', load: {url: 'http://b/'}}",
            "a hook is one of `url:` (a smoke test), `load:` (synthetic load) or `webhook:`",
        ),
        ("{load: {url: 'http://b/', seconds: 1m}}", "must be longer than its load's seconds"),
        ("{url: 'ftp://a/'}", "String should match pattern"),
        (
            "{webhook: {url: 'https://ci/'}, timeout: 5s}",
            "longer than its webhook's request_timeout",
        ),
        ("{webhook: {url: 'https://ci/', secrt_env: K}}", "did you mean `secret_env`?"),
        ("{url: 'https://a/', on_falure: pause}", "did you mean `on_failure`?"),
    ],
)
def test_a_wrong_hook_is_refused_with_where_and_why(hook: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(_policy(hook), "test")
    said = str(caught.value)
    assert "defaults.steps[1].hooks[0]" in said and message in said, said


def test_a_hook_result_with_markup_in_it_pings_nobody() -> None:
    policy = parse_policy(_policy("{url: 'https://a.internal/'}"), "test")
    release = new_release_for(policy)
    hostile = "<!channel> <@U0EVIL01> <http://evil|click>"
    run = HookRun(
        release.id,
        1,
        50,
        (HookResult("url", f"https://a.internal/{hostile}", False, hostile, 0.2),),
        time.time(),
    )
    message = event_message(ReleaseEvent(EventKind.HOOK_FAILED, release, "hold", hooks=run))
    sent = message.text + str(message.blocks)
    assert "<!channel>" not in sent and "<@U0EVIL01>" not in sent and "<http" not in sent
    assert "&lt;!channel&gt;" in sent


def new_release_for(policy: Policy) -> Release:
    sp = policy.service("checkout")
    return new_release(
        release_id="r1",
        number=1,
        service="checkout",
        version="v2",
        stable_version="v1",
        weights=[s.weight for s in sp.steps],
        holds=[sp.hold] * len(sp.steps),
        interval=sp.interval,
        bake=sp.bake,
        strategy=Strategy.CANARY,
        risk=Risk.NORMAL,
        notes="",
        actor=ALICE,
        now=time.time(),
    )


async def test_a_process_taking_over_uses_the_finished_run_and_says_it_once(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client)
    subject = HookSubject("r-9", "checkout", "v2", "v1", 1, 50)
    async with Smoke([200]) as smoke:
        hooks = [Hook(url=f"{smoke.base_url}/smoke", timeout=2)]
        first = HookRunner(store.hook_runs)
        assert first.status(subject, hooks) is None
        deadline = time.monotonic() + DEADLINE
        while (run := first.status(subject, hooks)) is None:
            assert time.monotonic() < deadline, "the hooks never finished"
            await asyncio.sleep(0.02)
        await first.close()  # stopped before it said the run: the next process says it
        second = HookRunner(store.hook_runs)
        while (again := second.status(subject, hooks)) is None:
            assert time.monotonic() < deadline, "the second process never read the run"
            await asyncio.sleep(0.02)
        assert second.is_new(again)
        await second.mark_reported(again)
        await second.close()
        third = HookRunner(store.hook_runs)
        while (said := third.status(subject, hooks)) is None:
            assert time.monotonic() < deadline, "the third process never read the run"
            await asyncio.sleep(0.02)
        said_again = third.is_new(said)
        await third.close()
    assert len(smoke.calls) == 1  # run once, whoever drives the release
    assert run.passed and again.to_dict() == run.to_dict() == said.to_dict()
    assert not said_again


def test_check_config_says_a_ci_hook_without_its_token() -> None:
    hook = (
        "{webhook: {url: 'https://ci.internal/trigger?token=glptt-0123456789abcdef&ref=main',"
        " secret_env: CI_HOOK_SECRET}, timeout: 15m, on_failure: rollback}"
    )
    lines = explain_service(parse_policy(_policy(hook), "test").service("checkout"))
    assert (
        "before 50%: CI job started by a POST to https://ci.internal/trigger (signed with "
        "$CI_HOOK_SECRET); passes when the job calls back with `passed` (timeout 15 minutes; "
        "on failure: rollback)"
    ) in lines
    assert not any("glptt" in line for line in lines)


def test_check_config_says_a_github_workflow_hook() -> None:
    hook = (
        "{webhook: {url: 'https://api.github.com/repos/acme/checkout/dispatches', format: github,"
        " token_env: GITHUB_TOKEN}, timeout: 30m}"
    )
    policy = parse_policy(_policy(hook), "test")
    assert (
        "before 50%: GitHub Actions workflow started by a `shipwatch-step-hook` dispatch to "
        "https://api.github.com/repos/acme/checkout/dispatches (token from $GITHUB_TOKEN); "
        "passes when the job calls back with `passed` (timeout 30 minutes; on failure: hold)"
    ) in explain_service(policy.service("checkout"))
    assert "GITHUB_TOKEN" in policy.secret_envs()
    with pytest.raises(PolicyError, match="needs `token_env`"):
        parse_policy(_policy(hook.replace(" token_env: GITHUB_TOKEN", "")), "test")


async def test_a_ci_trigger_token_in_the_url_is_never_shown() -> None:
    hook = Hook(
        webhook=WebhookHook(url="http://127.0.0.1:1/trigger?token=glptt-0123456789abcdef"),
        timeout=20,
    )
    result = await run_hook(hook, service="checkout", version="v2")
    assert not result.passed and result.target == "http://127.0.0.1:1/trigger"
    assert "glptt" not in result.detail


async def test_steps_that_would_skip_a_steps_hooks_are_refused(
    make_rig: Callable[[str], Rig],
) -> None:
    rig = make_rig("{url: 'https://smoke.internal/'}")
    with pytest.raises(UserError) as refused:
        options = DeployOptions(stable="v1", steps=[50, 100])
        await rig.service.deploy(ALICE, "checkout", "v2", options)
    said = str(refused.value)
    assert "--steps starts at 50%, but the policy checks 1 step hook(s) before" in said
    assert "e.g. --steps 10,50,100" in said
    assert await rig.store.active_for("checkout") is None  # nothing started
