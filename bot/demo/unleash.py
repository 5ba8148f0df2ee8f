"""The demo's sample services routing users with Unleash's own Python SDK.

With ``shipwatch demo --traffic unleash --unleash-url URL`` shipwatch drives a flag per service
(``shipwatch.<service>``, project ``default``, environment ``development``) on that Unleash
through its Admin API, and each sample service asks Unleash's Python SDK (``UnleashClient``,
refreshing every second) whether a request's user is in the canary, as an application of any
language would with its official SDK. The Unleash server is the operator's: the demo does not
start one (it needs PostgreSQL).

Tokens come from the environment: ``UNLEASH_ADMIN_TOKEN`` for shipwatch (the backend's
default ``token_env``) and ``UNLEASH_CLIENT_TOKEN`` for the SDK.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from bot.errors import TrafficError, UserError
from bot.redact import redact_url

log = logging.getLogger(__name__)

ADMIN_TOKEN_ENV = "UNLEASH_ADMIN_TOKEN"
CLIENT_TOKEN_ENV = "UNLEASH_CLIENT_TOKEN"
SDK_REFRESH_S = 1


class UnleashRouter:
    """Which version serves a user: the canary's when Unleash's SDK says the service's flag is
    on for them, the stable's otherwise. The versions are the deploy pipeline's to set."""

    def __init__(self, url: str, data_dir: Path) -> None:
        self.url = url.rstrip("/")
        self.data_dir = data_dir
        self.engine = "unleash"
        self.label = f"Unleash at {redact_url(self.url)}"
        self._versions: dict[str, tuple[str, str]] = {}  # service -> (stable, canary)
        self._client: Any = None

    @staticmethod
    def flag_of(service: str) -> str:
        return f"shipwatch.{service}"

    def tokens(self) -> tuple[str, str]:
        """The admin and client tokens from the environment; UserError naming what is missing."""
        admin = os.environ.get(ADMIN_TOKEN_ENV, "")
        client = os.environ.get(CLIENT_TOKEN_ENV, "")
        missing = [n for n, v in ((ADMIN_TOKEN_ENV, admin), (CLIENT_TOKEN_ENV, client)) if not v]
        if missing:
            raise UserError(
                f"--traffic unleash needs {' and '.join(missing)} in the environment",
                hint=f"create an admin token ({ADMIN_TOKEN_ENV}: shipwatch moves the flags) and a "
                f"backend/client token for the development environment ({CLIENT_TOKEN_ENV}: the "
                "sample services' SDK reads them) in Unleash under Admin › API access",
            )
        return admin, client

    async def start(self) -> None:
        """Connect the SDK (its first fetch included); TrafficError when it cannot."""
        try:
            from UnleashClient.clients.unleash_client import UnleashClient  # noqa: PLC0415
        except ImportError as exc:
            raise UserError(
                "--traffic unleash routes the sample services with Unleash's Python SDK, which "
                "is not installed here",
                hint="pip install UnleashClient (it comes with the project's dev extra)",
            ) from exc
        _, token = self.tokens()
        cache = self.data_dir / "unleash-cache"
        cache.mkdir(parents=True, exist_ok=True)
        client = UnleashClient(
            url=f"{self.url}/api",
            app_name="shipwatch-demo",
            custom_headers={"Authorization": token},
            refresh_interval=SDK_REFRESH_S,
            disable_metrics=True,
            disable_registration=True,
            cache_directory=str(cache),
        )
        try:
            await asyncio.to_thread(client.initialize_client)
        except Exception as exc:  # the SDK raises what requests raises, or its own
            await asyncio.to_thread(client.destroy)
            raise TrafficError(
                f"Unleash's SDK could not start against {redact_url(self.url)}: {exc}"
            ) from exc
        self._client = client

    def deploy(self, service: str, *, stable: str | None = None, canary: str | None = None) -> None:
        old_stable, old_canary = self._versions.get(service, ("", ""))
        self._versions[service] = (stable or old_stable, canary or old_canary)

    def version(self, service: str, user: str) -> str | None:
        stable, canary = self._versions.get(service, ("", ""))
        if self._client is None or not canary:
            return stable or None
        on = self._client.is_enabled(self.flag_of(service), {"userId": user})
        return canary if on else (stable or None)

    def traffic(self, service: str) -> dict[str, str]:
        return {
            "backend": "unleash",
            "unleash_url": self.url,
            "token_env": ADMIN_TOKEN_ENV,
            "flag": self.flag_of(service),
            "sdk_refresh": f"{SDK_REFRESH_S}s",
        }

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.destroy)
