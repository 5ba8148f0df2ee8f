"""The ack benchmark's peer: the smallest Slack bolt app that answers a slash command.

One ``/rollout`` listener that acks and does nothing else, served over HTTP by bolt's own
aiohttp adapter, with request signing and authorization on as in any bolt app, and
``process_before_response`` so bolt answers as soon as the ack returns (its default polls for
the ack every 10 ms): the fastest a bolt app answers here. Run as its own
process by ``bench.ack_bench``::

    .venv/bin/python -m bench.bolt_peer PORT SIGNING_SECRET SLACK_API_URL BOT_TOKEN
"""

from __future__ import annotations

import sys

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient


def build(secret: str, api_url: str, token: str) -> web.Application:
    bolt = AsyncApp(
        signing_secret=secret,
        client=AsyncWebClient(token=token, base_url=api_url, timeout=10),
        process_before_response=True,
    )

    @bolt.command("/rollout")
    async def rollout(ack: AsyncAck) -> None:
        await ack()

    async def events(request: web.Request) -> web.Response:
        response = await bolt.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(response)

    app = web.Application()
    app.router.add_post("/slack/events", events)
    return app


def main() -> None:
    port, secret, api_url, token = sys.argv[1:5]
    web.run_app(build(secret, api_url, token), host="127.0.0.1", port=int(port), print=None)


if __name__ == "__main__":
    main()
