"""The whole Slack app, as `shipwatch serve` runs it, on a test's event loop.

``SlackRig.start`` builds the real core with ``build_core`` (real Redis, the synthetic metrics
source, the real slack_sdk client pointed at a ``SlackStandIn``), the bolt app with
``build_bolt`` and the HTTP app with ``web_app``, served on a free port. Tests then talk to it
exactly as Slack does: signed form bodies for slash commands and button clicks, signed JSON for
events, all POSTed to ``/slack/events``; and they read what the bot said from the stand-in.

Bolt acknowledges a request first and runs the listener afterwards, so every helper that waits
for the bot's answer polls with a deadline instead of assuming the answer is there on HTTP 200.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator
from slack_sdk.models.blocks import Block

from bot.config import Settings
from bot.metrics.synthetic import SyntheticSource
from bot.release.policy import Policy, parse_policy
from bot.release.rollout import Release
from bot.store.audit import AuditEntry
from handlers.app import build_bolt
from handlers.context import Core
from handlers.notifier import SlackNotifier
from handlers.server import build_core, web_app
from tests.support.recorder import Recorder
from tests.support.slack_api import SlackStandIn
from tests.support.slack_signing import (
    BOT_USER_ID,
    block_actions,
    event_callback,
    retry_headers,
    sign,
    slash_command,
)

SECRET = "c0ffee5ec12e7f0r5h1pwa7chte575"
ALICE = "U0ALICE"  # a deployer of ledger
BOB = "U0BOB"  # nobody in particular
CAROL = "U0CAROL"  # the approver of payments
DAVE = "U0ONCALL"  # on call for checkout

CHECKOUT_CHANNEL = "#checkout-releases"
PAYMENTS_CHANNEL = "#payments-releases"

# Short holds so a whole release runs in about a second and a half.
POLICY = f"""
defaults:
  steps: [1, 10, 50, 100]
  hold: 300ms
  interval: 100ms
  window: 1s
  bake: 300ms
  metrics:
    - name: error_rate
      query: 'errors{{service="{{service}}",version="{{version}}"}}'
      max: 0.05
      max_diff: 0.01
      failure_limit: 3
    - name: latency_p99
      query: 'p99{{service="{{service}}",version="{{version}}"}}'
      unit: s
      max_ratio: 2
      critical: true
services:
  checkout:
    channel: "{CHECKOUT_CHANNEL}"
    oncall: {DAVE}
  payments:
    risk: high
    approvers: [{CAROL}]
    channel: "{PAYMENTS_CHANNEL}"
  ledger:
    deployers: [{ALICE}]
"""

DEADLINE = 8.0  # the bound on any single wait; the slowest one (a whole release) takes ~1.5 s
RECORDER_WAIT = 2.0  # how long the recorder waits for the outbox before recording an event
OUTBOX_RETRY_BASE = 0.05  # the outbox writer's first wait after an unclear answer from Slack
CLIENT_RETRY_SLEEP = 0.02

Check = Callable[[], bool | Awaitable[bool]]


async def wait_until(check: Check, what: str, timeout: float = DEADLINE) -> None:
    """Poll ``check`` (sync or async) until it holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass(frozen=True)
class Delivery:
    """One request delivered to the bot: its HTTP answer and where the bot's reply goes."""

    status: int
    seconds: float
    response_url: str


