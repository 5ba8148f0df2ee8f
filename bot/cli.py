"""The `shipwatch` command (also `python -m bot`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bot import __version__
from bot.app import build_app, resolve_policy
from bot.config import Settings
from bot.console import Console, ConsoleNotifier
from bot.demo import demo_policy, scripted_input
from bot.errors import PolicyError, ShipwatchError
from bot.policy import Policy, load_policy
from handlers.server import serve

log = logging.getLogger("shipwatch")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shipwatch",
        description="Progressive delivery from chat: canary releases that advance and roll "
        "back by themselves.",
    )
    parser.add_argument("--version", action="version", version=f"shipwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check-config", help="validate a policy file and print every problem")
    check.add_argument("file", type=Path, help="path to shipwatch.yaml")

    console = sub.add_parser("console", help="run releases from the terminal (no Slack needed)")
    console.add_argument("--as", dest="user", default="you", help="who is typing (default: you)")
    console.add_argument("--policy", type=Path, help="policy file (default: $SHIPWATCH_POLICY)")
    console.add_argument(
        "--demo-speed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="seconds instead of minutes per step (default: on with the embedded demo policy)",
    )

    demo = sub.add_parser(
        "demo",
        help="play two releases at demo speed (one healthy, one rolled back), then the "
        "console; no Slack, Prometheus or LLM needed",
    )
    demo.add_argument(
        "--interactive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stay at the console prompt afterwards (default when a terminal)",
    )

    serve = sub.add_parser(
        "serve", help="run the Slack app over HTTP (POST /slack/events) and the controller"
    )
    serve.add_argument(
        "--socket",
        action="store_true",
        help="talk to Slack over Socket Mode (needs SLACK_APP_TOKEN)",
    )
    serve.add_argument("--policy", type=Path, help="policy file (default: $SHIPWATCH_POLICY)")
    serve.add_argument(
        "--no-controller", action="store_true", help="do not drive releases in this process"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings()
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if args.command in ("console", "demo"):
        # The terminal is the chat: keep log lines out of it, in a file next to the data.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format=log_format,
            filename=str(settings.data_dir / "console.log"),
        )
    else:
        logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr, format=log_format)
    if args.command == "check-config":
        return _check_config(args.file)
    if getattr(args, "policy", None):
        settings = settings.model_copy(update={"policy_path": args.policy})
    try:
        policy = resolve_policy(settings)
    except PolicyError as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "console":
            fast = args.demo_speed if args.demo_speed is not None else policy.source.startswith("(")
            speedy = demo_policy(policy, interval=2.0, hold=10.0, bake=12.0) if fast else policy
            return asyncio.run(_console(settings, speedy, args.user))
        if args.command == "demo":
            interactive = args.interactive and sys.stdin.isatty()
            return asyncio.run(_demo(settings, demo_policy(policy), interactive))
        if args.command == "serve":
            return asyncio.run(
                serve(settings, policy, controller=not args.no_controller, socket=args.socket)
            )
    except ShipwatchError as exc:
        print(f"shipwatch: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def _check_config(path: Path) -> int:
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    for name, sp in sorted(policy.services.items()):
        steps = (
            " → ".join(f"{w}%" for w in sp.weights)
            if sp.strategy.value == "canary"
            else "0% → 100%"
        )
        print(
            f"{name}: {sp.strategy.value} {steps}, hold {sp.hold:g}s, every {sp.interval:g}s, "
            f"risk {sp.risk.value}, {len(sp.metrics)} metric(s), traffic {sp.traffic.backend}"
        )
    print(f"{path}: OK, {len(policy.services)} service(s)")
    return 0


async def _demo(settings: Settings, policy: Policy, interactive: bool) -> int:
    settings = settings.model_copy(update={"controller_tick": min(settings.controller_tick, 0.25)})
    app = await build_app(settings, policy=policy, notifiers=[ConsoleNotifier(sys.stdout)])
    try:

        def echo(text: str) -> None:
            print(text, flush=True)

        console = Console(app, "you", read_line=scripted_input(interactive, echo))
        console.interactive = interactive
        return await console.run()
    finally:
        await app.close()


async def _console(settings: Settings, policy: Policy, user: str) -> int:
    settings = settings.model_copy(update={"controller_tick": min(settings.controller_tick, 0.5)})
    app = await build_app(settings, policy=policy, notifiers=[ConsoleNotifier(sys.stdout)])
    try:
        return await Console(app, user).run()
    finally:
        await app.close()
