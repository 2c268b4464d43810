"""Kuma's root log flags work before the sub-command as well as after it (Go persistent flags)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def _kuma_dp(*args: str) -> subprocess.CompletedProcess[str]:
    # The CP address is unreachable: a short retry budget keeps `run` from waiting Kuma's 5 minutes.
    env = {**os.environ, "KUMA_CONTROL_PLANE_RETRY_MAX_DURATION": "1s",
           "KUMA_CONTROL_PLANE_RETRY_BACKOFF": "100ms"}  # fmt: skip
    cmd = [sys.executable, "-m", "kuma_dp", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, env=env)


def test_root_log_level_before_the_sub_command_reaches_run() -> None:
    # An unreachable CP and a tiny budget: we only need the start-up log lines.
    out = _kuma_dp("--log-level", "debug", "run", "--cp-address", "http://127.0.0.1:9", "--name", "a",
                   "--mesh", "b", "--dns-enabled=false")  # fmt: skip
    assert "DEBUG" in out.stderr


def test_root_log_level_is_validated_like_the_run_flag() -> None:
    before = _kuma_dp("--log-level", "bogus", "run", "--name", "a", "--mesh", "b")
    after = _kuma_dp("run", "--log-level", "bogus", "--name", "a", "--mesh", "b")
    assert before.returncode == after.returncode != 0
    assert 'unknown log level "bogus"' in before.stderr  # Kuma's ParseLogLevel text
    assert before.stderr.splitlines()[-1] == after.stderr.splitlines()[-1]


def test_flag_after_the_sub_command_wins() -> None:
    out = _kuma_dp("--log-level", "bogus", "run", "--log-level", "info", "--cp-address", "http://127.0.0.1:9",
                   "--name", "a", "--mesh", "b", "--dns-enabled=false")  # fmt: skip
    assert "unknown log level" not in out.stderr
    assert "DEBUG" not in out.stderr
