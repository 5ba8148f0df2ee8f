"""Structured logs: the JSON line, the correlation context (and its isolation between asyncio
tasks), secrets kept out, and the ids reaching the lines of a real HTTP request and of a real
controller round on redis-server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.app import build_app
from bot.config import Settings
from bot.observe.logs import (
    ContextFilter,
    JsonFormatter,
    build_handler,
    configure_logging,
    current_context,
    log_context,
    log_format,
    request_id_from,
)
from bot.release.policy import parse_policy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor
from handlers.api.records import ROLLOUTS
from handlers.server import REQUEST_ID
from tests.support.gated_source import GatedSource
from tests.support.slack_rig import SECRET, SlackRig, running_rig, wait_until
from tests.support.slack_signing import sign, slash_command

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

# Shaped like the real thing where a shape exists, shapeless where it does not (a signing
# secret is plain hex, an API token whatever its owner chose): those only the literal match
# from Settings can catch.
BOT_TOKEN = "xoxb-1111-2222-ShipwatchLogsTest"
APP_TOKEN = "xapp-1-A0001-3333-ShipwatchLogsTest"
SIGNING_SECRET = "8f14e45fceea167a5a36dedd4bea2543"
OPENAI_KEY = "sk-proj-LogsTestKey0123456789abcdef"
API_TOKEN = "Zq9vX2mLp4Rt7Wn1Kd8Hs3"
OTHER_API_TOKEN = "jenkinsjenkinsjenkins42"
SECRETS = (BOT_TOKEN, APP_TOKEN, SIGNING_SECRET, OPENAI_KEY, API_TOKEN, OTHER_API_TOKEN)


@dataclass
class Captured:
    stream: io.StringIO

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def with_msg(self, fragment: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if fragment in line["msg"]]


@pytest.fixture
def captured() -> Iterator[Captured]:
    """JSON lines of everything logged at INFO and above, as `serve` writes them."""
    stream = io.StringIO()
    handler = build_handler(stream, "json")
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield Captured(stream)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Puts the root logger back as it was after a test that calls configure_logging."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)


def secret_settings(**extra: Any) -> Settings:
    return Settings.model_validate(
        {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "OPENAI_API_KEY": OPENAI_KEY,
            "SHIPWATCH_API_TOKENS": f"github:{API_TOKEN}:checkout,jenkins:{OTHER_API_TOKEN}",
        }
        | extra
    )


# --- the line ---------------------------------------------------------------------------------


def test_a_line_is_one_json_object_with_the_fields(captured: Captured) -> None:
    log = logging.getLogger("tests.logs")
    with log_context(request_id="req-1", release_id="rel-1", service="checkout"):
        log.warning("step %d of %s\nsecond line", 2, "checkout", extra={"weight": 10})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")

    text = captured.stream.getvalue()
    assert len(text.splitlines()) == 2  # the message's newline stays inside its line
    first, second = captured.lines()
    assert list(first)[:7] == [
        "ts",
        "level",
        "logger",
        "msg",
        "request_id",
        "release_id",
        "service",
    ]
    assert TS.match(first["ts"]), first["ts"]
    assert first["level"] == "WARNING" and first["logger"] == "tests.logs"
    assert first["msg"] == "step 2 of checkout\nsecond line"
    assert (first["request_id"], first["release_id"], first["service"]) == (
        "req-1",
        "rel-1",
        "checkout",
    )
    assert first["weight"] == 10
    assert "exc" not in first
    # Outside the block: no correlation fields at all, and the traceback under "exc".
    assert not {"request_id", "release_id", "service"} & second.keys()
    assert second["level"] == "ERROR" and second["msg"] == "it failed"
    assert "Traceback" in second["exc"] and "ValueError: boom" in second["exc"]


def test_an_explicit_extra_field_wins_over_the_context(captured: Captured) -> None:
    with log_context(release_id="from-context"):
        logging.getLogger("t").info("x", extra={"release_id": "explicit"})
    [line] = captured.lines()
    assert line["release_id"] == "explicit"


def test_text_format_appends_the_ids(tmp_path: Path, root_logging: None) -> None:
    settings = Settings.model_validate({"SHIPWATCH_DATA_DIR": str(tmp_path / "data")})
    handler = configure_logging(settings, "console")
    with log_context(release_id="rel-9", service="search"):
        logging.getLogger("tests.logs").info("held at %d%%", 10)
    logging.getLogger("tests.logs").info("no ids here")
    handler.flush()

    lines = (tmp_path / "data" / "console.log").read_text().splitlines()
    assert lines[0].endswith("INFO tests.logs: held at 10% [release_id=rel-9 service=search]")
    assert lines[1].endswith("INFO tests.logs: no ids here")


def test_format_defaults_per_command_and_the_setting_overrides() -> None:
    plain = Settings()
    assert log_format(plain, "serve") == "json"
    assert log_format(plain, "console") == "text"
    assert log_format(plain, "demo") == "text"
    forced = Settings.model_validate({"SHIPWATCH_LOG_FORMAT": "text"})
    assert log_format(forced, "serve") == "text"
    assert log_format(Settings.model_validate({"SHIPWATCH_LOG_FORMAT": "json"}), "demo") == "json"


def test_configure_logging_replaces_its_own_handler_only(root_logging: None) -> None:
    root = logging.getLogger()
    others = list(root.handlers)
    first, second = io.StringIO(), io.StringIO()
    configure_logging(Settings(), "serve", stream=first)
    configure_logging(Settings(), "serve", stream=second)
    logging.getLogger("t").warning("once")

    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["msg"] == "once"
    assert len([h for h in root.handlers if h not in others]) == 1


# --- the context ------------------------------------------------------------------------------


def test_nested_contexts_merge_and_unwind() -> None:
    assert dict(current_context()) == {}
    with log_context(request_id="r1", service="checkout"):
        with log_context(release_id="rel-1", service=None) as inner:
            # None keeps what the outer block said: callers pass what they may not know yet.
            assert dict(inner) == {"request_id": "r1", "service": "checkout", "release_id": "rel-1"}
            with log_context(service="search", release_id=""):
                assert dict(current_context()) == {
                    "request_id": "r1",
                    "service": "search",
                    "release_id": "rel-1",
                }
            assert current_context()["service"] == "checkout"
        assert dict(current_context()) == {"request_id": "r1", "service": "checkout"}
    assert dict(current_context()) == {}


def test_a_field_may_not_shadow_a_record_attribute() -> None:
    with pytest.raises(ValueError, match="name"), log_context(name="x"):
        pass


async def test_concurrent_tasks_keep_their_own_ids(captured: Captured) -> None:
    log = logging.getLogger("tests.logs")
    both_in = asyncio.Barrier(2)

    async def evaluate(release_id: str) -> None:
        with log_context(release_id=release_id):
            log.info("start %s", release_id)
            await both_in.wait()  # each task's block is open while the other logs
            log.info("end %s", release_id)

    with log_context(request_id="parent"):
        await asyncio.gather(evaluate("rel-a"), evaluate("rel-b"))
        # A task's own block never reaches its parent.
        assert dict(current_context()) == {"request_id": "parent"}
        child = asyncio.create_task(evaluate("rel-c"))
        await asyncio.sleep(0)
        assert "release_id" not in current_context()
        await asyncio.gather(child, evaluate("rel-d"))

    lines = captured.lines()
    assert len(lines) == 8
    for line in lines:
        # Every line names the release its own task was about, and the parent's request.
        assert line["msg"].endswith(line["release_id"]), line
        assert line["request_id"] == "parent"


def test_context_filter_works_for_any_handler() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "m", (), None)
    with log_context(release_id="rel-5"):
        assert ContextFilter().filter(record)
    assert getattr(record, "release_id", None) == "rel-5"
    assert json.loads(JsonFormatter().format(record))["release_id"] == "rel-5"


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        ("ci-run-4711.2", True),
        ("0d7c2a9e-7f3b-4c1e-9b2a-5d9f1e3c6a70", True),
        ("gh:acme/checkout:4711", False),  # "/" is not a safe character
        ("a" * 64, True),
        ("a" * 65, False),
        ("has space", False),
        ("-leading-dash", False),
        ("", False),
        (None, False),
    ],
)
def test_request_ids_from_callers_are_kept_only_when_safe(header: str | None, kept: bool) -> None:
    got = request_id_from(header)
    if kept:
        assert got == header
    else:
        assert got != header and re.fullmatch(r"[0-9a-f]{16}", got)


# --- secrets ----------------------------------------------------------------------------------


def test_configured_secrets_never_reach_the_log(root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(secret_settings(), "serve", stream=stream)
    log = logging.getLogger("tests.logs")

    log.info("token %s, app %s, signing %s", BOT_TOKEN, APP_TOKEN, SIGNING_SECRET)
    log.info(f"openai {OPENAI_KEY} and api tokens {API_TOKEN} / {OTHER_API_TOKEN}")
    log.info(
        "a request",
        extra={
            "headers": {"Authorization": f"Bearer {API_TOKEN}"},
            "sent": [SIGNING_SECRET],
            "password": "hunter2hunter2",
        },
    )
    with log_context(request_id="r1"):
        try:
            raise RuntimeError(f"Slack said no to {BOT_TOKEN}")
        except RuntimeError:
            log.exception("auth.test failed")
    log.info("settings: %s", secret_settings().model_dump())
    log.info("redis at redis://default:s3cr3tpass@redis:6379/0, limited to checkout")

    text = stream.getvalue()
    for secret in (*SECRETS, "hunter2hunter2", "s3cr3tpass"):
        assert secret not in text, secret
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["msg"] == "token [redacted], app [redacted], signing [redacted]"
    assert lines[1]["msg"] == "openai [redacted] and api tokens [redacted] / [redacted]"
    assert lines[2]["headers"] == {"Authorization": "Bearer [redacted]"}
    assert lines[2]["sent"] == ["[redacted]"] and lines[2]["password"] == "[redacted]"
    assert "RuntimeError: Slack said no to [redacted]" in lines[3]["exc"]
    assert lines[3]["request_id"] == "r1"
    # What is no secret comes through: a token's scope, a host, the words around them.
    assert lines[5]["msg"] == "redis at redis://***@redis:6379/0, limited to checkout"


def test_short_configured_values_are_not_matched_literally(root_logging: None) -> None:
    # A 4-character "secret" would erase ordinary text from every line; it is left alone.
    stream = io.StringIO()
    configure_logging(
        Settings.model_validate({"SLACK_SIGNING_SECRET": "beta"}), "serve", stream=stream
    )
    logging.getLogger("t").warning("the beta channel")
    assert json.loads(stream.getvalue())["msg"] == "the beta channel"


def test_a_broken_format_string_is_logged_not_raised(captured: Captured) -> None:
    logging.getLogger("t").warning("%d releases", "many")
    [line] = captured.lines()
    assert "%d releases" in line["msg"] and "'many'" in line["msg"]


# --- a request through the real app -----------------------------------------------------------

API_TOKENS = f"github:{API_TOKEN}"


@pytest.fixture
async def rig(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[SlackRig]:
    async with running_rig(redis_url, extra_settings={"SHIPWATCH_API_TOKENS": API_TOKENS}) as rig:
        yield rig


async def test_an_api_request_logs_with_its_request_id_and_release_id(
    rig: SlackRig, captured: Captured
) -> None:
    body = {
        "service": "checkout",
        "version": "v2",
        "stable": "v1",
        "changes": [],
        "requested_by": "octocat",
        "request_id": "run-4711",
    }
    headers = {"Authorization": f"Bearer {API_TOKEN}", REQUEST_ID: "ci-run-4711.1"}
    async with rig.http.post(rig.url(ROLLOUTS), json=body, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        assert resp.headers[REQUEST_ID] == "ci-run-4711.1"
        release_id = (await resp.json())["release"]["id"]

    [started] = captured.with_msg("started checkout#")
    assert started["request_id"] == "ci-run-4711.1"
    assert (started["release_id"], started["service"]) == (release_id, "checkout")
    assert API_TOKEN not in captured.stream.getvalue()

    # Without an id of its own (or with an unsafe one) the caller gets a new one back.
    async with rig.http.get(rig.url("/healthz")) as resp:
        assert re.fullmatch(r"[0-9a-f]{16}", resp.headers[REQUEST_ID])
    async with rig.http.get(rig.url("/healthz"), headers={REQUEST_ID: "x" * 200}) as resp:
        assert re.fullmatch(r"[0-9a-f]{16}", resp.headers[REQUEST_ID])
    # Error answers carry it too.
    async with rig.http.get(rig.url("/nowhere"), headers={REQUEST_ID: "lost-1"}) as resp:
        assert resp.status == 404 and resp.headers[REQUEST_ID] == "lost-1"


async def test_a_slash_command_logs_with_the_request_and_slack_ids(
    rig: SlackRig, captured: Captured
) -> None:
    url = rig.new_response_url("C0RELEASES", "U0BOB")
    body = slash_command(
        "/deploy", "chekout v2", user_id="U0BOB", response_url=url, trigger_id="1337.42.abcdef"
    )
    headers = sign(SECRET, body) | {REQUEST_ID: "edge-77"}
    async with rig.http.post(rig.url("/slack/events"), data=body, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers[REQUEST_ID] == "edge-77"

    # The work runs after the ack, in a task of its own; it keeps the request's id.
    await wait_until(lambda: bool(captured.with_msg("bad command")), "the refusal's log line")
    [line] = captured.with_msg("bad command")
    assert (line["request_id"], line["trigger_id"]) == ("edge-77", "1337.42.abcdef")


# --- a controller round on a real Redis -------------------------------------------------------

POLICY = """
defaults:
  steps: [1, 10, 100]
  hold: 10m
  interval: 100ms
  window: 1s
  metrics:
    - name: error_rate
      query: 'errors{service="{service}",version="{version}"}'
      max: 0.05
