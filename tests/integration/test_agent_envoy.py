"""The agent with the real Envoy: readiness, exit handling, signals and drain as an operator sees them.

Each test runs kuma_dp_dev.harness.static_agent (the same `run_agent` that `kuma-dp run` ends in) on a static
bootstrap: an admin API and one INBOUND HTTP listener answering `hello`, so no control plane is involved.
What is asserted is what a client of the agent observes: HTTP answers of /ready, Envoy's admin API and
listener, process exits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from kuma_dp_dev.harness.ports import free_port
from tests.helpers.agent_proc import STATIC_AGENT, AgentProcess, Agents, gone

pytestmark = pytest.mark.integration


class Agent(AgentProcess):
    """The static-bootstrap agent, with where its Envoy's admin API and `hello` listener are."""

    listener_port: int
    admin_port: int | None
    admin_socket: str | None

    def admin(self) -> httpx.Client:
        if self.admin_socket:
            return httpx.Client(
                transport=httpx.HTTPTransport(uds=self.admin_socket), base_url="http://localhost"
            )
        return httpx.Client(base_url=f"http://127.0.0.1:{self.admin_port}")

    def hello(self) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.listener_port}/", timeout=2)


@pytest.fixture
def start_agent(short_tmp: Path, agents: Agents) -> Iterator[Callable[..., Agent]]:
    def start(
        *,
        uds: bool = False,
        drain: float = 30.0,
        readiness_port: int | None = None,
        extra: tuple[str, ...] = (),
    ) -> Agent:
        n = len(agents.started)
        work = short_tmp / f"w{n}"
        work.mkdir()
        listener_port = free_port()
        admin_port = None if uds else free_port()
        admin_socket = str(work / "kuma-envoy-admin.sock") if uds else None
        bootstrap = work / "bootstrap.yaml"
        args = ["write-bootstrap", str(bootstrap), "--listener-port", str(listener_port)]
        args += ["--admin-socket", admin_socket] if admin_socket else ["--admin-port", str(admin_port)]
        subprocess.run([*STATIC_AGENT, *args], check=True)
        port = free_port() if readiness_port is None else readiness_port
        argv = [*STATIC_AGENT, "run", str(bootstrap), "--readiness-port", str(port)]
        argv += ["--drain-time", str(drain)]
        agent = Agent([*argv, *extra], work / "agent.log", readiness_port=port)
        agent.listener_port, agent.admin_port, agent.admin_socket = listener_port, admin_port, admin_socket
        agents.add(agent).start()
        return agent

    yield start


def test_happy_path_envoy_live_and_ready_200(start_agent) -> None:
    agent = start_agent()
    envoy = agent.envoy()
    resp = agent.wait_ready()
    assert resp.text == "READY"
    assert resp.headers["content-type"] == "text/plain"
    assert resp.headers["x-powered-by"] == "kuma-dp"
    with agent.admin() as admin:
        assert admin.get("/server_info").json()["state"] == "LIVE"
    assert agent.hello().text == "hello"
    cmd = envoy.cmdline()
    assert cmd[1:3] == ["--config-path", str(agent.log.parent / "bootstrap.yaml")]
    assert cmd[cmd.index("--drain-time-s") + 1] == "30"
    assert cmd[cmd.index("--drain-strategy") + 1] == "immediate"
    assert "--disable-hot-restart" in cmd
    # Own process group: a terminal's Ctrl-C reaches the agent only, which drains first.
    assert os.getpgid(envoy.pid) == envoy.pid != os.getpgid(agent.proc.pid)
    assert httpx.get(f"http://127.0.0.1:{agent.readiness_port}/other", timeout=2).status_code == 404


def test_admin_on_unix_socket_proxies_envoy_ready(start_agent) -> None:
    agent = start_agent(uds=True)
    resp = agent.wait_ready()
    assert resp.text == "LIVE\n"  # Envoy's body unchanged, as Kuma's reporter copies it
    assert resp.headers["x-powered-by"] == "kuma-dp"


def test_envoy_killed_agent_exits_non_zero(start_agent) -> None:
    agent = start_agent()
    agent.wait_ready()
    agent.envoy().kill()
    assert agent.proc.wait(20) == 1
    assert "Envoy terminated unexpectedly (killed by signal 9)" in agent.output()


def test_agent_sigkilled_takes_envoy_down(start_agent) -> None:
    agent = start_agent()
    agent.wait_ready()
    envoy = agent.envoy()
    agent.proc.kill()
    agent.proc.wait(5)
    assert gone(envoy, 1.0), f"Envoy pid {envoy.pid} outlived the SIGKILLed agent"


