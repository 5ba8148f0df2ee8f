"""The command grammar shared by every surface (Slack slash commands, the console, the API).

``parse("deploy checkout v2.4.1 --risk high")`` gives a typed Command or raises CommandError
with the right usage.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from bot.errors import CommandError
from bot.release.durations import parse_duration
from bot.release.policy import Risk, Strategy
from bot.release.request import DeployOptions

_E = TypeVar("_E", bound=StrEnum)


class Verb(StrEnum):
    DEPLOY = "deploy"
    ADVANCE = "advance"
    APPROVE = "approve"
    ROLLBACK = "rollback"
    STATUS = "status"
    LIST = "list"
    PAUSE = "pause"
    RESUME = "resume"
    HISTORY = "history"
    STATS = "stats"
    LOCK = "lock"
    UNLOCK = "unlock"
    HANDBACK = "handback"
    HELP = "help"


USAGE: dict[Verb, str] = {
    Verb.DEPLOY: "/deploy <service> <version> [--risk normal|high] [--strategy canary|blue_green] "
    "[--steps 1,10,25,50,100] [--hold 15m] [--stable <version>] [--force] [--notes TEXT]",
    Verb.ADVANCE: "/advance <service>",
    Verb.APPROVE: "/rollout approve <service>",
    Verb.ROLLBACK: "/rollback <service> [reason]",
    Verb.STATUS: "/rollout status <service>",
    Verb.LIST: "/rollout list",
    Verb.PAUSE: "/rollout pause <service> [reason]",
    Verb.RESUME: "/rollout resume <service>",
    Verb.HISTORY: "/rollout history <service> [count]",
    Verb.STATS: "/rollout stats [service] [--days N]",
    Verb.LOCK: "/rollout lock <service> <reason>",
    Verb.UNLOCK: "/rollout unlock <service>",
    Verb.HANDBACK: "/rollout handback <service>",
    Verb.HELP: "/rollout help",
}
NEEDS_SERVICE = frozenset(
    {
        Verb.DEPLOY,
        Verb.ADVANCE,
        Verb.APPROVE,
        Verb.ROLLBACK,
        Verb.STATUS,
        Verb.PAUSE,
        Verb.RESUME,
        Verb.HISTORY,
        Verb.LOCK,
        Verb.UNLOCK,
        Verb.HANDBACK,
    }
)


@dataclass(frozen=True)
class Command:
    verb: Verb
    service: str = ""
    version: str = ""
    text: str = ""  # reason / notes / count, the rest of the line
    options: DeployOptions = field(default_factory=DeployOptions)
    days: int | None = None  # stats: the window, in days back from now


def parse(line: str) -> Command:
    try:
        words = shlex.split(line)
    except ValueError:
        # An unbalanced quote is almost always an apostrophe in free text ("it's down"):
        # read the line word by word instead of refusing it.
        words = line.split()
    if not words:
        raise CommandError("empty command", usage=USAGE[Verb.HELP])
    word = words[0].lstrip("/").lower()
    if word == "rollout":
        if len(words) == 1:
            return Command(Verb.HELP)
        word, words = words[1].lower(), words[1:]
    try:
        verb = Verb(word)
    except ValueError:
        raise CommandError(f"unknown command `{word}`", usage=" | ".join(sorted(USAGE))) from None
    args = words[1:]
    if verb in NEEDS_SERVICE and not args:
        raise CommandError(f"`{verb}` needs a service", usage=USAGE[verb])
    if verb is Verb.DEPLOY:
        return _deploy(args)
    if verb is Verb.STATS:
        return _stats(args)
    service = args[0].lower() if args else ""
    return Command(verb, service=service, text=" ".join(args[1:]))


STATS_DAYS = 7
STATS_MAX_DAYS = 365


def _stats(args: list[str]) -> Command:
    usage = USAGE[Verb.STATS]
    positional: list[str] = []
    days = STATS_DAYS
    i = 0
    while i < len(args):
        name, eq, inline = args[i].partition("=")
        if not name.startswith("--"):
            positional.append(args[i])
            i += 1
            continue
        if name != "--days":
            raise CommandError(f"unknown option `{name}`", usage=usage)
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
        i += 1 if eq else 2
        if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= STATS_MAX_DAYS:
            raise CommandError(
                f"bad --days `{value}`: use a whole number of days from 1 to {STATS_MAX_DAYS}"
                if value
                else "`--days` needs a value",
                usage=usage,
            )
        days = int(value)
    if len(positional) > 1:
        raise CommandError("stats takes at most one service", usage=usage)
    return Command(Verb.STATS, service=positional[0].lower() if positional else "", days=days)


def _choice(kind: type[_E], name: str, value: str | None, usage: str) -> _E | None:
    """The member of ``kind`` that ``--name value`` names (``blue-green`` reads as
    ``blue_green``), None when the option is absent."""
    if value is None:
        return None
    try:
        return kind(value.replace("-", "_"))
    except ValueError:
        choices = " or ".join(m.value for m in kind)
        raise CommandError(f"bad --{name} `{value}`: use {choices}", usage=usage) from None


# One pass over the words, each option's rule and error next to it.
def _deploy(args: list[str]) -> Command:  # noqa: C901, PLR0912
    usage = USAGE[Verb.DEPLOY]
    positional: list[str] = []
    opts: dict[str, str] = {}
    i = 0
    while i < len(args):
        word = args[i]
        if word.startswith("--"):
            name, eq, inline = word[2:].partition("=")
            if name not in ("risk", "strategy", "steps", "hold", "notes", "stable", "force"):
                raise CommandError(f"unknown option `{word}`", usage=usage)
            if name == "force":  # a flag: the word after it is not its value
                if eq:
                    raise CommandError("`--force` takes no value", usage=usage)
                opts["force"] = "yes"
                i += 1
                continue
            if name == "notes":
                opts["notes"] = " ".join([inline] * bool(eq) + args[i + 1 :])
                break
            if eq:  # --hold=5m
                opts[name] = inline
                i += 1
                continue
            if i + 1 >= len(args):
                raise CommandError(f"`{word}` needs a value", usage=usage)
            opts[name] = args[i + 1]
            i += 2
        else:
            positional.append(word)
            i += 1
    if len(positional) != 2:
        raise CommandError("deploy takes a service and a version", usage=usage)
    steps = None
    if "steps" in opts:
        try:
            steps = [int(s) for s in opts["steps"].replace("%", "").split(",") if s]
        except ValueError as exc:
            raise CommandError(
                f"bad --steps `{opts['steps']}`: use numbers like 1,10,50,100", usage=usage
            ) from exc
    hold = None
    if "hold" in opts:
        try:
            hold = parse_duration(opts["hold"])
        except ValueError as exc:
            raise CommandError(str(exc), usage=usage) from exc
    risk = _choice(Risk, "risk", opts.get("risk"), usage)
    strategy = _choice(Strategy, "strategy", opts.get("strategy"), usage)
    return Command(
        Verb.DEPLOY,
        service=positional[0].lower(),
        version=positional[1],
        text=opts.get("notes", ""),
        options=DeployOptions(
            risk=risk,
            strategy=strategy,
            steps=steps,
            hold=hold,
            notes=opts.get("notes", ""),
            stable=opts.get("stable", ""),
            force="force" in opts,
        ),
    )
