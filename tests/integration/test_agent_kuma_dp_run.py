"""`kuma-dp run` end to end against a stand-in control plane (tests/helpers/fake_cp.py) and the real Envoy:
the operator's view of supervision: /ready, Envoy's command line, signals, Envoy dying, the agent dying."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from kuma_dp_dev.harness.ports import free_port
from tests.conftest import REPO
from tests.helpers.fake_cp import FakeCP, Reply, make_token, minimal_bootstrap_yaml
from tests.integration.test_agent_envoy import gone

pytestmark = pytest.mark.integration


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    work_dir: Path
    log: Path
    readiness_port: int
    admin_port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.readiness_port}/ready", timeout=2)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if self.ready().status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("never ready:\n" + self.output())

    def envoy(self) -> psutil.Process:
        kids = [p for p in psutil.Process(self.proc.pid).children() if p.name() == "envoy"]
        assert len(kids) == 1, self.output()
        return kids[0]


@pytest.fixture
def kuma_dp_run(envoy_binary: str, short_tmp: Path) -> Iterator[Run]:
    admin_port = free_port()
    readiness_port = free_port()
    work_dir = short_tmp / "wd"
    log = short_tmp / "run.log"
    env = {**os.environ, "KUMA_READINESS_PORT": str(readiness_port), "KUMA_DNS_ENABLED": "false"}
    token = make_token({"Name": "dp-1", "Mesh": "default", "Tags": {}})
    with FakeCP([Reply.bootstrap(minimal_bootstrap_yaml(admin_port))]) as cp, log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kuma_dp", "run",
             "--cp-address", cp.url, "--name", "dp-1", "--mesh", "default", "--dataplane-token", token,
             "--binary-path", envoy_binary, "--work-dir", str(work_dir), "--drain-time", "300s",
             "--concurrency", "1"],
            env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        run = Run(proc, work_dir, log, readiness_port, admin_port)
        try:
            yield run
        finally:
            kids = []
            if proc.poll() is None:
                kids = psutil.Process(proc.pid).children(recursive=True)
                proc.kill()
            proc.wait(10)
            for kid in kids:
                if kid.is_running():
                    kid.kill()


def test_run_ready_with_kumas_envoy_command_line_and_sigkill_takes_envoy_down(kuma_dp_run: Run) -> None:
    kuma_dp_run.wait_ready()
    assert kuma_dp_run.ready().text == "READY"
    envoy = kuma_dp_run.envoy()
    cmd = envoy.cmdline()
    assert cmd[1:] == [
        "--config-path", str(kuma_dp_run.work_dir / "bootstrap.yaml"),
        "--drain-time-s", "300", "--drain-strategy", "immediate", "--disable-hot-restart",
        "--log-level", "info", "--concurrency", "1",
    ]  # fmt: skip
    kuma_dp_run.proc.kill()
    kuma_dp_run.proc.wait(5)
    assert gone(envoy, 1.0), "Envoy outlived kuma-dp"


def test_run_sigterm_fails_health_checks_then_second_signal_stops(kuma_dp_run: Run) -> None:
    kuma_dp_run.wait_ready()
    envoy = kuma_dp_run.envoy()
    kuma_dp_run.proc.send_signal(signal.SIGTERM)
    admin = f"http://127.0.0.1:{kuma_dp_run.admin_port}"
    deadline = time.monotonic() + 10
    while httpx.get(f"{admin}/server_info", timeout=2).json()["state"] != "DRAINING":
        assert time.monotonic() < deadline, kuma_dp_run.output()
        time.sleep(0.05)
    resp = kuma_dp_run.ready()
    assert (resp.status_code, resp.text) == (503, "TERMINATING")
    assert kuma_dp_run.proc.poll() is None  # waiting the 300 s drain time
    kuma_dp_run.proc.send_signal(signal.SIGINT)
    assert kuma_dp_run.proc.wait(20) == 0
    assert gone(envoy, 2.0)


def test_run_exits_non_zero_when_envoy_dies(kuma_dp_run: Run) -> None:
    kuma_dp_run.wait_ready()
    kuma_dp_run.envoy().send_signal(signal.SIGSEGV)
    assert kuma_dp_run.proc.wait(20) != 0
    assert "Envoy terminated unexpectedly" in kuma_dp_run.output()
