"""Draw the Slack status message of a release, and its thread, as an SVG for the README.

There is no Slack to take a screenshot of, so this builds a realistic release of
``checkout v2.4.1`` with the real code (the embedded policy, the rollout transitions, the
analysis round and the controller's decisions on made-up but fixed metric answers), asks
``bot.render`` for the very Block Kit it would post, and draws those blocks the way Slack
shows them. Everything is fixed (times, ids, metric values), so running it again gives the
same file unless the product's messages changed:

    .venv/bin/python scripts/status_picture.py [--out docs/status-message.svg]

Only the standard library draws: text widths are estimated from Helvetica's metrics, and
every run of text is placed at its own x, so the layout holds with other fonts too.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from bot.engine.controller import carry_out, score_record
from bot.engine.events import EventKind, ReleaseEvent
from bot.judging.analysis import analyse, plan
from bot.judging.decision import Decision, decide
from bot.metrics.base import (
    REQUESTS_METRIC,
    MetricQuery,
    QueryResult,
    SeriesResult,
    Side,
)
from bot.release.policy import ServicePolicy, embedded_policy
from bot.release.rollout import Actor, Release, new_release
from bot.render.kit import Message
from bot.render.status import status_message
from bot.render.thread import event_message

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "status-message.svg"
COMMAND = ".venv/bin/python scripts/status_picture.py"

# --- the sample release -------------------------------------------------------------------------

START = datetime(2025, 5, 13, 10, 5, tzinfo=UTC).timestamp()  # the /deploy, 10:05 UTC
DEPLOYER = "U05DANA7QX"
ONCALL_GROUP = "S05CHK0NCL"
# How Slack shows the ids above: mentions are drawn as @name.
NAMES = {DEPLOYER: "dana", ONCALL_GROUP: "checkout-oncall"}
CHANNEL = "checkout-releases"

# Fixed answers of the analysis queries: (canary, control) instant values and range series.
INSTANT = {"error_rate": (0.0041, 0.0038), "latency_p99": (0.312, 0.298)}
REQUESTS = 1840.0
_WOBBLE = (0.0, 0.004, -0.003, 0.006, -0.005, 0.002, 0.007, -0.002, 0.001, -0.006)
SERIES = {
    "latency_p99": (
        tuple(round(0.311 + w, 4) for w in (*_WOBBLE, *reversed(_WOBBLE), *_WOBBLE)),
        tuple(round(0.299 + w, 4) for w in (*reversed(_WOBBLE), *_WOBBLE, *_WOBBLE)),
    )
}


@dataclass(frozen=True)
class Sample:
    """The status message, its thread replies and when each was posted."""

    status: Message
    posted_at: float
    replies: list[tuple[Message, float]]
    release: Release
    now: float


def _round(release: Release, sp: ServicePolicy, now: float) -> tuple[Release, Decision]:
    """One analysis round and its decision, booked the way the controller books them."""
    p = plan(release, sp)

    def instant(q: MetricQuery) -> QueryResult:
        if q.metric == REQUESTS_METRIC:
            return QueryResult.ok(q, REQUESTS)
        canary, control = INSTANT[q.metric]
        return QueryResult.ok(q, canary if q.side is Side.CANARY else control)

    def series(q: MetricQuery) -> SeriesResult:
        canary, control = SERIES[q.metric]
        return SeriesResult.ok(q, canary if q.side is Side.CANARY else control)

    result = analyse(
        p, {q.key: instant(q) for q in p.instant}, {s.query.key: series(s.query) for s in p.series}
    )
    decision = decide(release, sp.metrics, result.checks, now, score=result.score)
    booked = release.model_copy(
        update={
            "counters": decision.counters,
            "last_checks": list(result.checks),
            "last_score": score_record(result.score),
            "last_eval_at": now,
            "evaluations": release.evaluations + 1,
            "rev": release.rev + 1,
        }
    )
    return booked, decision


def sample() -> Sample:
    """``checkout v2.4.1`` at 25% (step 3/5), six minutes into its hold, every check green."""
    sp = embedded_policy().services["checkout"].model_copy(update={"oncall": ONCALL_GROUP})
    dana = Actor(user=DEPLOYER, surface="slack")
    release = new_release(
        release_id="5f2c9a1e7b3d",
        number=42,
        service="checkout",
        version="v2.4.1",
        stable_version="v2.4.0",
        weights=[s.weight for s in sp.steps],
        holds=[sp.hold if s.hold is None else s.hold for s in sp.steps],
        interval=sp.interval,
        bake=sp.bake,
        strategy=sp.strategy,
        risk=sp.risk,
        notes="Card tokenization moves to the new vault client; 3-D Secure callbacks retry.",
        actor=dana,
        now=START,
    ).model_copy(
        update={
            "applied_weight": 1,
            "changes": [
                {"title": "Tokenize cards with vault-client v3", "pr": 1187, "author": "dana"},
                {"title": "Retry 3-D Secure callbacks", "pr": 1192, "author": "lee"},
            ],
        }
    )
    replies: list[tuple[Message, float]] = []

    def reply(event: ReleaseEvent) -> None:
        message = event_message(event, oncall=sp.oncall, approvers=sp.approvers, metrics=sp.metrics)
        replies.append((message, event.at))

    reply(
        ReleaseEvent(
            EventKind.STARTED, release, f"started {release.label}", actor=dana.user, at=START
        )
    )
    # Two steps pass: each hold ends with a green round, and the controller advances.
    for _ in range(2):
        at = release.step_started_at + release.hold
        booked, decision = _round(release, sp, at)
        new, event = carry_out(booked, decision, at)
        release = new.model_copy(update={"applied_weight": new.weight, "rev": new.rev + 1})
        if event is None or event[0] is not EventKind.STEP_ADVANCED:
            raise RuntimeError(
                f"the sample release should advance, the controller says: {decision}"
            )
        reply(ReleaseEvent(event[0], release, event[1], checks=release.last_checks, at=at))
    now = release.step_started_at + 6 * 60 + 20
    release, _ = _round(release, sp, now - 12)
    status = status_message(
        release, oncall=sp.oncall, approvers=sp.approvers, now=now, metrics=sp.metrics
    )
    return Sample(status, START, replies, release, now)


# --- text: fonts, widths, mrkdwn ---------------------------------------------------------------

SANS = "Helvetica, Arial, 'Liberation Sans', sans-serif"
MONO = "Monaco, Menlo, Consolas, 'DejaVu Sans Mono', 'Liberation Mono', monospace"
EMOJI = "'Apple Color Emoji', 'Segoe UI Emoji', 'Noto Color Emoji', sans-serif"
INK = "#1d1c1d"
GREY = "#616061"
LINK = "#1264a3"
CODE_RED = "#e01e5a"
LINE = "#dddddd"
GREEN = "#007a5a"

# Helvetica's advance widths in thousandths of an em (regular, bold).
_REGULAR = {
    191: "'", 222: "ijl", 260: "|", 278: " !,./:;I[\\]ft", 333: "()-`r", 334: "{}", 355: '"',
    389: "*", 469: "^", 500: "Jcksvxyz", 556: "#$0123456789?L_abdeghnopqu", 584: "+<=>~",
    611: "FTZ", 667: "&ABEKPSVXY", 722: "CDHNRUw", 778: "GOQ", 833: "Mm", 889: "%", 944: "W",
    1015: "@",
}  # fmt: skip
_BOLD = {
    238: "'", 278: " ,./I\\ijl", 280: "|", 333: "!()-:;[]`ft", 389: "*r{}", 474: '"', 500: "z",
    556: "#$0123456789J_acesvxyk", 584: "+<=>^~", 611: "?FLTZbdghnopqu", 667: "EPSVXY",
    722: "&ABCDHKNRU", 778: "GOQw", 833: "M", 889: "%m", 944: "W", 975: "@",
}  # fmt: skip
_OTHER = {"·": 278, "…": 1000, "→": 840, "↳": 840, "—": 1000, "–": 556, "≥": 549, "±": 584,
          "•": 350, "×": 584, "\u200b": 0}  # fmt: skip
WIDTHS = [
    {ch: w for w, chars in table.items() for ch in chars} | _OTHER for table in (_REGULAR, _BOLD)
]
MONO_EM = 0.6
EMOJI_EM = 1.3

# Shortcodes Slack would turn into emoji. bot.render writes its emoji as Unicode already;
# these cover text that arrives with shortcodes (notes, reasons typed in Slack).
SHORTCODES = {
    "white_check_mark": "✅", "warning": "⚠️", "rocket": "🚀", "rotating_light": "🚨",
    "bell": "🔔", "memo": "📝", "tada": "🎉", "x": "❌", "fire": "🔥",
}  # fmt: skip


def is_emoji(cluster: str) -> bool:
    first = ord(cluster[0])
    return (
        first >= 0x1F000
        or "\ufe0f" in cluster
        or 0x2600 <= first <= 0x27BF
        or 0x2B00 <= first <= 0x2BFF
        or 0x23E9 <= first <= 0x23FA
    )


def clusters(text: str) -> Iterator[str]:
    """Characters, an emoji kept with its variation selector / joiners."""
    i = 0
    while i < len(text):
        j = i + 1
        while j < len(text) and text[j] in "\ufe0f\u200d\u20e3":
            j += 2 if text[j] == "\u200d" else 1
        yield text[i:j]
        i = j


@dataclass(frozen=True)
class Style:
    size: float = 15.0
    bold: bool = False
    italic: bool = False
    strike: bool = False
    code: bool = False  # inline code: monospace, red, boxed
    mono: bool = False  # inside a code block
    color: str = INK
    pill: bool = False  # a mention: blue on light blue

    def width(self, text: str) -> float:
        if self.code or self.mono:
            return len(list(clusters(text))) * MONO_EM * self.size
        table = WIDTHS[self.bold]
        total = 0.0
        for c in clusters(text):
            if is_emoji(c):
                total += EMOJI_EM * 1000
            else:
                total += table.get(c, 556)
        return total * self.size / 1000


@dataclass(frozen=True)
class Run:
    text: str
    style: Style


_TOKEN = re.compile(
    r"(?P<fence>```(?P<fenced>.*?)```)"
    r"|(?P<angle><(?P<inner>[^<>\n]+)>)"
    r"|(?P<code>`(?P<coded>[^`\n]+)`)"
    r"|(?<![\w*])\*(?P<bold>[^*\n]+)\*(?![\w*])"
    r"|(?<![\w_])_(?P<italic>[^_\n]+)_(?![\w_])"
    r"|(?<![\w~])~(?P<strike>[^~\n]+)~(?![\w~])"
    r"|:(?P<short>[a-z0-9_+-]+):",
    re.DOTALL,
)


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _angle(inner: str) -> tuple[str, bool]:
    """The text Slack shows for <@U…>, <!subteam^S…>, <url|label>; True for a mention."""
    target, _, label = inner.partition("|")
    if target.startswith("@"):
        return "@" + (label or NAMES.get(target[1:], target[1:])), True
    if target.startswith("!subteam^"):
        group = target.removeprefix("!subteam^")
        return "@" + (label or NAMES.get(group, group)), True
    if target.startswith("!"):
        return "@" + (label or target[1:]), True
    return label or target, False


# One case per mrkdwn construct Slack draws.
def parse_mrkdwn(text: str, base: Style) -> list[Run | str]:  # noqa: C901
    """Runs of styled text; a code block comes out as its raw text (a str) on its own."""
    out: list[Run | str] = []

    def plain(chunk: str, style: Style) -> None:
        if chunk:
            out.append(Run(_unescape(chunk), style))

    pos = 0
    for m in _TOKEN.finditer(text):
        plain(text[pos : m.start()], base)
        pos = m.end()
        if m["fence"]:
            out.append(_unescape(m["fenced"].strip("\n")))
        elif m["angle"]:
            shown, is_mention = _angle(m["inner"])
            out.append(Run(_unescape(shown), replace(base, color=LINK, pill=is_mention)))
        elif m["code"]:
            plain(m["coded"], replace(base, code=True, color=CODE_RED, size=base.size - 2))
        elif m["bold"] is not None:
            for run in parse_mrkdwn(m["bold"], replace(base, bold=True)):
                out.append(run)
        elif m["italic"] is not None:
            plain(m["italic"], replace(base, italic=True))
        elif m["strike"] is not None:
            plain(m["strike"], replace(base, strike=True))
        else:
            plain(SHORTCODES.get(m["short"], m.group(0)), base)
    plain(text[pos:], base)
    return out


# --- layout -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """A run of text placed on a line, x relative to the line start."""

    x: float
    text: str
    style: Style
    width: float


class Canvas:
    """SVG elements in drawing order."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, element: str) -> None:
        self.parts.append(element)

    def rect(self, x: float, y: float, w: float, h: float, fill: str, **attrs: str) -> None:
        extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
        self.add(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{fill}"{extra}/>'
        )

    def line(self, x1: float, y1: float, x2: float, y2: float, color: str = LINE) -> None:
        self.add(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}"/>'
        )

    def text(self, x: float, y: float, text: str, style: Style, anchor: str = "") -> None:
        """One run of text with its baseline at y; emoji get an emoji font and fixed room."""
        pieces: list[tuple[float, str, bool]] = []
        cursor = 0.0
        for c in clusters(text):
            emoji = is_emoji(c)
            if pieces and pieces[-1][2] is False and not emoji:
                px, ptext, _ = pieces[-1]
                pieces[-1] = (px, ptext + c, False)
            else:
                pieces.append((cursor, c, emoji))
            cursor += style.width(c)
        if anchor:  # only used for single-font labels (buttons)
            pieces = [(0.0, text, False)]
        for dx, chunk, emoji in pieces:
            self.add(_text_element(x + dx, y, chunk, style, emoji, anchor))


