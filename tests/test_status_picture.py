"""The README's picture of the Slack status message: the script runs, draws well-formed SVG
from the blocks bot.render really builds, and the committed picture is what it draws now."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bot.render.kit import Message

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "status_picture.py"
PICTURE = ROOT / "docs" / "status-message.svg"
REGENERATE = ".venv/bin/python scripts/status_picture.py"
SVG = "{http://www.w3.org/2000/svg}"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("status_picture", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return _load_script()


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> str:
    """What the script writes when run as the README says."""
    out = tmp_path_factory.mktemp("picture") / "status-message.svg"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    return out.read_text(encoding="utf-8")


def _texts(svg: str) -> list[str]:
    """Every <text> element's content, in drawing order."""
    root = ET.fromstring(svg)
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def _flat(text: str) -> str:
    """Text without whitespace: lines break wherever the picture wraps them."""
    return "".join(text.split())


def _shown(svg: str) -> str:
    """All drawn text run together."""
    return _flat("".join(_texts(svg)))


def _mrkdwn_shown(text: str, names: Mapping[str, str]) -> str:
    """mrkdwn as Slack shows it: markers gone, mentions as @name, entities decoded."""

    def angle(match: re.Match[str]) -> str:
        target, _, label = match.group(1).partition("|")
        if target.startswith("@") or target.startswith("!subteam^"):
            key = target.removeprefix("@").removeprefix("!subteam^")
            return "@" + (label or names.get(key, key))
        return label or target

    text = re.sub(r"<([^<>\n]+)>", angle, text)
    text = text.replace("```", "\n").replace("`", "").replace("*", "")
    return _flat(text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))


def _messages(script: ModuleType) -> list[Message]:
    sample = script.sample()
    return [sample.status, *(message for message, _ in sample.replies)]


def _prose(message: Message) -> Iterator[tuple[str, str]]:
    """(kind, text) of every text a block shows, code blocks left out."""
    for block in message.blocks:
        kind = str(block["type"])
        parts: list[Any] = []
        if kind in ("header", "section"):
            parts = [block["text"]] if "text" in block else []
            parts += block.get("fields", [])
        elif kind == "context":
            parts = list(block["elements"])
        for part in parts:
            text = str(part["text"])
            if "```" not in text:
                yield kind, text


def test_the_script_writes_well_formed_svg(generated: str) -> None:
    root = ET.fromstring(generated)
    assert root.tag == f"{SVG}svg"
    assert root.get("width") == "720"
    assert int(root.get("height") or 0) > 400


def test_the_picture_shows_the_release_from_its_real_blocks(
    generated: str, script: ModuleType
) -> None:
    sample = script.sample()
    release = sample.release
    status: Message = sample.status
    shown = _shown(generated)
    header = next(b for b in status.blocks if b["type"] == "header")
    assert f"{release.service} {release.version}" in header["text"]["text"]
    assert _flat(header["text"]["text"]) in shown
    weight = next(
        f["text"]
        for b in status.blocks
        for f in b.get("fields", [])
        if f["text"].startswith("*Canary weight*")
    )
    assert f"{release.weight}%" in weight
    assert _mrkdwn_shown(weight, script.NAMES) in shown
    # The fallback text (what notifications show) is the picture's title.
    title = ET.fromstring(generated).find(f"{SVG}title")
    assert title is not None and title.text == status.text


def test_every_button_of_the_real_blocks_is_drawn(generated: str, script: ModuleType) -> None:
    drawn = _texts(generated)
    labels = [
        str(element["text"]["text"])
        for message in _messages(script)
        for block in message.blocks
        if block["type"] == "actions"
        for element in block["elements"]
        if element["type"] == "button"
    ]
    assert labels, "the sample release should offer buttons"
    for label in labels:
        assert label in drawn, f"button {label!r} is not drawn"


def test_every_text_of_the_real_blocks_is_drawn(generated: str, script: ModuleType) -> None:
    shown = _shown(generated)
    drawn = _texts(generated)
    for message in _messages(script):
        for kind, text in _prose(message):
            expected = _flat(text) if kind == "header" else _mrkdwn_shown(text, script.NAMES)
            assert expected in shown, f"{kind} text {text!r} is not drawn"
        # Code blocks (the checks table) keep their lines, in a monospace font.
        for block in message.blocks:
            text = str(block.get("text", {}).get("text", ""))
            for body in text.split("```")[1::2]:
                for line in body.strip("\n").split("\n"):
                    assert line.replace("&amp;", "&") in drawn, f"table line {line!r}"


def test_the_thread_has_the_real_replies(generated: str, script: ModuleType) -> None:
    replies = script.sample().replies
    assert len(replies) == 3
    assert f"{len(replies)} replies" in _texts(generated)


def test_the_committed_picture_is_what_the_script_draws_now(generated: str) -> None:
    fix = (
        f"docs/status-message.svg no longer matches the messages bot/render/ builds; "
        f"regenerate it with `{REGENERATE}` (from the repository root) and commit it"
    )
    if not PICTURE.exists() or PICTURE.read_text(encoding="utf-8") != generated:
        pytest.fail(fix, pytrace=False)
