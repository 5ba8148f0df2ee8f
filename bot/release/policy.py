"""The policy file (``shipwatch.yaml``): defaults plus per-service overrides, validated by pydantic.

Every problem is reported with its path in the file (and line), a hint, and nothing is applied
until the whole file is valid.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import re
import typing
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.errors import PolicyError, PolicyProblem, UnknownServiceError
from bot.release.digest import DigestSettings
from bot.release.durations import Seconds
from bot.release.retention import Retention
from bot.release.rules import Trend, VsPreviousStep

PLACEHOLDERS = ("{service}", "{version}", "{window}")
_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_PRINCIPAL = re.compile(r"^[A-Za-z0-9._@-]+$")
# Who a mention can page: a user (U…/W…) or a user group (S…); Slack ids carry a digit.
ONCALL_ID = re.compile(r"^(?=[A-Z0-9]*[0-9])[UWS][A-Z0-9]{2,}$")
# A pre-release gate's name (ci_build, tests, security_scan, compliance): the key CI reports
# its result under, so it must survive URLs, JSON and YAML unquoted.
GATE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MIN_INTERVAL_S = 0.05


class Risk(StrEnum):
    NORMAL = "normal"
    HIGH = "high"


class Strategy(StrEnum):
    CANARY = "canary"
    BLUE_GREEN = "blue_green"


class Direction(StrEnum):
    INCREASE = "increase"  # higher is worse (errors, latency)
    DECREASE = "decrease"  # lower is worse (success rate, conversions)
    EITHER = "either"


class NoDataPolicy(StrEnum):
    HOLD = "hold"  # keep the step, do not advance, do not count a failure
    PAUSE = "pause"  # pause the release and say why
    FAIL = "fail"  # count as a failed check


class FirstStep(StrEnum):
    """What a deploy does when its first step would give the canary too few requests for
    ``min_requests`` at the traffic the service serves now (bot.judging.sizing)."""

    FIXED = "fixed"  # no check: start at the first step as planned
    WARN = "warn"  # start as planned, and say so in the reply and the thread
    REQUIRE = "require"  # refuse the deploy (also when the traffic cannot be read)
    AUTO = "auto"  # start at the smallest step that gives enough


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metric(_Strict):
    """One metric and the rules that judge the canary on it."""

    name: str = Field(min_length=1, max_length=64)
    query: str = Field(min_length=1)
    description: str = ""
    unit: str = ""
    direction: Direction = Direction.INCREASE
    # Absolute limits on the canary value; the warn_* twins are reported, never fail a check.
    max: float | None = None
    min: float | None = None
    warn_max: float | None = None
    warn_min: float | None = None
    # Limits against the control (or, while baking, the pre-release baseline).
    max_ratio: float | None = Field(default=None, gt=0)
    max_diff: float | None = Field(default=None, ge=0)
    warn_ratio: float | None = Field(default=None, gt=0)
    warn_diff: float | None = Field(default=None, ge=0)
    critical: bool = False  # one failure rolls back at once
    dry_run: bool = False  # judged and reported, never acted on
    no_data: NoDataPolicy = NoDataPolicy.HOLD
    min_requests: int = Field(default=0, ge=0)  # no verdict while the canary saw fewer requests
    failure_limit: int = Field(default=2, ge=1)  # consecutive failed checks that roll back
    total_failure_limit: int = Field(default=5, ge=1)  # failed checks in the whole release
    error_limit: int = Field(default=3, ge=1)  # consecutive query errors that pause
    window: Seconds | None = None  # {window}; None: the service's window
    # A failure counts towards a rollback only once the breach has lasted this long (failing
    # rounds in a row spanning it); the limits above must be reached as well.
    for_: Seconds | None = Field(default=None, alias="for")
    vs_previous_step: VsPreviousStep | None = None
    trend: Trend | None = None

    # Which judge decides: the rules above, the Mann-Whitney comparison of canary and control
    # series (Kayenta's semantics), or both (a metric fails if either says so).
    judge: Literal["threshold", "mann_whitney", "both"] = "threshold"
    lookback: Seconds = 300.0  # how much of each series the statistical judge compares
    step: Seconds = 10.0  # the series' resolution
    group: str = ""  # score group; empty: the metric's own name
    tolerance: float = Field(default=0.25, ge=0)
    confidence: float = Field(default=0.98, gt=0.5, lt=1)
    effect_size_measure: Literal["mean_ratio", "cles"] = "mean_ratio"
    allowed_increase: float | None = Field(default=None, gt=0)
    allowed_decrease: float | None = Field(default=None, gt=0)
    critical_increase: float | None = Field(default=None, gt=0)
    critical_decrease: float | None = Field(default=None, gt=0)
    nan_strategy: Literal["remove", "replace"] = "remove"
    must_have_data: bool = False

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def uses_thresholds(self) -> bool:
        return self.judge in ("threshold", "both")

    @property
    def uses_step_rules(self) -> bool:
        """Whether a rule needs the canary's own value each round (beyond its limits)."""
        return self.vs_previous_step is not None or self.trend is not None

    @property
    def uses_statistics(self) -> bool:
        return self.judge in ("mann_whitney", "both")

    @field_validator("query")
    @classmethod
    def _query_names_version(cls, value: str) -> str:
        if "{version}" not in value:
            raise ValueError(
                "the query must contain {version} so canary and control are queried apart"
            )
        return value

    @model_validator(mode="after")
    def _has_a_rule(self) -> Metric:
        rules = (self.max, self.min, self.max_ratio, self.max_diff)
        warns = (self.warn_max, self.warn_min, self.warn_ratio, self.warn_diff)
        step_rules = (self.vs_previous_step, self.trend)
        if self.uses_thresholds and all(r is None for r in (*rules, *warns, *step_rules)):
            raise ValueError(
                "the metric has no rule: set max, min, max_ratio, max_diff, vs_previous_step "
                "or trend, or `judge: mann_whitney` to compare canary and control statistically"
            )
        if self.uses_statistics and self.step * 3 > self.lookback:
            raise ValueError(
                f"lookback ({self.lookback:g}s) must hold several steps ({self.step:g}s each)"
            )
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class HookFailure(StrEnum):
    """What a failed or timed-out step hook does to the release."""

    HOLD = "hold"  # stay at the step; the hooks run again on a later round
    PAUSE = "pause"  # pause the release and say why
    ROLLBACK = "rollback"  # roll the release back


