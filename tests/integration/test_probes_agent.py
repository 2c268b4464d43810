"""`kuma-dp run` with KUMA_APPLICATION_PROBE_PROXY_PORT, against the dev control plane and the real Envoy:
the kubelet's probes, rewritten as the injector rewrites them, pass through the agent's probe proxy to the
application at the Dataplane's address, from 127.0.0.6; a failing application is seen failing."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kuma_dp_dev.harness.ports import free_port
from tests.helpers.agent_proc import Agents, kuma_dp_run, start_dev_cp
from tests.helpers.resources import dataplane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class App:
    """An application with /healthz (200, or 500 once `failing`) and a TCP port; records its peers."""

    def __init__(self) -> None:
        self.failing = False
        self.peers: list[str] = []
        self.user_agents: list[str] = []
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                app.peers.append(self.client_address[0])
                app.user_agents.append(self.headers.get("User-Agent", ""))
                status = 500 if app.failing or self.path != "/healthz" else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app() -> Iterator[App]:
    a = App()
    yield a
    a.close()


def kubelet_probe(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """What the kubelet sends for the rewritten probe `httpGet: {port, path, httpHeaders}`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in {"User-Agent": "kube-probe/1.31", "Accept": "*/*", **(headers or {})}.items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_kuma_dp_run_serves_application_probes(
    short_tmp: Path, envoy_binary: str, agents: Agents, app: App
) -> None:
    _, info = start_dev_cp(agents, short_tmp / "dev-cp.log")
    probe_port = free_port()
    resource = dataplane("probed", "probed", free_port(), service_port=app.port, admin_port=free_port())
    work_dir = short_tmp / "wd"
    work_dir.mkdir()
    args = ["--cp-address", info["url"], "--dataplane", json.dumps(resource), "--binary-path", envoy_binary,
            "--work-dir", str(work_dir), "--drain-time", "1s"]  # fmt: skip
    env = {"KUMA_APPLICATION_PROBE_PROXY_PORT": str(probe_port), "KUMA_DNS_PROXY_PORT": str(free_port())}
    agent = agents.add(kuma_dp_run(args, short_tmp / "kuma-dp.log", env=env)).start()

    # The liveness probe `httpGet: {path: /healthz, port: <app>}` as the injector rewrites it.
    healthz = f"/{app.port}/healthz"

    def healthy() -> bool:
        try:
            return kubelet_probe(probe_port, healthz) == (200, "HEALTHY\n")
        except OSError:
            return False

    agent.wait_for(healthy, 60, "the probe proxy to report the application healthy")
    agent.wait_ready()
    assert set(app.peers) == {"127.0.0.6"}, "probes reach the application from the passthrough address"
    assert set(app.user_agents) == {"kube-probe/1.31"}
    assert "starting Application Probe Proxy server" in agent.output()

    app.failing = True
    assert kubelet_probe(probe_port, healthz) == (500, "UNHEALTHY\n")
    assert kubelet_probe(probe_port, f"/{app.port}/other") == (500, "UNHEALTHY\n")
    app.failing = False
    assert kubelet_probe(probe_port, healthz, {"X-Kuma-Probes-Timeout": "3"}) == (200, "HEALTHY\n")

    # A tcpSocket probe on the application port, and on a port where nothing listens.
    assert kubelet_probe(probe_port, f"/tcp/{app.port}") == (200, "HEALTHY\n")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nothing = closed.getsockname()[1]
    assert kubelet_probe(probe_port, f"/tcp/{nothing}") == (503, "UNHEALTHY\n")

    assert agent.stop_draining() == 0


def test_a_taken_probe_port_stops_kuma_dp_run(short_tmp: Path, envoy_binary: str, agents: Agents) -> None:
    """As Kuma's component manager: the proxy failing to listen ends the run with exit code 1."""
    _, info = start_dev_cp(agents, short_tmp / "dev-cp.log")
    resource = dataplane("taken", "taken", free_port(), service_port=free_port(), admin_port=free_port())
    work_dir = short_tmp / "wd"
    work_dir.mkdir()
    args = ["--cp-address", info["url"], "--dataplane", json.dumps(resource), "--binary-path", envoy_binary,
            "--work-dir", str(work_dir), "--drain-time", "1s"]  # fmt: skip
    with socket.socket(socket.AF_INET6) as taken:
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        taken.bind(("::", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"KUMA_APPLICATION_PROBE_PROXY_PORT": str(port), "KUMA_DNS_PROXY_PORT": str(free_port())}
        agent = agents.add(kuma_dp_run(args, short_tmp / "kuma-dp.log", env=env)).start()
        assert agent.wait(60) == 1
    assert f"unable to listen for the Application Probe Proxy server: listen tcp :{port}:" in agent.output()
