"""A whole `kuma-dp run` (real CLI, real Envoy, a stand-in CP) logging JSON at debug: every line parses and
the dataplane token appears nowhere, even when the control plane echoes it in an error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.helpers.fake_cp import FakeCP, Reply, make_token, minimal_bootstrap_yaml

pytestmark = pytest.mark.integration


def _wait_for(predicate, deadline: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_run_json_logs_parse_and_never_contain_the_token(envoy_binary: str, short_tmp: Path) -> None:
    token = make_token({"Name": "dp-1", "Mesh": "default", "Tags": {}, "secret": "x" * 40})
    log_file = short_tmp / "logs" / "kuma-dp.log"
    admin_port = free_port()
    replies = [
        # A CP that echoes the credential in its error body: the retry log line must not carry it.
        Reply.status_only(500, f"rejected Authorization: Bearer {token}"),
        Reply.bootstrap(minimal_bootstrap_yaml(admin_port)),
    ]
    env = {
        **os.environ,
        "KUMA_READINESS_PORT": str(free_port()),
        "KUMA_CONTROL_PLANE_RETRY_BACKOFF": "100ms",
        "KUMA_DNS_ENABLED": "false",
    }
    with FakeCP(replies) as cp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kuma_dp", "run",
             "--cp-address", cp.url, "--name", "dp-1", "--mesh", "default",
             "--dataplane-token", token, "--binary-path", envoy_binary, "--work-dir", str(short_tmp / "wd"),
             "--drain-time", "1s", "--concurrency", "1",
             "--log-level", "debug", "--log-format", "json", "--log-output-path", str(log_file)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            started = _wait_for(
                lambda: (
                    proc.poll() is not None
                    or (log_file.exists() and "all components started" in log_file.read_text())
                ),
                60,
            )
            exited = proc.poll() is not None
            assert started and not exited, (
                f"agent did not start: {proc.stderr.read1(65536) if exited else b''!r}"
            )
            assert len(cp.requests) >= 2  # the failed attempt was retried
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)  # end the drain wait
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out, err = proc.communicate()
    text = log_file.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert len(records) > 5
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    assert any(r["level"] == "debug" for r in records)
    whole = text + out.decode() + err.decode()
    assert token not in whole
    for part in token.split("."):
        assert part not in whole
