"""The bot's own metrics, exposed at /metrics (Prometheus text format)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

DECISIONS = Counter(
    "shipwatch_decisions_total",
    "Controller decisions by verdict (hold, advance, pause, rollback, ...).",
    ["verdict"],
    registry=REGISTRY,
)
ROLLBACKS = Counter(
    "shipwatch_rollbacks_total",
    "Releases sent back to stable, by who decided (controller or a person).",
    ["by"],
    registry=REGISTRY,
)
ACTIVE = Gauge(
    "shipwatch_active_releases", "Releases not yet finished, at the last scrape.", registry=REGISTRY
)
CHAT_ERRORS = Counter(
    "shipwatch_chat_errors_total",
    "Chat API calls that failed after their retries, by method.",
    ["method"],
    registry=REGISTRY,
)
# The release stats series themselves (shipwatch_release_*) are served by the collector in
# bot.observe.release_metrics, which computes them from the audit stream.
RELEASE_STATS_FAILURES = Counter(
    "shipwatch_release_stats_refresh_failures_total",
    "Refreshes of the release stats from the audit stream that failed (Redis down, too slow); "
    "the series keep their last values.",
    registry=REGISTRY,
)
RELEASE_STATS_UPDATED = Gauge(
    "shipwatch_release_stats_updated_timestamp_seconds",
    "When the release stats series were last computed from the audit stream.",
    registry=REGISTRY,
)
AUDIT_OLDEST = Gauge(
    "shipwatch_audit_oldest_timestamp_seconds",
    "When the oldest entry still in the (capped) audit stream was written; release stats "
    "cannot look further back.",
    registry=REGISTRY,
)
COMMANDS = Histogram(
    "shipwatch_command_seconds",
    "Time from receiving a chat command to its answer, by command.",
    ["command"],
    registry=REGISTRY,
)
