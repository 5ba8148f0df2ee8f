"""The rewrite of a per-release PromQL template into one query for many releases (pure)."""

from __future__ import annotations

import ast
import re

import pytest

from bot.metrics.promql_batch import (
    AmbiguousAnswerError,
    Kind,
    NotBatchableError,
    alternation,
    analyse,
    promql_string,
    tokenize,
)
from bot.release.policy import DEFAULT_REQUESTS_QUERY, embedded_policy

SEL = 'service="{service}",version="{version}"'
PAIRS = [("checkout", "v1"), ("checkout", "v2"), ("search", "1.2.3")]
SERVICES = '"checkout|search"'
VERSIONS = '"1\\\\.2\\\\.3|v1|v2"'


def batched(template: str, pairs: list[tuple[str, str]] = PAIRS, window: str = "1m") -> str:
    return analyse(template).render(window, pairs)


def refusal(template: str) -> str:
    with pytest.raises(NotBatchableError) as info:
        analyse(template)
    return info.value.reason


def matches(promql_literal: str, value: str) -> bool:
    """Whether a regex matcher's PromQL string matches ``value`` as Prometheus would: the
    string is unquoted (Go's escapes, which Python's literal syntax shares for these), then
    matched fully anchored."""
    pattern = ast.literal_eval(promql_literal)
    assert isinstance(pattern, str)
    return re.fullmatch(pattern, value) is not None


# -- the default policy ----------------------------------------------------------------------


def test_the_default_policy_templates_batch() -> None:
    metrics = {m.name: m.query for m in embedded_policy().services["checkout"].metrics}

    assert batched(metrics["error_rate"]) == (
        f"sum by (service, version) (rate(http_requests_total{{service=~{SERVICES},"
        f'version=~{VERSIONS},code=~"5.."}}[1m])) / sum by (service, version) '
        f"(rate(http_requests_total{{service=~{SERVICES},version=~{VERSIONS}}}[1m]))"
    )
    assert batched(metrics["latency_p99"], window="30s") == (
        "histogram_quantile(0.99, sum by (le, service, version) "
        "(rate(http_request_duration_seconds_bucket"
        f"{{service=~{SERVICES},version=~{VERSIONS}}}[30s])))"
    )
    assert batched(DEFAULT_REQUESTS_QUERY) == (
        f"sum by (service, version) (increase(http_requests_total{{service=~{SERVICES},"
        f"version=~{VERSIONS}}}[1m]))"
    )
    batch = analyse(metrics["error_rate"])
    assert (batch.service_label, batch.version_label) == ("service", "version")


# -- groupings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("sum(x{%s})", "sum by (service, version) (x{%s})"),
        ("sum by (le) (x{%s})", "sum by (le, service, version) (x{%s})"),
        ("sum by (le,) (x{%s})", "sum by (le,service, version) (x{%s})"),
        ("sum by () (x{%s})", "sum by (service, version) (x{%s})"),
        ("sum(x{%s}) by (le)", "sum(x{%s}) by (le, service, version)"),
        ("SUM(x{%s})", "SUM by (service, version) (x{%s})"),
        ("sum by (version) (x{%s})", "sum by (version, service) (x{%s})"),
        ("sum without (instance) (x{%s})", "sum without (instance) (x{%s})"),
        ("sum(x{%s}) without (instance)", "sum(x{%s}) without (instance)"),
        ("quantile(0.9, x{%s})", "quantile by (service, version) (0.9, x{%s})"),
        (
            "avg(x{%s}) + min(x{%s}) - max(x{%s})",
            "avg by (service, version) (x{%s}) + min by (service, version) (x{%s}) "
            "- max by (service, version) (x{%s})",
        ),
        (
            "count(x{%s}) / group(x{%s}) * stddev(x{%s}) ^ stdvar(x{%s})",
            "count by (service, version) (x{%s}) / group by (service, version) (x{%s}) "
            "* stddev by (service, version) (x{%s}) ^ stdvar by (service, version) (x{%s})",
        ),
        (
            "max_over_time(sum(rate(x{%s}[{window}]))[5m:{window}])",
            "max_over_time(sum by (service, version) (rate(x{%s}[1m]))[5m:1m])",
        ),
        (
            "sum(rate(x{%s}[{window}] offset 5m)) / on(version, service) group_left sum(y{%s})",
            "sum by (service, version) (rate(x{%s}[1m] offset 5m)) / on(version, service) "
            "group_left sum by (service, version) (y{%s})",
        ),
        (
            "sum(x{%s}) / ignoring(code) sum(y{%s}) > bool 0.5",
            "sum by (service, version) (x{%s}) / ignoring(code) sum by (service, version) "
            "(y{%s}) > bool 0.5",
        ),
    ],
)
def test_every_aggregation_keeps_the_two_labels(template: str, expected: str) -> None:
    n = template.count("%s")
    regex = f"service=~{SERVICES},version=~{VERSIONS}"
    assert batched(template % ((SEL,) * n)) == expected % ((regex,) * n)