services:
  checkout: {}
  search: {}
"""


async def test_a_controller_round_logs_each_release_with_its_id(
    redis_url: str, redis_client: aioredis.Redis, captured: Captured
) -> None:
    settings = Settings.model_validate({"REDIS_URL": redis_url, "PROMETHEUS_URL": None})
    source = GatedSource(seed=5, armed=True)
    app = await build_app(settings, policy=parse_policy(POLICY, "logs"), source=source)
    try:
        alice = Actor(user="alice", surface="slack")
        releases = [
            (await app.service.deploy(alice, name, "v2", DeployOptions(stable="v1"))).release
            for name in ("checkout", "search")
        ]
        round_task = asyncio.create_task(app.controller.run_once())
        await asyncio.wait_for(source.entered.wait(), 5)
        # While the round waits on its metrics, a person pauses both releases: the round's
        # decisions lose the race, and the controller says so about each one.
        for release in releases:
            await app.service.pause(alice, release.service, "hold on")
        source.go.set()
        stats = await asyncio.wait_for(round_task, 5)
        assert stats.evaluated == 2
    finally:
        await app.close()

    lines = captured.with_msg("not committed")
    assert len(lines) == 2
    for release in releases:
        [line] = [x for x in lines if x["msg"].startswith(release.label)]
        assert (line["release_id"], line["service"]) == (release.id, release.service)
        assert line["logger"] == "bot.engine.controller"


async def test_every_committed_decision_is_one_info_line_with_the_release_id(
    redis_url: str, redis_client: aioredis.Redis, captured: Captured
) -> None:
    settings = Settings.model_validate({"REDIS_URL": redis_url, "PROMETHEUS_URL": None})
    app = await build_app(settings, policy=parse_policy(POLICY, "logs"), source=GatedSource(seed=5))
    try:
        alice = Actor(user="alice", surface="slack")
        release = (
            await app.service.deploy(alice, "checkout", "v2", DeployOptions(stable="v1"))
        ).release
        stats = await asyncio.wait_for(app.controller.run_once(), 5)
        assert stats.evaluated == 1
    finally:
        await app.close()

    [line] = [x for x in captured.lines() if x.get("decision")]
    assert line["level"] == "INFO" and line["msg"].startswith(f"{release.label}: ")
    assert (line["release_id"], line["service"]) == (release.id, "checkout")
