"""The console adapter: the same commands and events as Slack, in a terminal.

Reads commands from stdin (a prompt when it is a TTY, plain lines otherwise), runs the
controller in the same process, and prints every event as it happens.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import TextIO

from bot.app import App
from bot.commands import USAGE, parse
from bot.durations import parse_duration
from bot.errors import ConflictError, DependencyError, UserError
from bot.metrics.synthetic import SyntheticSource
from bot.notify import ReleaseEvent
from bot.render import event_text, release_list, status_text
from bot.rollout import Actor
from bot.service import Result

log = logging.getLogger(__name__)

CONSOLE_HELP = """\
commands (same as Slack, without the slash):
  deploy <service> <version> [--risk high] [--steps 1,10,100] [--hold 30s] [--notes ...]
  advance <service> | approve <service> | rollback <service> [reason]
  status <service> | list | history <service> | pause <service> [reason] | resume <service>
  lock <service> <reason> | unlock <service>
console only:
  as <user>                       switch who is typing (approvals need someone else)
  wait <duration>                 let the controller run, e.g. wait 30s
  fault <service> <metric> <factor> [version]   demo source: make a metric worse
  clear [service]                 demo source: remove faults
  help | quit"""


class ConsoleNotifier:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    async def notify(self, event: ReleaseEvent) -> None:
        print(event_text(event), file=self.out, flush=True)


class Console:
    def __init__(
        self,
        app: App,
        user: str,
        out: TextIO = sys.stdout,
        read_line: Callable[[], str] | None = None,
    ) -> None:
        self.app = app
        self.user = user
        self.out = out
        self._read_line = read_line or sys.stdin.readline
        self.interactive = read_line is None and sys.stdin.isatty()

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def run(self) -> int:
        stop = asyncio.Event()
        controller = asyncio.create_task(self.app.controller.run(stop), name="controller")
        self.app.events.start()
        source = self.app.source
        self.say(
            f"shipwatch console · metrics: {source.name}"
            f"{' (made-up numbers for trying the product)' if source.is_demo else ''} · "
            f"services: {', '.join(sorted(self.app.policy.services))} · you are {self.user}"
        )
        self.say("type `help` for commands")
        try:
            while True:
                if self.interactive:
                    print(f"{self.user}> ", end="", file=self.out, flush=True)
                line = await asyncio.to_thread(self._read_line)
                if not line:
                    break
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if not self.interactive:
                    self.say(f"{self.user}> {line}")
                if line in ("quit", "exit"):
                    break
                await self.handle(line)
                await self.app.events.drain()
        finally:
            stop.set()
            await controller
            await self.app.events.drain()
        return 0

    async def handle(self, line: str) -> None:
        try:
            await self._handle(line)
        except UserError as exc:
            log.info("bad input from %s: %s (%s)", self.user, line, exc)
            self.say(f"✗ {exc}")
        except ConflictError as exc:
            self.say(f"✗ {exc}")
        except DependencyError as exc:
            self.say(f"✗ {exc}")

    async def _handle(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "as":
            if not rest.strip():
                self.say("usage: as <user>")
                return
            self.user = rest.strip()
            self.say(f"you are now {self.user}")
            return
        if word == "wait":
            seconds = parse_duration(rest.strip() or "5s")
            await asyncio.sleep(seconds)
            return
        if word in ("fault", "clear"):
            self._fault(word, rest.split())
            return
        if word in ("help", "?"):
            self.say(CONSOLE_HELP)
            return
        cmd = parse(line)
        svc = self.app.service
        actor = Actor(user=self.user, surface="console")
        result: Result | None = None
        if cmd.verb == "deploy":
            result = await svc.deploy(actor, cmd.service, cmd.version, cmd.options)
        elif cmd.verb == "advance":
            result = await svc.advance(actor, cmd.service)
        elif cmd.verb == "approve":
            result = await svc.approve(actor, cmd.service)
        elif cmd.verb == "rollback":
            result = await svc.rollback(actor, cmd.service, cmd.text)
        elif cmd.verb == "pause":
            result = await svc.pause(actor, cmd.service, cmd.text)
        elif cmd.verb == "resume":
            result = await svc.resume(actor, cmd.service)
        elif cmd.verb == "status":
            release = await svc.status(cmd.service)
            self.say(status_text(release) if release else f"no releases of {cmd.service} yet")
        elif cmd.verb == "list":
            self.say(release_list(await svc.list_active()))
        elif cmd.verb == "history":
            count = int(cmd.text) if cmd.text.isdigit() else 10
            rows = await svc.history(cmd.service, count)
            self.say(
                "\n".join(
                    f"{r.label}: {r.state.value} · by {r.requested_by}"
                    f"{' · ' + r.reason if r.reason else ''}"
                    for r in rows
                )
                or f"no releases of {cmd.service} yet"
            )
        elif cmd.verb == "lock":
            lock = await svc.lock(actor, cmd.service, cmd.text)
            self.say(f"🔒 {lock.describe()}")
        elif cmd.verb == "unlock":
            lock = await svc.unlock(actor, cmd.service)
            self.say(f"🔓 {cmd.service} unlocked (was locked by {lock.by}: {lock.reason})")
        elif cmd.verb == "help":
            self.say(CONSOLE_HELP)
        else:
            self.say(f"`{cmd.verb}` is not available in the console yet: {USAGE[cmd.verb]}")
        if result is not None and result.message:
            self.say(
                ("(already applied) " if result.outcome.value == "duplicate" else "")
                + result.message
            )

    def _fault(self, word: str, args: list[str]) -> None:
        source = self.app.source
        if not isinstance(source, SyntheticSource):
            self.say("faults can only be injected into the synthetic demo source")
            return
        if word == "clear":
            source.clear(args[0] if args else None)
            self.say("faults cleared")
            return
        if len(args) not in (3, 4):
            self.say(
                "usage: fault <service> <metric> <factor> [version]   e.g. fault checkout "
                "latency_p99 5 v2"
            )
            return
        try:
            factor = float(args[2])
        except ValueError:
            self.say(f"`{args[2]}` is not a number: use e.g. 5 for five times worse")
            return
        version = args[3] if len(args) == 4 else "*"
        source.inject(args[0], args[1], factor, version)
        self.say(f"demo fault: {args[0]} {args[1]} ×{factor:g} on {version}")
