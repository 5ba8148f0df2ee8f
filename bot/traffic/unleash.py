"""Traffic backend that moves users through an Unleash server's Admin API.

Per service a feature flag (``shipwatch.<service>`` unless ``flag`` names an existing one) in a
project and an environment, with one flexibleRollout strategy owned by shipwatch (its title is
``shipwatch``; created when missing, sticky on the user id, ``groupId`` the service name, so
the users in the canary are the same ones ``bot.flags`` would pick). A step patches the
strategy's ``rollout``; a rollback sets it to 0, and if that write fails, turns the flag off in
the environment (every SDK then serves stable); read back: the strategy's rollout, 0 when the
flag is off in the environment. Applications see a change within their SDK's refresh interval.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from bot.errors import TrafficError
from bot.redact import redact_url
from bot.traffic.base import Applied, TrafficAction, TrafficChange, target_weight

OWNED_TITLE = "shipwatch"


class UnleashBackend:
    name = "unleash"

    def __init__(
        self,
        url: str,
        token: str,
        *,
        project: str = "default",
        environment: str = "development",
        flag: str = "",
        timeout: float = 5.0,
    ) -> None:
        if not token:
            raise ValueError("the unleash backend needs an admin API token")
        self.base = url.rstrip("/")
        self.token = token
        self.project = project
        self.environment = environment
        self.flag = flag
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def flag_of(self, service: str) -> str:
        return self.flag or f"shipwatch.{service}"

    async def apply(self, change: TrafficChange) -> None:
        pct = target_weight(change)
        try:
            strategy = await self._owned_strategy(change.service, create_with=pct)
            if str(strategy.get("parameters", {}).get("rollout")) != str(pct):
                await self._call(
                    "PATCH",
                    f"{self._strategies(change.service)}/{strategy['id']}",
                    [{"op": "replace", "path": "/parameters/rollout", "value": str(pct)}],
                )
            if change.action is not TrafficAction.ROLLBACK:
                await self._call("POST", f"{self._environment(change.service)}/on")
        except TrafficError:
            if change.action is not TrafficAction.ROLLBACK:
                raise
            # The rollout could not be set to 0: the flag off serves stable to everyone.
            await self._call("POST", f"{self._environment(change.service)}/off")

    async def current(self, service: str) -> Applied:
        feature = await self._call("GET", self._feature(service), missing_ok=True)
        if feature is None:
            return Applied(None)
        for env in feature.get("environments") or []:
            if env.get("name") != self.environment:
                continue
            owned = [s for s in env.get("strategies") or [] if s.get("title") == OWNED_TITLE]
            if not owned:
                return Applied(None)
            if not env.get("enabled"):
                return Applied(0)
            return Applied(_percent(owned[0].get("parameters", {}).get("rollout")))
        raise TrafficError(
            f"Unleash has no environment `{self.environment}` on {self.flag_of(service)}"
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- the Admin API ------------------------------------------------------------------------

    def _feature(self, service: str) -> str:
        return f"/api/admin/projects/{self.project}/features/{self.flag_of(service)}"

    def _environment(self, service: str) -> str:
        return f"{self._feature(service)}/environments/{self.environment}"

    def _strategies(self, service: str) -> str:
        return f"{self._environment(service)}/strategies"

    async def _owned_strategy(self, service: str, *, create_with: int) -> dict[str, Any]:
        """shipwatch's strategy on the flag in the environment, created (flag too) if missing."""
        if await self._call("GET", self._feature(service), missing_ok=True) is None:
            await self._call(
                "POST",
                f"/api/admin/projects/{self.project}/features",
                {"name": self.flag_of(service), "type": "release",
                 "description": f"canary of {service}, moved by shipwatch"},
            )  # fmt: skip
        strategies = await self._call("GET", self._strategies(service))
        for strategy in strategies if isinstance(strategies, list) else []:
            if strategy.get("title") == OWNED_TITLE:
                return dict(strategy)
        created = await self._call(
            "POST",
            self._strategies(service),
            {
                "name": "flexibleRollout",
                "title": OWNED_TITLE,
                "constraints": [],
                "parameters": {
                    "rollout": str(create_with),
                    "stickiness": "userId",
                    "groupId": service,
                },
            },
        )
        return dict(created)

    async def _call(
        self, method: str, path: str, body: object = None, *, missing_ok: bool = False
    ) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = self.base + path
        try:
            async with self._session.request(
                method,
                url,
                json=body,
                headers={"Authorization": self.token, "Content-Type": "application/json"},
                timeout=self.timeout,
            ) as resp:
                if resp.status == 404 and missing_ok:
                    return None
                text = await resp.text()
                if not 200 <= resp.status < 300:
                    raise TrafficError(
                        f"Unleash answered {method} {redact_url(url)} with HTTP {resp.status}: "
                        f"{' '.join(text.split())[:300]}"
                    )
                return await resp.json(content_type=None) if text.strip() else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TrafficError(
                f"cannot reach Unleash at {redact_url(self.base)} ({type(exc).__name__}: {exc})"
            ) from exc


def _percent(value: object) -> int:
    try:
        pct = int(str(value))
    except ValueError:
        raise TrafficError(f"shipwatch's Unleash strategy has rollout {value!r}") from None
    if not 0 <= pct <= 100:
        raise TrafficError(f"shipwatch's Unleash strategy has rollout {pct}, not 0..100")
    return pct
