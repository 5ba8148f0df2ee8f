"""A service's policy in words, step by step, for `check-config`: what rolls a release back,
where, and after how long; what each step holds, how often it is judged, who must approve.

"rolls back when error_rate > 10% for 5 minutes at 10%", "at 25%: holds 30m, judged every 10m,
approval required", "at 50%: error_rate must not rise more than 5% over its value at the end of
25%"; then the bake, the post-release watch, who is paged and where a ticket is filed.

Secrets are named by the environment variable that holds them, never shown.
"""

from __future__ import annotations

from bot.judging.thresholds import fmt
from bot.redact import redact, redact_url
from bot.release.durations import format_duration
from bot.release.policy import (
    Direction,
    GitHubTickets,
    Hook,
    Metric,
    OpsgeniePaging,
    PagerDutyPaging,
    PagingSettings,
    Risk,
    ServicePolicy,
    Strategy,
    TicketSettings,
    WatchSettings,
    WebhookHook,
    WebhookTickets,
)

_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def duration_words(seconds: float) -> str:
    """'5 minutes', '1 hour 30 minutes', '45 seconds' (two units at most)."""
    whole = round(seconds)
    if whole < 1:
        return format_duration(seconds)
    parts = []
    for name, size in _UNITS:
        if whole >= size:
            n, whole = divmod(whole, size)
            parts.append(f"{n} {name}{'s' if n != 1 else ''}")
    return " ".join(parts[:2])


def span_words(seconds: float) -> str:
    """A bake or watch window as release plans say it: whole hours up to two days in hours
    ("24 hours", "48 hours", not "1 day"), anything else as duration_words does ("14 days")."""
    hours, rest = divmod(round(seconds), 3600)
    if rest == 0 and 0 < hours <= 48:
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return duration_words(seconds)


def value_words(metric: Metric, value: float) -> str:
    """A limit as people say it: a ratio metric in percent, others in their unit."""
    if metric.unit in ("ratio", "%") or (metric.unit == "" and metric.name.endswith("_rate")):
        shown = value * 100 if metric.unit != "%" else value
        return f"{shown:.4g}%"
    return fmt(value, metric.unit)


CONTROL = "the control"
BASELINE = "the pre-release baseline"


def explain_service(sp: ServicePolicy) -> list[str]:
    """One line per rule and per step that differs, in ladder order."""
    weights = [0, 100] if sp.strategy is Strategy.BLUE_GREEN else sp.weights
    lines = ["approval required before every step (risk: high)"] if sp.risk is Risk.HIGH else []
    for m in sp.metrics:
        elsewhere = any(o.name == m.name for s in sp.steps for o in s.metrics)
        lines += _limit_lines(m, "at every other step" if elsewhere else "at every step")
        if m.trend is not None and not elsewhere:
            lines.append(f"at every step: {_trend(m)}")
    for i, weight in enumerate(weights):
        at = f"at {weight}%"
        settings = _step_settings(sp, weight, first=i == 0)
        if settings:
            lines.append(f"{at}: {settings}")
        step = sp.step_at(weight)
        overridden = {m.name for m in step.metrics} if step is not None else set()
        for m in sp.metrics_at(weight):
            if m.name in overridden:
                # At 100% no user is left on the stable version: the canary is compared with
                # the pre-release baseline instead of a control.
                against = BASELINE if weight == 100 else CONTROL
                lines += [f"{at}: {line}" for line in _limit_lines(m, at, against)]
            if m.vs_previous_step is not None and i > 0:
                lines.append(f"{at}: {_vs_previous(m, weights[i - 1])}")
            if m.trend is not None and m.name in overridden:
                lines.append(f"{at}: {_trend(m)}")
        lines += [f"before {weight}%: {hook_rule(h)}" for h in sp.hooks_before(sp.strategy, weight)]
    return lines + _after_the_ladder(sp)


def _after_the_ladder(sp: ServicePolicy) -> list[str]:
    """The bake, the post-release watch, who a rollback pages and where it files a ticket, and
    the digest."""
    lines = [f"at 100%: {_bake(sp.bake)}", f"after 100%: {_watch(sp.watch)}"]
    lines += [text for text in (_paging(sp.paging), _tickets(sp.tickets)) if text]
    # The digest stays last: it is about the channel, not about one release's course.
    if sp.digest is not None:
        lines.append(
            f"daily digest in {sp.channel} at {sp.digest.at} {sp.digest.timezone}, listing "
            f"releases on steps that hold {duration_words(sp.digest.min_hold)} or more"
        )
    return lines