def _text_element(x: float, y: float, text: str, style: Style, emoji: bool, anchor: str) -> str:
    family = EMOJI if emoji else MONO if (style.code or style.mono) else SANS
    attrs = [f'x="{x:.1f}"', f'y="{y:.1f}"', f'font-family="{family}"']
    attrs.append(f'font-size="{style.size - (1 if emoji else 0):g}"')
    if style.bold and not emoji:
        attrs.append('font-weight="bold"')
    if style.italic:
        attrs.append('font-style="italic"')
    if style.strike:
        attrs.append('text-decoration="line-through"')
    if anchor:
        attrs.append(f'text-anchor="{anchor}"')
    attrs.append(f'fill="{style.color}"')
    if not emoji and not anchor and len(text) > 3:
        # Hold the run to its estimated width, so the next run starts where it was placed.
        attrs.append(f'textLength="{style.width(text):.1f}" lengthAdjust="spacing"')
    return f'<text {" ".join(attrs)} xml:space="preserve">{escape(text)}</text>'


def _words(text: str, style: Style, width: float) -> Iterator[str]:
    """Words with the spaces after them, so a line can break after any space; a word wider
    than a whole line (a long URL) comes in pieces that fit."""
    for word in re.findall(r"\S+\s*|\s+", text):
        piece = ""
        for c in clusters(word):
            if piece.strip() and style.width(piece + c) > width:
                yield piece
                piece = ""
            piece += c
        yield piece