def test_matchers_on_other_labels_stay() -> None:
    template = 'sum(x{job="api", service="{service}", code!~"5..", version="{version}"})'
    assert batched(template, [("a", "v1"), ("b", "v2")]) == (
        'sum by (service, version) (x{job="api", service=~"a|b", code!~"5..", version=~"v1|v2"})'
    )


def test_other_label_names_are_found_from_the_template() -> None:
    template = 'sum(rate(x{app="{service}",track="{version}"}[{window}]))'
    batch = analyse(template)
    assert (batch.service_label, batch.version_label) == ("app", "track")
    assert batch.render("2m", [("a", "v1"), ("a", "v2")]) == (
        'sum by (app, track) (rate(x{app=~"a",track=~"v1|v2"}[2m]))'
    )


# -- what cannot be batched, and why -----------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("topk(1, x{%s})", "topk picks series across the whole batch"),
        ("bottomk(1, x{%s})", "bottomk picks series across the whole batch"),
        ('count_values("v", x{%s})', "count_values picks series across the whole batch"),
        ("limitk(1, x{%s})", "limitk picks series across the whole batch"),
        ("scalar(sum(x{%s}))", "scalar() drops every label"),
        ("sum(x{%s}) or vector(0)", "vector() makes a series without labels"),
        ("absent(x{%s})", "absent() takes its labels from equality matchers"),
        ("absent_over_time(x{%s}[5m])", "absent_over_time() takes its labels"),
        ("sum(x{%s}) / on(service) sum(y{%s})", "on(service) must name service and version"),
        ("sum(x{%s}) / on() group_left sum(y{%s})", "on() must name service and version"),
        ("sum(x{%s}) / ignoring(version) sum(y{%s})", "ignoring(version) drops version"),
        ("sum without (version) (x{%s})", "sum without (version) drops version"),
        ("sum(x{%s}) without (service, le)", "sum without (service, le) drops service"),
        ('sum(x{%s}) / sum(x{service="{service}"})', "lacks a label="),
        ("sum(x{%s}) / sum(up)", "the selector up does not select by"),
        ("sum(x{%s}) / sum(up[5m])", "the selector up does not select by"),
        ("sum(x{%s}) * hour()", "hour() without an argument has no labels"),
        (
            'label_replace(sum(x{%s}), "version", "$1", "pod", "(.*)")',
            'the string "version" names a label',
        ),
        ('sum(x{service="{service}-eu",version="{version}"})', '"{service}-eu" uses a placeholder'),
        ('sum(x{service="{service}",version=~"{version}"})', '"{version}" uses a placeholder'),
        ('sum(x{service="{service}",version!="{version}"})', "uses a placeholder"),
        ('sum(x{service=`{service}`,version="{version}"})', "uses a placeholder"),
        ('sum({service}_requests{version="{version}"})', "{service} is used outside"),
        ("sum(x{%s}[{version}])", "{version} is used outside"),
        ('sum(x{service="{service}"})', 'the selector x lacks a label="{service}" or'),
        ("time() - 1", 'needs both label="{service}" and label="{version}"'),
        ("vector(1)", "vector() makes a series"),
        (
            'sum(x{%s}) / sum(y{app="{service}",version="{version}"})',
            "must go to the same labels in every selector",
        ),
        ('sum(x{service="{service}",service="{version}"})', "match the same label service"),
        ("sum(x{%s}", "unbalanced parentheses"),
        ("sum(x{%s}))", "unbalanced parentheses"),
        ('sum(x{%s, le="0.5})', "unterminated string"),
        ("sum(x{%s}) $ 2", "unexpected character '$'"),
        ("sum by x{%s}", "by without a label list"),
    ],
)
def test_what_is_not_batchable_says_why(template: str, reason: str) -> None:
    text = template % ((SEL,) * template.count("%s")) if "%s" in template else template
    assert reason in refusal(text)


def test_strings_and_comments_do_not_fool_the_reader() -> None:
    # "topk(" and "scalar(" inside strings and comments are text, not calls; an escaped quote
    # does not end the string it is in.
    template = (
        "sum(x{%s, note=\"topk(1, scalar(\", msg='it\\'s sum(', raw=`vector(`}) "
        "# topk(3, scalar(x))\n"
        '/ sum(y{%s, path!="a\\"b)"})'
    ).replace("%s", SEL)
    out = batched(template, [("a", "v1"), ("b", "v1")])
    assert out.startswith(
        'sum by (service, version) (x{service=~"a|b",version=~"v1", note="topk(1, scalar("'
    )
    assert "# topk(3, scalar(x))\n/ sum by (service, version) (y{" in out
    assert 'path!="a\\"b)"}' in out
    assert [t.kind for t in tokenize('a{b="c\\"d"} # e(\n')] == [
        Kind.IDENT,
        Kind.PUNCT,
        Kind.IDENT,
        Kind.PUNCT,
        Kind.STRING,
        Kind.PUNCT,
        Kind.COMMENT,
    ]