def test_sigterm_drains_in_order_and_second_signal_ends_the_wait(start_agent) -> None:
    agent = start_agent(drain=300)
    agent.wait_ready()
    envoy = agent.envoy()
    agent.proc.send_signal(signal.SIGTERM)
    agent.wait_for(lambda: agent.ready().text == "TERMINATING", 10, "/ready to say TERMINATING")
    assert agent.ready().status_code == 503
    with agent.admin() as admin:
        # /healthcheck/fail reached Envoy: DRAINING, its own /ready fails, listeners close connections.
        agent.wait_for(
            lambda: admin.get("/server_info").json()["state"] == "DRAINING", 10, "Envoy to be DRAINING"
        )
        assert admin.get("/ready").status_code == 503
    hello = agent.hello()
    assert hello.text == "hello" and hello.headers.get("connection") == "close"
    time.sleep(0.5)  # kept: nothing may happen for a while within the 300 s drain time
    assert agent.proc.poll() is None and envoy.is_running(), "stopped before the drain time"
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(20) == 0
    assert gone(envoy, 5)
    out = agent.output()
    order = [
        "received signal=SIGTERM",
        "waiting drain_time=300s",
        "again: ending the drain wait",
        "stopping Envoy",
    ]
    positions = [out.index(marker) for marker in order]
    assert positions == sorted(positions), out


def test_stuck_envoy_is_killed_and_third_signal_exits_at_once(start_agent) -> None:
    agent = start_agent(drain=300)
    agent.wait_ready()
    envoy = agent.envoy()
    envoy.suspend()  # Envoy ignores everything now: the admin call times out, SIGTERM is not acted on.
    agent.proc.send_signal(signal.SIGTERM)
    agent.wait_log("stopping Envoy", 10)
    agent.proc.send_signal(signal.SIGTERM)
    # Two signals sent together may reach the agent as one: the third goes once the second was taken.
    agent.wait_log("received signal=SIGTERM again", 10)
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(3) == 1
    assert gone(envoy, 2)


def test_stuck_envoy_gets_sigkill_after_grace(start_agent) -> None:
    agent = start_agent(drain=300)
    agent.wait_ready()
    envoy = agent.envoy()
    envoy.suspend()
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(30) == 0
    assert "did not stop within 5s; sending SIGKILL" in agent.output()
    assert gone(envoy, 2)


def test_sigusr2_drains_inbound_and_later_sigterm_exits_without_waiting(start_agent) -> None:
    agent = start_agent(drain=300)
    agent.wait_ready()
    assert "connection" not in agent.hello().headers
    agent.proc.send_signal(signal.SIGUSR2)
    agent.wait_for(
        lambda: agent.hello().headers.get("connection") == "close", 10, "the inbound listener to drain"
    )
    # Inbound-only drain with skip_exit: Envoy keeps running and serving.
    assert agent.proc.poll() is None and agent.hello().text == "hello"
    with agent.admin() as admin:
        # Only the inbound listener drains; the server as a whole stays LIVE (no /healthcheck/fail).
        assert admin.get("/server_info").json()["state"] == "LIVE"
        stats = dict(
            line.split(": ", 1)
            for line in admin.get("/stats", params={"filter": "drain_close"}).text.splitlines()
        )
        assert int(stats["http.inbound_hello.downstream_cx_drain_close"]) > 0
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(20) == 0
    assert "already drained" in agent.output()


def test_readiness_port_in_use_is_one_clear_line(start_agent) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = start_agent(readiness_port=port)
        assert agent.proc.wait(30) == 1
    out = agent.output()
    assert f"127.0.0.1:{port}: bind: address already in use" in out
    assert "KUMA_READINESS_PORT" in out
    assert "Traceback" not in out and "starting Envoy" not in out


def test_readiness_port_zero_picks_a_free_port_and_says_which(start_agent) -> None:
    agent = start_agent(readiness_port=0)
    agent.envoy()
    line = next(x for x in agent.output().splitlines() if "picked port=" in x)
    agent.readiness_port = int(line.rsplit("picked port=", 1)[1])
    assert agent.wait_ready().text == "READY"


def test_dns_gate_keeps_not_ready_while_envoy_is_live(start_agent) -> None:
    agent = start_agent(extra=("--dns-gate",))
    agent.envoy()
    with agent.admin() as admin:

        def envoy_live() -> bool:
            try:
                return admin.get("/ready").status_code == 200
            except httpx.TransportError:
                return False

        agent.wait_for(envoy_live, 30, "Envoy's own /ready to answer 200")
    resp = agent.ready()
    assert (resp.status_code, resp.text) == (503, "NOT_READY")