def wrap(runs: Sequence[Run], width: float) -> list[list[Piece]]:
    """Lines of placed pieces: words wrap at ``width``, a word wider than a line is cut."""
    lines: list[list[Piece]] = [[]]
    x = 0.0
    for run in runs:
        # Code and mentions sit in boxes: keep room for the box around them.
        pad = 4.0 if run.style.code else 2.0 if run.style.pill else 0.0
        x += pad if x > 0 else 0.0
        for part_i, part in enumerate(run.text.split("\n")):
            if part_i:
                lines.append([])
                x = 0.0
            for word in _words(part, run.style, width):
                w = run.style.width(word)
                if x > 0 and x + run.style.width(word.rstrip()) > width:
                    lines.append([])
                    x = 0.0
                    word = word.lstrip()  # noqa: PLW2901 - a wrapped line starts at its word
                    w = run.style.width(word)
                line = lines[-1]
                if line and line[-1].style == run.style and line[-1].x + line[-1].width == x:
                    last = line[-1]
                    line[-1] = Piece(last.x, last.text + word, run.style, last.width + w)
                else:
                    line.append(Piece(x, word, run.style, w))
                x += w
        x += pad
    return lines


@dataclass
class Flow:
    """Draws blocks top to bottom within a column."""

    canvas: Canvas
    x: float
    width: float
    y: float

    def paragraph(self, text: str, base: Style, line_height: float, *, mrkdwn: bool = True) -> None:
        """Text at the current y; in mrkdwn, code blocks become grey boxes in monospace."""
        width = self.width
        pending: list[Run] = []
        for item in parse_mrkdwn(text, base) if mrkdwn else [Run(text, base)]:
            if isinstance(item, str):
                self._runs(pending, line_height, width)
                pending = []
                self._code_block(item)
            else:
                pending.append(item)
        self._runs(pending, line_height, width)

    def _runs(self, runs: list[Run], line_height: float, width: float) -> None:
        # Drop the newline that only separates the text from a code block around it.
        while runs and not runs[-1].text.strip("\n"):
            runs.pop()
        if runs and runs[-1].text.endswith("\n"):
            runs[-1] = Run(runs[-1].text.rstrip("\n"), runs[-1].style)
        if runs and runs[0].text.startswith("\n"):
            runs[0] = Run(runs[0].text.lstrip("\n"), runs[0].style)
        if not runs:
            return
        for line in wrap(runs, width):
            baseline = self.y + line_height * 0.72
            for piece in line:
                self._piece(piece, baseline, line_height)
            self.y += line_height

    def _piece(self, piece: Piece, baseline: float, line_height: float) -> None:
        style = piece.style
        text = piece.text
        x = self.x + piece.x
        if style.code or style.pill:
            shown = text.rstrip()
            w = style.width(shown)
            fill, stroke = ("#f8f8f8", "#e8e8e8") if style.code else ("#e8f5fa", "#e8f5fa")
            top = baseline - style.size * 0.95
            pad = 3.0 if style.code else 2.0
            self.canvas.rect(
                x - pad, top, w + 2 * pad, style.size * 1.3, fill, stroke=stroke, rx="3"
            )
            text = shown
        self.canvas.text(x, baseline, text, style)

    def _code_block(self, text: str) -> None:
        style = Style(size=12, mono=True)
        lines = text.split("\n")
        pad = 8.0
        height = len(lines) * 17 + 2 * pad
        self.y += 4
        self.canvas.rect(self.x, self.y, self.width, height, "#f8f8f8", stroke=LINE, rx="4")
        for i, line in enumerate(lines):
            self.canvas.text(self.x + pad, self.y + pad + 12.5 + i * 17, line, style)
        self.y += height + 4


