"""The policy file: defaults, per-service overrides, metric merging and every error path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from bot.errors import PolicyError, PolicyProblem, UnknownServiceError
from bot.release.policy import (
    DEFAULT_REQUESTS_QUERY,
    Direction,
    NoDataPolicy,
    Policy,
    Risk,
    ServicePolicy,
    Strategy,
    embedded_policy,
    load_policy,
    parse_policy,
    render_template,
    require_judged,
)

REPO = Path(__file__).resolve().parents[1]


def load(text: str) -> Policy:
    return parse_policy(textwrap.dedent(text), "test.yaml")


def problems_of(text: str) -> list[PolicyProblem]:
    with pytest.raises(PolicyError) as info:
        load(text)
    assert info.value.source == "test.yaml"
    assert info.value.problems, "a PolicyError must carry at least one problem"
    return info.value.problems


def only_service(text: str, name: str = "checkout") -> ServicePolicy:
    return load(text).service(name)


# --- the embedded demo policy ----------------------------------------------------------------


def test_embedded_policy_loads_with_its_three_services() -> None:
    policy = embedded_policy()

    assert policy.source == "(embedded defaults)"
    assert sorted(policy.services) == ["checkout", "payments", "search"]
    for sp in policy.services.values():
        assert sp.weights == [1, 10, 25, 50, 100]
        assert [m.name for m in sp.metrics] == ["error_rate", "latency_p99"]
        assert all("{version}" in m.query for m in sp.metrics)


@pytest.mark.parametrize(
    ("service", "risk", "strategy", "channel"),
    [
        ("checkout", Risk.NORMAL, Strategy.CANARY, "#checkout-releases"),
        ("payments", Risk.HIGH, Strategy.CANARY, "#payments-releases"),
        ("search", Risk.NORMAL, Strategy.BLUE_GREEN, "#releases"),
    ],
)
def test_embedded_policy_applies_each_services_overrides(
    service: str, risk: Risk, strategy: Strategy, channel: str
) -> None:
    sp = embedded_policy().service(service)

    assert (sp.risk, sp.strategy, sp.channel) == (risk, strategy, channel)


def test_embedded_metrics_keep_their_rules() -> None:
    metrics = {m.name: m for m in embedded_policy().service("checkout").metrics}

    errors = metrics["error_rate"]
    assert (errors.max, errors.warn_max, errors.max_diff) == (0.05, 0.02, 0.01)
    assert errors.min_requests == 20
    assert not errors.critical
    latency = metrics["latency_p99"]
    assert (latency.max_ratio, latency.warn_ratio, latency.max) == (2.0, 1.5, 1.5)
    assert latency.critical


# --- defaults and overrides ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        ("weights", [1, 10, 25, 50, 100]),
        ("hold", 900.0),
        ("interval", 30.0),
        ("window", 60.0),
        ("bake", 3600.0),
        ("risk", Risk.NORMAL),
        ("strategy", Strategy.CANARY),
        ("channel", "#releases"),
        ("deployers", []),
        ("approvers", []),
        ("metrics", []),
        ("requests_query", DEFAULT_REQUESTS_QUERY),
    ],
)
def test_an_empty_service_gets_the_built_in_defaults(attribute: str, expected: Any) -> None:
    sp = only_service("services:\n  checkout: {}\n")

    assert getattr(sp, attribute) == expected


def test_an_empty_service_uses_the_flags_traffic_backend() -> None:
    traffic = only_service("services:\n  checkout:\n").traffic

    assert (traffic.backend, traffic.url, traffic.timeout, traffic.retries) == (
        "flags", None, 5.0, 3)


def test_gates_default_to_none_and_a_service_may_replace_the_default_list() -> None:
    policy = load("""
        defaults:
          gates: [ci_build, tests]
        services:
          checkout:
            gates: [ci_build, tests, security_scan, compliance]
          search: {}
          docs:
            gates: []
    """)

    assert policy.service("checkout").gates == ["ci_build", "tests", "security_scan", "compliance"]
    assert policy.service("search").gates == ["ci_build", "tests"]
    assert policy.service("docs").gates == []
    assert only_service("services:\n  checkout: {}\n").gates == []


def test_a_service_override_beats_the_defaults_and_only_for_that_service() -> None:
    policy = load("""
        defaults:
          hold: 10m
          risk: high
          channel: "#deploys"
        services:
          checkout:
            hold: 5m
            channel: "#checkout"
          search: {}
    """)

    checkout, search = policy.service("checkout"), policy.service("search")
    assert (checkout.hold, checkout.risk, checkout.channel) == (300.0, Risk.HIGH, "#checkout")
    assert (search.hold, search.risk, search.channel) == (600.0, Risk.HIGH, "#deploys")


def test_metrics_merge_by_name_and_new_ones_are_appended() -> None:
    policy = load("""
        defaults:
          metrics:
            - name: error_rate
              query: 'errors{version}'
              max: 0.05
            - name: latency
              query: 'latency{version}'
              max_ratio: 2
              critical: true
        services:
          checkout:
            metrics:
              - name: latency
                max_ratio: 3
              - name: conversions
                query: 'conv{version}'
                direction: decrease
                max_ratio: 1.2
          search: {}
    """)

    checkout = {m.name: m for m in policy.service("checkout").metrics}
    assert list(checkout) == ["error_rate", "latency", "conversions"]
    # The override changes only what it sets; the rest comes from the default entry.
    assert checkout["latency"].max_ratio == 3.0
    assert checkout["latency"].query == "latency{version}"
    assert checkout["latency"].critical
    assert checkout["conversions"].direction is Direction.DECREASE
    # Another service still sees the untouched defaults.
    search = {m.name: m for m in policy.service("search").metrics}
    assert list(search) == ["error_rate", "latency"]
    assert search["latency"].max_ratio == 2.0


def test_traffic_settings_merge_field_by_field() -> None:
    policy = load("""
        defaults:
          traffic: {backend: webhook, url: 'http://hook.example', timeout: 2s}
        services:
          checkout:
            traffic: {retries: 5}
          search:
            traffic: {backend: flags}
    """)

    checkout = policy.service("checkout").traffic
    assert (checkout.backend, checkout.url, checkout.timeout, checkout.retries) == (
        "webhook", "http://hook.example", 2.0, 5)
    assert policy.service("search").traffic.backend == "flags"


@pytest.mark.parametrize(
    ("service_hold", "expected_holds"),
    [
        ("", [300.0, 900.0, 900.0]),
        ("    hold: 2m\n", [300.0, 120.0, 120.0]),
    ],
)
def test_a_step_may_override_the_hold(service_hold: str, expected_holds: list[float]) -> None:
    sp = only_service(
        "services:\n  checkout:\n    steps: [{weight: 1, hold: 5m}, 10, 100]\n" + service_hold
    )

    assert sp.weights == [1, 10, 100]
    assert [sp.hold_for(i) for i in range(len(sp.steps))] == expected_holds
    assert sp.steps[0].hold == 300.0
    assert sp.steps[1].hold is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h30m", 5400.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        ("45", 45.0),
        ("'120'", 120.0),
        ("1.5", 1.5),
    ],
)
def test_durations_are_read_in_human_form(text: str, seconds: float) -> None:
    sp = only_service(f"services:\n  checkout:\n    hold: {text}\n    bake: {text}\n")

    assert sp.hold == seconds
    assert sp.bake == seconds


def test_metric_defaults_when_only_a_rule_is_given() -> None:
    sp = only_service("""
        services:
          checkout:
            metrics:
              - {name: errors, query: 'e{version}', max: 0.1}
    """)

    metric = sp.metrics[0]
    assert metric.direction is Direction.INCREASE
    assert metric.no_data is NoDataPolicy.HOLD
    assert (metric.failure_limit, metric.total_failure_limit, metric.error_limit) == (2, 5, 3)
    assert (metric.critical, metric.dry_run, metric.min_requests) == (False, False, 0)
    assert metric.window is None


def test_an_empty_file_has_no_services() -> None:
    problems = problems_of("")

    assert [p.path for p in problems] == ["services"]
    assert "no services" in problems[0].message


# --- invalid input: one problem, its path (with line), message and hint ------------------------

INVALID: list[tuple[str, str, str, str, str]] = [
    # (id, yaml, path as rendered, message fragment, hint fragment)
    (
        "gate-name-not-an-identifier",
        """\
        services:
          checkout:
            gates: [ci_build, Security-Scan]
        """,
        "services.checkout.gates (line 3)", "`Security-Scan` is not a gate name", "",
    ),
    (
        "gate-listed-twice",
        """\
        services:
          checkout:
            gates: [tests, tests]
        """,
        "services.checkout.gates (line 3)", "a gate is listed twice", "",
    ),
    (
        "gates-misspelt",
        """\
        services:
          checkout:
            gate: [tests]
        """,
        "services.checkout.gate (line 3)", "Extra inputs", "did you mean `gates`?",
    ),
    (
        "steps-not-rising",
        """\
        services:
          checkout:
            steps: [10, 5, 100]
        """,
        "services.checkout.steps (line 3)", "must rise strictly, got [10, 5, 100]", "",
    ),
    (
        "steps-repeat-a-weight",
        """\
        services:
          checkout:
            steps: [1, 10, 10, 100]
        """,
        "services.checkout.steps (line 3)", "must rise strictly", "",
    ),
    (
        "steps-not-ending-at-100",
        """\
        services:
          checkout:
            steps: [1, 10, 50]
        """,
        "services.checkout.steps (line 3)", "last step must be 100, got 50", "",
    ),
    (
        "default-steps-not-ending-at-100",
        """\
        defaults:
          steps: [5, 50]
        services:
          checkout: {}
        """,
        "defaults.steps (line 2)", "last step must be 100, got 50", "",
    ),
    (
        "no-steps",
        """\
        services:
          checkout:
            steps: []
        """,
        "services.checkout.steps (line 3)", "at least one step", "",
    ),
    (
        "step-weight-above-100",
        """\
        services:
          checkout:
            steps: [1, 150, 100]
        """,
        "services.checkout.steps[1].weight (line 3)", "less than or equal to 100",
        "use a smaller value",
    ),
    (
        "step-with-unknown-field",
        """\
        services:
          checkout:
            steps:
              - {weight: 1, hodl: 5m}
              - 100
        """,
        "services.checkout.steps[0].hodl (line 4)", "Extra inputs are not permitted",
        "did you mean `hold`?",
    ),
    (
        "misspelt-default-metric-field",
        """\
        defaults:
          metrics:
            - name: errors
              query: 'e{version}'
              max_ratioo: 2
        services:
          checkout: {}
        """,
        "defaults.metrics[0].max_ratioo (line 5)", "Extra inputs are not permitted",
        "did you mean `max_ratio`?",
    ),
    (
        "misspelt-service-field",
        """\
        services:
          checkout:
            channel: "#c"
            hodl: 5m
        """,
        "services.checkout.hodl (line 4)", "Extra inputs are not permitted",
        "did you mean `hold`?",
    ),
    (
        "misspelt-traffic-field",
        """\
        services:
          checkout:
            traffic:
              backend: flags
              timeot: 3s
        """,
        "services.checkout.traffic.timeot (line 5)", "Extra inputs are not permitted",
        "did you mean `timeout`?",
    ),
    (
        "query-without-version",
        """\
        services:
          checkout:
            metrics:
              - name: errors
                query: 'sum(rate(errors_total[5m]))'
                max: 1
        """,
        "services.checkout.metrics[0].query (line 5)", "must contain {version}", "",
    ),
    (
        "metric-without-a-rule",
        """\
        services:
          checkout:
            metrics:
              - name: errors
                query: 'e{version}'
                unit: ratio
        """,
        "services.checkout.metrics[0] (line 4)", "has no rule", "",
    ),
    (
        "metric-min-above-max",
        """\
        services:
          checkout:
            metrics:
              - name: rps
                query: 'r{version}'
                min: 5
                max: 1
        """,
        "services.checkout.metrics[0] (line 4)", "min (5.0) is above max (1.0)", "",
    ),
    (
        "metric-with-non-positive-ratio",
        """\
        services:
          checkout:
            metrics:
              - {name: lat, query: 'l{version}', max_ratio: 0}
        """,
        "services.checkout.metrics[0].max_ratio (line 4)", "greater than 0",
        "use a larger value",
    ),
    (
        "metric-with-bad-direction",
        """\
        services:
          checkout:
            metrics:
              - {name: lat, query: 'l{version}', max: 1, direction: sideways}
        """,
        "services.checkout.metrics[0].direction (line 4)", "", "use one of the listed values",
    ),
    (
        "metric-defined-twice",
        """\
        services:
          checkout:
            metrics:
              - {name: lat, query: 'l{version}', max: 1}
              - {name: lat, query: 'l{version}', max: 2}
        """,
        "services.checkout.metrics (line 3)", "metric `lat` is defined twice", "",
    ),
    (
        "metric-without-name",
        """\
        services:
          checkout:
            metrics:
              - {query: 'l{version}', max: 1}
        """,
        "services.checkout.metrics[0].name (line 4)", "Field required", "add this field",
    ),
    (
        "metrics-not-a-list",
        """\
        services:
          checkout:
            metrics: 5
        """,
        "services.checkout.metrics (line 3)", "valid list", "use a YAML list",
    ),
    (
        "override-of-a-default-metric-is-blamed-on-the-service-entry",
        """\
        defaults:
          metrics:
            - {name: errors, query: 'e{version}', max: 0.05}
            - {name: lat, query: 'l{version}', max_ratio: 2}
        services:
          checkout:
            metrics:
              - name: lat
                max_ratio: -1
        """,
        "services.checkout.metrics[0].max_ratio (line 9)", "greater than 0",
        "use a larger value",
    ),
    (
        "override-that-makes-min-exceed-max",
        """\
        defaults:
          metrics:
            - {name: rps, query: 'r{version}', min: 1, max: 10}
        services:
          checkout:
            metrics:
              - {name: rps, max: 0.5}
        """,
        "services.checkout.metrics[0] (line 7)", "min (1.0) is above max (0.5)", "",
    ),
    (
        "webhook-without-url",
        """\
        services:
          checkout:
            traffic: {backend: webhook}
        """,
        "services.checkout.traffic (line 3)", "webhook backend needs a url", "",
    ),
    (
        "unknown-traffic-backend",
        """\
        services:
          checkout:
            traffic: {backend: istio}
        """,
        "services.checkout.traffic.backend (line 3)", "", "use one of the listed values",
    ),
    (
        "bad-duration",
        """\
        services:
          checkout:
            hold: 15 minutes
        """,
        "services.checkout.hold (line 3)", "`15 minutes` is not a duration", "",
    ),
    (
        "negative-duration",
        """\
        defaults:
          bake: -5
        services:
          checkout: {}
        """,
        "defaults.bake (line 2)", "cannot be negative", "",
    ),
    (
        "bad-step-hold",
        """\
        services:
          checkout:
            steps: [{weight: 1, hold: soon}, 100]
        """,
        "services.checkout.steps[0].hold (line 3)", "`soon` is not a duration", "",
    ),
    (
        "interval-too-short",
        """\
        services:
          checkout:
            interval: 10ms
        """,
        "services.checkout.interval (line 3)", "at least 50ms", "",
    ),
    (
        "unknown-risk",
        """\
        services:
          checkout:
            risk: extreme
        """,
        "services.checkout.risk (line 3)", "", "use one of the listed values",
    ),
    (
        "deployer-that-is-not-a-principal",
        """\
        services:
          checkout:
            deployers: [U123, 'bad user']
        """,
        "services.checkout.deployers (line 3)", "`bad user` is not a Slack user id", "",
    ),
    (
        "invalid-service-name",
        """\
        services:
          Checkout: {}
        """,
        "services.Checkout", "invalid service name", "lowercase",
    ),
    (
        "service-that-is-not-a-mapping",
        """\
        services:
          checkout: [1, 2]
        """,
        "services.checkout", "must be a mapping of overrides", "",
    ),
    (
        "unknown-top-level-key",
        """\
        defaults: {}
        services:
          checkout: {}
        servces_extra: 1
        """,
        "servces_extra", "unknown top-level key", "",
    ),
    (
        "misspelt-top-level-key",
        """\
        defaults: {}
        services:
          checkout: {}
        default: {}
        """,
        "default", "unknown top-level key", "did you mean `defaults`?",
    ),
    (
        "no-services",
        """\
        defaults:
          hold: 5m
        """,
        "services", "no services defined", "add `services:",
    ),
    (
        "services-not-a-mapping",
        """\
        services: [checkout]
        """,
        "services", "no services defined", "",
    ),
    (
        "defaults-not-a-mapping",
        """\
        defaults: [1, 2]
        services:
          checkout: {}
        """,
        "defaults", "must be a mapping", "",
    ),
    (
        "document-not-a-mapping",
        """\
        - defaults
        - services
        """,
        "(top)", "must be a mapping", "start with `defaults:`",
    ),
]


@pytest.mark.parametrize(
    ("text", "path", "message", "hint"),
    [pytest.param(*case[1:], id=case[0]) for case in INVALID],
)
def test_invalid_input_names_the_path_line_and_hint(
    text: str, path: str, message: str, hint: str
) -> None:
    problems = problems_of(text)

    matching = [p for p in problems if p.path == path]
    assert matching, f"no problem at {path!r}; got {[p.path for p in problems]}"
    problem = matching[0]
    assert message in problem.message
    assert hint in problem.hint
    if hint:
        assert f"    hint: {problem.hint}" in problem.render()


def test_yaml_syntax_errors_give_line_and_column() -> None:
    problems = problems_of("""\
        services:
          checkout:
            steps: [1, 10
    """)

    assert len(problems) == 1
    assert problems[0].path == "line 4, column 1"
    assert problems[0].message.startswith("not valid YAML:")
    assert "quoting" in problems[0].hint


def test_yaml_tab_indentation_points_at_the_tab() -> None:
    problems = problems_of("services:\n\tcheckout: {}\n")

    assert problems[0].path == "line 2, column 1"
    assert "not valid YAML" in problems[0].message


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(PolicyError) as info:
        load("""\
            defaults:
              hold: soon
            services:
              checkout:
                steps: [10, 5, 100]
              search:
                risk: extreme
            extra: 1
        """)

    paths = {p.path for p in info.value.problems}
    assert paths == {
        "defaults.hold (line 2)",
        "services.checkout.steps (line 5)",
        "services.search.risk (line 7)",
        "extra",
    }
    text = str(info.value)
    assert text.startswith("test.yaml: 4 problem(s) in the policy")
    for problem in info.value.problems:
        assert problem.render() in text


def test_a_bad_default_is_reported_once_not_once_per_service() -> None:
    problems = problems_of("""\
        defaults:
          interval: 1ms
        services:
          checkout: {}
          payments: {}
          search: {}
    """)

    assert [p.path for p in problems] == ["defaults.interval (line 2)"]


def test_a_service_that_overrides_a_bad_default_still_fails_the_file() -> None:
    # Nothing is applied until the whole file is valid, even if the service would be fine.
    problems = problems_of("""\
        defaults:
          hold: soon
        services:
          checkout:
            hold: 5m
    """)

    assert [p.path for p in problems] == ["defaults.hold (line 2)"]


def test_overriding_the_same_default_metric_twice_is_reported() -> None:
    problems = problems_of("""\
        defaults:
          metrics:
            - {name: errors, query: 'e{version}', max: 0.05}
        services:
          checkout:
            metrics:
              - {name: errors, max: 0.1}
              - {name: errors, max: 0.5}
    """)

    assert any("defined twice" in p.message for p in problems)


# --- loading from disk -----------------------------------------------------------------------


def test_load_policy_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "shipwatch.yaml"
    path.write_text("services:\n  checkout:\n    hold: 2m\n", encoding="utf-8")

    policy = load_policy(path)

    assert policy.source == str(path)
    assert policy.service("checkout").hold == 120.0


def test_load_policy_reports_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(PolicyError) as info:
        load_policy(path)

    assert info.value.source == str(path)
    assert [(p.path, p.message) for p in info.value.problems] == [("(file)", "not found")]
    assert "SHIPWATCH_POLICY" in info.value.problems[0].hint


def test_load_policy_reports_problems_with_the_file_as_source(tmp_path: Path) -> None:
    path = tmp_path / "shipwatch.yaml"
    path.write_text("services:\n  checkout:\n    risk: extreme\n", encoding="utf-8")

    with pytest.raises(PolicyError) as info:
        load_policy(path)

    assert str(info.value).startswith(f"{path}: 1 problem(s)")


# --- service lookup --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "suggestion"),
    [
        ("checkot", "checkout"),
        ("chekout", "checkout"),
        ("paymnts", "payments"),
        ("payment", "payments"),
        ("serch", "search"),
        ("billing", None),
        ("x", None),
    ],
)
def test_unknown_service_suggests_the_closest_name(asked: str, suggestion: str | None) -> None:
    policy = embedded_policy()

    with pytest.raises(UnknownServiceError) as info:
        policy.service(asked)

    error = info.value
    assert error.service == asked
    assert error.suggestion == suggestion
    assert f"unknown service `{asked}`" in str(error)
    if suggestion is None:
        assert error.hint == "known services: checkout, payments, search"
    else:
        assert error.hint == f"did you mean `{suggestion}`?"


def test_known_service_lookup_returns_its_policy() -> None:
    policy = embedded_policy()

    assert policy.service("payments") is policy.services["payments"]


# --- templates -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("x{version}", "xv2.4.1"),
        (
            'rate(http_requests_total{service="{service}",version="{version}"}[{window}])',
            'rate(http_requests_total{service="checkout",version="v2.4.1"}[90s])',
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(b{version=\"{version}\"}[{window}])))",
            "histogram_quantile(0.99, sum by (le) (rate(b{version=\"v2.4.1\"}[90s])))",
        ),
        ("{version}/{version}", "v2.4.1/v2.4.1"),
        ('up{job="api"}', 'up{job="api"}'),
        ("{0} {name} {{version}}", "{0} {name} {v2.4.1}"),
    ],
)
def test_render_template_fills_placeholders_and_leaves_promql_braces(
    template: str, expected: str
) -> None:
    assert render_template(template, service="checkout", version="v2.4.1",
                           window="90s") == expected


def test_default_requests_query_renders_completely() -> None:
    rendered = render_template(DEFAULT_REQUESTS_QUERY, service="search", version="v9",
                               window="60s")

    assert rendered == 'sum(increase(http_requests_total{service="search",version="v9"}[60s]))'


# --- the check-config command ----------------------------------------------------------------


def run_check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "check-config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(textwrap.dedent("""\
        defaults:
          hold: 5m
          metrics:
            - {name: errors, query: 'e{version}', max: 0.05}
        services:
          checkout: {}
          payments:
            risk: high
    """), encoding="utf-8")

    result = run_check_config(path)

    assert result.returncode == 0, result.stderr
    assert f"{path}: OK, 2 service(s)" in result.stdout
    assert "checkout: canary 1% → 10% → 25% → 50% → 100%, hold 5m, every 30s" in result.stdout
    assert "payments:" in result.stdout
    assert "risk high" in result.stdout


def test_check_config_rejects_a_bad_file_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent("""\
        defaults:
          metrics:
            - name: errors
              query: 'e{version}'
              max_ratioo: 2
        services:
          checkout:
            hodl: 5m
            risk: extreme
        servics: {}
    """), encoding="utf-8")

    result = run_check_config(path)

    assert result.returncode == 1
    assert "OK" not in result.stdout
    expected = [
        ("defaults.metrics[0].max_ratioo (line 5)", "did you mean `max_ratio`?"),
        ("services.checkout.hodl (line 8)", "did you mean `hold`?"),
        ("services.checkout.risk (line 9)", "use one of the listed values"),
        ("servics", "did you mean `services`?"),
    ]
    for problem_path, hint in expected:
        assert f"{problem_path}: " in result.stderr
        assert f"hint: {hint}" in result.stderr
    assert f"{path}: 4 problem(s) in the policy" in result.stderr


def test_the_readme_policy_example_is_valid() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in readme.split("```yaml\n")[1:]]
    [example] = [b for b in blocks if b.startswith("defaults:")]  # the policy, not a CI step

    policy = parse_policy(example, "README.md")

    assert set(policy.services) == {"checkout", "payments"}
    latency = {m.name: m for m in policy.service("payments").metrics}["latency_p99"]
    assert latency.judge == "both" and latency.uses_statistics
    assert policy.service("payments").score.group_weights == {"latency": 60}


@pytest.mark.parametrize("oncall", ["@oncall", "oncall", "SREOPS", "<!channel>", "U0ALICE!"])
def test_an_oncall_that_would_page_nobody_is_refused_with_how_to_find_the_id(oncall: str) -> None:
    [problem] = problems_of(f"""
        services:
          checkout:
            oncall: {json.dumps(oncall)}
        """)

    assert "oncall" in problem.path
    assert "pages nobody" in problem.message and "user-group id (S…" in problem.message


@pytest.mark.parametrize("oncall", ["S0123ABCD", "U012AB3CD", "W0123ABCD", ""])
def test_an_oncall_given_as_a_user_or_group_id_is_accepted(oncall: str) -> None:
    sp = only_service(f"""
        services:
          checkout:
            oncall: {json.dumps(oncall)}
        """)
    assert sp.oncall == oncall


def test_check_config_refuses_a_service_nothing_would_judge_unless_it_says_so(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shipwatch.yaml"
    path.write_text("services:\n  checkout: {}\n  search: {unjudged: true}\n", encoding="utf-8")

    refused = run_check_config(path)

    assert refused.returncode == 1
    assert "services.checkout: no metrics" in refused.stderr
    assert "unjudged: true" in refused.stderr
    assert "search" not in refused.stderr  # it said so

    path.write_text("services:\n  search: {unjudged: true}\n", encoding="utf-8")
    accepted = run_check_config(path)
    assert accepted.returncode == 0, accepted.stderr
    assert "search: canary" in accepted.stdout and "0 metric(s)" in accepted.stdout


def test_unjudged_with_metrics_is_a_contradiction() -> None:
    policy = load("""
        services:
          checkout:
            unjudged: true
            metrics:
              - {name: errors, query: 'e{version="{version}"}', max: 1}
        """)
    with pytest.raises(PolicyError) as info:
        require_judged(policy)
    assert "`unjudged: true` with metrics" in str(info.value)


@pytest.mark.parametrize(
    ("traffic", "said"),
    [
        ("{backend: haproxy}", "needs `socket`"),
        ("{backend: haproxy, socket: /run/haproxy.sock}", "map mode needs `map_file`"),
        ("{backend: haproxy, socket: /run/h.sock, mode: weight}", "needs `haproxy_backend`"),
        ("{backend: nginx}", "needs `include_file`"),
        ("{backend: envoy}", "backend"),
        ("{backend: haproxy, socket: /s, map_file: /m, sockett: x}", "sockett"),
    ],
)
def test_a_traffic_engine_missing_what_it_needs_is_refused(traffic: str, said: str) -> None:
    problems = problems_of(f"""
        services:
          checkout:
            traffic: {traffic}
        """)
    assert any(said in f"{p.path} {p.message}" for p in problems), problems


def test_a_complete_haproxy_and_nginx_traffic_setting_is_accepted() -> None:
    policy = load("""
        services:
          checkout:
            traffic: {backend: haproxy, socket: 127.0.0.1:9999, map_file: /etc/haproxy/c.map}
          search:
            traffic: {backend: nginx, include_file: "/etc/nginx/split-{service}.conf"}
        """)
    assert policy.service("checkout").traffic.mode == "map"
    assert policy.service("search").traffic.reload_command == "nginx -s reload"


def test_only_engines_applications_poll_say_how_late_they_see_a_change() -> None:
    policy = load("""
        services:
          checkout:
            traffic: {backend: unleash, unleash_url: "http://unleash:4242", sdk_refresh: 1s}
          search: {}
        """)
    assert policy.service("checkout").traffic.seen_within == 1.0
    assert policy.service("search").traffic.seen_within is None
