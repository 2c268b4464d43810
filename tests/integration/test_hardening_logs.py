"""Adversarial: the dataplane token never reaches a log, Envoy's own debug output included.

At `--log-level debug` kuma-dp runs Envoy at debug too, and Envoy's router prints the headers of every
request its gRPC client sends: the ADS stream's `authorization` initial metadata is the dataplane token. The
agent must filter Envoy's output (kuma_dp.envoy._process), as it filters its own log lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kuma_dp_dev.harness.ports import free_port
from tests.helpers.agent_proc import Agents, kuma_dp_run, start_dev_cp
from tests.helpers.fake_cp import make_token
from tests.helpers.resources import dataplane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_debug_level_never_prints_the_token(short_tmp: Path, envoy_binary: str, agents: Agents) -> None:
    token = make_token({"Name": "dbg", "Mesh": "default", "Tags": {}, "pad": "t" * 48})
    token_file = short_tmp / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    cp, info = start_dev_cp(agents, short_tmp / "dev-cp.log", "--auth-token-file", str(token_file))
    workdir = short_tmp / "wd"
    workdir.mkdir()
    resource = dataplane("dbg", "b", free_port(), service_port=free_port(), admin_port=free_port())
    args = ["--cp-address", info["url"], "--dataplane", json.dumps(resource), "--binary-path", envoy_binary,
            "--work-dir", str(workdir), "--drain-time", "1s", "--dataplane-token", token,
            "--log-level", "debug"]  # fmt: skip
    env = {"KUMA_DNS_PROXY_PORT": str(free_port())}
    agent = agents.add(kuma_dp_run(args, short_tmp / "agent.log", env=env)).start()
    cp.wait_log("dataplane registered node=default.dbg", 60)
    # Envoy's router has printed the ADS request headers by now (the stream is open); wait for that line so
    # the test proves the header dump happened and was filtered, not that Envoy stayed quiet.
    agent.wait_for(lambda: "'authorization'" in agent.output(), 30, "Envoy's debug dump of the ADS headers")
    agent.stop(5)
    out = agent.output()
    assert token not in out
    assert all(part not in out for part in token.split(".")[:2])
    assert "'authorization', '[REDACTED]'" in out
