"""One PromQL for many releases: a per-release query template rewritten to cover a set of
(service, version) pairs, and the answer split back into one series per pair.

A metric template such as::

    sum(rate(http_requests_total{service="{service}",version="{version}"}[{window}]))

is rendered per release and per side, so N releases cost 2N queries. When the template only
ever narrows its series by two exact matchers, ``service="{service}"`` and
``version="{version}"``, the same numbers come out of one query over all the pairs: the two
matchers become regex matchers over the sets (Prometheus anchors them: ``=~"a|b"`` is
``^(?:a|b)$``) and every aggregation keeps the two labels (``sum(x)`` becomes
``sum by (service, version) (x)``), so each pair still gets its own series, labelled with its
service and version.

That only holds when the rewrite provably changes nothing else, so ``analyse`` reads the
template with a small tokenizer (strings with their escapes, comments, identifiers, brackets;
a string holding ``sum(`` stays a string) and refuses, with a reason, anything it cannot show
to be safe: a placeholder anywhere but such a matcher, a selector without both matchers
(its series would be shared by every pair), aggregations that pick series across groups
(``topk``, ``bottomk``, ``count_values``, ``limitk``, ``limit_ratio``), functions that drop
or invent labels (``scalar``, ``vector``, ``absent``, ``absent_over_time``, ``info``, the
date functions called without an argument), ``on(...)`` without both labels,
``ignoring(...)`` or ``without(...)`` with one of them, and any string naming one of them
(``label_replace``/``label_join`` could rewrite it).

Versions are whatever a user typed: every value is escaped for RE2 and then for a PromQL
string, so ``a|b.*`` or ``v1"}`` match only themselves. Pure: no I/O, no clients.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

SERVICE = "{service}"
VERSION = "{version}"
WINDOW = "{window}"
_PLACEHOLDERS = (SERVICE, VERSION, WINDOW)

AGGREGATIONS = frozenset(
    {"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "quantile"}
)
# Aggregations whose result depends on the other series of the group: with every pair in one
# group they would pick (or count) across releases.
_CROSS_SERIES = frozenset({"topk", "bottomk", "count_values", "limitk", "limit_ratio"})
_DROP_LABELS = {
    "scalar": "scalar() drops every label, so the pairs could not be told apart",
    "vector": "vector() makes a series without labels, shared by every pair",
    "absent": "absent() takes its labels from equality matchers, which batching turns into regexes",
    "absent_over_time": "absent_over_time() takes its labels from equality matchers, which "
    "batching turns into regexes",
    "info": "info() adds labels from other series",
}
# Without an argument these work on vector(time()): a series without labels.
_NO_ARG_DATES = frozenset(
    {
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "hour",
        "minute",
        "month",
        "year",
    }
)
_GROUPING = frozenset({"by", "without"})
_MATCHING = frozenset({"on", "ignoring", "group_left", "group_right"})
# Keywords that stand for themselves (operators, modifiers, number literals), not a metric.
_PLAIN_KEYWORDS = frozenset({"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"})
_MATCH_OPS = frozenset({"=", "!=", "=~", "!~"})
# Longest first, so "=~" is never read as "=" then "~".
_PUNCT = ("!=", "=~", "!~", "==", "<=", ">=", *"(){}[],=<>+-*/%^@:")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# Numbers and durations in one token ("5m", "1h30m", "0x1f", "1.5"): a duration's unit must
# not be read as a metric name.
_NUMBER = re.compile(r"(?:[0-9]|\.[0-9])[0-9A-Za-z_.]*")
# What Go's regexp.QuoteMeta escapes; Prometheus compiles matchers with Go's RE2 engine.
_RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")


class NotBatchableError(ValueError):
    """The template cannot be rewritten for many pairs; ``reason`` says why, for the logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AmbiguousAnswerError(ValueError):
    """A batched answer does not split into at most one series per pair: the rewrite did not
    hold for this template, so its queries have to be asked one by one."""


# -- tokens -----------------------------------------------------------------------------------


class Kind(Enum):
    IDENT = "identifier"
    NUMBER = "number"
    STRING = "string"
    PUNCT = "punctuation"
    PLACEHOLDER = "placeholder"
    COMMENT = "comment"