def _plain_text(obj: Mapping[str, Any]) -> str:
    return str(obj.get("text", ""))


def draw_blocks(flow: Flow, blocks: Sequence[Mapping[str, Any]]) -> None:
    body = Style()
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            flow.y += 4
            flow.paragraph(_plain_text(block["text"]), Style(size=18, bold=True), 26, mrkdwn=False)
            flow.y += 4
        elif kind == "section":
            flow.y += 4
            if "text" in block:
                flow.paragraph(_plain_text(block["text"]), body, 22)
            fields = list(block.get("fields", []))
            gap = 16.0
            column = (flow.width - gap) / 2
            for i in range(0, len(fields), 2):
                top = flow.y
                bottoms = []
                for j, field in enumerate(fields[i : i + 2]):
                    cell = Flow(flow.canvas, flow.x + j * (column + gap), column, top)
                    cell.paragraph(_plain_text(field), body, 22)
                    bottoms.append(cell.y)
                flow.y = max(bottoms) + 6
            flow.y += 4
        elif kind == "context":
            flow.y += 2
            texts = [_plain_text(e) for e in block.get("elements", []) if "text" in e]
            plain = all(e.get("type") == "plain_text" for e in block.get("elements", []))
            flow.paragraph("  ".join(texts), Style(size=12.5, color=GREY), 18, mrkdwn=not plain)
            flow.y += 4
        elif kind == "divider":
            flow.y += 8
            flow.canvas.line(flow.x, flow.y, flow.x + flow.width, flow.y)
            flow.y += 9
        elif kind == "actions":
            flow.y += 6
            _buttons(flow, [e for e in block.get("elements", []) if e.get("type") == "button"])
            flow.y += 4


