"""Incident tickets filed after an automatic rollback: a signed webhook, or a GitHub issue.

The webhook receives one JSON document (compact, sorted keys), signed like the traffic
webhook (`X-Shipwatch-Timestamp`, `X-Shipwatch-Signature: v1=<hex HMAC-SHA256(secret,
"v1:{timestamp}:{body}")>`)::

    {"kind": "shipwatch.rollback", "release": "checkout#12 (v2.4.1)", "release_id": "…",
     "service": "checkout", "version": "v2.4.1", "stable_version": "v2.4.0",
     "title": "…", "diagnosis": "…", "thread_url": "https://…slack.com/…",
     "metrics": [{"metric": "latency_p99", "canary": 1.84, "control": 0.41,
                  "limit": "ratio 2x", "reason": "…"}],
     "decided_at": 1700000000.0, "rolled_back_at": 1700000000.4}

A 2xx answer may carry {"url": "…"} to link the ticket it created. GitHub issues are created
through the REST API (POST /repos/{owner}/{repo}/issues) with a token from the environment.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.errors import DependencyError
from bot.observe import telemetry
from bot.redact import redact, redact_obj, redact_url
from bot.release.policy import GitHubTickets, TicketSettings, WebhookTickets
from bot.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

log = logging.getLogger(__name__)


class TicketError(DependencyError):
    pass


@dataclass(frozen=True)
class Incident:
    release: str
    release_id: str
    service: str
    version: str
    stable_version: str
    title: str
    diagnosis: str
    thread_url: str
    metrics: list[dict[str, Any]]
    decided_at: float | None
    rolled_back_at: float | None

    def payload(self) -> dict[str, Any]:
        return redact_obj({"kind": "shipwatch.rollback", **self.__dict__})

    def markdown(self) -> str:
        rows = "\n".join(
            f"| {m.get('metric')} | {m.get('canary')} | {m.get('control')} | {m.get('limit')} |"
            for m in self.metrics
        )
        table = f"| metric | canary | control | limit |\n|---|---|---|---|\n{rows}" if rows else ""
        link = f"\n\nSlack thread: {self.thread_url}" if self.thread_url else ""
        return redact(f"{self.diagnosis}\n\n{table}{link}\n\nRelease id: `{self.release_id}`")


@dataclass(frozen=True)
class Ticket:
    where: str  # "webhook" | "github"
    url: str  # a link to the ticket, when the sink gave one


class TicketSinks:
    """The sinks of one service; `file` tries each and returns what worked."""

    def __init__(
        self,
        settings: TicketSettings,
        session: aiohttp.ClientSession | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self._session = session
        self._env = env if env is not None else dict(os.environ)

    @property
    def configured(self) -> bool:
        return self.settings.webhook is not None or self.settings.github is not None

    async def file(self, incident: Incident) -> list[Ticket]:
        tickets: list[Ticket] = []
        session = self._session or aiohttp.ClientSession()
        try:
            if self.settings.webhook is not None:
                tickets += await self._try(
                    "webhook", self._webhook(session, self.settings.webhook, incident)
                )
            if self.settings.github is not None:
                tickets += await self._try(
                    "github", self._github(session, self.settings.github, incident)
                )
        finally:
            if self._session is None:
                await session.close()
        return tickets

    async def _try(self, where: str, call: Any) -> list[Ticket]:
        try:
            return [await call]
        except TicketError as exc:
            telemetry.CHAT_ERRORS.labels(f"ticket:{where}").inc()
            log.error("incident ticket (%s) not filed: %s", where, exc)
            return []

    async def _webhook(
        self, session: aiohttp.ClientSession, cfg: WebhookTickets, incident: Incident
    ) -> Ticket:
        body = json.dumps(
            incident.payload(), separators=(",", ":"), sort_keys=True, default=str
        ).encode()
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "shipwatch",
            TIMESTAMP_HEADER: ts,
        }
        secret = self._env.get(cfg.secret_env, "") if cfg.secret_env else ""
        if cfg.secret_env and not secret:
            # A receiver that expects a signature would reject (or, worse, accept) it unsigned.
            raise TicketError(f"${cfg.secret_env} is empty: the ticket payload cannot be signed")
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, ts, body)
        try:
            async with session.post(
                cfg.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=cfg.timeout),
            ) as resp:
                text = await resp.text()
                if resp.status >= 300:
                    raise TicketError(f"{redact_url(cfg.url)} answered HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TicketError(f"{redact_url(cfg.url)} unreachable: {exc}") from exc
        try:
            url = str(json.loads(text).get("url", ""))
        except (ValueError, AttributeError):
            url = ""
        return Ticket("webhook", url)

    async def _github(
        self, session: aiohttp.ClientSession, cfg: GitHubTickets, incident: Incident
    ) -> Ticket:
        token = self._env.get(cfg.token_env, "")
        if not token:
            raise TicketError(f"no GitHub token in ${cfg.token_env}")
        url = f"{cfg.api_url.rstrip('/')}/repos/{cfg.repo}/issues"
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "shipwatch",
        }
        body = {"title": redact(incident.title), "body": incident.markdown(), "labels": cfg.labels}
        try:
            async with session.post(
                url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=cfg.timeout)
            ) as resp:
                data = await resp.json(content_type=None)
                if resp.status != 201:
                    message = data.get("message", "") if isinstance(data, dict) else ""
                    raise TicketError(f"GitHub answered HTTP {resp.status}: {message}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TicketError(f"GitHub unreachable: {exc}") from exc
        # A 201 without the expected JSON still created the issue: just no link to give.
        return Ticket("github", str(data.get("html_url", "")) if isinstance(data, dict) else "")