class LoadHook(_Strict):
    """Synthetic load against the canary (or the idle colour) while the hook runs, so the judge
    has requests to read: ``url`` may name ``{service}`` and ``{version}``."""

    url: str = Field(min_length=1, pattern=r"^https?://")
    seconds: Seconds = Field(default=30.0, gt=0)
    rate: float = Field(default=20.0, gt=0, le=1000)  # requests a second


class WebhookHook(_Strict):
    """A CI job started by a POST to ``url``; the hook passes when the job calls back with
    "passed" (bot.engine.ci_jobs says what is sent and what the job answers)."""

    url: str = Field(min_length=1, pattern=r"^https?://")
    # "shipwatch": shipwatch's own JSON body. "github": a repository_dispatch event, so a
    # GitHub Actions workflow `on: repository_dispatch` runs (url: …/repos/OWNER/REPO/dispatches).
    format: Literal["shipwatch", "github"] = "shipwatch"
    event_type: str = Field(default="shipwatch-step-hook", min_length=1, max_length=100)
    secret_env: str | None = None  # env var holding the HMAC secret that signs the POST
    token_env: str | None = None  # env var holding a token sent as `Authorization: Bearer`
    # How long the POST that starts the job may take (the job's own time is the hook's timeout).
    request_timeout: Seconds = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _github_needs_a_token(self) -> WebhookHook:
        if self.format == "github" and self.token_env is None:
            raise ValueError(
                "a `format: github` hook needs `token_env`: the env var holding a token that "
                "may create repository_dispatch events (contents: write)"
            )
        return self


class Hook(_Strict):
    """A check run before a step's traffic moves: a smoke-test URL, synthetic load, or a CI job
    started through a webhook and waited for until it calls back."""

    url: str | None = Field(default=None, pattern=r"^https?://")  # 2xx passes
    method: Literal["GET", "POST"] = "GET"
    load: LoadHook | None = None
    webhook: WebhookHook | None = None
    on_failure: HookFailure = HookFailure.HOLD
    timeout: Seconds = Field(default=60.0, gt=0)  # the whole hook: load, or the CI job's run

    @property
    def kind(self) -> str:
        """'url', 'load' or 'webhook'."""
        if self.load is not None:
            return "load"
        return "webhook" if self.webhook is not None else "url"

    @model_validator(mode="after")
    def _one_kind(self) -> Hook:
        if sum(k is not None for k in (self.url, self.load, self.webhook)) != 1:
            raise ValueError(
                "a hook is one of `url:` (a smoke test), `load:` (synthetic load) or "
                "`webhook:` (a CI job that calls back)"
            )
        if self.load is not None and self.load.seconds >= self.timeout:
            raise ValueError("the hook's timeout must be longer than its load's seconds")
        if self.webhook is not None and self.webhook.request_timeout >= self.timeout:
            raise ValueError("the hook's timeout must be longer than its webhook's request_timeout")
        return self