def _bake(seconds: float) -> str:
    if seconds <= 0:
        return "no bake: the release succeeds at its first round there with every check green"
    return (
        f"bakes for {span_words(seconds)} against the pre-release baseline (still judged: it "
        "can roll back) before the release succeeds"
    )


def _watch(watch: WatchSettings) -> str:
    if watch.window <= 0:
        return "no post-release watch (watch window 0)"
    return (
        f"watched for {span_words(watch.window)} against the pre-release baseline, judged "
        f"every {duration_words(watch.interval)}"
    )


def _paging(paging: PagingSettings) -> str:
    """Who an automatic rollback pages ("" when nobody): keys by their variables' names."""
    services = []
    if paging.pagerduty is not None:
        services.append(_pagerduty(paging.pagerduty))
    if paging.opsgenie is not None:
        services.append(_opsgenie(paging.opsgenie))
    if not services:
        return ""
    end = (
        "resolved when the release ends"
        if paging.resolve_on_end
        else "left open for the on-call to resolve"
    )
    return f"an automatic rollback pages {' and '.join(services)}; {end}"


def _pagerduty(pd: PagerDutyPaging) -> str:
    return f"PagerDuty (routing key from ${pd.routing_key_env}, severity {pd.severity})"


def _opsgenie(og: OpsgeniePaging) -> str:
    parts = [f"API key from ${og.api_key_env}", og.priority]
    if og.responders:
        who = " and ".join(
            f"{r['type']} {r.get('name') or r.get('username') or r.get('id')}"
            for r in og.responders
        )
        parts.append(f"responders {who}")
    return f"Opsgenie ({', '.join(parts)})"


def _tickets(tickets: TicketSettings) -> str:
    """Where an automatic rollback files its ticket ("" when nowhere)."""
    sinks = []
    if tickets.webhook is not None:
        sinks.append(_ticket_webhook(tickets.webhook))
    if tickets.github is not None:
        sinks.append(_ticket_issue(tickets.github))
    if not sinks:
        return ""
    return f"an automatic rollback files a ticket: {' and '.join(sinks)}"


def _ticket_webhook(hook: WebhookTickets) -> str:
    # A ticket URL may carry a token in its query or path (check-config output lands in CI
    # logs): shown without userinfo and query, and through the redactor.
    where = redact(redact_url(hook.url))
    signed = f"signed with the secret in ${hook.secret_env}" if hook.secret_env else "unsigned"
    return f"a webhook POST to {where} ({signed})"


def _ticket_issue(gh: GitHubTickets) -> str:
    labels = f"labels {', '.join(gh.labels)}; " if gh.labels else ""
    default = GitHubTickets.model_fields["api_url"].default
    via = "" if gh.api_url == default else f" through {redact_url(gh.api_url)}"
    return f"a GitHub issue in {gh.repo}{via} ({labels}token from ${gh.token_env})"


def _step_settings(sp: ServicePolicy, weight: int, *, first: bool) -> str:
    step = sp.step_at(weight)
    if step is None:
        return ""
    parts = []
    if step.hold is not None and weight == 100:
        # Entering 100% starts the bake: the step's own hold never counts there.
        parts.append("its `hold` is not used (the time at 100% is the `bake`)")
    elif step.hold is not None:
        parts.append(f"holds {format_duration(step.hold)}")
    if step.interval is not None:
        parts.append(f"judged every {format_duration(step.interval)}")
    if step.approval and sp.risk is not Risk.HIGH:
        parts.append("approval required" + (" before it starts" if first else ""))
    return ", ".join(parts)


def _limit_lines(m: Metric, at: str = "", against: str = CONTROL) -> list[str]:
    """The metric's limits as rollback conditions, with how long and how often they must fail."""
    where = f" {at}" if at else ""
    if m.dry_run:
        return [f"{m.name} is judged and reported only (dry run), never acted on"]
    lasting = f" for {duration_words(m.for_)}" if m.for_ is not None else ""
    conditions = _conditions(m, against)
    lines = [f"rolls back when {c}{lasting}{where}{_counting(m)}" for c in conditions]
    # The warn_* levels: what an approver sees before a go/no-go call, though they decide
    # nothing by themselves.
    if warnings := _warnings(m, against):
        lines.append(f"warns when {' or '.join(warnings)}{where} (shown, never acted on)")
    return lines


