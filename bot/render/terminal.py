"""Block Kit messages as terminal text, for the console: buttons become numbered choices."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bot.render.kit import Choice, Message

_ANGLE = re.compile(r"<([^<>]+)>")
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")


def _angle(match: re.Match[str]) -> str:
    inner = match.group(1)
    target, _, label = inner.partition("|")
    if target.startswith("@"):
        return label or target
    if target.startswith("!subteam^"):
        return label or "@" + target.removeprefix("!subteam^")
    if target.startswith("!"):
        return label or "@" + target[1:]
    return f"{label} ({target})" if label else target


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def mrkdwn_to_text(text: str) -> str:
    """Slack mrkdwn as terminal text: mentions as @names, bold unmarked, code blocks indented."""
    parts = text.split("```")
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # inside a code block: its own lines, indented
            body = part.strip("\n")
            out.append("\n".join("  " + line for line in body.split("\n")))
        else:
            out.append(_BOLD.sub(r"\1", _ANGLE.sub(_angle, part)).strip("\n"))
    joined = "\n".join(p for p in out if p)
    lines = [line.rstrip() for line in _unescape(joined).split("\n")]
    return "\n".join(line for line in lines if line.strip() or not line)


def _text_of(obj: Mapping[str, Any]) -> str:
    raw = str(obj.get("text", ""))
    return mrkdwn_to_text(raw) if obj.get("type") == "mrkdwn" else raw


# One case per Block Kit block type the bot sends.
def render_text(message: Message) -> tuple[str, list[Choice]]:  # noqa: C901, PLR0912
    """The message as compact terminal text; its buttons become numbered choices."""
    lines: list[str] = []
    choices: list[Choice] = []
    for block in message.blocks:
        kind = block.get("type")
        if kind == "header":
            lines.append(str(block["text"]["text"]))
        elif kind == "section":
            if "text" in block:
                lines.append(_text_of(block["text"]).strip("\n"))
            cells = [_text_of(f).strip().replace("\n", ": ", 1) for f in block.get("fields", [])]
            for i in range(0, len(cells), 2):
                lines.append("   ".join(cells[i : i + 2]))
        elif kind == "context":
            texts = [_text_of(e).strip() for e in block.get("elements", []) if "text" in e]
            if texts:
                lines.append("  " + " · ".join(texts).replace("\n", "\n  "))
        elif kind == "divider":
            lines.append("─" * 40)
        elif kind == "actions":
            row = []
            for element in block.get("elements", []):
                if element.get("type") != "button":
                    continue
                choice = Choice(
                    number=len(choices) + 1,
                    label=str(element["text"]["text"]),
                    action_id=str(element.get("action_id", "")),
                    value=str(element.get("value", "")),
                )
                choices.append(choice)
                row.append(f"[{choice.number}] {choice.label}")
            if row:
                lines.append("  ".join(row))
    if not lines:
        lines.append(message.text)
    return "\n".join(lines), choices
