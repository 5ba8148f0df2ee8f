"""`shipwatch serve` runs real releases on real parts: the demo ones only when told so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

POLICY = """
services:
  checkout:
    metrics:
      - name: error_rate
        query: 'errors{service="{service}",version="{version}"}'
        max: 0.05
"""


def serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "PROMETHEUS_", "OPENAI_", "SLACK_", "SHIPWATCH_"))
    }
    settings = {"SLACK_BOT_TOKEN": "xoxb-0", "SLACK_SIGNING_SECRET": "s", "REDIS_URL": "redis://0"}
    return subprocess.run(
        [sys.executable, "-m", "bot", "serve", *args],
        cwd=tmp_path,
        env=inherited | settings | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_refuses_synthetic_metrics_unless_told_demo(tmp_path: Path) -> None:
    (tmp_path / "shipwatch.yaml").write_text(POLICY)
    done = serve(tmp_path)
    assert done.returncode == 2
    assert "refusing to start: PROMETHEUS_URL is not set" in done.stderr
    assert "shipwatch serve --demo" in done.stderr


def test_serve_refuses_the_embedded_demo_policy_unless_told_demo(tmp_path: Path) -> None:
    done = serve(tmp_path, PROMETHEUS_URL="http://127.0.0.1:9")
    assert done.returncode == 2
    assert "no policy file: shipwatch.yaml does not exist" in done.stderr
    assert "SHIPWATCH_POLICY" in done.stderr


@pytest.mark.parametrize("args", [["--demo"], ["--demo", "--policy", "shipwatch.yaml"]])
def test_with_demo_it_goes_on_to_start(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "shipwatch.yaml").write_text(POLICY)
    # Past the demo check it tries Redis, which is not there: a different, later refusal.
    done = serve(tmp_path, *args)
    assert "refusing to start" not in done.stderr
    assert done.returncode != 0
