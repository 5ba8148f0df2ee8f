"""Block Kit pieces, and Slack's size limits: every builder ends in ``fit``, which cuts a
finished message to the limits with a pointer rather than let Slack reject it whole (a
rejected "rolling back" message is far worse than a shortened one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.redact import redact, redact_obj
from bot.render.mrkdwn import clip, esc, shown

# Slack's documented limits (https://api.slack.com/reference/block-kit).
MAX_BLOCKS = 50
MAX_TEXT = 3000  # section text, a context element's text, the fallback text
MAX_HEADER = 150
MAX_FIELDS = 10
MAX_FIELD = 2000
MAX_CONTEXT_ELEMENTS = 10
MAX_ACTION_ELEMENTS = 25
MAX_BUTTON_TEXT = 75
MAX_ACTION_ID = 255
MAX_VALUE = 2000
MAX_CONFIRM_TITLE = 100
MAX_CONFIRM_TEXT = 300
MAX_CONFIRM_BUTTON = 30


@dataclass(frozen=True)
class Message:
    text: str  # the notification / fallback text
    blocks: list[dict[str, Any]]


@dataclass(frozen=True)
class Choice:
    """A button as the console shows it: "[number] label"."""

    number: int
    label: str
    action_id: str
    value: str


def header_block(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": text, "emoji": True}}


def section_block(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def fields_block(fields: Sequence[str]) -> dict[str, Any]:
    return {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]}


def context_block(*texts: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": t} for t in texts if t]}


def plain_block(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, "emoji": True}


def button_element(
    text: str,
    action_id: str,
    value: str,
    *,
    style: str | None = None,
    confirm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "text": plain_block(text),
        "action_id": action_id,
        "value": value,
    }
    if style:
        button["style"] = style
    if confirm:
        button["confirm"] = confirm
    return button


def fit(
    blocks: Sequence[Mapping[str, Any]], text: str, *, more: str = "", text_is_mrkdwn: bool = False
) -> Message:
    """The message within every Slack limit (see the module docstring). ``more`` says where
    the rest can be read; it ends every truncation note. ``text`` is plain words unless
    ``text_is_mrkdwn`` says the caller composed it as safe mrkdwn (escaped pieces, mentions
    made from ids)."""
    # Cleaned first: Slack counts what it will show, and refuses invalid Unicode outright.
    fitted = [b for b in (_fit_block(_shown(dict(b)), more) for b in blocks) if b]
    text = shown(text)
    if len(fitted) > MAX_BLOCKS:
        # Keep the buttons: they are what the message is for while a release is live.
        actions = [b for b in fitted if b["type"] == "actions"][: MAX_BLOCKS - 1]
        body = [b for b in fitted if b["type"] != "actions"]
        room = MAX_BLOCKS - len(actions) - 1
        note = f"… {len(body) - room} more block(s) left out"
        note += f" (truncated: {more})" if more else " (truncated)"
        fitted = [*body[:room], context_block(esc(note)), *actions]
    # The fallback is what notifications show, and Slack reads mrkdwn there too: it is composed
    # from the same untrusted pieces as the blocks, so it is escaped the same way.
    fallback = text.strip() if text_is_mrkdwn else esc(text.strip())
    fallback = clip(fallback or "shipwatch", MAX_TEXT, more)
    # Whatever was pasted into a release (notes, reasons, CI input, metric labels, model
    # output) may carry a credential: none leaves in a message.
    return Message(text=redact(fallback), blocks=redact_obj(fitted))


def _fit_block(block: dict[str, Any], more: str) -> dict[str, Any] | None:
    kind = block.get("type")
    if kind == "header":
        text = block["text"]["text"].strip()
        if not text:
            return None
        block["text"]["text"] = clip(text, MAX_HEADER, markup=False)
        return block
    if kind == "section":
        return _fit_section(block, more)
    if kind == "context":
        elements = [
            e
            for e in block.get("elements", [])
            if e.get("type") not in _TEXT_TYPES or str(e.get("text", "")).strip()
        ]
        if len(elements) > MAX_CONTEXT_ELEMENTS:
            elements = [*elements[: MAX_CONTEXT_ELEMENTS - 1], {"type": "mrkdwn", "text": "…"}]
        for element in elements:
            if element.get("type") in _TEXT_TYPES:
                element["text"] = clip(
                    element["text"], MAX_TEXT, more, markup=element["type"] == "mrkdwn"
                )
        block["elements"] = elements
        return block if elements else None
    if kind == "actions":
        elements = [_fit_element(e) for e in block.get("elements", [])[:MAX_ACTION_ELEMENTS]]
        block["elements"] = elements
        return block if elements else None
    return block


_TEXT_TYPES = frozenset({"mrkdwn", "plain_text"})


def _fit_section(block: dict[str, Any], more: str) -> dict[str, Any] | None:
    text = block.get("text")
    if text is not None:
        if not str(text.get("text", "")).strip():
            del block["text"]
        else:
            text["text"] = clip(text["text"], MAX_TEXT, more, markup=text["type"] == "mrkdwn")
    fields = [f for f in block.get("fields", []) if str(f.get("text", "")).strip()]
    if len(fields) > MAX_FIELDS:
        left = len(fields) - (MAX_FIELDS - 1)
        fields = [*fields[: MAX_FIELDS - 1], {"type": "mrkdwn", "text": f"… {left} more"}]
    for field in fields:
        field["text"] = clip(field["text"], MAX_FIELD, more, markup=field["type"] == "mrkdwn")
    if fields:
        block["fields"] = fields
    else:
        block.pop("fields", None)
    if "accessory" in block:
        block["accessory"] = _fit_element(block["accessory"])
    return block if "text" in block or "fields" in block else None


def _fit_element(element: dict[str, Any]) -> dict[str, Any]:
    if element.get("type") != "button":
        return element
    element["text"]["text"] = clip(element["text"]["text"], MAX_BUTTON_TEXT, markup=False)
    # An id or value cut short no longer parses: the click is then refused as unknown, which
    # is the right failure for content that should never be this long.
    element["action_id"] = element["action_id"][:MAX_ACTION_ID]
    if "value" in element:
        element["value"] = element["value"][:MAX_VALUE]
    confirm = element.get("confirm")
    if confirm:
        confirm["title"]["text"] = clip(confirm["title"]["text"], MAX_CONFIRM_TITLE, markup=False)
        body = confirm["text"]
        body["text"] = clip(body["text"], MAX_CONFIRM_TEXT, markup=body["type"] == "mrkdwn")
        for key in ("confirm", "deny"):
            confirm[key]["text"] = clip(confirm[key]["text"], MAX_CONFIRM_BUTTON, markup=False)
    return element


def _short_lines(text: str, size: int) -> list[str]:
    """The text's lines, a line longer than ``size`` cut at its last space before it (or
    hard, when it has none): a model may answer in one long paragraph."""
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        rest = line
        while len(rest) > size:
            cut = rest.rfind(" ", 0, size)
            cut = cut + 1 if cut > size // 2 else size
            out.append(rest[:cut])
            rest = rest[cut:]
        out.append(rest)
    return out


def paragraphs(text: str, size: int = 2900) -> list[str]:
    """Long generated text as several sections, split at paragraph or line ends."""
    parts: list[str] = []
    current = ""
    for line in _short_lines(text.strip(), size):
        if current and len(current) + len(line) > size:
            parts.append(current.rstrip())
            current = ""
        current += line
    if current.strip():
        parts.append(current.rstrip())
    return parts or [""]


def _shown(node: Any) -> Any:
    """A copy of a block with every string cleaned (``shown``)."""
    if isinstance(node, str):
        return shown(node)
    if isinstance(node, list):
        return [_shown(item) for item in node]
    if isinstance(node, dict):
        return {key: _shown(value) for key, value in node.items()}
    return node


def mrkdwn_message(mrkdwn: str) -> Message:
    """A post whose mrkdwn the caller composed: every untrusted piece already escaped, mentions
    made from ids (``mention``); the fallback says the same, mentions included."""
    return fit([section_block(mrkdwn)], mrkdwn, text_is_mrkdwn=True)


def plain_message(text: str) -> Message:
    """A post that is one piece of text, escaped in its block and its fallback alike."""
    return fit([section_block(esc(text))], text)


def ephemeral(text: str, *, usage: str = "") -> Message:
    """A reply only the person who typed the command sees."""
    blocks = [section_block(esc(text))]
    if usage.strip():
        blocks.append(context_block(f"Usage: `{esc(usage.strip())}`"))
    return fit(blocks, f"{text}\nUsage: {usage}" if usage.strip() else text)
