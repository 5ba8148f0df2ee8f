"""Static checks of the container files under docker/ (no Docker engine needed).

These files are only exercised for real by `docker compose up`, which CI does not run, so the
contracts between them are checked here instead: the compose file against the Dockerfile, the
Prometheus config and the policy; the dashboard against the metrics the bot really exports.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

# Registers the release stats series in bot.observe.telemetry.REGISTRY.
import bot.observe.release_metrics
import bot.writing.llm  # registers the LLM metrics in bot.observe.telemetry.REGISTRY
from bot.config import Settings
from bot.demo.service import ServiceConfig
from bot.observe import stats, telemetry
from bot.release.durations import parse_duration
from bot.release.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"

# A trailing backslash continues an instruction on the next line.
_CONTINUATION = re.compile(r"\\\s*$")


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml(DOCKER / "compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return _yaml(DOCKER / "prometheus.yml")


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    # Compose accepts a mapping or a list of KEY=VALUE; the files here use mappings, but a
    # later edit to the list form should not make these tests lie.
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _volumes(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(source, target) of each short-syntax volume entry."""
    for entry in service.get("volumes", []):
        source, target, *_ = str(entry).split(":")
        yield source, target


def _targets(prometheus: dict[str, Any]) -> dict[str, list[str]]:
    return {
        job["job_name"]: [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        for job in prometheus["scrape_configs"]
    }


# --- Dockerfile -------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may sit between continuation lines, as in Docker itself
        if _CONTINUATION.search(line):
            pending += _CONTINUATION.sub("", line) + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKER / "Dockerfile")


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    assert len(starts) >= 2, "expected a multi-stage build (builder and runtime)"
    return instructions[starts[-1] :]