class Step(_Strict):
    """One rung of the ladder, and what differs there from the rest of the release."""

    weight: int = Field(ge=0, le=100)
    hold: Seconds | None = None  # None: the service's hold
    interval: Seconds | None = None  # None: the service's interval
    # A person must approve before the release enters this step (risk: high asks at every step).
    approval: bool = False
    # The service's metrics as judged at this step: entries merge by name with the service's
    # (an entry with a new name is a metric judged at this step only).
    metrics: list[Metric] = Field(default_factory=list)
    # Checks run before the release enters this step; its traffic moves only once they pass.
    hooks: list[Hook] = Field(default_factory=list)

    @field_validator("interval")
    @classmethod
    def _interval_positive(cls, value: float | None) -> float | None:
        if value is not None and value < MIN_INTERVAL_S:
            raise ValueError("the analysis interval must be at least 50ms")
        return value

    @field_validator("metrics")
    @classmethod
    def _named_once(cls, metrics: list[Metric]) -> list[Metric]:
        names = [m.name for m in metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"a metric is listed twice at step {names}")
        return metrics


def _coerce_step(value: Any) -> Any:
    return {"weight": value} if isinstance(value, int) and not isinstance(value, bool) else value


def _raw(value: Any) -> Any:
    """A metric as the mapping the file would have written (models built in code included)."""
    if isinstance(value, Metric):
        return value.model_dump(by_alias=True, exclude_unset=True)
    return value


def _step_with_merged_metrics(step: Any, service: dict[str, dict[str, Any]]) -> Any:
    if not isinstance(step, dict) or not isinstance(step.get("metrics"), list):
        return step
    merged = []
    for entry in step["metrics"]:
        name = entry.get("name") if isinstance(entry, dict) else None
        base = service.get(name) if isinstance(name, str) else None
        merged.append({**base, **entry} if base is not None else entry)
    return {**step, "metrics": merged}


StepSpec = Annotated[Step, BeforeValidator(_coerce_step)]


class ScoreSettings(_Strict):
    """The canary score over all judged metrics (Kayenta's): 100 × passing share per group."""

    pass_threshold: float = Field(default=95.0, ge=0, le=100)  # at or above: may advance
    marginal_threshold: float = Field(default=75.0, ge=0, le=100)  # below: a failed check
    group_weights: dict[str, float] = Field(default_factory=dict)
    failure_limit: int = Field(default=2, ge=1)  # consecutive failing scores that roll back

    @model_validator(mode="after")
    def _ordered(self) -> ScoreSettings:
        if self.marginal_threshold > self.pass_threshold:
            raise ValueError("marginal_threshold must not be above pass_threshold")
        if sum(self.group_weights.values()) > 100:
            raise ValueError("group_weights add up to more than 100")
        return self


class WebhookTickets(_Strict):
    url: str = Field(min_length=1)
    secret_env: str | None = None  # env var holding the HMAC secret that signs the payload
    timeout: Seconds = 10.0


class GitHubTickets(_Strict):
    repo: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")  # owner/name
    token_env: str = "GITHUB_TOKEN"  # env var holding a token that may create issues
    api_url: str = "https://api.github.com"
    labels: list[str] = Field(default_factory=lambda: ["shipwatch", "rollback"])
    timeout: Seconds = 10.0


class TicketSettings(_Strict):
    """Where an incident ticket is filed after each automatic rollback (any or both)."""

    webhook: WebhookTickets | None = None
    github: GitHubTickets | None = None


class PagerDutyPaging(_Strict):
    """PagerDuty's Events API v2: one alert per release, keyed by the release."""

    routing_key_env: str = "PAGERDUTY_ROUTING_KEY"  # env var holding the integration key
    severity: Literal["critical", "error", "warning", "info"] = "critical"
    url: str = "https://events.pagerduty.com"  # the Events API's base (EU: events.eu.…)
    timeout: Seconds = 10.0
    retries: int = Field(default=2, ge=0, le=5)  # after a 429 or a 5xx, with backoff


class OpsgeniePaging(_Strict):
    """Opsgenie's Alert API: one alert per release, its alias the release's key."""

    api_key_env: str = "OPSGENIE_API_KEY"  # env var holding an API integration's key
    url: str = "https://api.opsgenie.com"  # or https://api.eu.opsgenie.com
    priority: Literal["P1", "P2", "P3", "P4", "P5"] = "P1"
    # Who is alerted, as Opsgenie names them: {type: team|user|escalation|schedule, name|id}.
    responders: list[dict[str, str]] = Field(default_factory=list)
    timeout: Seconds = 10.0
    retries: int = Field(default=2, ge=0, le=5)

    @field_validator("responders")
    @classmethod
    def _responders(cls, values: list[dict[str, str]]) -> list[dict[str, str]]:
        for r in values:
            if r.get("type") not in ("team", "user", "escalation", "schedule"):
                raise ValueError("a responder's `type` is team, user, escalation or schedule")
            if not (r.get("name") or r.get("id") or r.get("username")):
                raise ValueError("a responder needs a `name`, `id` or (a user) `username`")
        return values