def _buttons(flow: Flow, buttons: Sequence[Mapping[str, Any]]) -> None:
    x = flow.x
    height = 28.0
    for button in buttons:
        label = _plain_text(button["text"])
        style = str(button.get("style", ""))
        text_style = Style(size=13, bold=True)
        w = text_style.width(label) + 24
        if x + w > flow.x + flow.width and x > flow.x:
            x = flow.x
            flow.y += height + 8
        if style == "primary":
            fill, stroke, ink = GREEN, GREEN, "#ffffff"
        elif style == "danger":
            fill, stroke, ink = "#ffffff", CODE_RED, CODE_RED
        else:
            fill, stroke, ink = "#ffffff", "#bbbbbb", INK
        flow.canvas.rect(x, flow.y, w, height, fill, stroke=stroke, rx="4")
        flow.canvas.text(
            x + w / 2, flow.y + 18.5, label, replace(text_style, color=ink), anchor="middle"
        )
        x += w + 8
    flow.y += height


# --- the picture --------------------------------------------------------------------------------

WIDTH = 720
MARGIN = 20
TEXT_X = 76  # where a message's name and blocks start


def _clock(ts: float) -> str:
    """'10:05 AM', as Slack shows a message's time (in UTC here: the picture is fixed)."""
    t = datetime.fromtimestamp(ts, UTC)
    return f"{t.hour % 12 or 12}:{t.minute:02d} {'AM' if t.hour < 12 else 'PM'}"