def _args(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in instructions if kw == keyword]


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def _env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _args(instructions, "ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def _copy_sources(instructions: list[tuple[str, str]]) -> set[str]:
    """What the COPY instructions take from the build context (not from another stage)."""
    return {
        part.rstrip("/")
        for args in _args(instructions, "COPY")
        if "--from=" not in args
        for part in args.split()[:-1]
        if not part.startswith("--")
    }


def _healthcheck_command(instructions: list[tuple[str, str]]) -> list[str]:
    (check,) = _args(instructions, "HEALTHCHECK")
    _, _, command = check.partition("CMD ")
    return _exec_form(command)


def test_dockerfile_builds_on_python_311_slim(dockerfile: list[tuple[str, str]]) -> None:
    arg = dict(a.split("=", 1) for a in _args(dockerfile, "ARG") if "=" in a)
    images = [args.split()[0] for args in _args(dockerfile, "FROM")]
    resolved = [arg.get(i.strip("${}"), i) for i in images]
    assert resolved and all(image == "python:3.11-slim" for image in resolved)
    assert any(args.endswith(" AS builder") for args in _args(dockerfile, "FROM"))


def test_dockerfile_installs_the_wheel_without_dev_extras(
    dockerfile: list[tuple[str, str]],
) -> None:
    builder = dockerfile[: len(dockerfile) - len(_final_stage(dockerfile))]
    builder_runs = " ".join(_args(builder, "RUN"))
    assert "pip wheel" in builder_runs
    final_runs = " ".join(_args(_final_stage(dockerfile), "RUN"))
    assert "pip install --no-index" in final_runs and "from=builder" in final_runs
    assert "[dev]" not in builder_runs + final_runs


def test_dockerfile_runs_as_non_root(dockerfile: list[tuple[str, str]]) -> None:
    users = _args(_final_stage(dockerfile), "USER")
    assert users, "the runtime stage must switch to an unprivileged user"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == "10001"


def test_dockerfile_serves_shipwatch(dockerfile: list[tuple[str, str]]) -> None:
    final = _final_stage(dockerfile)
    assert "3000" in " ".join(_args(final, "EXPOSE")).split()
    assert _exec_form(_args(final, "ENTRYPOINT")[-1]) == ["shipwatch"]
    assert _exec_form(_args(final, "CMD")[-1]) == ["serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert "shipwatch" in scripts, "ENTRYPOINT names a console script the wheel must install"


def test_dockerfile_environment_and_data_volume(dockerfile: list[tuple[str, str]]) -> None:
    final = _final_stage(dockerfile)
    env = _env(final)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["SHIPWATCH_DATA_DIR"] == "/data"
    assert env["PORT"] == "3000"
    assert _exec_form(_args(final, "VOLUME")[-1]) == ["/data"]


def test_dockerfile_healthcheck_probes_healthz_with_urllib(
    dockerfile: list[tuple[str, str]],
) -> None:
    command = _healthcheck_command(_final_stage(dockerfile))
    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2] and "/healthz" in command[2]
    compile(command[2], "<healthcheck>", "exec")  # a typo here would mark every container sick


def test_dockerfile_copies_every_package(dockerfile: list[tuple[str, str]]) -> None:
    # A package added to pyproject.toml but not copied would build a wheel without it.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    included = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    top_level = {pattern.split(".")[0] for pattern in included}
    copied = _copy_sources(dockerfile)
    assert top_level <= copied
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied


def test_dockerignore_admits_only_the_build_inputs(dockerfile: list[tuple[str, str]]) -> None:
    lines = [
        line.strip()
        for line in (DOCKER / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    # Everything is excluded first (so .venv, .git, .shipwatch and caches are), then the
    # inputs are let back in one by one.
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = _copy_sources(dockerfile)
    assert copied <= admitted, "a COPY source the ignore file keeps out of the context"
    assert not admitted & {".venv", ".git", ".shipwatch", ".env"}
    assert "**/__pycache__" in lines


# --- compose.yml ------------------------------------------------------------------------


def test_compose_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"bot", "redis", "prometheus", "demo", "grafana"}
    assert services["grafana"]["profiles"] == ["dashboards"]
    # Everything but Grafana starts with a plain `docker compose up`.
    assert all("profiles" not in s for name, s in services.items() if name != "grafana")


def test_bot_builds_from_the_dockerfile_at_the_repository_root(
    services: dict[str, dict[str, Any]],
) -> None:
    build = services["bot"]["build"]
    assert build["context"] == ".."
    assert (DOCKER / build["context"]).resolve() == ROOT
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"


def test_bot_environment(services: dict[str, dict[str, Any]]) -> None:
    env = _environment(services["bot"])
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["PROMETHEUS_URL"] == "http://prometheus:9090"
    assert env["SHIPWATCH_POLICY"] == "/config/shipwatch.yaml"
    assert env["PORT"] == "3000"
    for name in (
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "SLACK_APP_TOKEN",
        "OPENAI_API_KEY",
        "SHIPWATCH_API_TOKENS",
    ):
        assert env[name] == f"${{{name}:-}}", f"{name} is passed through from the host"
    # An empty base URL is taken literally by the openai SDK, so this one needs a real default.
    base_url = re.fullmatch(r"\$\{OPENAI_BASE_URL:-(.+)\}", env["OPENAI_BASE_URL"])
    assert base_url is not None and base_url.group(1).startswith("https://")


def test_every_setting_is_documented() -> None:
    compose_text = (DOCKER / "compose.yml").read_text(encoding="utf-8")
    readme = (DOCKER / "README.md").read_text(encoding="utf-8")
    aliases = {field.alias for field in Settings.model_fields.values() if field.alias}
    assert aliases, "bot.config.Settings names its environment variables as aliases"
    assert not {a for a in aliases if a not in compose_text}, "undocumented in compose.yml"
    assert not {a for a in aliases if a not in readme}, "undocumented in docker/README.md"
    assert "DEMO_VERSION" in readme


def test_bot_ports_mounts_and_dependencies(services: dict[str, dict[str, Any]]) -> None:
    bot_service = services["bot"]
    assert "3000:3000" in bot_service["ports"]
    assert "./shipwatch.yaml:/config/shipwatch.yaml:ro" in bot_service["volumes"]
    depends = bot_service["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"
    assert "prometheus" in depends


def test_healthchecks(
    services: dict[str, dict[str, Any]], dockerfile: list[tuple[str, str]]
) -> None:
    for name in ("bot", "redis", "prometheus", "demo"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    # Compose restates the image's probe; the two must not drift apart.
    assert services["bot"]["healthcheck"]["test"][1:] == _healthcheck_command(dockerfile)
    # The demo runs the same image, whose own HEALTHCHECK probes the bot's port: it must
    # probe its own instead, or it would always be unhealthy.
    assert ":8080/" in services["demo"]["healthcheck"]["test"][-1]


def test_redis_persists_with_aof_everysec(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    redis = services["redis"]
    assert redis["image"] == "redis:7-alpine"
    command = redis["command"]
    args = dict(zip(command[1::2], command[2::2], strict=False))
    assert args["--appendonly"] == "yes"
    assert args["--appendfsync"] == "everysec"
    data = dict((target, source) for source, target in _volumes(redis))["/data"]
    assert data in compose["volumes"], "Redis data must live in a named volume"
    assert "ports" not in redis, "a password-less Redis must not be published"


def test_volumes_exist(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for source, _ in _volumes(service):
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"


def test_demo_runs_the_sample_module_from_the_bot_image(
    services: dict[str, dict[str, Any]],
) -> None:
    demo, bot_service = services["demo"], services["bot"]
    assert demo["image"] == bot_service["image"]
    assert demo["build"] == bot_service["build"]
    assert demo["entrypoint"] == ["python", "-m", "bot.demo.service"]
    assert demo["command"] == []  # the image's CMD ("serve") is meant for `shipwatch`
    assert "8080" in [str(p) for p in demo["expose"]]
    env = _environment(demo)
    assert "DEMO_VERSION" in env
    # It routes users by the canary flag the bot writes, so it reads the bot's Redis ...
    assert env["REDIS_URL"] == _environment(bot_service)["REDIS_URL"]
    # ... and sends itself traffic, so that a release has requests to be judged on.
    load = re.fullmatch(r"\$\{DEMO_LOAD_RPS:-(\d+)\}", env["DEMO_LOAD_RPS"])
    assert load is not None and int(load.group(1)) > 0
    assert ServiceConfig.from_env({}).port == 8080  # the port exposed and scraped


def test_grafana_is_provisioned(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana-oss")
    mounts = dict((source, target) for source, target in _volumes(grafana))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard_dir = str(Path(mounts["./grafana/dashboard.json"]).parent)
    provider = _yaml(DOCKER / "grafana/provisioning/dashboards/shipwatch.yml")["providers"][0]
    assert provider["options"]["path"] == dashboard_dir
    datasource = _yaml(DOCKER / "grafana/provisioning/datasources/prometheus.yml")
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == _environment(services["bot"])["PROMETHEUS_URL"]


# --- prometheus.yml ---------------------------------------------------------------------


def test_prometheus_scrapes_the_bot_and_the_demo(
    prometheus: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert prometheus["global"]["scrape_interval"] == "5s"
    targets = _targets(prometheus)
    port = _environment(services["bot"])["PORT"]
    assert targets["shipwatch"] == [f"bot:{port}"]
    assert targets["demo"] == ["demo:8080"]
    mounts = dict(_volumes(services["prometheus"]))
    assert mounts["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"


# --- shipwatch.yaml (the compose demo's policy) -----------------------------------------


def test_example_policy_is_valid_and_matches_the_sample_service(
    prometheus: dict[str, Any],
) -> None:
    policy = load_policy(DOCKER / "shipwatch.yaml")
    demo = policy.service("demo")
    metrics = {m.name: m for m in demo.metrics}
    assert set(metrics) == {"error_rate", "latency_p99"}
    assert "http_requests_total{" in metrics["error_rate"].query
    assert 'code=~"5.."' in metrics["error_rate"].query
    assert "http_request_duration_seconds_bucket{" in metrics["latency_p99"].query
    # rate() needs at least two samples in its window, and more to be steady.
    scrape = parse_duration(prometheus["global"]["scrape_interval"])
    assert demo.window >= 4 * scrape
    assert demo.interval >= scrape


# --- grafana/dashboard.json -------------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def _exported_names() -> set[str]:
    """Series names the bot's registry can expose, whether or not a sample exists yet.

    Labelled metrics have no samples until first used, so names come from each family's name
    and type rather than from the samples collected right now.
    """
    assert bot.writing.llm.LLM_FAILURES is not None  # the imports above are what register these
    assert bot.observe.release_metrics.SERIES is not None
    names: set[str] = set()
    for family in telemetry.REGISTRY.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query", "")
        exprs.append(query["query"] if isinstance(query, dict) else str(query))
    return exprs


def test_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads((DOCKER / "grafana/dashboard.json").read_text(encoding="utf-8"))
    used = {
        name
        for expr in _expressions(dashboard)
        for name in re.findall(r"\bshipwatch_[A-Za-z0-9_:]+", expr)
    }
    exported = _exported_names()
    assert used, "the dashboard queries none of the bot's metrics"
    assert not used - exported, f"not exported by the bot: {sorted(used - exported)}"
    for required in (
        "shipwatch_decisions_total",
        "shipwatch_rollbacks_total",
        "shipwatch_active_releases",
        "shipwatch_chat_errors_total",
        "shipwatch_llm_failures_total",
        "shipwatch_command_seconds_bucket",
    ):
        assert required in used, f"no panel shows {required}"


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    dashboard = json.loads((DOCKER / "grafana/dashboard.json").read_text(encoding="utf-8"))
    datasource = _yaml(DOCKER / "grafana/provisioning/datasources/prometheus.yml")
    uid = datasource["datasources"][0]["uid"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]


RELEASE_SERIES = (
    "shipwatch_release_deploys_per_day",
    "shipwatch_release_finished",
    "shipwatch_release_rollback_ratio",
    "shipwatch_release_lead_time_seconds",
    "shipwatch_release_rollback_time_seconds",
    "shipwatch_release_step_time_seconds",
    "shipwatch_release_approval_wait_seconds",
    "shipwatch_release_approval_waits",
    "shipwatch_release_approvals_refused",
    "shipwatch_audit_oldest_timestamp_seconds",
    "shipwatch_release_stats_refresh_failures_total",
)


def test_dashboard_shows_the_release_stats_the_bot_exports() -> None:
    dashboard = json.loads((DOCKER / "grafana/dashboard.json").read_text(encoding="utf-8"))
    exported = _exported_names()
    used = {
        name
        for expr in _expressions(dashboard)
        for name in re.findall(r"\bshipwatch_[A-Za-z0-9_:]+", expr)
    }
    for name in RELEASE_SERIES:
        assert name in exported, f"the bot does not export {name}"
        assert name in used, f"no panel shows {name}"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    # The window choices are the windows the bot computes, and the default service is the
    # label the bot gives the numbers over every service.
    windows = bot.observe.release_metrics.WINDOWS_DAYS
    labels = [bot.observe.release_metrics.window_label(d) for d in windows]
    assert [o["value"] for o in variables["window"]["options"]] == labels
    assert variables["window"]["query"] == ",".join(labels)
    assert variables["service"]["current"]["value"] == stats.ALL
    assert "shipwatch_release_deploys" in variables["service"]["query"]["query"]
    # Every release panel picks the window (and so reads series the bot labels that way).
    release_exprs = [
        t["expr"]
        for panel in dashboard["panels"]
        for t in panel.get("targets", [])
        if "shipwatch_release_" in t["expr"] and "refresh_failures" not in t["expr"]
    ]
    assert release_exprs and all('window="$window"' in e for e in release_exprs)
