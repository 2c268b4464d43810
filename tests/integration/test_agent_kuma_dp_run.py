"""`kuma-dp run` end to end against a stand-in control plane (tests/helpers/fake_cp.py) and the real Envoy:
the operator's view of supervision: /ready, Envoy's command line, signals, Envoy dying, the agent dying."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kuma_dp_dev.harness.ports import free_port
from tests.helpers.agent_proc import AgentProcess, envoy_server_info, gone, kuma_dp_run
from tests.helpers.fake_cp import FakeCP, Reply, make_token, minimal_bootstrap_yaml

pytestmark = pytest.mark.integration


@dataclass
class Run:
    agent: AgentProcess
    work_dir: Path
    admin_port: int


@pytest.fixture
def run(envoy_binary: str, short_tmp: Path) -> Iterator[Run]:
    admin_port = free_port()
    work_dir = short_tmp / "wd"
    token = make_token({"Name": "dp-1", "Mesh": "default", "Tags": {}})
    with FakeCP([Reply.bootstrap(minimal_bootstrap_yaml(admin_port))]) as cp:
        args = ["--cp-address", cp.url, "--name", "dp-1", "--mesh", "default", "--dataplane-token", token,
                "--binary-path", envoy_binary, "--work-dir", str(work_dir), "--drain-time", "300s",
                "--concurrency", "1"]  # fmt: skip
        with kuma_dp_run(args, short_tmp / "run.log", env={"KUMA_DNS_ENABLED": "false"}) as agent:
            yield Run(agent, work_dir, admin_port)


def test_run_ready_with_kumas_envoy_command_line_and_sigkill_takes_envoy_down(run: Run) -> None:
    run.agent.wait_ready()
    assert run.agent.ready().text == "READY"
    envoy = run.agent.envoy()
    cmd = envoy.cmdline()
    assert cmd[1:] == [
        "--config-path", str(run.work_dir / "bootstrap.yaml"),
        "--drain-time-s", "300", "--drain-strategy", "immediate", "--disable-hot-restart",
        "--log-level", "info", "--concurrency", "1",
    ]  # fmt: skip
    run.agent.proc.kill()
    run.agent.wait(5)
    assert gone(envoy, 1.0), "Envoy outlived kuma-dp"


def test_run_sigterm_fails_health_checks_then_second_signal_stops(run: Run) -> None:
    run.agent.wait_ready()
    envoy = run.agent.envoy()
    run.agent.signal(signal.SIGTERM)
    run.agent.wait_for(
        lambda: (envoy_server_info(run.admin_port) or {}).get("state") == "DRAINING", 10, "Envoy DRAINING"
    )
    resp = run.agent.ready()
    assert (resp.status_code, resp.text) == (503, "TERMINATING")
    assert run.agent.running  # waiting the 300 s drain time
    run.agent.signal(signal.SIGINT)
    assert run.agent.wait(20) == 0
    assert gone(envoy, 2.0)


def test_run_exits_non_zero_when_envoy_dies(run: Run) -> None:
    run.agent.wait_ready()
    run.agent.envoy().send_signal(signal.SIGSEGV)
    assert run.agent.wait(20) != 0
    assert "Envoy terminated unexpectedly" in run.agent.output()
