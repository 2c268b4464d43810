"""Envoy started before the agent (kuma_dp/launch.py), as `kuma-dp run` does: the agent adopts the running
Envoy; whatever fails between the spawn and the agent's run, Envoy is stopped and reaped, never left behind.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import psutil
import pytest

from kuma_dp.agent import AgentContext, run_agent
from kuma_dp.component import Component
from kuma_dp.config import RunConfig
from kuma_dp.envoy import AdminAddress, http_request
from kuma_dp.launch import Launched, launch_envoy
from kuma_dp_dev.harness.ports import free_port
from kuma_dp_dev.harness.static_agent import agent_config, static_bootstrap
from tests.helpers.agent_proc import kuma_dp_run
from tests.helpers.fake_cp import FakeCP, Reply, make_token, minimal_bootstrap_yaml

pytestmark = pytest.mark.integration


def _launch(work: Path, envoy_binary: str) -> tuple[RunConfig, Path, Launched, int]:
    admin_port = free_port()
    doc = static_bootstrap(admin_port=admin_port)
    bootstrap = work / "bootstrap.yaml"
    bootstrap.write_text(json.dumps(doc))
    cfg = agent_config(work, envoy_binary, readiness_port=free_port(), drain_time=0.5)
    launched = launch_envoy(cfg, bootstrap, doc, envoy_binary=envoy_binary, sidecar_config={})
    return cfg, bootstrap, launched, admin_port


class StopWhenLive(Component):
    """Ends the run (normally) once Envoy's admin API answers LIVE."""

    name = "stop-when-live"

    def __init__(self, admin_port: int) -> None:
        super().__init__()
        self.admin_port = admin_port
        self.live = False

    async def run(self) -> None:
        self.ready.set()
        for _ in range(400):
            try:
                resp = await http_request(AdminAddress(port=self.admin_port), "GET", "/ready")
                if resp.status == 200:
                    self.live = True
                    return
            except Exception:
                pass
            await asyncio.sleep(0.025)


def test_the_agent_adopts_the_envoy_launched_before_it(short_tmp: Path, envoy_binary: str) -> None:
    cfg, bootstrap, launched, admin_port = _launch(short_tmp, envoy_binary)
    pid = launched.envoy.pid
    assert launched.fifo_fd is not None  # the access-log FIFO exists before Envoy could open its path
    stopper = StopWhenLive(admin_port)
    seen: list[AgentContext] = []

    def factory(ctx: AgentContext) -> Component:
        seen.append(ctx)
        return stopper

    code = asyncio.run(run_agent(cfg, bootstrap, extra_components=[factory], launched=launched))
    assert code == 0 and stopper.live
    ctx = seen[0]
    assert ctx.envoy is not None and ctx.envoy.pid == pid  # the very process launched, not a second one
    assert ctx.envoy_spawned_at == launched.spawned_at
    assert launched.envoy.returncode is not None and not psutil.pid_exists(pid)


def test_envoy_is_stopped_when_the_agent_cannot_be_built(short_tmp: Path, envoy_binary: str) -> None:
    cfg, bootstrap, launched, _ = _launch(short_tmp, envoy_binary)
    pid = launched.envoy.pid
    port = launched.plan.readiness_socket.getsockname()[1]

    def broken(ctx: AgentContext) -> Component:
        raise RuntimeError("factory failed")

    with pytest.raises(RuntimeError, match="factory failed"):
        asyncio.run(run_agent(cfg, bootstrap, extra_components=[broken], launched=launched))
    assert launched.envoy.returncode is not None and not psutil.pid_exists(pid)
    with socket.create_server(("127.0.0.1", port)):  # the readiness port was released
        pass


def test_dns_port_taken_under_kuma_dp_run_exits_1_and_leaves_no_envoy(
    envoy_binary: str, short_tmp: Path
) -> None:
    """Envoy now starts beside the DNS server (Kuma's component manager starts them together): a DNS port in
    use still ends the start with exit 1 and one line naming the port, and takes the Envoy it launched."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        dns_port = taken.getsockname()[1]
        token = make_token({"Name": "dp-1", "Mesh": "default", "Tags": {}})
        bootstrap = str(short_tmp / "wd" / "bootstrap.yaml")
        with FakeCP([Reply.bootstrap(minimal_bootstrap_yaml(free_port()))]) as cp:
            args = ["--cp-address", cp.url, "--name", "dp-1", "--mesh", "default", "--dataplane-token", token,
                    "--binary-path", envoy_binary, "--work-dir", str(short_tmp / "wd"), "--concurrency", "1",
                    "--dns-proxy-port", str(dns_port)]  # fmt: skip
            env = {"KUMA_DNS_PROXY_ADDRESS": "127.0.0.1"}
            with kuma_dp_run(args, short_tmp / "run.log", env=env) as agent:
                code = agent.wait(60)
                out = agent.output()
    assert code == 1, out
    assert f"DNS port {dns_port}" in out, out
    assert "starting Envoy" in out  # it was started beside the DNS server, then stopped
    left = [p for p in psutil.process_iter(["cmdline"]) if bootstrap in (p.info["cmdline"] or [])]
    assert left == []


#: Loaded only after Envoy's exec: the event loop, the CLI library, the metrics library, the DNS server (its
#: early responder, kuma_dns.early, may run before), TLS for a plain-HTTP control plane.
LATE_MODULES = ("asyncio", "click", "prometheus_client", "kuma_dp.agent", "kuma_dns.server", "ssl", "grpc")

_REPORT_AT_SPAWN = """
import os, sys
import kuma_dp.launch as launch
def report(*args, **kwargs):
    late = {late!r}
    print("LOADED " + " ".join(sorted(m for m in late if m in sys.modules)), file=sys.stderr, flush=True)
    os._exit(0)
launch.launch_envoy = report
sys.argv = ["kuma-dp", "run", *sys.argv[1:]]
from kuma_dp.cli import main
main()
"""


def test_nothing_heavy_is_imported_before_envoys_exec(envoy_binary: str, short_tmp: Path) -> None:
    """The start-up's critical path (bench/startup.py) stays lean: when Envoy is exec'd, none of the
    modules the rest of the agent needs has been imported yet."""
    import os
    import subprocess
    import sys

    token = make_token({"Name": "dp-1", "Mesh": "default", "Tags": {}})
    with FakeCP([Reply.bootstrap(minimal_bootstrap_yaml(free_port()))]) as cp:
        args = ["--cp-address", cp.url, "--name", "dp-1", "--mesh", "default", "--dataplane-token", token,
                "--binary-path", envoy_binary, "--work-dir", str(short_tmp / "wd")]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUMA_")}
        env["KUMA_READINESS_PORT"] = str(free_port())
        code = _REPORT_AT_SPAWN.format(late=LATE_MODULES)
        proc = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60
        )
    line = next((ln for ln in proc.stderr.splitlines() if ln.startswith("LOADED")), None)
    assert line is not None, proc.stderr[-2000:]
    assert line == "LOADED ", line