def test_keywords_and_durations_are_not_metrics() -> None:
    template = (
        "sum(rate(x{%s}[1h30m] offset -5m @ 1609746000)) > bool 0 and sum(x{%s}) unless "
        "sum(x{%s}) + Inf - NaN + 0x1f * 1e-3 + atan2(sum(x{%s}), 2)"
    ).replace("%s", SEL)
    assert "[1h30m] offset -5m" in batched(template)


# -- escaping ----------------------------------------------------------------------------------


HOSTILE = ['v1"}', "a|b.*", "v1.2+build.7", "x\\y", "(a)", "[a-z]", "^v$", "{1,2}", "v\n2", "é"]


@pytest.mark.parametrize("version", HOSTILE)
def test_hostile_versions_match_only_themselves(version: str) -> None:
    out = batched(f"sum(x{{{SEL}}})", [("checkout", version), ("checkout", "v1")])
    literal = re.search(r'version=~("(?:[^"\\]|\\.)*")', out)
    assert literal is not None, out
    assert matches(literal.group(1), version)
    assert matches(literal.group(1), "v1")
    for other in ["v", "v1 ", "a", "b", "ab", "a|b", "a|bc", "v12", "v1.2xbuild.7", "", "x"]:
        if other not in (version, "v1"):
            assert not matches(literal.group(1), other), (version, other)
    # The query stays one selector: nothing in the version closes the string or the braces.
    assert out.count("{") == 1 + version.count("{")
    assert out.count("}") == 1 + version.count("}")


def test_escaping_helpers() -> None:
    assert alternation(["b", "a.b", "b"]) == "a\\.b|b"
    assert promql_string('a"b\\c\nd\x01') == '"a\\"b\\\\c\\nd\\x01"'
    assert matches(promql_string(alternation(["a|b.*"])), "a|b.*")
    assert not matches(promql_string(alternation(["a|b.*"])), "a")


# -- splitting the answer ---------------------------------------------------------------------


def series(service: str, version: str, value: str, **labels: str) -> dict[str, object]:
    return {"metric": {"service": service, "version": version, **labels}, "value": [1.0, value]}


def test_the_answer_splits_by_pair() -> None:
    batch = analyse(f"sum(x{{{SEL}}})")
    wanted = {("a", "v1"), ("a", "v2"), ("b", "v1")}
    answer = [series("a", "v1", "1"), series("b", "v1", "2"), series("b", "v2", "9")]
    found = batch.split(answer, wanted)
    # ("a", "v2") has no series (no data, as its own query); ("b", "v2") was not asked.
    assert found == {("a", "v1"): answer[0], ("b", "v1"): answer[1]}


def test_an_answer_that_does_not_split_is_refused() -> None:
    batch = analyse(f"sum(x{{{SEL}}})")
    wanted = {("a", "v1")}
    with pytest.raises(AmbiguousAnswerError, match="several series"):
        batch.split([series("a", "v1", "1", code="200"), series("a", "v1", "2")], wanted)
    with pytest.raises(AmbiguousAnswerError, match="without the service/version labels"):
        batch.split([{"metric": {"service": "a"}, "value": [1.0, "1"]}], wanted)
    with pytest.raises(AmbiguousAnswerError, match="not a series"):
        batch.split([[1.0, "2"]], wanted)


# -- request size ------------------------------------------------------------------------------


def test_big_groups_are_split_under_the_limit() -> None:
    batch = analyse(next(m.query for m in embedded_policy().services["checkout"].metrics))
    pairs = [(f"svc{i}", f"v{i}.{j}") for i in range(500) for j in range(2)]
    chunks = batch.chunks("1m", pairs, 5_000)
    assert 2 < len(chunks) < 20
    assert sorted(p for c in chunks for p in c) == sorted(pairs)
    assert all(len(batch.render("1m", c)) <= 5_000 for c in chunks)
    assert batch.chunks("1m", pairs, 1_000_000) == [sorted(pairs)]
    # A pair too long for the limit on its own still gets a request.
    assert batch.chunks("1m", [("a", "v" * 100), ("b", "v")], 10) == [
        [("a", "v" * 100)],
        [("b", "v")],
    ]
