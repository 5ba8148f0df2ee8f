"""The command grammar: typed commands from a line, or a CommandError with the usage."""

from __future__ import annotations

import pytest

from bot.errors import CommandError, UserError
from bot.release.commands import USAGE, Command, parse
from bot.release.request import DeployOptions

DEPLOY_USAGE = USAGE["deploy"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("deploy checkout v2.4.1", Command("deploy", "checkout", "v2.4.1")),
        ("/deploy Checkout v2.4.1-RC1", Command("deploy", "checkout", "v2.4.1-RC1")),
        ("/rollout deploy search v9", Command("deploy", "search", "v9")),
        ("/DEPLOY checkout v1", Command("deploy", "checkout", "v1")),
        (
            "deploy checkout v2 --hold=5m --risk=high --notes=fix the cart",
            Command("deploy", "checkout", "v2", "fix the cart",
                    DeployOptions(risk="high", hold=300.0, notes="fix the cart")),
        ),
        (
            "/deploy checkout v2.4.1 --risk high --strategy canary --steps 1,10,50,100 "
            "--hold 15m --stable v2.4.0 --notes fixes the cart total",
            Command("deploy", "checkout", "v2.4.1", "fixes the cart total",
                    DeployOptions(risk="high", strategy="canary", steps=[1, 10, 50, 100],
                                  hold=900.0, notes="fixes the cart total", stable="v2.4.0")),
        ),
        (
            "deploy --risk normal checkout --hold 90s v3",
            Command("deploy", "checkout", "v3",
                    options=DeployOptions(risk="normal", hold=90.0)),
        ),
        (
            "deploy checkout v3 --strategy blue-green",
            Command("deploy", "checkout", "v3", options=DeployOptions(strategy="blue_green")),
        ),
        (
            "deploy checkout v3 --steps 5%,50%,100%",
            Command("deploy", "checkout", "v3", options=DeployOptions(steps=[5, 50, 100])),
        ),
        (
            "deploy checkout v3 --hold 1h30m",
            Command("deploy", "checkout", "v3", options=DeployOptions(hold=5400.0)),
        ),
        (
            'deploy checkout v3 --notes "quoted  notes" --risk high tail',
            Command("deploy", "checkout", "v3", "quoted  notes --risk high tail",
                    DeployOptions(notes="quoted  notes --risk high tail")),
        ),
        (
            "deploy checkout v3 --notes",
            Command("deploy", "checkout", "v3"),
        ),
        (
            "/deploy checkout v3 --force --stable v2",
            Command("deploy", "checkout", "v3",
                    options=DeployOptions(stable="v2", force=True)),
        ),
        (
            "/deploy --force checkout v3 --notes past a flaky scan",
            Command("deploy", "checkout", "v3", "past a flaky scan",
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
        ("/rollout status checkout", Command("status", "checkout")),
        ("/rollout status Checkout", Command("status", "checkout")),
        ("/rollout STATUS x", Command("status", "x")),
        ("/rollout", Command("help")),
        ("/rollout help", Command("help")),
        ("/rollout list", Command("list")),
        ("/rollout stats", Command("stats", days=7)),
        ("/rollout stats Search", Command("stats", "search", days=7)),
        ("/rollout stats search --days 30", Command("stats", "search", days=30)),
        ("/rollout stats --days=1 search", Command("stats", "search", days=1)),
        ("/rollout stats --days 365", Command("stats", days=365)),
        ("/rollout history checkout 5", Command("history", "checkout", text="5")),
        ("/rollout approve payments", Command("approve", "payments")),
        ("/rollout pause checkout waiting for QA", Command("pause", "checkout",
                                                           text="waiting for QA")),
        ("/rollout resume checkout", Command("resume", "checkout")),
        ("/rollout lock checkout code freeze", Command("lock", "checkout", text="code freeze")),
        ("/rollout unlock checkout", Command("unlock", "checkout")),
        ("/advance checkout", Command("advance", "checkout")),
        ("/rollback checkout p99 doubled", Command("rollback", "checkout",
                                                   text="p99 doubled")),
        ('/rollback checkout "errors up"', Command("rollback", "checkout", text="errors up")),
        ("rollback checkout", Command("rollback", "checkout")),
    ],
)
def test_other_commands(line: str, expected: Command) -> None:
    assert parse(line) == expected


@pytest.mark.parametrize(
    ("line", "message", "usage"),
    [
        ("", "empty command", USAGE["help"]),
        ("   ", "empty command", USAGE["help"]),
        ("/ship checkout v1", "unknown command `ship`", "advance | approve | deploy"),
        ("/rollout launch checkout", "unknown command `launch`", "history | list | lock"),
        ("/deploy", "`deploy` needs a service", DEPLOY_USAGE),
        ("/rollout status", "`status` needs a service", USAGE["status"]),
        ("/rollback", "`rollback` needs a service", USAGE["rollback"]),
        ("/rollout approve", "`approve` needs a service", USAGE["approve"]),
        ("/rollout lock", "`lock` needs a service", USAGE["lock"]),
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
         USAGE["stats"]),
        ("/rollout stats --days 366", "bad --days `366`", USAGE["stats"]),
        ("/rollout stats --days=week", "bad --days `week`", USAGE["stats"]),
        ("/rollout stats --days -3", "bad --days `-3`", USAGE["stats"]),
        ("/rollout stats checkout --days", "`--days` needs a value", USAGE["stats"]),
        ("/rollout stats --weeks 2", "unknown option `--weeks`", USAGE["stats"]),
        ("/rollout stats checkout payments", "stats takes at most one service",
         USAGE["stats"]),
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
