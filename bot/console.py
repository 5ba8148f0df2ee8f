"""The console adapter: the same commands, messages and buttons as Slack, in a terminal.

Reads commands from stdin (a prompt when it is a TTY, plain lines otherwise), runs the
controller and the post-release watch in the same process, and prints every event as it
happens. Messages are the Block Kit messages Slack gets (bot/render/) rendered as text; their
buttons become numbered choices, and typing a number clicks one through the same service calls
as a Slack click.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol, TextIO

from bot.app import App
from bot.engine import dispatch
from bot.engine.clicks import ClickStatus, NotAButton, click
from bot.engine.digest import Digest
from bot.engine.events import EventKind, ReleaseEvent
from bot.engine.service import Outcome
from bot.errors import Failure
from bot.metrics.synthetic import SyntheticSource
from bot.release.commands import Verb, parse
from bot.release.durations import parse_duration
from bot.release.policy import Metric, Policy
from bot.release.rollout import Actor, Release, Surface
from bot.render.digest import digest_message
from bot.render.errors import report, said
from bot.render.kit import Choice
from bot.render.status import status_for
from bot.render.terminal import render_text
from bot.render.thread import event_message

log = logging.getLogger(__name__)

CONSOLE_HELP = """\
commands (same as Slack, without the slash):
  deploy <service> <version> [--risk high] [--steps 1,10,100] [--hold 30s] [--notes ...]
  advance <service> | approve <service> | rollback <service> [reason]
  status <service> | list | history <service> | pause <service> [reason] | resume <service>
  lock <service> <reason> | unlock <service> | stats [service] [--days 7]
  deploy ... --force              an approver deploys past gates that have not passed
