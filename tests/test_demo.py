"""The README's first command, as CI runs it: the demo plays both releases and exits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import require_binary


@pytest.mark.redis
def test_demo_plays_a_healthy_and_a_faulty_release(tmp_path: Path) -> None:
    require_binary("redis-server")  # the demo starts its own, embedded
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "PROMETHEUS_", "OPENAI_", "SLACK_", "SHIPWATCH_"))}
    env["SHIPWATCH_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-m", "bot", "demo", "--no-interactive"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert "metrics: synthetic (demo data)" in out  # it says which source it uses
    assert "checkout `v2` is live for everyone" in out
    assert "Rolling back checkout `v3` to `v2`" in out
    assert "rolled back: traffic is back on v2 (0% canary)" in out
    assert "Why checkout `v3` was rolled back" in out
    assert "template text: no LLM configured" in out
    # History at the end: one succeeded, one rolled back.
    history = out[out.rindex("you> history checkout"):]
    assert "(v3) by you: rolled_back" in history and "(v2) by you: succeeded" in history