@dataclass
class SlackRig:
    slack: SlackStandIn
    redis_url: str
    policy: Policy = field(default_factory=lambda: parse_policy(POLICY, "slack scenarios"))
    # Extra Settings by their environment names, e.g. OPENAI_API_KEY, OPENAI_BASE_URL,
    # SHIPWATCH_LLM_TIMEOUT; they override the rig's own values.
    extra_settings: dict[str, Any] = field(default_factory=dict)
    recorder: Recorder = field(default_factory=Recorder)
    response_urls: list[str] = field(default_factory=list)
    # The port the bot serves on; None: a free one. Set it when a setting must name the URL
    # (SHIPWATCH_PUBLIC_URL, which CI jobs call back on).
    port: int | None = None
    _core: Core | None = None
    _notifier: SlackNotifier | None = None
    _bolt: AsyncApp | None = None
    _server: TestServer | None = None
    _http: aiohttp.ClientSession | None = None
    _controller: asyncio.Task[None] | None = None
    _stop: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def settings(self) -> Settings:
        return Settings.model_validate(
            {
                "REDIS_URL": self.redis_url,
                "PROMETHEUS_URL": None,
                "SLACK_BOT_TOKEN": "xoxb-test",
                "SLACK_SIGNING_SECRET": SECRET,
                "SLACK_API_URL": self.slack.api_url,
                "SHIPWATCH_CONTROLLER_TICK": 0.05,
                "SHIPWATCH_LEASE_TTL": 0.5,
                # Slack's pace per channel is a scenario of its own (limit_rate); the others
                # should not wait a second per message.
                "SHIPWATCH_SLACK_CHANNEL_RATE": 1000,
                "SHIPWATCH_SLACK_CHANNEL_BURST": 1000,
            }
            | self.extra_settings
        )

    async def start(self) -> None:
        """Build and serve the bot the way ``serve`` does (controller not started yet)."""
        core, notifier = await build_core(self.settings, self.policy)
        assert isinstance(core.app.source, SyntheticSource)
        # The client keeps production's retry counts; only its backoff sleeps are shortened.
        for handler in core.client.retry_handlers:
            handler.interval_calculator = FixedValueRetryIntervalCalculator(CLIENT_RETRY_SLEEP)
        notifier.writer.retry_base = OUTBOX_RETRY_BASE
        notifier.writer.poll = 0.05
        # After the Slack notifier, and once the outbox sent it (or a short while passed, when
        # Slack is made to fail): an event recorded here is in Slack.
        self.recorder.delivered = lambda: notifier.writer.flush(RECORDER_WAIT)
        core.app.events.notifiers.append(self.recorder)
        core.app.start()
        notifier.start()
        bolt = build_bolt(core, SECRET)
        server = TestServer(web_app(core, bolt), port=self.port)
        await server.start_server()
        self._core, self._notifier, self._bolt, self._server = core, notifier, bolt, server
        if self._http is None:
            self._http = aiohttp.ClientSession()

    async def shutdown(self) -> None:
        """Stop serving and close the core, as ``serve`` does on SIGTERM."""
        await self.stop_controller()
        if self._server is not None:
            await self._server.close()
        if self._notifier is not None:
            await self._notifier.close()
        if self._core is not None:
            await self._core.responses.close()
            await self._core.app.close()
        self._core = self._notifier = self._bolt = self._server = None

    async def restart(self) -> None:
        """A new process on the same Redis and Slack workspace."""
        await self.shutdown()
        await self.start()

    async def close(self) -> None:
        await self.shutdown()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def start_controller(self) -> None:
        assert self._controller is None, "the controller already runs"
        self._stop = asyncio.Event()
        self._controller = asyncio.create_task(
            self.core.app.controller.run(self._stop), name="test-controller"
        )

    async def stop_controller(self) -> None:
        task, stop = self._controller, self._stop
        self._controller = self._stop = None
        if task is None or stop is None:
            return
        stop.set()
        await asyncio.wait_for(task, DEADLINE)

    @property
    def core(self) -> Core:
        assert self._core is not None, "the rig is not started"
        return self._core

    @property
    def notifier(self) -> SlackNotifier:
        assert self._notifier is not None, "the rig is not started"
        return self._notifier

    @property
    def source(self) -> SyntheticSource:
        source = self.core.app.source
        assert isinstance(source, SyntheticSource)
        return source

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "the rig is not started"
        return self._http

    def url(self, path: str) -> str:
        assert self._server is not None, "the rig is not started"
        return str(self._server.make_url(path))

    # ------------------------------------------------------------------ talking to the bot

    async def deliver(self, body: bytes, headers: dict[str, str]) -> tuple[int, float]:
        """POST ``body`` to /slack/events as Slack would; the status and how long it took."""
        started = time.monotonic()
        async with self.http.post(self.url("/slack/events"), data=body, headers=headers) as resp:
            await resp.read()
            return resp.status, time.monotonic() - started

    def new_response_url(self, channel: str, user: str, message_ts: str | None = None) -> str:
        url = self.slack.new_response_url(channel_id=channel, user_id=user, message_ts=message_ts)
        self.response_urls.append(url)
        return url

    async def command(
        self, command: str, text: str, user: str, *, channel: str = "C0RELEASES"
    ) -> Delivery:
        """A slash command, typed by ``user`` in ``channel``, signed with the app's secret."""
        url = self.new_response_url(channel, user)
        body = slash_command(command, text, user_id=user, response_url=url, channel_id=channel)
        status, seconds = await self.deliver(body, sign(SECRET, body))
        return Delivery(status, seconds, url)

    async def click(
        self, action_id: str, value: str, user: str, *, channel: str, ts: str
    ) -> Delivery:
        """A click on a button of the bot's message ``ts``, as Slack echoes that message."""
        url = self.new_response_url(channel, user, message_ts=ts)
        body = block_actions(
            action_id,
            value,
            user_id=user,
            message_ts=ts,
            response_url=url,
            channel_id=self.slack.channel_id(channel),
            message=self.slack.message(channel, ts),
        )
        status, seconds = await self.deliver(body, sign(SECRET, body))
        return Delivery(status, seconds, url)

    async def mention(
        self, text: str, user: str, *, channel: str, thread_ts: str, event_id: str, retry: int = 0
    ) -> int:
        """An app_mention event in a thread (``retry`` > 0: Slack's redelivery of it)."""
        event = {
            "type": "app_mention",
            "user": user,
            "text": f"<@{BOT_USER_ID}> {text}",
            "ts": f"{time.time():.6f}",
            "thread_ts": thread_ts,
            "channel": self.slack.channel_id(channel),
            "event_ts": f"{time.time():.6f}",
        }
        body = event_callback(event, event_id=event_id)
        headers = sign(SECRET, body)
        if retry:
            headers |= retry_headers(retry)
        status, _ = await self.deliver(body, headers)
        return status

    async def reply(self, delivery: Delivery, count: int = 1) -> dict[str, Any]:
        """The bot's ``count``-th post to the delivery's response_url, once it is there."""
        await wait_until(
            lambda: len(self.slack.responses(delivery.response_url)) >= count,
            f"response #{count} on {delivery.response_url}",
        )
        return self.slack.responses(delivery.response_url)[count - 1]

    async def settle(self) -> None:
        """Wait until every event emitted so far reached Slack (through the outbox)."""
        await asyncio.wait_for(self.core.app.events.drain(), DEADLINE)
        assert await self.notifier.writer.flush(DEADLINE), "the outbox did not empty"

    # ------------------------------------------------------------------ what the bot did

    async def status_ts(self, channel: str) -> str:
        """The ts of the channel's status message, once posted; there must be exactly one."""
        await wait_until(lambda: bool(self.slack.messages(channel)), f"a message in {channel}")
        [message] = self.slack.messages(channel)
        return str(message["ts"])

    def button(self, channel: str, ts: str, action_id: str, version: int = -1) -> str:
        """The value of a button of the message (its latest version, or the given one)."""
        message = self.slack.versions(channel, ts)[version]
        for block in message.get("blocks", []):
            for element in block.get("elements", []) if block["type"] == "actions" else []:
                if element.get("action_id") == action_id:
                    return str(element["value"])
        raise AssertionError(f"no {action_id} button in {message.get('text')!r}")

    async def release(self, service: str) -> Release:
        """The newest release of ``service``."""
        [release] = await self.core.app.store.history(service, limit=1)
        return release

    async def releases(self, service: str) -> list[Release]:
        return await self.core.app.store.history(service, limit=50)

    async def audit(self, action: str | None = None) -> list[AuditEntry]:
        """The audit stream, oldest first."""
        entries = reversed(await self.core.app.store.audit_tail(10_000))
        return [e for e in entries if action is None or e.action == action]

    def posted_blocks(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """Every blocks payload the bot sent: Web API calls and response_url posts."""
        for call in self.slack.calls:
            if call.method.startswith("chat.") and "blocks" in call.args:
                yield call.method, call.args["blocks"]
        for url in self.response_urls:
            for post in self.slack.responses(url):
                if "blocks" in post:
                    yield "response_url", post["blocks"]

    def validate_blocks(self) -> int:
        """Check every posted blocks payload with slack_sdk's Block Kit models; how many."""
        checked = 0
        for where, blocks in self.posted_blocks():
            assert isinstance(blocks, list) and blocks, f"{where}: empty blocks"
            for raw in blocks:
                block = Block.parse(raw)
                assert block is not None, f"{where}: unknown block {raw!r}"
                block.validate_json()
                assert block.to_dict() == raw, f"{where}: {raw!r} does not round-trip"
            checked += 1
        assert checked, "the bot posted no blocks at all"
        return checked


@asynccontextmanager
async def running_rig(
    redis_url: str,
    *,
    policy: Policy | None = None,
    extra_settings: Mapping[str, Any] | None = None,
) -> AsyncIterator[SlackRig]:
    """A started rig (the rig's own policy unless given) on a fresh Slack stand-in; both are
    closed on the way out. The usual body of a ``rig`` fixture."""
    async with SlackStandIn() as slack:
        rig = SlackRig(slack, redis_url, extra_settings=dict(extra_settings or {}))
        if policy is not None:
            rig.policy = policy
        await rig.start()
        try:
            yield rig
        finally:
            await rig.close()
