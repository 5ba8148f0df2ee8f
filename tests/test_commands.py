"""The command grammar: typed commands from a line, or a CommandError with the usage."""

from __future__ import annotations

import pytest

from bot.errors import CommandError, UserError
from bot.release.commands import USAGE, Command, Verb, parse
from bot.release.policy import Risk, Strategy
from bot.release.request import DeployOptions

DEPLOY_USAGE = USAGE[Verb.DEPLOY]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("deploy checkout v2.4.1", Command(Verb.DEPLOY, "checkout", "v2.4.1")),
        ("/deploy Checkout v2.4.1-RC1", Command(Verb.DEPLOY, "checkout", "v2.4.1-RC1")),
        ("/rollout deploy search v9", Command(Verb.DEPLOY, "search", "v9")),
        ("/DEPLOY checkout v1", Command(Verb.DEPLOY, "checkout", "v1")),
        (
            "deploy checkout v2 --hold=5m --risk=high --notes=fix the cart",
            Command(Verb.DEPLOY, "checkout", "v2", "fix the cart",
                    DeployOptions(risk=Risk.HIGH, hold=300.0, notes="fix the cart")),
        ),
        (
            "/deploy checkout v2.4.1 --risk high --strategy canary --steps 1,10,50,100 "
            "--hold 15m --stable v2.4.0 --notes fixes the cart total",
            Command(Verb.DEPLOY, "checkout", "v2.4.1", "fixes the cart total",
                    DeployOptions(risk=Risk.HIGH, strategy=Strategy.CANARY, steps=[1, 10, 50, 100],
                                  hold=900.0, notes="fixes the cart total", stable="v2.4.0")),
        ),
        (
            "deploy --risk normal checkout --hold 90s v3",
            Command(Verb.DEPLOY, "checkout", "v3",
                    options=DeployOptions(risk=Risk.NORMAL, hold=90.0)),
        ),
        (
            "deploy checkout v3 --strategy blue-green",
            Command(
                Verb.DEPLOY, "checkout", "v3", options=DeployOptions(strategy=Strategy.BLUE_GREEN)
            ),
        ),
        (
            "deploy checkout v3 --steps 5%,50%,100%",
            Command(Verb.DEPLOY, "checkout", "v3", options=DeployOptions(steps=[5, 50, 100])),
        ),
        (
            "deploy checkout v3 --hold 1h30m",
            Command(Verb.DEPLOY, "checkout", "v3", options=DeployOptions(hold=5400.0)),
        ),
        (
            'deploy checkout v3 --notes "quoted  notes" --risk high tail',
            Command(Verb.DEPLOY, "checkout", "v3", "quoted  notes --risk high tail",
                    DeployOptions(notes="quoted  notes --risk high tail")),
        ),
        (
            "deploy checkout v3 --notes",
            Command(Verb.DEPLOY, "checkout", "v3"),
        ),
        (
            "/deploy checkout v3 --force --stable v2",
            Command(Verb.DEPLOY, "checkout", "v3",
                    options=DeployOptions(stable="v2", force=True)),
        ),
        (
            "/deploy --force checkout v3 --notes past a flaky scan",
            Command(Verb.DEPLOY, "checkout", "v3", "past a flaky scan",
                    DeployOptions(notes="past a flaky scan", force=True)),
        ),
    ],
)
def test_deploy_parsing(line: str, expected: Command) -> None:
    assert parse(line) == expected


def test_notes_swallow_the_rest_of_the_line_even_options() -> None:
    command = parse("/deploy checkout v2 --notes hotfix --risk high --steps 1,100")

    assert command.options.notes == "hotfix --risk high --steps 1,100"
    assert command.text == command.options.notes
    assert command.options.risk is None
    assert command.options.steps is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/rollout status checkout", Command(Verb.STATUS, "checkout")),
        ("/rollout status Checkout", Command(Verb.STATUS, "checkout")),
        ("/rollout STATUS x", Command(Verb.STATUS, "x")),
        ("/rollout", Command(Verb.HELP)),
        ("/rollout help", Command(Verb.HELP)),
        ("/rollout list", Command(Verb.LIST)),
        ("/rollout stats", Command(Verb.STATS, days=7)),
        ("/rollout stats Search", Command(Verb.STATS, "search", days=7)),
        ("/rollout stats search --days 30", Command(Verb.STATS, "search", days=30)),
        ("/rollout stats --days=1 search", Command(Verb.STATS, "search", days=1)),
        ("/rollout stats --days 365", Command(Verb.STATS, days=365)),
        ("/rollout history checkout 5", Command(Verb.HISTORY, "checkout", text="5")),
        ("/rollout approve payments", Command(Verb.APPROVE, "payments")),
        ("/rollout pause checkout waiting for QA", Command(Verb.PAUSE, "checkout",
                                                           text="waiting for QA")),
        ("/rollout resume checkout", Command(Verb.RESUME, "checkout")),
        ("/rollout lock checkout code freeze", Command(Verb.LOCK, "checkout", text="code freeze")),
        ("/rollout unlock checkout", Command(Verb.UNLOCK, "checkout")),
        ("/advance checkout", Command(Verb.ADVANCE, "checkout")),
        ("/rollback checkout p99 doubled", Command(Verb.ROLLBACK, "checkout",
                                                   text="p99 doubled")),
        ('/rollback checkout "errors up"', Command(Verb.ROLLBACK, "checkout", text="errors up")),
        ("rollback checkout", Command(Verb.ROLLBACK, "checkout")),
    ],
)
def test_other_commands(line: str, expected: Command) -> None:
    assert parse(line) == expected