@dataclass(frozen=True)
class Token:
    kind: Kind
    text: str
    start: int
    end: int


def tokenize(text: str) -> list[Token]:
    """PromQL tokens of ``text`` (comments included); raises NotBatchableError on text the
    tokenizer cannot read (an unterminated string, a stray character)."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        kind, end = _next_token(text, i)
        tokens.append(Token(kind, text[i:end], i, end))
        i = end
    return tokens


def _next_token(text: str, i: int) -> tuple[Kind, int]:
    """The kind of the token starting at ``i``, and where it ends."""
    c = text[i]
    if c == "#":  # a comment runs to the end of the line
        newline = text.find("\n", i)
        return Kind.COMMENT, len(text) if newline < 0 else newline
    if c in "\"'`":
        return Kind.STRING, _string_end(text, i)
    for placeholder in _PLACEHOLDERS:
        if text.startswith(placeholder, i):
            return Kind.PLACEHOLDER, i + len(placeholder)
    for kind, pattern in ((Kind.NUMBER, _NUMBER), (Kind.IDENT, _IDENT)):
        match = pattern.match(text, i)
        if match:
            return kind, match.end()
    for punct in _PUNCT:
        if text.startswith(punct, i):
            return Kind.PUNCT, i + len(punct)
    raise NotBatchableError(f"unexpected character {c!r} at offset {i}")


def _string_end(text: str, i: int) -> int:
    """Where the string starting at ``i`` ends: a raw (backquoted) string at the next
    backquote, a quoted one at its unescaped closing quote on the same line."""
    quote, j = text[i], i + 1
    while j < len(text):
        c = text[j]
        if c == quote:
            return j + 1
        if quote != "`":
            if c == "\\":
                j += 1  # the escaped character cannot close the string
            elif c == "\n":
                break
        j += 1
    raise NotBatchableError(f"unterminated string at offset {i}")


# -- escaping ---------------------------------------------------------------------------------


def re2_escape(value: str) -> str:
    """``value`` as an RE2 pattern matching exactly itself."""
    return "".join("\\" + c if c in _RE2_SPECIAL else c for c in value)


def promql_string(value: str) -> str:
    """``value`` as a double-quoted PromQL string literal (Go's escapes)."""
    return '"' + _string_body(value) + '"'


def _string_body(value: str) -> str:
    out = []
    for c in value:
        if c in '\\"':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out)


def alternation(values: Iterable[str]) -> str:
    """An RE2 alternation matching exactly the given values (deduplicated, sorted)."""
    return "|".join(re2_escape(v) for v in sorted(set(values)))