class PagingSettings(_Strict):
    """Who is paged when the controller rolls a release back (any or both)."""

    pagerduty: PagerDutyPaging | None = None
    opsgenie: OpsgeniePaging | None = None
    # The page is resolved when the release ends (the rollback completed): the service is
    # back on its stable version. False leaves it for the on-call to resolve.
    resolve_on_end: bool = True


# The longest a post-release watch may run: the seeds' "14 days stable".
MAX_WATCH_WINDOW = 14 * 86400.0


class WatchSettings(_Strict):
    """The watch after a release succeeded: how long, and how often it judges (0 window: off)."""

    window: Seconds = Field(default=86400.0, ge=0, le=MAX_WATCH_WINDOW)
    interval: Seconds = Field(default=300.0, gt=0)


class TrafficSettings(_Strict):
    backend: Literal[
        "flags", "webhook", "haproxy", "nginx", "unleash", "argo-rollouts", "gateway-api", "flagger"
    ] = "flags"
    url: str | None = None  # webhook
    # webhook: where shipwatch reads back what the receiver applies ({service} filled in);
    # unset: not read back (no drift repair)
    read_url: str | None = None
    secret_env: str | None = None  # name of the env var holding the webhook's HMAC secret
    timeout: Seconds = 5.0
    retries: int = Field(default=3, ge=0, le=10)
    # haproxy: the runtime API (a unix socket path, or host:port), and what to change there
    socket: str | None = None
    mode: Literal["map", "weight"] = "map"
    map_file: str | None = None  # map mode: the map's path as HAProxy's config names it
    key: str | None = None  # map mode: the entry; default the service's name
    haproxy_backend: str | None = None  # weight mode: the backend holding both servers
    stable_server: str = "stable"
    canary_server: str = "canary"
    # nginx: the include shipwatch writes ({service} filled in), how NGINX is tested and
    # reloaded, the marker URL that shows what the workers apply, and what users are split on
    include_file: str | None = None
    test_command: str = "nginx -t"
    reload_command: str = "nginx -s reload"
    marker_url: str | None = None
    split_key: str = "${http_x_user_id}"
    # unleash: the server, the env var holding an admin API token, and where the flag lives
    unleash_url: str | None = None
    token_env: str = "UNLEASH_ADMIN_TOKEN"
    project: str = "default"
    environment: str = "development"
    flag: str | None = None  # an existing flag to drive; default shipwatch.<service>
    sdk_refresh: Seconds = 15.0  # unleash: how often the applications' SDKs fetch the flags
    # argo-rollouts and gateway-api: the namespace and the kubeconfig (default: the pod's
    # service account); argo-rollouts: the Rollout (default: the service's name) and how long
    # Argo may take to carry out a step
    namespace: str = "default"
    rollout: str | None = None
    kubeconfig: str | None = None
    step_timeout: Seconds = 120.0
    # argo-rollouts: /deploy sets the container's image to the release's version (refused on a
    # Rollout a GitOps tool owns); the container (default: the first)
    set_image: bool = False
    container: str | None = None
    # gateway-api: the route (default: the service's name), its kind, the rule's index, and the
    # two backends it splits between (default: <service>-stable and <service>-canary)
    route: str | None = None
    route_kind: Literal["HTTPRoute", "VirtualService"] = "HTTPRoute"
    rule: int = Field(default=0, ge=0)
    stable_backend: str | None = None
    canary_backend: str | None = None

    @property
    def hands_back(self) -> bool:
        """Whether a succeeded release leaves everyone on a canary pool until it is handed back
        (engines that route between two deployments). The embedded flags carry both versions,
        and Argo Rollouts and Flagger make the canary the primary themselves."""
        return self.backend not in ("flags", "argo-rollouts", "flagger")

    @property
    def seen_within(self) -> float | None:
        """How long applications take to see a change, when they poll for it (Unleash SDKs)."""
        return self.sdk_refresh if self.backend == "unleash" else None

    @model_validator(mode="after")
    def _each_backend_has_what_it_needs(self) -> TrafficSettings:
        if self.backend == "webhook" and not self.url:
            raise ValueError("the webhook backend needs a url")
        if self.backend == "haproxy":
            if not self.socket:
                raise ValueError(
                    "the haproxy backend needs `socket`: the runtime API's unix socket path or "
                    "host:port (`stats socket … level admin` in haproxy.cfg)"
                )
            if self.mode == "map" and not self.map_file:
                raise ValueError("the haproxy backend's map mode needs `map_file`")
            if self.mode == "weight" and not self.haproxy_backend:
                raise ValueError("the haproxy backend's weight mode needs `haproxy_backend`")
        if self.backend == "unleash" and not self.unleash_url:
            raise ValueError("the unleash backend needs `unleash_url`, the Unleash server's URL")
        if self.backend == "nginx" and not self.include_file:
            raise ValueError(
                "the nginx backend needs `include_file`: the file shipwatch writes and your "
                "nginx.conf includes at http level"
            )
        return self


