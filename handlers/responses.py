"""Replies on a command's or click's response_url, over one shared HTTP session.

bolt's `respond` opens a new HTTP session for every reply; under a burst of commands that
cost competes with the acks themselves, so replies share one session (with a timeout).
"""

from __future__ import annotations

import logging

import aiohttp

from bot.observe import telemetry
from bot.render.kit import Message

log = logging.getLogger(__name__)


class ResponseUrls:
    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, url: str, message: Message, *, ephemeral: bool = True) -> bool:
        if not url:
            return False
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        payload = {
            "response_type": "ephemeral" if ephemeral else "in_channel",
            "replace_original": False,
            "text": message.text,
            "blocks": message.blocks,
        }
        try:
            async with self._session.post(url, json=payload) as response:
                if response.status >= 300:
                    raise aiohttp.ClientResponseError(
                        response.request_info,
                        (),
                        status=response.status,
                        message=(await response.text())[:200],
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            telemetry.CHAT_ERRORS.labels("response_url").inc()
            log.warning("reply on the response_url failed: %s", exc)
            return False
        return True

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
