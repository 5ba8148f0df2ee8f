"""shipwatch core: policy, rollout state machine, Redis store, controller, sources and backends.

This package never imports slack_bolt: Slack and the console are adapters over it.
"""

__version__ = "0.1.0"