@pytest.mark.parametrize(
    ("line", "message", "usage"),
    [
        ("", "empty command", USAGE[Verb.HELP]),
        ("   ", "empty command", USAGE[Verb.HELP]),
        ("/ship checkout v1", "unknown command `ship`", "advance | approve | deploy"),
        ("/rollout launch checkout", "unknown command `launch`", "history | list | lock"),
        ("/deploy", "`deploy` needs a service", DEPLOY_USAGE),
        ("/rollout status", "`status` needs a service", USAGE[Verb.STATUS]),
        ("/rollback", "`rollback` needs a service", USAGE[Verb.ROLLBACK]),
        ("/rollout approve", "`approve` needs a service", USAGE[Verb.APPROVE]),
        ("/rollout lock", "`lock` needs a service", USAGE[Verb.LOCK]),
        ("/deploy checkout", "deploy takes a service and a version", DEPLOY_USAGE),
        ("/deploy checkout v1 v2", "deploy takes a service and a version", DEPLOY_USAGE),
        ("/deploy --notes checkout v1", "deploy takes a service and a version", DEPLOY_USAGE),
        ("/deploy checkout v1 --forced", "unknown option `--forced`", DEPLOY_USAGE),
        ("/deploy checkout v1 --force=yes", "`--force` takes no value", DEPLOY_USAGE),
        # A flag does not swallow the word after it: that word is still a positional.
        ("/deploy checkout --force v1 v2", "deploy takes a service and a version", DEPLOY_USAGE),
        ("/deploy checkout v1 --risk", "`--risk` needs a value", DEPLOY_USAGE),
        ("/deploy checkout v1 --steps 1,ten,100", "bad --steps `1,ten,100`", DEPLOY_USAGE),
        ("/deploy checkout v1 --steps 1.5,100", "use numbers like 1,10,50,100", DEPLOY_USAGE),
        ("/deploy checkout v1 --hold soon", "`soon` is not a duration", DEPLOY_USAGE),
        ("/deploy checkout v1 --hold 5min", "`5min` is not a duration", DEPLOY_USAGE),
        ("/deploy checkout v1 --risk extreme", "bad --risk `extreme`: use normal or high",
         DEPLOY_USAGE),
        ("/deploy checkout v1 --risk HIGH", "bad --risk `HIGH`", DEPLOY_USAGE),
        ("/deploy checkout v1 --strategy linear", "bad --strategy `linear`", DEPLOY_USAGE),
        ("/rollout stats --days 0", "bad --days `0`: use a whole number of days from 1 to 365",
         USAGE[Verb.STATS]),
        ("/rollout stats --days 366", "bad --days `366`", USAGE[Verb.STATS]),
        ("/rollout stats --days=week", "bad --days `week`", USAGE[Verb.STATS]),
        ("/rollout stats --days -3", "bad --days `-3`", USAGE[Verb.STATS]),
        ("/rollout stats checkout --days", "`--days` needs a value", USAGE[Verb.STATS]),
        ("/rollout stats --weeks 2", "unknown option `--weeks`", USAGE[Verb.STATS]),
        ("/rollout stats checkout payments", "stats takes at most one service",
         USAGE[Verb.STATS]),
    ],
)
def test_errors_carry_the_usage(line: str, message: str, usage: str) -> None:
    with pytest.raises(CommandError) as info:
        parse(line)

    error = info.value
    assert message in str(error)
    assert usage in error.usage
    assert f"usage: {error.usage}" in str(error)
    assert isinstance(error, UserError)


def test_every_verb_has_a_usage_line() -> None:
    for verb, usage in USAGE.items():
        assert verb in usage or verb == "help"
        assert usage.startswith("/")


@pytest.mark.parametrize(
    ("line", "text"),
    [
        ("/rollback checkout it's returning 500s", "it's returning 500s"),
        ("/deploy checkout v2 --notes don't page anyone", "don't page anyone"),
    ],
)
def test_free_text_with_an_apostrophe_is_accepted(line: str, text: str) -> None:
    assert parse(line).text == text