def _avatar(canvas: Canvas, x: float, y: float, size: float) -> None:
    """The app's icon: a rounded square with a rising canary line."""
    canvas.rect(x, y, size, size, "#1f6f5c", rx=f"{size * 0.22:.1f}")
    s = size / 36
    points = [(7, 27), (14, 22), (20, 24), (29, 10)]
    path = " ".join(f"{x + px * s:.1f},{y + py * s:.1f}" for px, py in points)
    canvas.add(
        f'<polyline points="{path}" fill="none" stroke="#f7c948" stroke-width="{3 * s:.1f}" '
        'stroke-linecap="round" stroke-linejoin="round"/>'
    )
    canvas.add(
        f'<circle cx="{x + 29 * s:.1f}" cy="{y + 10 * s:.1f}" r="{3.2 * s:.1f}" fill="#ffffff"/>'
    )


def _message(canvas: Canvas, y: float, message: Message, posted_at: float, right: float) -> float:
    """A bot message: avatar, name, APP badge, time, then its blocks. Returns the bottom."""
    _avatar(canvas, MARGIN, y + 2, 36)
    name = Style(size=15, bold=True)
    canvas.text(TEXT_X, y + 14, "shipwatch", name)
    badge_x = TEXT_X + name.width("shipwatch") + 6
    canvas.rect(badge_x, y + 2, 30, 15, "#e8e8e8", rx="3")
    canvas.text(badge_x + 15, y + 13.5, "APP", Style(size=10, bold=True, color=GREY), "middle")
    canvas.text(badge_x + 38, y + 14, _clock(posted_at), Style(size=12, color=GREY))
    flow = Flow(canvas, TEXT_X, right - TEXT_X, y + 20)
    draw_blocks(flow, message.blocks)
    return flow.y


def render(sample: Sample) -> str:
    """The status message in its channel, then its thread."""
    canvas = Canvas()
    right = WIDTH - MARGIN
    # The channel's header bar.
    canvas.text(MARGIN, 30, f"# {CHANNEL}", Style(size=17, bold=True))
    canvas.line(1, 48, WIDTH - 1, 48)
    y = _message(canvas, 64, sample.status, sample.posted_at, right)

    # The thread summary under the message.
    replies = sample.replies
    y += 6
    _avatar(canvas, TEXT_X, y, 22)
    count = f"{len(replies)} {'reply' if len(replies) == 1 else 'replies'}"
    bold = Style(size=13, bold=True, color=LINK)
    canvas.text(TEXT_X + 30, y + 15.5, count, bold)
    last = f"Last reply today at {_clock(replies[-1][1])}" if replies else ""
    canvas.text(TEXT_X + 30 + bold.width(count) + 8, y + 15.5, last, Style(size=13, color=GREY))
    y += 40

    # The thread, as Slack's thread pane lists it under the message.
    canvas.rect(1, y, WIDTH - 2, 38, "#f8f8f8")
    canvas.line(1, y, WIDTH - 1, y)
    canvas.line(1, y + 38, WIDTH - 1, y + 38)
    canvas.text(MARGIN, y + 24, "Thread", Style(size=15, bold=True))
    canvas.text(
        MARGIN + Style(size=15, bold=True).width("Thread") + 8,
        y + 24,
        f"# {CHANNEL}",
        Style(size=13, color=GREY),
    )
    y += 38 + 16
    canvas.text(MARGIN, y + 4, count, Style(size=13, color=GREY))
    canvas.line(MARGIN + Style(size=13).width(count) + 10, y, right, y)
    y += 16
    for message, at in replies:
        y = _message(canvas, y, message, at, right) + 14
    height = round(y + 6)

    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-labelledby="title">\n'
        f'<title id="title">{escape(sample.status.text)}</title>\n'
    )
    background = f'<rect width="{WIDTH}" height="{height}" fill="#ffffff" rx="8" stroke="{LINE}"/>'
    return head + background + "\n" + "\n".join(canvas.parts) + "\n</svg>\n"


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(
        description="Draw the Slack status message of a sample release as an SVG."
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the SVG")
    args = parser.parse_args(argv)
    svg = render(sample())
    path: Path = args.out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg, encoding="utf-8")
    out(f"wrote {path} ({len(svg):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
