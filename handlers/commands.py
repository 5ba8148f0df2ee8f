"""Slash commands: ack at once, then parse, call the core, and answer ephemerally."""

from __future__ import annotations

import time
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp

from bot.engine import dispatch
from bot.errors import CommandError, UnknownServiceError
from bot.observe import telemetry
from bot.observe.logs import log_context
from bot.release.commands import USAGE, Verb, parse
from bot.render.kit import ephemeral
from bot.render.sizing import with_sizing
from handlers.context import Core, error_message, status_of
from handlers.inbound import unescaped
from handlers.people import actor_for

COMMANDS = ("/deploy", "/advance", "/rollback", "/rollout")


def register(app: AsyncApp, core: Core) -> None:
    # The ack alone answers the HTTP request (within Slack's 3 s, before any work); the work
    # waits its turn after it (handlers.after_ack).
    async def ack_then_work(ack: AsyncAck, command: dict[str, Any]) -> None:
        await ack()

        async def work() -> None:
            with log_context(trigger_id=command.get("trigger_id")):
                await on_command(core, command)

        core.after_ack.submit(work)

    for name in COMMANDS:
        app.command(name)(ack_then_work)


async def on_command(core: Core, command: dict[str, Any]) -> None:
    started = time.perf_counter()
    name = str(command.get("command", "")).lstrip("/")
    line = f"{name} {unescaped(str(command.get('text', '')))}".strip()
    try:
        cmd = parse(line)
        try:
            sp = core.app.policy.service(cmd.service) if cmd.service else None
        except UnknownServiceError as exc:
            # A misspelt service is a mistyped command: show the suggestion and the usage.
            raise CommandError(str(exc), usage=USAGE[cmd.verb]) from exc
        actor = await actor_for(str(command["user_id"]), sp, core.client, core.app.store)
        # trigger_id is unique per invocation: a delivery of the same request twice is one.
        with log_context(service=cmd.service):
            reply = await dispatch.run(
                core.app.service, cmd, actor, request_id=f"slack:{command.get('trigger_id', '')}"
            )
    except Exception as exc:
        message = error_message(exc, what=line)
    else:
        if reply.release is not None and cmd.verb is Verb.STATUS:
            message = status_of(core, reply.release)
        else:
            message = ephemeral(with_sizing(reply.text, reply.sizing))
    await core.responses.send(str(command.get("response_url", "")), message)
    telemetry.COMMANDS.labels(name).observe(time.perf_counter() - started)
