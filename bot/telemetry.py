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
COMMANDS = Histogram(
    "shipwatch_command_seconds",
    "Time from receiving a chat command to its answer, by command.",
    ["command"],
    registry=REGISTRY,
)
