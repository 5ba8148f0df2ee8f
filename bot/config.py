"""Process settings from the environment.

Built once, in ``main()``; nothing else reads os.environ for settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# The policy file read when SHIPWATCH_POLICY is unset; when it does not exist either, the
# embedded demo policy is used (bot.app.resolve_policy).
DEFAULT_POLICY = Path("shipwatch.yaml")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    slack_bot_token: SecretStr | None = Field(default=None, alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr | None = Field(default=None, alias="SLACK_SIGNING_SECRET")
    slack_app_token: SecretStr | None = Field(default=None, alias="SLACK_APP_TOKEN")
    slack_api_url: str = Field(default="https://slack.com/api/", alias="SLACK_API_URL")

    # Unset: an embedded redis-server is started under data_dir (unix socket, AOF on).
    redis_url: str | None = Field(default=None, alias="REDIS_URL")
    # Replicas every release change must reach before it is acted on. Unset: 1 behind Sentinel
    # (a failover then loses no step), 0 for a single Redis.
    redis_min_replicas: int | None = Field(default=None, ge=0, alias="SHIPWATCH_REDIS_MIN_REPLICAS")
    # Unset: the synthetic demo source is used, and says so.
    prometheus_url: str | None = Field(default=None, alias="PROMETHEUS_URL")
    prometheus_timeout: float = Field(default=5.0, alias="SHIPWATCH_PROMETHEUS_TIMEOUT")

    openai_api_key: SecretStr | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    llm_model: str = Field(default="gpt-4o-mini", alias="SHIPWATCH_LLM_MODEL")
    llm_timeout: float = Field(default=20.0, alias="SHIPWATCH_LLM_TIMEOUT")

    policy_path: Path = Field(default=DEFAULT_POLICY, alias="SHIPWATCH_POLICY")
    data_dir: Path = Field(default=Path(".shipwatch"), alias="SHIPWATCH_DATA_DIR")
    api_tokens: SecretStr | None = Field(default=None, alias="SHIPWATCH_API_TOKENS")
    # Where /deploy reads pre-release gate results (bot.engine.gates): a URL template with {service}
    # and {version}, an optional bearer token, and the bound on each request.
    gates_url: str | None = Field(default=None, alias="SHIPWATCH_GATES_URL")
    gates_token: SecretStr | None = Field(default=None, alias="SHIPWATCH_GATES_TOKEN")
    gates_timeout: float = Field(default=5.0, gt=0, alias="SHIPWATCH_GATES_TIMEOUT")
    port: int = Field(default=3000, alias="PORT")
    # The release page (GET /releases/...): the key its signed links are made with, and the
    # address people reach `serve` at. Both are needed for links to be posted; without the key
    # the page answers only to an API token (nothing is derived from the other secrets).
    page_secret: SecretStr | None = Field(default=None, alias="SHIPWATCH_PAGE_SECRET")
    public_url: str | None = Field(default=None, alias="SHIPWATCH_PUBLIC_URL")
    # How fast shipwatch writes to one Slack channel: Slack takes about one message a second
    # per channel, with short bursts; above that it answers 429.
    slack_channel_rate: float = Field(default=1.0, gt=0, alias="SHIPWATCH_SLACK_CHANNEL_RATE")
    slack_channel_burst: int = Field(default=3, ge=1, alias="SHIPWATCH_SLACK_CHANNEL_BURST")

    # Controller tuning: how often it looks for due releases, and how long a lease lives
    # without renewal. A dead process's releases are picked up after at most lease_ttl + tick.
    controller_tick: float = Field(default=1.0, alias="SHIPWATCH_CONTROLLER_TICK")
    lease_ttl: float = Field(default=10.0, alias="SHIPWATCH_LEASE_TTL")
    # How often the post-release watch looks at its watches: a watch judges every few minutes,
    # so this only bounds how soon a newer deploy or the window's end is noticed.
    watch_tick: float = Field(default=5.0, gt=0, alias="SHIPWATCH_WATCH_TICK")
    log_level: str = Field(default="INFO", alias="SHIPWATCH_LOG_LEVEL")
    # Unset: JSON lines for `serve` (read by log collectors), text for the console and demo
    # (whose log is a file next to the data, read by people).
    log_format: Literal["json", "text"] | None = Field(default=None, alias="SHIPWATCH_LOG_FORMAT")
    # How long a graceful shutdown (SIGTERM/SIGINT) waits for work under way: the controller's
    # round, then pending Slack messages. In-flight HTTP requests get at most 5 s more; the
    # whole stays under the 30 s an orchestrator usually grants before it kills.
    shutdown_timeout: float = Field(default=15.0, gt=0, alias="SHIPWATCH_SHUTDOWN_TIMEOUT")

    def secret_values(self) -> list[str]:
        """Every secret this process was given, as text (for bot.redact.remember_secrets): the
        tokens, the signing secret, the API key, and each CI token of SHIPWATCH_API_TOKENS."""
        given = [
            self.slack_bot_token,
            self.slack_signing_secret,
            self.slack_app_token,
            self.openai_api_key,
            self.gates_token,
            self.page_secret,
        ]
        values = [s.get_secret_value() for s in given if s is not None]
        if self.api_tokens is not None:
            # name:token[:services], comma-separated: the second field is the secret.
            for entry in self.api_tokens.get_secret_value().split(","):
                parts = entry.strip().split(":")
                if len(parts) >= 2:
                    values.append(parts[1])
        return values