buttons:
  1, 2, 3 …                       click a numbered button of the last status shown
                                  (`status <service>` shows a release's buttons)
console only:
  as <user>                       switch who is typing (approvals need someone else)
  wait <duration>                 let the controller run, e.g. wait 30s
  await <service>                 let it run until the service's release has finished
  fault <service> <metric> <factor> [version]   demo: make a metric worse (e.g. latency_p99)
  clear [service]                 demo: remove faults
  help | quit"""


def _people(policy: Policy | None, service: str) -> tuple[str, list[str], list[Metric]]:
    """On-call, approvers and metrics of a service, for the messages; empty when unknown."""
    sp = policy.services.get(service) if policy is not None else None
    if sp is None:
        return "", [], []
    return sp.oncall, list(sp.approvers), list(sp.metrics)


class FaultInjector(Protocol):
    """Where `fault` and `clear` go: the synthetic source, or the demo's sample services."""

    def inject(self, service: str, metric: str, factor: float, version: str = "*") -> str | None:
        """Make ``metric`` worse; may return what was done, in words."""
        ...

    def clear(self, service: str | None = None) -> None: ...


class ConsoleNotifier:
    """Prints each event as the thread reply Slack would get.

    It is built before the app (build_app takes the notifiers), so the Console hands it the
    policy once the app exists; until then messages just lack the on-call and approvers.
    """

    def __init__(self, out: TextIO, policy: Policy | None = None) -> None:
        self.out = out
        self.policy = policy

    async def notify(self, event: ReleaseEvent) -> None:
        oncall, approvers, metrics = _people(self.policy, event.release.service)
        sp = self.policy.services.get(event.release.service) if self.policy else None
        message = event_message(
            event,
            oncall=oncall,
            approvers=approvers,
            metrics=metrics,
            traffic=sp.traffic if sp else None,
        )
        text, _ = render_text(message)
        stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
        lines = [f"[{stamp}] {text}"]
        if event.kind in (EventKind.APPROVAL_NEEDED, EventKind.PAUSED):
            # Thread replies carry no buttons; say where the ones for this state are.
            lines.append(f"  (`status {event.release.service}` shows the buttons)")
        print("\n".join(lines), file=self.out, flush=True)

    async def post_digest(self, digest: Digest) -> None:
        """The daily digest, as the channel post Slack would get."""
        text, _ = render_text(digest_message(digest))
        print(f"[digest to {digest.channel}] {text}", file=self.out, flush=True)


class Console:
    def __init__(
        self,
        app: App,
        user: str,
        out: TextIO = sys.stdout,
        read_line: Callable[[], str] | None = None,
        faults: FaultInjector | None = None,
    ) -> None:
        self.app = app
        synthetic = app.source if isinstance(app.source, SyntheticSource) else None
        self.faults: FaultInjector | None = faults if faults is not None else synthetic
        self.user = user
        self.out = out
        self._read_line = read_line or sys.stdin.readline
        self.interactive = read_line is None and sys.stdin.isatty()
        # The numbered buttons of the last status message shown; a number clicks one.
        self.choices: list[Choice] = []
        for notifier in app.events.notifiers:
            if isinstance(notifier, ConsoleNotifier) and notifier.policy is None:
                notifier.policy = app.policy

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def run(self) -> int:
        stop = asyncio.Event()
        # What `serve` drives, not the controller alone: a release that succeeds here is then
        # watched (App.watcher), and its finding or closing report is printed like any event.
        driving = asyncio.create_task(self.app.drive(stop), name="drive")
        faces = self.app.events.notifiers
        printer = next((n for n in faces if isinstance(n, ConsoleNotifier)), None)
        digest = (
            asyncio.create_task(self.app.digest.run(stop, printer), name="digest")
            if self.app.digest is not None and printer is not None
            else None
        )
        self.app.start()
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
                line = await self._next_line()
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
            await driving
            if digest is not None:
                await digest
            await self.app.events.drain()
        return 0

    async def _next_line(self) -> str:
        """The next input line, read on a daemon thread: a read blocked on the terminal must
        not keep the process alive after Ctrl-C, as a thread of the default executor would."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()

        def deliver(line: str | None, error: Exception | None) -> None:
            if done.done():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(line or "")

        def read() -> None:
            line, error = None, None
            try:
                line = self._read_line()
            except Exception as exc:
                error = exc
            # A closed loop raises RuntimeError: nobody is waiting for this line any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, line, error)

        threading.Thread(target=read, name="console-input", daemon=True).start()
        return await done

    async def handle(self, line: str) -> None:
        try:
            await self._handle(line)
        except Exception as exc:
            # The same table as Slack's replies (bot.render.errors), in the console's words.
            failed = report(exc, what=f"console, {self.user}: {line}", log=log)
            if failed.kind is Failure.BUG:
                self.say(f"✗ something went wrong (ref {failed.ref}); the log has the details")
            else:
                self.say(f"✗ {said(exc)}")

    # The console's own words (a number, as, wait, await, fault, help) before the shared grammar:
    # one flat dispatch.
    async def _handle(self, line: str) -> None:  # noqa: C901
        word, _, rest = line.partition(" ")
        if word.isdecimal() and not rest.strip():
            await self._click(int(word))
            return
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
        if word == "await":
            await self._await_release(rest.strip())
            return
        if word in ("fault", "clear"):
            self._fault(word, rest.split())
            return
        if word in ("help", "?"):
            self.say(CONSOLE_HELP)
            return
        cmd = parse(line)
        if cmd.verb is Verb.HELP:
            self.say(CONSOLE_HELP)
            return
        if cmd.verb is Verb.STATUS:
            if not await self._show_status(cmd.service):
                self.say(f"no releases of {cmd.service} yet")
            return
        actor = Actor(user=self.user, surface="console")
        # The same dispatcher as the Slack commands: the console is another face of the core.
        reply = await dispatch.run(self.app.service, cmd, actor)
        if cmd.verb is Verb.DEPLOY and not reply.duplicate:
            # The "started" event first, then the status message with its buttons, in the
            # order Slack shows them (the message, then the thread).
            await self.app.events.drain()
            await self._show_status(cmd.service, fallback=reply.release)
            return
        self.say(reply.text)

    # --- the status message and its buttons --------------------------------------------------

    async def _show_status(self, service: str, fallback: Release | None = None) -> bool:
        """Print the service's status message and remember its buttons; False if none."""
        release = await self.app.service.status(service) or fallback
        if release is None:
            return False
        text, self.choices = render_text(
            status_for(release, self.app.policy, demo_metrics=self.app.demo_metrics)
        )
        self.say(text)
        return True

    def _choice_list(self) -> str:
        return "  ".join(f"[{c.number}] {c.label}" for c in self.choices)

    async def _click(self, number: int) -> None:
        """Click button ``number`` of the last status shown, as the current user."""
        if not self.choices:
            self.say(
                f"✗ there is no button {number} to click: the last status shown has none "
                "(`status <service>` shows a release's buttons)"
            )
            return
        choice = next((c for c in self.choices if c.number == number), None)
        if choice is None:
            self.say(f"✗ there is no button {number}: the last ones were {self._choice_list()}")
            return
        actor = Actor(user=self.user, surface=Surface.CONSOLE)

        async def clicker(_: Release) -> Actor:
            return actor

        try:
            # The same click flow as a Slack button (bot.engine.clicks).
            done = await click(self.app.service, choice.action_id, choice.value, clicker)
        except NotAButton:
            self.say(f"✗ button [{number}] {choice.label} is not a shipwatch button")
            return
        if done.status is ClickStatus.UNKNOWN_RELEASE or done.release is None:
            self.say(f"✗ [{number}] {choice.label}: that release no longer exists")
            self.choices = []
            return
        if done.status is ClickStatus.STALE:
            self.say(f"✗ [{number}] {choice.label} is out of date: {done.stale}")
            # Show what is true now, with the buttons that apply to it.
            await self._show_status(done.release.service)
            return
        if done.result is not None and done.result.message:
            duplicate = done.result.outcome is Outcome.DUPLICATE
            self.say(("(already applied) " if duplicate else "") + done.result.message)
        await self.app.events.drain()
        await self._show_status(done.release.service)

    async def _await_release(self, service: str, timeout: float = 600.0) -> None:
        """Let the controller run until the service's release has finished (or timeout)."""
        if not service:
            self.say("usage: await <service>   (waits until its release succeeds or rolls back)")
            return
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            release = await self.app.service.status(service)
            if release is None or not release.is_active:
                return
            if asyncio.get_running_loop().time() > deadline:
                self.say(f"still running after {timeout:.0f}s: {release.describe_state()}")
                return
            await asyncio.sleep(0.25)

    def _fault(self, word: str, args: list[str]) -> None:
        source = self.faults
        if source is None:
            self.say("faults go to the demo's sample services or its synthetic source only")
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
        done = source.inject(args[0], args[1], factor, version)
        self.say(done or f"demo fault: {args[0]} {args[1]} ×{factor:g} on {version}")
