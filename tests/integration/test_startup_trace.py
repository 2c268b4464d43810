"""`KUMA_DP_STARTUP_TRACE`: `kuma-dp run` against a stand-in control plane and the real Envoy writes its
start-up timeline (kuma_dp.starttrace), the one bench/startup.py and bench/e2e_mesh.py print; and a path it
cannot write costs one warning, never the start."""

from __future__ import annotations

import json
import re
import stat
import time
from pathlib import Path

import pytest

from kuma_dp_dev.harness.ports import free_port
from tests.helpers.agent_proc import kuma_dp_run
from tests.helpers.fake_cp import FakeCP, Reply, make_token, minimal_bootstrap_yaml

pytestmark = pytest.mark.integration

#: The marks every remote-bootstrap start records, in the order the start-up passes them.
ORDER = [
    "interpreter",
    "imports",
    "settings",
    "envoy_version",
    "config",
    "bootstrap_sent",
    "bootstrap_answered",
    "bootstrap_written",
    "envoy_spawned",  # Envoy first, the other components beside it (kuma_dp.launch)
    "agent_built",
    "envoy_live",
]


def _args(cp_url: str, envoy_binary: str, work_dir: Path) -> list[str]:
    token = make_token({"Name": "dp-1", "Mesh": "default", "Tags": {}})
    return ["--cp-address", cp_url, "--name", "dp-1", "--mesh", "default", "--dataplane-token", token,
            "--binary-path", envoy_binary, "--work-dir", str(work_dir), "--concurrency", "1"]  # fmt: skip


def test_run_writes_the_startup_timeline(envoy_binary: str, short_tmp: Path) -> None:
    trace = short_tmp / "trace.json"
    env = {"KUMA_DNS_ENABLED": "false", "KUMA_DP_STARTUP_TRACE": str(trace)}
    with FakeCP([Reply.bootstrap(minimal_bootstrap_yaml(free_port()))]) as cp:
        args = _args(cp.url, envoy_binary, short_tmp / "wd")
        before = time.monotonic()
        with kuma_dp_run(args, short_tmp / "run.log", env=env) as agent:
            agent.wait_ready()
            # The LIVE mark is the start-up observer's, which may land just after /ready answers.
            data = agent.wait_for(
                lambda: (d := json.loads(trace.read_text())) and "envoy_live" in dict(d["marks"]) and d,
                10,
                "the envoy_live mark",
            )
            after = time.monotonic()
            output = agent.output()
    assert data["clock"] == "monotonic"
    assert data["pid"] == agent.proc.pid
    assert stat.S_IMODE(trace.stat().st_mode) == 0o600
    marks = dict(data["marks"])
    assert [m for m in (name for name, _ in data["marks"]) if m in ORDER] == ORDER
    times = [marks[m] for m in ORDER]
    assert times == sorted(times), "marks out of order"
    # CLOCK_MONOTONIC is shared with this process: the whole timeline lies between exec and now.
    assert before <= times[0] and times[-1] <= after
    # The start-up metric is the same measurement: "envoy is LIVE seconds=S" is LIVE minus spawn.
    logged = float(re.search(r"envoy is LIVE\s+seconds=([0-9.]+)", output).group(1))  # type: ignore[union-attr]
    assert logged == pytest.approx(marks["envoy_live"] - marks["envoy_spawned"], abs=0.0015)


def test_unwritable_trace_path_warns_once_and_the_agent_starts(envoy_binary: str, short_tmp: Path) -> None:
    trace = short_tmp / "missing-dir" / "trace.json"
    env = {"KUMA_DNS_ENABLED": "false", "KUMA_DP_STARTUP_TRACE": str(trace)}
    with FakeCP([Reply.bootstrap(minimal_bootstrap_yaml(free_port()))]) as cp:
        args = _args(cp.url, envoy_binary, short_tmp / "wd")
        with kuma_dp_run(args, short_tmp / "run.log", env=env) as agent:
            assert agent.wait_ready().text == "READY"
            output = agent.output()
    warnings = [line for line in output.splitlines() if "start-up trace" in line]
    assert len(warnings) == 1, output
    assert str(trace) in warnings[0] and "KUMA_DP_STARTUP_TRACE" in warnings[0]
    assert not trace.parent.exists()