def encodable(value: str) -> bool:
    """Whether ``value`` can be sent at all (a lone surrogate cannot be encoded as UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- the rewrite ------------------------------------------------------------------------------


class Hole(Enum):
    SERVICES = "services"
    VERSIONS = "versions"


Piece = str | Hole
Pair = tuple[str, str]


@dataclass(frozen=True)
class BatchTemplate:
    """A template rewritten for many pairs: literal text and two holes for the regexes."""

    template: str
    service_label: str
    version_label: str
    pieces: tuple[Piece, ...]

    def render(self, window: str, pairs: Iterable[Pair]) -> str:
        """The query for every pair of ``pairs`` (and any other combination of their services
        and versions: series of pairs nobody asked for are ignored when splitting)."""
        listed = list(pairs)
        regexes = {
            Hole.SERVICES: promql_string(alternation(s for s, _ in listed)),
            Hole.VERSIONS: promql_string(alternation(v for _, v in listed)),
        }
        return "".join(
            regexes[p] if isinstance(p, Hole) else p.replace(WINDOW, window) for p in self.pieces
        )

    def chunks(self, window: str, pairs: Iterable[Pair], max_chars: int) -> list[list[Pair]]:
        """``pairs`` (deduplicated) in groups whose query text stays under ``max_chars``; a
        pair too long on its own still gets a group. Sorted by service, so the versions of one
        service travel together and a group asks few combinations nobody wanted."""
        holes = {h: sum(1 for p in self.pieces if p is h) for h in Hole}
        # The literal text and an empty pair of quotes per hole; each value adds itself and
        # a "|" (one too many per hole: an estimate on the safe side).
        base = sum(len(p.replace(WINDOW, window)) for p in self.pieces if isinstance(p, str))
        base += 2 * sum(holes.values())
        groups: list[list[Pair]] = []
        current: list[Pair] = []
        seen: tuple[set[str], set[str]] = (set(), set())
        size = base
        for pair in sorted(set(pairs)):
            if current and size + _cost(pair, seen, holes) > max_chars:
                groups.append(current)
                current, seen, size = [], (set(), set()), base
            size += _cost(pair, seen, holes)
            current.append(pair)
            seen[0].add(pair[0])
            seen[1].add(pair[1])
        if current:
            groups.append(current)
        return groups

    def split(self, series: Sequence[object], wanted: Collection[Pair]) -> dict[Pair, object]:
        """The one series of each wanted pair that has one (a missing pair is "no data", as its
        own query would say). Raises AmbiguousAnswerError when the answer is not a list of
        series, a series lacks one of the two labels, or a wanted pair has several series."""
        found: dict[Pair, object] = {}
        for s in series:
            metric = s.get("metric") if isinstance(s, dict) else None
            if not isinstance(metric, dict):
                raise AmbiguousAnswerError(f"not a series in the answer: {str(s)[:120]}")
            service = metric.get(self.service_label)
            version = metric.get(self.version_label)
            if not isinstance(service, str) or not isinstance(version, str):
                raise AmbiguousAnswerError(
                    f"a series without the {self.service_label}/{self.version_label} labels: "
                    f"{str(metric)[:120]}"
                )
            pair = (service, version)
            if pair not in wanted:
                continue  # a combination of services and versions nobody asked for
            if pair in found:
                raise AmbiguousAnswerError(
                    f"several series for {self.service_label}={service!r}, "
                    f"{self.version_label}={version!r}"
                )
            found[pair] = s
        return found


@functools.lru_cache(maxsize=256)
def analyse(template: str) -> BatchTemplate:
    """The batched form of ``template``; raises NotBatchableError with the reason when the
    rewrite cannot be shown to give every pair the answer its own query would."""
    tokens = [t for t in tokenize(template) if t.kind is not Kind.COMMENT]
    reader = _Reader(tokens)
    reader.read()
    return reader.result(template)


@dataclass
class _Aggregation:
    name: Token
    grouping: _Grouping | None = None


@dataclass
class _Grouping:
    keyword: str
    labels: list[str]
    close: Token  # the ")" of the label list
    trailing_comma: bool


@dataclass
class _Reader:
    """Walks the tokens once, checking what batching needs and noting the edits it makes."""

    tokens: list[Token]
    i: int = 0
    # What each "(" opened: an aggregation's arguments, or anything else (None).
    stack: list[_Aggregation | None] = field(default_factory=list)
    aggregations: list[_Aggregation] = field(default_factory=list)
    matchings: list[_Grouping] = field(default_factory=list)
    service_labels: set[str] = field(default_factory=set)
    version_labels: set[str] = field(default_factory=set)
    matcher_values: list[Token] = field(default_factory=list)  # "{service}"/"{version}" strings
    matcher_ops: list[Token] = field(default_factory=list)
    strings: list[Token] = field(default_factory=list)  # string literals outside selectors

    def peek(self, offset: int = 0) -> Token | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def next(self) -> Token:
        token = self.peek()
        if token is None:
            raise NotBatchableError("the query ends too early")
        self.i += 1
        return token

    def read(self) -> None:  # noqa: C901, PLR0912 - one dispatch on the kind of token
        while (token := self.peek()) is not None:
            self.i += 1
            if token.kind is Kind.PLACEHOLDER:
                if token.text != WINDOW:
                    raise NotBatchableError(f"{token.text} is used outside a label matcher")
            elif token.kind is Kind.STRING:
                self.strings.append(token)
            elif token.kind is Kind.IDENT:
                self.identifier(token)
            elif token.text == "{":
                self.selector(None)
            elif token.text == "[":
                self.brackets()
            elif token.text == "(":
                self.stack.append(None)
            elif token.text == ")":
                if not self.stack:
                    raise NotBatchableError("unbalanced parentheses")
                opened = self.stack.pop()
                if opened is not None and opened.grouping is None:
                    self.postfix_grouping(opened)
            elif token.text in ("}", "]"):
                raise NotBatchableError(f"unbalanced {token.text!r}")
        if self.stack:
            raise NotBatchableError("unbalanced parentheses")

    def identifier(self, token: Token) -> None:
        word = token.text.lower()
        after = self.peek()
        opens = after is not None and after.text == "("
        if word in _CROSS_SERIES:
            raise NotBatchableError(f"{word} picks series across the whole batch")
        if word in AGGREGATIONS and (
            opens or (after is not None and after.text.lower() in _GROUPING)
        ):
            self.aggregation(token)
        elif word in _MATCHING:
            if opens:
                self.matchings.append(self.label_list(word))
            elif word in ("on", "ignoring"):
                raise NotBatchableError(f"{word} without a label list")
        elif word in _GROUPING:
            raise NotBatchableError(f"{word} outside an aggregation")
        elif opens:
            self.function(token)
        elif word not in _PLAIN_KEYWORDS:
            if after is not None and after.text == "{" and after.kind is Kind.PUNCT:
                self.i += 1
                self.selector(token)
            else:
                raise NotBatchableError(
                    f"the selector {token.text} does not select by {SERVICE} and {VERSION}"
                )

    def function(self, name: Token) -> None:
        if name.text in _DROP_LABELS:
            raise NotBatchableError(_DROP_LABELS[name.text])
        closing = self.peek(1)
        if name.text in _NO_ARG_DATES and closing is not None and closing.text == ")":
            raise NotBatchableError(f"{name.text}() without an argument has no labels")
        self.i += 1  # the "("
        self.stack.append(None)

    def aggregation(self, name: Token) -> None:
        agg = _Aggregation(name)
        keyword = self.peek()
        if keyword is not None and keyword.text.lower() in _GROUPING:
            self.i += 1
            agg.grouping = self.label_list(keyword.text.lower())
        opening = self.next()
        if opening.text != "(":
            raise NotBatchableError(f"{name.text} without its argument")
        self.aggregations.append(agg)
        self.stack.append(agg)

    def postfix_grouping(self, agg: _Aggregation) -> None:
        keyword = self.peek()
        if keyword is not None and keyword.text.lower() in _GROUPING:
            self.i += 1
            agg.grouping = self.label_list(keyword.text.lower())

    def label_list(self, keyword: str) -> _Grouping:
        if self.next().text != "(":
            raise NotBatchableError(f"{keyword} without a label list")
        labels: list[str] = []
        comma = False
        while True:
            token = self.next()
            if token.text == ")":
                return _Grouping(keyword, labels, token, comma)
            if token.kind is Kind.IDENT:
                labels.append(token.text)
                comma = False
            elif token.text == "," and labels and not comma:
                comma = True
            else:
                raise NotBatchableError(f"cannot read the label list of {keyword}")

    def selector(self, name: Token | None) -> None:
        """The matchers of one ``{...}`` (its "{" already read)."""
        shown = name.text if name is not None else "{…}"
        service = version = False
        while True:
            token = self.next()
            if token.text == "}":
                break
            if token.text == ",":
                continue
            if token.kind is not Kind.IDENT:
                raise NotBatchableError(f"cannot read the selector {shown} at {token.text!r}")
            op, value = self.next(), self.next()
            if op.text not in _MATCH_OPS or value.kind is not Kind.STRING:
                raise NotBatchableError(f"cannot read the selector {shown} at {token.text!r}")
            role = value.text[1:-1] if value.text[0] in "\"'" and op.text == "=" else ""
            if role == SERVICE:
                self.service_labels.add(token.text)
                service = True
            elif role == VERSION:
                self.version_labels.add(token.text)
                version = True
            else:
                _no_placeholder(value)
                continue
            self.matcher_values.append(value)
            self.matcher_ops.append(op)
        if not (service and version):
            raise NotBatchableError(
                f'the selector {shown} lacks a label="{SERVICE}" or label="{VERSION}" matcher, '
                "so its series would be shared by every release"
            )

    def brackets(self) -> None:
        """A range or subquery ``[...]``: durations, ":" and {window} only. (":10s" reads as
        an identifier, since recording rules' names may start with ":"; here it is a step.)"""
        while (token := self.next()).text != "]":
            if token.kind is Kind.PLACEHOLDER and token.text != WINDOW:
                raise NotBatchableError(f"{token.text} is used outside a label matcher")
            if token.kind not in (Kind.NUMBER, Kind.IDENT, Kind.PLACEHOLDER) and token.text != ":":
                raise NotBatchableError(f"cannot read the range at {token.text!r}")

    def result(self, template: str) -> BatchTemplate:
        labels = self.labels()
        self.check(labels)
        edits: list[tuple[int, int, Piece]] = []
        for op in self.matcher_ops:
            edits.append((op.start, op.end, "=~"))
        for value in self.matcher_values:
            hole = Hole.SERVICES if value.text[1:-1] == SERVICE else Hole.VERSIONS
            edits.append((value.start, value.end, hole))
        for agg in self.aggregations:
            edits.extend(_grouping_edit(agg, labels))
        pieces: list[Piece] = []
        at = 0
        for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1])):
            pieces.append(template[at:start])
            pieces.append(replacement)
            at = end
        pieces.append(template[at:])
        return BatchTemplate(template, labels[0], labels[1], tuple(p for p in pieces if p != ""))

    def labels(self) -> tuple[str, str]:
        if not self.service_labels or not self.version_labels:
            raise NotBatchableError(
                f'the query needs both label="{SERVICE}" and label="{VERSION}" matchers'
            )
        if len(self.service_labels) > 1 or len(self.version_labels) > 1:
            raise NotBatchableError(
                f"{SERVICE} and {VERSION} must go to the same labels in every selector"
            )
        service, version = next(iter(self.service_labels)), next(iter(self.version_labels))
        if service == version:
            raise NotBatchableError(f"{SERVICE} and {VERSION} match the same label {service}")
        return service, version

    def check(self, labels: tuple[str, str]) -> None:
        self.check_strings(labels)
        self.check_matchings(labels)

    def check_strings(self, labels: tuple[str, str]) -> None:
        for token in self.strings:
            _no_placeholder(token)
            if token.text[1:-1] in labels:
                raise NotBatchableError(
                    f"the string {token.text} names a label that tells releases apart "
                    "(label_replace or label_join could rewrite it)"
                )

    def check_matchings(self, labels: tuple[str, str]) -> None:
        for matching in self.matchings:
            named = set(labels) & set(matching.labels)
            if matching.keyword == "on" and len(named) < 2:
                raise NotBatchableError(
                    f"on({', '.join(matching.labels)}) must name {labels[0]} and {labels[1]}"
                )
            if matching.keyword == "ignoring" and named:
                raise NotBatchableError(
                    f"ignoring({', '.join(matching.labels)}) drops {', '.join(sorted(named))}"
                )
        for agg in self.aggregations:
            if agg.grouping is not None and agg.grouping.keyword == "without":
                dropped = set(labels) & set(agg.grouping.labels)
                if dropped:
                    raise NotBatchableError(
                        f"{agg.name.text} without ({', '.join(agg.grouping.labels)}) drops "
                        + ", ".join(sorted(dropped))
                    )


def _no_placeholder(string: Token) -> None:
    if SERVICE in string.text or VERSION in string.text:
        raise NotBatchableError(f"{string.text} uses a placeholder outside an exact label matcher")


def _cost(pair: Pair, seen: tuple[set[str], set[str]], holes: Mapping[Hole, int]) -> int:
    """How much longer a group's query gets with ``pair`` in it."""
    cost = 0
    for value, known, hole in zip(pair, seen, Hole, strict=True):
        if value not in known:
            cost += holes[hole] * (len(_string_body(re2_escape(value))) + 1)
    return cost


def _grouping_edit(agg: _Aggregation, labels: tuple[str, str]) -> list[tuple[int, int, Piece]]:
    grouping = agg.grouping
    if grouping is None:
        at = agg.name.end
        return [(at, at, f" by ({', '.join(labels)}) ")]
    if grouping.keyword == "without":
        return []  # checked: it keeps both labels
    missing = [label for label in labels if label not in grouping.labels]
    if not missing:
        return []
    at = grouping.close.start
    lead = ", " if grouping.labels and not grouping.trailing_comma else ""
    return [(at, at, lead + ", ".join(missing))]