def _conditions(m: Metric, against: str) -> list[str]:
    out = _bounds(m, (m.max, m.min, m.max_ratio, m.max_diff), against)
    if m.uses_statistics:
        out.append(
            f"{m.name} differs from {against} by Mann-Whitney at {m.confidence:.0%} confidence"
        )
    return out


def _bounds(
    m: Metric, limits: tuple[float | None, float | None, float | None, float | None], against: str
) -> list[str]:
    """A metric's (max, min, ratio, diff) limits as conditions: the rollback's or the warning's."""
    high, low, ratio, diff = limits
    out = []
    if high is not None:
        out.append(f"{m.name} > {value_words(m, high)}")
    if low is not None:
        out.append(f"{m.name} < {value_words(m, low)}")
    if ratio is not None:
        out.append(f"{m.name} is {_ratio(m.direction, ratio)} {against}'s")
    if diff is not None:
        worse = _worse(m.direction)
        out.append(f"{m.name} is more than {value_words(m, diff)} {worse} {against}'s")
    return out


def _ratio(direction: Direction, ratio: float) -> str:
    return {
        Direction.INCREASE: f"more than {ratio:g}x",
        Direction.DECREASE: f"less than 1/{ratio:g} of",
        Direction.EITHER: f"more than {ratio:g}x away from",
    }[direction]


def _warnings(m: Metric, against: str) -> list[str]:
    return _bounds(m, (m.warn_max, m.warn_min, m.warn_ratio, m.warn_diff), against)


def _counting(m: Metric) -> str:
    """How the failures add up: `for` and the failure limits must both hold."""
    if m.critical:
        first = "at its first failing check" if m.for_ is None else "then at once"
        return f", {first} (critical)"
    row = f"{m.failure_limit} check{'s' if m.failure_limit != 1 else ''} in a row"
    total = f"or {m.total_failure_limit} in the release"
    if m.for_ is not None:
        return f" (and once it has failed {row} {total}: both must hold)"
    return f", after {m.failure_limit} failing {row.split(' ', 1)[1]} {total}"


def _vs_previous(m: Metric, previous: int) -> str:
    rule = m.vs_previous_step
    assert rule is not None
    verb = _verb(m.direction)
    limits = []
    if rule.max_ratio is not None:
        limits.append(f"more than {(rule.max_ratio - 1) * 100:.4g}%")
    if rule.max_increase is not None:
        limits.append(f"more than {value_words(m, rule.max_increase)}")
    return (
        f"{m.name} must not {verb} {' or '.join(limits)} over its value at the end of {previous}%"
    )


def _trend(m: Metric) -> str:
    rule = m.trend
    assert rule is not None
    limit = value_words(m, rule.max_slope_per_hour)
    return (
        f"{m.name} fails when it {_verb(m.direction)}s faster than {limit} per hour over the "
        f"step ({rule.confidence:.0%} confidence, judged from {rule.min_points} rounds on)"
    )


def _verb(direction: Direction) -> str:
    return {Direction.INCREASE: "rise", Direction.DECREASE: "fall", Direction.EITHER: "move"}[
        direction
    ]


def _worse(direction: Direction) -> str:
    return {
        Direction.INCREASE: "above",
        Direction.DECREASE: "below",
        Direction.EITHER: "either way from",
    }[direction]


def _ci_job(webhook: WebhookHook) -> str:
    # A CI trigger URL often carries its token in the query: shown without it.
    where = redact(redact_url(webhook.url))
    said = [f"signed with ${webhook.secret_env}"] if webhook.secret_env else []
    said += [f"token from ${webhook.token_env}"] if webhook.token_env else []
    how = f" ({', '.join(said)})" if said else ""
    if webhook.format == "github":
        started = f"GitHub Actions workflow started by a `{webhook.event_type}` dispatch to {where}"
    else:
        started = f"CI job started by a POST to {where}"
    return f"{started}{how}; passes when the job calls back with `passed`"


def hook_rule(hook: Hook) -> str:
    """A hook as check-config explains it: 'synthetic load on URL, 20/s for 30 seconds
    (timeout 1 minute; on failure: hold)'."""
    if hook.load is not None:
        what = (
            f"synthetic load on {hook.load.url}, {hook.load.rate:g}/s for "
            f"{duration_words(hook.load.seconds)}"
        )
    elif hook.webhook is not None:
        what = _ci_job(hook.webhook)
    else:
        what = f"smoke test {hook.method} {hook.url} (2xx passes)"
    return f"{what} (timeout {duration_words(hook.timeout)}; on failure: {hook.on_failure.value})"