DEFAULT_REQUESTS_QUERY = (
    'sum(increase(http_requests_total{service="{service}",version="{version}"}[{window}]))'
)


class ServicePolicy(_Strict):
    """Everything that governs one service's releases (defaults merged with its overrides)."""

    steps: list[StepSpec] = Field(
        default_factory=lambda: [Step(weight=w) for w in (1, 10, 25, 50, 100)]
    )
    hold: Seconds = 900.0
    interval: Seconds = 30.0
    window: Seconds = 60.0
    bake: Seconds = 3600.0
    risk: Risk = Risk.NORMAL
    strategy: Strategy = Strategy.CANARY
    channel: str = "#releases"
    deployers: list[str] = Field(default_factory=list)  # empty: anyone may deploy
    approvers: list[str] = Field(default_factory=list)  # empty: anyone but the requester
    oncall: str = ""
    traffic: TrafficSettings = Field(default_factory=TrafficSettings)
    requests_query: str = DEFAULT_REQUESTS_QUERY
    metrics: list[Metric] = Field(default_factory=list)
    score: ScoreSettings = Field(default_factory=ScoreSettings)
    tickets: TicketSettings = Field(default_factory=TicketSettings)
    paging: PagingSettings = Field(default_factory=PagingSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    announce_channel: str = "#releases"  # where the "shipped" announcement goes
    # Pre-release gates that must have passed before a release starts (engine.gates); empty: none.
    gates: list[str] = Field(default_factory=list)
    # A release the controller paused only because its metrics could not be read resumes by
    # itself after this many rounds in a row that read them again; 0 keeps it paused for a person.
    resume_after_rounds: int = Field(default=3, ge=0, le=1000)
    # A service with no metrics ships on time alone: allowed only when the policy says so.
    unjudged: bool = False
    # Whether the first step is sized to the traffic the service serves when the deploy starts.
    first_step: FirstStep = FirstStep.WARN
    # A daily standup post of its long releases in `channel` (None: no digest).
    digest: DigestSettings | None = None
    # Blue-green: checks run on the idle colour before the switch to 100% (bot.engine.hooks).
    switch_hooks: list[Hook] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _step_metrics_merge(cls, data: Any) -> Any:
        """A step's metric entries are overrides of the service's metric of the same name (a
        step sets `max: 0.02` without repeating the query): merged here, before validation,
        so each step holds whole metrics and errors point at the step's entry."""
        if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
            return data
        service = {
            m["name"]: m
            for m in (_raw(m) for m in data.get("metrics") or [])
            if isinstance(m, dict) and isinstance(m.get("name"), str)
        }
        steps = [_step_with_merged_metrics(step, service) for step in data["steps"]]
        return {**data, "steps": steps}

    @field_validator("steps")
    @classmethod
    def _steps_rise_to_100(cls, steps: list[Step]) -> list[Step]:
        weights = [s.weight for s in steps]
        if not weights:
            raise ValueError("give at least one step, e.g. [1, 10, 25, 50, 100]")
        if any(b <= a for a, b in itertools.pairwise(weights)):
            raise ValueError(f"steps must rise strictly, got {weights}")
        if weights[-1] != 100:
            raise ValueError(f"the last step must be 100, got {weights[-1]}")
        if steps[0].hooks:
            # A release enters its first step when it is deployed: nothing runs before that.
            raise ValueError(
                "the first step cannot have hooks (a deploy enters it at once): check before "
                "the deploy with `gates:`, or put the hooks on the second step"
            )
        return steps

    @field_validator("interval")
    @classmethod
    def _interval_positive(cls, value: float) -> float:
        if value < MIN_INTERVAL_S:
            raise ValueError("the analysis interval must be at least 50ms")
        return value

    @field_validator("deployers", "approvers")
    @classmethod
    def _principals(cls, values: list[str]) -> list[str]:
        for v in values:
            if not _PRINCIPAL.match(v):
                raise ValueError(f"`{v}` is not a Slack user id (U…), user-group id (S…) or name")
        return values

    @field_validator("oncall")
    @classmethod
    def _oncall_is_an_id(cls, value: str) -> str:
        # Only ids notify: "@oncall" typed as text shows as text and pages nobody.
        if value and not ONCALL_ID.match(value):
            raise ValueError(
                f"`{value}` pages nobody: give a Slack user id (U… or W…, from the person's "
                "profile → ⋮ → Copy member ID) or a user-group id (S…, the end of the group's "
                "URL in Slack), or leave oncall empty"
            )
        return value

    @field_validator("gates")
    @classmethod
    def _gate_names(cls, gates: list[str]) -> list[str]:
        for g in gates:
            if not GATE_NAME.match(g):
                raise ValueError(
                    f"`{g}` is not a gate name: use a lowercase identifier like ci_build, tests, "
                    "security_scan or compliance"
                )
        if len(set(gates)) != len(gates):
            raise ValueError(f"a gate is listed twice in {gates}")
        return gates

    @field_validator("metrics")
    @classmethod
    def _unique_names(cls, metrics: list[Metric]) -> list[Metric]:
        seen: set[str] = set()
        for m in metrics:
            if m.name in seen:
                raise ValueError(f"metric `{m.name}` is defined twice")
            seen.add(m.name)
        return metrics

    def hold_for(self, step_index: int) -> float:
        step = self.steps[step_index]
        return self.hold if step.hold is None else step.hold

    # A release's ladder may differ from the policy's (--steps, a first step sized to the
    # traffic): its steps find their settings by weight ("at 25%"), not by position.
    def step_at(self, weight: int) -> Step | None:
        return next((s for s in self.steps if s.weight == weight), None)

    def interval_at(self, weight: int) -> float:
        step = self.step_at(weight)
        return self.interval if step is None or step.interval is None else step.interval

    def all_hooks(self) -> list[Hook]:
        """Every hook the service names, at any step or before its switch."""
        return [*self.switch_hooks, *(h for step in self.steps for h in step.hooks)]

    def hooks_before(self, strategy: Strategy, weight: int) -> list[Hook]:
        """The hooks that must pass before a release of ``strategy`` moves to ``weight``."""
        if strategy is Strategy.BLUE_GREEN:
            return list(self.switch_hooks) if weight == 100 else []
        step = self.step_at(weight)
        return [] if step is None else list(step.hooks)

    def approval_at(self, weight: int) -> bool:
        step = self.step_at(weight)
        return step is not None and step.approval

    def metrics_at(self, weight: int) -> list[Metric]:
        """The metrics as judged at ``weight``: the service's, with the step's by name."""
        step = self.step_at(weight)
        if step is None or not step.metrics:
            return list(self.metrics)
        own = {m.name: m for m in step.metrics}
        merged = [own.pop(m.name, m) for m in self.metrics]
        return [*merged, *own.values()]

    @property
    def weights(self) -> list[int]:
        return [s.weight for s in self.steps]


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: str
    services: dict[str, ServicePolicy]
    retention: Retention = Retention()

    def secret_envs(self) -> set[str]:
        """Names of the environment variables that hold secrets the policy refers to (webhook
        ticket and hook signing secrets, the GitHub token, paging keys)."""
        names: set[str] = set()
        for sp in self.services.values():
            names.add(sp.traffic.secret_env or "")
            if sp.traffic.backend == "unleash":
                names.add(sp.traffic.token_env)
            if sp.tickets.webhook is not None:
                names.add(sp.tickets.webhook.secret_env or "")
            if sp.tickets.github is not None:
                names.add(sp.tickets.github.token_env)
            if sp.paging.pagerduty is not None:
                names.add(sp.paging.pagerduty.routing_key_env)
            if sp.paging.opsgenie is not None:
                names.add(sp.paging.opsgenie.api_key_env)
            for hook in sp.all_hooks():
                if hook.webhook is not None:
                    names |= {hook.webhook.secret_env or "", hook.webhook.token_env or ""}
        return names - {""}

    def has_webhook_hooks(self) -> bool:
        """Whether a step hook starts a CI job, which calls back on SHIPWATCH_PUBLIC_URL."""
        return any(h.webhook is not None for sp in self.services.values() for h in sp.all_hooks())

    def service(self, name: str) -> ServicePolicy:
        try:
            return self.services[name]
        except KeyError:
            known = sorted(self.services)
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            raise UnknownServiceError(name, close[0] if close else None, known) from None


# --- loading -------------------------------------------------------------------------------

_TOP_KEYS = {"defaults", "services", "retention"}


def load_policy(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(
            str(path),
            [
                PolicyProblem(
                    "(file)", "not found", "create it, or set SHIPWATCH_POLICY to its path"
                )
            ],
        ) from None
    except OSError as exc:
        raise PolicyError(str(path), [PolicyProblem("(file)", str(exc))]) from exc
    return parse_policy(text, str(path))


def embedded_policy() -> Policy:
    """The demo policy shipped with the package (used when no policy file exists)."""
    text = resources.files("bot").joinpath("defaults/shipwatch.yaml").read_text(encoding="utf-8")
    return parse_policy(text, "(embedded defaults)")


# Every problem in the file is collected, in file order, before anything is applied.
def parse_policy(text: str, source: str) -> Policy:  # noqa: C901, PLR0912
    try:
        raw = yaml.safe_load(text)
        lines = _line_index(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise PolicyError(
            source,
            [
                PolicyProblem(
                    where,
                    f"not valid YAML: {getattr(exc, 'problem', exc)}",
                    "check indentation and quoting (PromQL with braces needs quotes)",
                )
            ],
        ) from exc
    if raw is None:
        raw = {}
    problems: list[PolicyProblem] = []
    if not isinstance(raw, dict):
        raise PolicyError(
            source,
            [PolicyProblem("(top)", "must be a mapping", "start with `defaults:` and `services:`")],
        )
    for key in raw:
        if key not in _TOP_KEYS:
            problems.append(
                PolicyProblem(str(key), "unknown top-level key", _did_you_mean(str(key), _TOP_KEYS))
            )
    defaults_raw = raw.get("defaults") or {}
    services_raw = raw.get("services") or {}
    if not isinstance(defaults_raw, dict):
        problems.append(PolicyProblem("defaults", "must be a mapping"))
        defaults_raw = {}
    if not isinstance(services_raw, dict) or not services_raw:
        problems.append(
            PolicyProblem(
                "services",
                "no services defined",
                "add `services: {checkout: {}}` with one entry per service",
            )
        )
        services_raw = {}

    problems += _validate(defaults_raw, ["defaults"], lambda loc: ["defaults", *loc], lines)

    services: dict[str, ServicePolicy] = {}
    for name, override in services_raw.items():
        base = ["services", str(name)]
        if not isinstance(name, str) or not _SERVICE_NAME.match(name):
            problems.append(
                PolicyProblem(
                    ".".join(base),
                    "invalid service name",
                    "use lowercase letters, digits, '-', '_' or '.'",
                )
            )
            continue
        if override is None:
            override = {}  # noqa: PLW2901 - `checkout:` with nothing under it means defaults
        if not isinstance(override, dict):
            problems.append(PolicyProblem(".".join(base), "must be a mapping of overrides"))
            continue
        merged, origins = _merge(defaults_raw, override, name)

        def locate(
            loc: list[str | int],
            origins: list[list[str | int]] = origins,
            override: dict[str, Any] = override,
            base: list[str] = base,
        ) -> list[str | int]:
            if loc and loc[0] == "metrics" and len(loc) > 1 and isinstance(loc[1], int):
                if loc[1] >= len(origins):
                    return [*base, *loc]
                return [*_metric_origin(origins[loc[1]], loc[2:], merged_from=override), *loc[2:]]
            if loc and loc[0] in override:
                return [*base, *loc]
            return ["defaults", *loc]

        found = _validate(merged, base, locate, lines)
        problems += [p for p in found if p.path.startswith("services.")]
        if not found:
            services[name] = ServicePolicy.model_validate(merged)
    retention, retention_problems = _retention(raw.get("retention"), lines)
    problems += retention_problems
    if problems:
        raise PolicyError(source, _dedupe(problems))
    return Policy(source=source, services=services, retention=retention)


def _retention(
    raw: object, lines: dict[tuple[str | int, ...], int]
) -> tuple[Retention, list[PolicyProblem]]:
    """The top-level ``retention:`` (defaults when absent), or what is wrong with it."""
    if raw is None:
        return Retention(), []
    if not isinstance(raw, dict):
        return Retention(), [
            PolicyProblem("retention", "must be a mapping", "e.g. `retention: {lifecycle: 400d}`")
        ]
    try:
        return Retention.model_validate(raw), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path: list[str | int] = ["retention", *err["loc"]]
            hint = _HINTS.get(err["type"], "")
            if err["type"] == "extra_forbidden":
                hint = _did_you_mean(str(err["loc"][-1]), set(Retention.model_fields)) or hint
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(PolicyProblem(_render_path(path, lines), message, hint))
        return Retention(), problems


def require_judged(policy: Policy) -> None:
    """PolicyError when a service has no metrics without saying `unjudged: true` (what
    `check-config` and `serve` refuse: nothing would judge its releases)."""
    problems = [
        p for name, sp in sorted(policy.services.items()) for p in _judging_problems(name, sp)
    ]
    if problems:
        raise PolicyError(policy.source, problems)


def _judging_problems(name: str, sp: ServicePolicy) -> list[PolicyProblem]:
    where = f"services.{name}"
    if not sp.metrics and not sp.unjudged:
        return [
            PolicyProblem(
                where,
                "no metrics: nothing would judge its releases, which would advance on time alone",
                "add metrics (here or under defaults), or set `unjudged: true` to ship it "
                "unjudged on purpose",
            )
        ]
    if sp.metrics and sp.unjudged:
        return [PolicyProblem(where, "`unjudged: true` with metrics", "remove one of them")]
    return []


def _metric_origin(
    origin: list[str | int], rest: list[str | int], merged_from: dict[str, Any]
) -> list[str | int]:
    """A merged metric's field comes from the service entry if that entry sets it, else from
    the default entry of the same name (whose path is kept as the origin's tail)."""
    if origin[0] == "services" and len(origin) > 4:
        own = merged_from.get("metrics") or []
        entry = own[origin[3]] if isinstance(origin[3], int) and origin[3] < len(own) else {}
        if rest and isinstance(entry, dict) and rest[0] not in entry:
            return origin[4:]
        return origin[:4]
    return origin


# Defaults, then the service's overrides, metric by metric: one merge rule per field kind.
def _merge(  # noqa: C901
    defaults: dict[str, Any],
    override: dict[str, Any],
    service: str,
) -> tuple[dict[str, Any], list[list[str | int]]]:
    """Service overrides on top of defaults. Metrics merge by name: a service entry with a
    default's name overrides just the fields it sets; new names are added."""
    merged = copy.deepcopy(defaults)
    for key, value in override.items():
        mergeable = key in ("traffic", "score", "tickets", "paging")
        if mergeable and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        elif key != "metrics":
            merged[key] = copy.deepcopy(value)
    base_metrics = defaults.get("metrics") or []
    own_metrics = override.get("metrics")
    metrics: list[Any] = []
    origins: list[list[str | int]] = []
    if isinstance(base_metrics, list):
        for i, m in enumerate(base_metrics):
            metrics.append(copy.deepcopy(m))
            origins.append(["defaults", "metrics", i])
    if isinstance(own_metrics, list):
        by_name = {m.get("name"): i for i, m in enumerate(metrics) if isinstance(m, dict)}
        defaults_by_name = {m.get("name"): m for m in metrics if isinstance(m, dict)}
        for j, m in enumerate(own_metrics):
            name = m.get("name") if isinstance(m, dict) else None
            if name is not None and name in by_name and isinstance(m, dict):
                # Merge into the default once; a second entry of the same name is appended so
                # validation reports the duplicate instead of silently merging both.
                k = by_name.pop(name)
                metrics[k] = {**metrics[k], **m}
                # Keep the default's path behind the service's, for fields the service leaves.
                origins[k] = ["services", service, "metrics", j, *origins[k]]
            elif name is not None and name in defaults_by_name and isinstance(m, dict):
                metrics.append({**defaults_by_name[name], **m})  # reported as defined twice
                origins.append(["services", service, "metrics", j])
            else:
                metrics.append(copy.deepcopy(m))
                origins.append(["services", service, "metrics", j])
    elif own_metrics is not None:
        metrics = own_metrics  # let validation report the wrong type
        origins = []
    merged["metrics"] = metrics
    return merged, origins


_HINTS = {
    "extra_forbidden": "remove it, or check its spelling",
    "missing": "add this field",
    "int_parsing": "use a whole number",
    "float_parsing": "use a number",
    "bool_parsing": "use true or false",
    "enum": "use one of the listed values",
    "literal_error": "use one of the listed values",
    "greater_than": "use a larger value",
    "greater_than_equal": "use a larger value",
    "less_than_equal": "use a smaller value",
    "list_type": "use a YAML list",
    "dict_type": "use a mapping",
}


def _validate(
    data: dict[str, Any], base: list[str], locate: Any, lines: dict[tuple[str | int, ...], int]
) -> list[PolicyProblem]:
    try:
        ServicePolicy.model_validate(data)
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            loc = [part for part in err["loc"] if not (isinstance(part, str) and "[" in part)]
            path = locate(list(loc))
            hint = _HINTS.get(err["type"], "")
            if err["type"] == "extra_forbidden" and loc:
                hint = _did_you_mean(str(loc[-1]), _fields_at(list(loc))) or hint
            message = str(err["msg"]).removeprefix("Value error, ")
            out.append(PolicyProblem(_render_path(path, lines), message, hint))
        return out
    return []


def _fields_at(loc: list[Any]) -> set[str]:
    """The field names of the model that holds the last part of ``loc`` (for "did you mean")."""
    model: type[BaseModel] = ServicePolicy
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        nested = None if field is None else _model_in(field.annotation)
        if nested is None:
            break
        model = nested
    return set(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, through ``X | None``, ``list[X]`` and ``Annotated[X, …]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(word: str, options: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else ""


def _render_path(path: list[str | int], lines: dict[tuple[str | int, ...], int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    for cut in range(len(path), 0, -1):
        line = lines.get(tuple(path[:cut]))
        if line is not None:
            return f"{text} (line {line})"
    return text


def _line_index(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each path in the YAML document to its 1-based line, for error messages."""
    index: dict[tuple[str | int, ...], int] = {}
    root = yaml.compose(text)

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        index[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                walk(value, sub)
                index[sub] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    if root is not None:
        walk(root, ())
    return index


def _dedupe(problems: list[PolicyProblem]) -> list[PolicyProblem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out


def render_template(template: str, *, service: str, version: str, window: str) -> str:
    """Fill the three placeholders. str.format is not usable: PromQL is full of braces."""
    return (
        template.replace("{service}", service)
        .replace("{version}", version)
        .replace("{window}", window)
    )
