"""The `shipwatch` command (also `python -m bot`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol, cast

from bot import __version__
from bot.app import App, build_app, resolve_policy
from bot.config import Settings
from bot.console import Console, ConsoleNotifier
from bot.demo.rig import (
    METRICS_MODES,
    TRAFFIC_MODES,
    DemoRig,
    MetricsMode,
    TrafficMode,
    demo_policy,
    scripted_input,
)
from bot.errors import MetricsError, PolicyError, ShipwatchError, UserError
from bot.judging.backtest_report import to_dict
from bot.observe.backtest import BacktestRequest, run_backtest
from bot.observe.logs import configure_logging
from bot.release.durations import format_duration, parse_duration
from bot.release.policy import Policy, load_policy, require_judged
from bot.render.backtest import render_report
from bot.render.policy_words import explain_service
from bot.render.sizing import first_step_setting
from bot.store.embedded_redis import EmbeddedRedis
from bot.writing.backtest_chart import render_png as backtest_png

log = logging.getLogger("shipwatch")

# Where `serve` finds the Slack face. The core never imports the transport: the transport plugs
# itself in under this entry point (pyproject.toml), so `console`, `demo` and `check-config`
# never load bolt, and another face could be served the same way.
SERVE_ENTRY_POINTS = "shipwatch.serve"


class Server(Protocol):
    def __call__(
        self, settings: Settings, policy: Policy, *, role: str, socket: bool
    ) -> Coroutine[None, None, int]: ...


def _slack_server() -> Server:
    found = entry_points(group=SERVE_ENTRY_POINTS, name="slack")
    if not found:
        raise ShipwatchError(
            "the Slack app is not installed with this copy of shipwatch (no `slack` entry "
            f"point in `{SERVE_ENTRY_POINTS}`): install the shipwatch package, e.g. "
            "`pip install .` or ./scripts/setup.sh"
        )
    return cast(Server, next(iter(found)).load())


# What one `serve` process does (README, "Operations").
ROLES = ("all", "web", "controller")


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
    demo.add_argument(
        "--metrics",
        choices=METRICS_MODES,
        default="auto",
        help="where the numbers come from: `prometheus` (a real Prometheus, from PATH, scraping "
        "the demo's sample services), `synthetic` (made up in process), or `auto` (the first "
        "when it can; the default)",
    )
    demo.add_argument(
        "--traffic",
        choices=TRAFFIC_MODES,
        default="flags",
        help="what moves users between versions: the embedded `flags` (the default), a real "
        "`haproxy` or `nginx` (from PATH) in front of each sample service's stable and canary "
        "pools, or `unleash` (your server, see --unleash-url), driven as in production; needs "
        "real metrics",
    )
    demo.add_argument(
        "--unleash-url",
        default="",
        metavar="URL",
        help="the Unleash server `--traffic unleash` drives (tokens from $UNLEASH_ADMIN_TOKEN "
        "and $UNLEASH_CLIENT_TOKEN)",
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
        "--role",
        choices=ROLES,
        default="all",
        help="`web`: answer Slack and the API only; `controller`: drive releases and write to "
        "Slack, serving only /healthz, /readyz and /metrics; `all` (the default): both. Run "
        "them as separate processes so acks never wait behind a controller round",
    )
    serve.add_argument(
        "--no-controller",
        action="store_true",
        help="the same as --role web (do not drive releases in this process)",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="allow the demo parts: synthetic metrics without PROMETHEUS_URL and the embedded "
        "demo policy without a policy file (every status message then says DEMO METRICS)",
    )
    _backtest_parser(sub)
    return parser


def _backtest_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bt = sub.add_parser(
        "backtest",
        help="judge a policy on the history in Prometheus: past releases, A/A false "
        "rollbacks, injected faults, and the settings to use",
    )
    bt.add_argument("--policy", type=Path, help="policy file (default: $SHIPWATCH_POLICY)")
    bt.add_argument(
        "--prometheus-url", metavar="URL", help="the Prometheus to read (default: $PROMETHEUS_URL)"
    )
    bt.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="S",
        help="a service to backtest (repeatable; default: every service with metrics)",
    )
    bt.add_argument(
        "--since", default="7d", metavar="DURATION", help="how much history (default: 7d)"
    )
    bt.add_argument(
        "--aa-windows",
        type=int,
        default=20,
        metavar="N",
        help="A/A releases simulated across the history (default: 20)",
    )
    bt.add_argument(
        "--aa-offset",
        metavar="DURATION",
        help="how much earlier the A/A canary side reads the stable series (default: the "
        "longest window or lookback of the service's metrics)",
    )
    bt.add_argument(
        "--inject",
        action="append",
        default=[],
        metavar="EFFECT",
        help="a fault on the canary side, e.g. error_rate=+20%%, latency_p99=+300ms, "
        "latency_p99=x1.1 (repeatable)",
    )
    bt.add_argument(
        "--target-false-rate",
        type=float,
        default=0.01,
        metavar="RATE",
        help="the A/A false rollbacks per release the suggestion stays under (default: 0.01)",
    )
    bt.add_argument(
        "--stable",
        default="",
        metavar="VERSION",
        help="the stable version to judge A/A (default: from the audit's releases)",
    )
    bt.add_argument(
        "--redis-url",
        metavar="URL",
        help="where the audit is (default: $REDIS_URL, or the embedded Redis of "
        "$SHIPWATCH_DATA_DIR when it runs)",
    )
    bt.add_argument("--no-audit", action="store_true", help="do not replay past releases")
    bt.add_argument(
        "--no-suggest", action="store_true", help="judge the policy as written only (no grid)"
    )
    bt.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    bt.add_argument("--chart", type=Path, metavar="FILE", help="write a PNG chart")


def _to_a_reader(command: Callable[[], int]) -> int:
    """Run a command that prints for someone who may stop reading early (`… | head`): a closed
    pipe ends it quietly instead of with a traceback."""
    try:
        return command()
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at /dev/null so that flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings()
    # console and demo log to a file next to the data: the terminal is the chat.
    configure_logging(settings, args.command)
    if args.command == "check-config":
        return _to_a_reader(lambda: _check_config(args.file))
    if args.command == "backtest":
        return _to_a_reader(lambda: _backtest(args, settings))
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
            return asyncio.run(
                _demo(settings, policy, interactive, args.metrics, args.traffic, args.unleash_url)
            )
        if args.command == "serve":
            return _serve(args, settings, policy)
    except ShipwatchError as exc:
        print(f"shipwatch: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def _serve(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    if refused := _demo_parts(settings, policy, allowed=args.demo) or _unjudged(policy):
        print(f"refusing to start: {refused}", file=sys.stderr)
        return 2
    if args.no_controller and args.role == "controller":
        print(
            "refusing to start: --no-controller contradicts --role controller; give one of them",
            file=sys.stderr,
        )
        return 2
    role = "web" if args.no_controller else args.role
    serve = _slack_server()
    return asyncio.run(serve(settings, policy, role=role, socket=args.socket))


def _demo_parts(settings: Settings, policy: Policy, *, allowed: bool) -> str:
    """Why `serve` would run real releases on demo parts, or "" when it would not (or the
    operator said --demo)."""
    if allowed:
        return ""
    if not settings.prometheus_url:
        return (
            "PROMETHEUS_URL is not set, so releases would be judged on made-up numbers. Set it "
            "to your Prometheus, or run `shipwatch serve --demo` to try the bot on synthetic "
            "metrics."
        )
    if policy.source.startswith("("):  # the embedded policy names itself "(embedded …)"
        return (
            f"no policy file: {settings.policy_path} does not exist, so the embedded demo "
            "policy would decide. Write one (see the README's policy section), point "
            "SHIPWATCH_POLICY at it, or run `shipwatch serve --demo`."
        )
    return ""


def _unjudged(policy: Policy) -> str:
    """Why `serve` would ship a service nobody judges, or "" when every one is judged (or
    says `unjudged: true`)."""
    try:
        require_judged(policy)
    except PolicyError as exc:
        return str(exc)
    return ""


def _check_config(path: Path) -> int:
    try:
        policy = load_policy(path)
        require_judged(policy)
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
            f"{name}: {sp.strategy.value} {steps}, hold {format_duration(sp.hold)}, "
            f"every {format_duration(sp.interval)}, "
            f"risk {sp.risk.value}, {len(sp.metrics)} metric(s), traffic {sp.traffic.backend}"
        )
        print(f"  {first_step_setting(sp, name)}")
        for line in explain_service(sp):
            print(f"  {line}")
    # Secrets are often absent where the file is checked (a CI job): said, not refused; `serve`
    # refuses to start without them.
    for name in sorted(n for n in policy.secret_envs() if not os.environ.get(n)):
        print(f"note: ${name} is not set here; `serve` needs it (the policy names it)")
    if policy.has_webhook_hooks() and not os.environ.get("SHIPWATCH_PUBLIC_URL"):
        print(
            "note: $SHIPWATCH_PUBLIC_URL is not set here; the CI jobs of webhook hooks call "
            "back on it, so `serve` needs it or those hooks fail"
        )
    print(f"{path}: OK, {len(policy.services)} service(s)")
    return 0


async def _demo(
    settings: Settings,
    policy: Policy,
    interactive: bool,
    metrics: MetricsMode,
    traffic: TrafficMode = "flags",
    unleash_url: str = "",
) -> int:
    settings = settings.model_copy(update={"controller_tick": min(settings.controller_tick, 0.25)})

    def echo(text: str) -> None:
        print(text, flush=True)

    # Ctrl-C and `kill` end the demo through the finally blocks below, so the Prometheus and
    # Redis it started do not outlive it. Handled on the loop, between steps of the tasks
    # (a plain signal handler cancels from wherever the interpreter happens to be).
    stopped_by: list[signal.Signals] = []
    main_task = asyncio.current_task()
    assert main_task is not None

    def on_signal(sig: signal.Signals) -> None:
        if stopped_by:
            return  # already stopping; what is left is short and bounded
        stopped_by.append(sig)
        main_task.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    rig = DemoRig(settings.data_dir, policy, metrics, traffic, unleash_url)
    try:
        choice = await rig.start()
        echo(choice.line)
        if choice.detail:
            echo(choice.detail)
        if choice.traffic:
            echo(choice.traffic)
        if settings.prometheus_url:
            echo("(PROMETHEUS_URL is not used by the demo: it judges its own sample services)")
        settings = settings.model_copy(update={"prometheus_url": choice.prometheus_url})
        # The deployer first: it puts a release's version on its pool before users reach it.
        notifiers = [*rig.deployers, ConsoleNotifier(sys.stdout)]
        app = await build_app(settings, policy=rig.policy, notifiers=notifiers)
        try:
            await rig.follow_flags(settings.redis_url or _embedded_url(app))
            console = Console(
                app,
                "you",
                read_line=scripted_input(interactive, echo, rig.script),
                faults=rig.faults,
            )
            console.interactive = interactive
            return await console.run()
        finally:
            # The sample services' flag client first, while the Redis it reads is still up.
            await rig.close()
            await app.close()
    except asyncio.CancelledError:
        if stopped_by:
            return 128 + stopped_by[0]  # as a shell reports a command the signal ended
        raise
    finally:
        await rig.close()


def _embedded_url(app: App) -> str:
    assert app.embedded_redis is not None  # no REDIS_URL: build_app started one
    return app.embedded_redis.url


async def _console(settings: Settings, policy: Policy, user: str) -> int:
    settings = settings.model_copy(update={"controller_tick": min(settings.controller_tick, 0.5)})
    app = await build_app(settings, policy=policy, notifiers=[ConsoleNotifier(sys.stdout)])
    try:
        return await Console(app, user).run()
    finally:
        await app.close()


# --- backtest ----------------------------------------------------------------------------------


def _backtest(args: argparse.Namespace, settings: Settings) -> int:
    """Read, judge, print; then the files. Anything the user must fix: one message, exit 2,
    and nothing written."""
    try:
        request = _backtest_request(args, settings)
        for target in (args.json, args.chart):
            if target is not None and not target.resolve().parent.is_dir():
                raise UserError(
                    f"cannot write {target}: its directory does not exist",
                    hint="create it, or give another path",
                )
        report = asyncio.run(run_backtest(request, time.time()))
    except MetricsError as exc:
        print(
            f"shipwatch backtest: {exc}\nfix --prometheus-url (or PROMETHEUS_URL), or the "
            "policy's query",
            file=sys.stderr,
        )
        return 2
    except UserError as exc:
        print(f"shipwatch backtest: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(render_report(report), end="")
    if args.json is not None:
        args.json.write_text(json.dumps(to_dict(report), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if args.chart is not None:
        png = backtest_png(report)
        if png is None:
            print(f"{args.chart}: not written, no A/A window fitted the history")
        else:
            args.chart.write_bytes(png)
            print(f"wrote {args.chart}")
    return 0


def _backtest_request(args: argparse.Namespace, settings: Settings) -> BacktestRequest:
    if args.policy:
        settings = settings.model_copy(update={"policy_path": args.policy})
    policy = resolve_policy(settings)
    url = args.prometheus_url or settings.prometheus_url
    if not url:
        raise UserError(
            "no Prometheus to read",
            hint="give --prometheus-url http://prometheus:9090 (or set PROMETHEUS_URL)",
        )
    try:
        since = parse_duration(args.since)
        offset = parse_duration(args.aa_offset) if args.aa_offset else None
    except ValueError as exc:
        raise UserError(str(exc), hint="e.g. --since 7d, --aa-offset 5m") from exc
    redis_url, note = _audit_redis(args, settings)
    return BacktestRequest(
        policy=policy,
        services=tuple(args.service),
        since=since,
        prometheus_url=url,
        prometheus_timeout=settings.prometheus_timeout,
        redis_url=redis_url,
        redis_note=note,
        aa_windows=args.aa_windows,
        inject=tuple(args.inject),
        target=args.target_false_rate,
        stable=args.stable.strip(),
        offset=offset,
        suggest=not args.no_suggest,
    )


def _audit_redis(args: argparse.Namespace, settings: Settings) -> tuple[str | None, str]:
    """Where the audit is, or why it is not read (skipped, never an error)."""
    if args.no_audit:
        return None, "skipped (--no-audit)"
    if args.redis_url or settings.redis_url:
        return args.redis_url or settings.redis_url, ""
    embedded = EmbeddedRedis(settings.data_dir)
    if embedded.socket.exists():
        return embedded.url, ""
    return None, (
        "skipped: no Redis to read it from (set REDIS_URL or --redis-url; no embedded Redis "
        f"runs under {settings.data_dir})"
    )
