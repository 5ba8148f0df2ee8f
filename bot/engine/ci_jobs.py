"""Webhook step hooks: start a CI job with a signed POST, then wait for the job to call back.

The POST (``Content-Type: application/json``, signed like every other shipwatch webhook when
the hook names a ``secret_env``: bot.signing; ``Idempotency-Key`` is the call's token)::

    {"type": "shipwatch.step_hook",
     "release": {"id", "service", "version", "stable_version", "step", "weight"},
     "callback": {"url": "<SHIPWATCH_PUBLIC_URL>/api/v1/hooks/<token>", "expires_at": <unix s>}}

With ``format: github`` the same ``release`` and ``callback`` go as the ``client_payload`` of a
repository_dispatch event (``{"event_type": …, "client_payload": {…}}``, GitHub's media type, the
hook's ``token_env`` as the bearer token), which starts a GitHub Actions workflow that listens
for it. A 2xx means the job was started. The job answers by POSTing ``{"status": "passed" |
"failed", "detail": "…"}`` to the callback URL before ``expires_at``; the token in it is the
only credential, good for that one job. The answer lands in Redis (the web process receives it,
the controller process waits for it), so a restarted controller waits for the job it started
rather than starting another.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.redact import redact_url
from bot.release.hook_runs import CallAnswer, CallState, HookCall
from bot.release.policy import WebhookHook
from bot.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from bot.store.hook_runs import HookRuns

log = logging.getLogger(__name__)

CALLBACK_PATH = "/api/v1/hooks/{token}"
# A start refused with one of these is tried again (twice, backing off): the CI is busy or down
# for a moment. Any other answer is the CI's final word.
_RETRIED = frozenset({408, 425, 429, 500, 502, 503, 504})
BACKOFF_S = (1.0, 3.0)


GITHUB_MEDIA_TYPE = "application/vnd.github+json"
GITHUB_API_VERSION = "2022-11-28"


@dataclass(frozen=True)
class _Credentials:
    secret: str | None  # signs the POST
    token: str | None  # sent as a bearer token


@dataclass(frozen=True)
class HookSubject:
    """The release and step a hook runs for."""

    release_id: str
    service: str
    version: str
    stable_version: str
    step: int
    weight: int


class CiJobs:
    """Starts the CI jobs of webhook hooks and waits for their callbacks."""

    def __init__(
        self,
        runs: HookRuns,
        public_url: str | None,
        *,
        env: Mapping[str, str] = os.environ,
        poll: float = 1.0,
        backoff: tuple[float, ...] = BACKOFF_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runs = runs
        self.public_url = public_url.rstrip("/") if public_url else None
        self.env = env
        self.poll = poll
        self.backoff = backoff
        self.clock = clock

    async def answer(
        self, token: str, passed: bool, detail: str
    ) -> tuple[CallAnswer, HookCall | None]:
        """A CI job's callback: recorded unless the call is unknown, already answered or past
        its deadline (the first answer wins); the call as it now stands."""
        state = CallState.PASSED if passed else CallState.FAILED
        said, call = await self.runs.answer_call(token, state, detail, self.clock())
        if call is not None:
            log.info(
                "CI job for %s %s before %d%%: %s %s (%s)", call.service, call.version,
                call.weight, state.value, said.value, detail,
            )  # fmt: skip
        return said, call

    def callback_url(self, token: str) -> str:
        assert self.public_url is not None
        return self.public_url + CALLBACK_PATH.format(token=token)

    async def run(
        self,
        hook: WebhookHook,
        url: str,
        timeout: float,
        subject: HookSubject,
        index: int,
        since: float,
    ) -> tuple[bool, str]:
        """Start the job (or, when a job was started for this run since ``since``, take it up
        again) and wait for its answer; raises TimeoutError at the call's deadline."""
        if self.public_url is None:
            return False, "SHIPWATCH_PUBLIC_URL is not set, so a CI job has no URL to call back"
        creds = _Credentials(self._env(hook.secret_env), self._env(hook.token_env))
        if hook.secret_env is not None and creds.secret is None:
            return False, f"${hook.secret_env} is not set, so the job cannot be started signed"
        if hook.token_env is not None and creds.token is None:
            return False, f"${hook.token_env} is not set, so the CI would refuse the start"
        call = await self.runs.latest_call(subject.release_id, subject.step, index)
        if call is None or call.started_at < since:
            call = await self._start(hook, url, timeout, subject, index, creds)
            if call.answered:
                return False, call.detail
        else:
            where = redact_url(url)
            log.info("waiting for the CI job started at %s for %s", where, subject.release_id)
        return await self._answer(call)

    def _env(self, name: str | None) -> str | None:
        return (self.env.get(name) or None) if name is not None else None

    async def _start(
        self,
        hook: WebhookHook,
        url: str,
        timeout: float,
        subject: HookSubject,
        index: int,
        creds: _Credentials,
    ) -> HookCall:
        now = self.clock()
        call = HookCall(
            token=secrets.token_urlsafe(32),
            release_id=subject.release_id,
            service=subject.service,
            version=subject.version,
            step=subject.step,
            weight=subject.weight,
            index=index,
            started_at=now,
            deadline=now + timeout,
        )
        # Recorded before the POST: a callback that beats the POST's own answer finds its call.
        await self.runs.open_call(call)
        body = json.dumps(self._body(hook, subject, call)).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": call.token}
        if hook.format == "github":
            headers |= {"Accept": GITHUB_MEDIA_TYPE, "X-GitHub-Api-Version": GITHUB_API_VERSION}
        if creds.token is not None:
            headers["Authorization"] = f"Bearer {creds.token}"
        started, detail = await self._post(url, body, headers, creds.secret, hook.request_timeout)
        if started:
            return call
        failed = f"the CI job was not started: {detail}"
        await self.runs.answer_call(
            call.token, CallState.FAILED, failed, self.clock(), by_deadline=False
        )
        return call.model_copy(update={"state": CallState.FAILED, "detail": failed})

    def _body(self, hook: WebhookHook, subject: HookSubject, call: HookCall) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "release": {
                "id": subject.release_id,
                "service": subject.service,
                "version": subject.version,
                "stable_version": subject.stable_version,
                "step": subject.step,
                "weight": subject.weight,
            },
            "callback": {"url": self.callback_url(call.token), "expires_at": call.deadline},
        }
        if hook.format == "github":
            # GitHub's repository_dispatch: the workflow reads github.event.client_payload.
            return {"event_type": hook.event_type, "client_payload": payload}
        return {"type": "shipwatch.step_hook", **payload}

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str], secret: str | None, timeout: float
    ) -> tuple[bool, str]:
        detail = ""
        for attempt in range(len(self.backoff) + 1):
            if attempt:
                await asyncio.sleep(self.backoff[attempt - 1])
            if secret is not None:  # signed afresh on every try: the timestamp is part of it
                stamp = str(int(self.clock()))
                headers = headers | {
                    TIMESTAMP_HEADER: stamp,
                    SIGNATURE_HEADER: sign(secret, stamp, body),
                }
            try:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
                    session.post(url, data=body, headers=headers, allow_redirects=False) as resp,
                ):
                    if 200 <= resp.status < 300:
                        return True, f"HTTP {resp.status}"
                    detail = f"HTTP {resp.status}"
                    if resp.status not in _RETRIED:
                        return False, detail
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The exception's type, never its text: it could carry the URL's credentials.
                detail = f"no answer ({type(exc).__name__})"
        return False, detail

    async def _answer(self, call: HookCall) -> tuple[bool, str]:
        """Poll the call until it is answered; TimeoutError at its deadline (recorded, so a
        callback after it is told it came too late)."""
        while True:
            current = await self.runs.call(call.token)
            if current is None:
                return False, "the CI job's record expired before it answered"
            if current.answered:
                return _said(current)
            if self.clock() >= current.deadline:
                await self.runs.answer_call(
                    call.token, CallState.TIMED_OUT, "", self.clock(), by_deadline=False
                )
                raise TimeoutError
            await asyncio.sleep(min(self.poll, max(0.01, current.deadline - self.clock())))


def _said(call: HookCall) -> tuple[bool, str]:
    if call.state is CallState.TIMED_OUT:
        raise TimeoutError
    passed = call.state is CallState.PASSED
    what = "the CI job passed" if passed else "the CI job failed"
    return passed, f"{what}: {call.detail}" if call.detail else what
