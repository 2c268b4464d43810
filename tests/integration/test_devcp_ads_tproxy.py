"""Transparent-proxy mode for real, in a network namespace (root): the app dials `backend`'s VIP on port 80,
iptables redirects it to Envoy's 15001 passthrough listener, `useOriginalDst` hands it to the VIP:80 outbound
listener (bindToPort: false), and the request reaches backend through both Envoys. The /dns payload of a
transparent proxy lists only the VIPs it has outbounds for (not its own service), as kuma-cp does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuma_dp_dev.harness.localmesh import ads_bootstrap
from kuma_dp_dev.harness.poll import wait_until
from kuma_dp_dev.harness.procs import stop

pytestmark = [pytest.mark.integration, pytest.mark.netns, pytest.mark.timeout(120)]

CLIENT = """
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
    print(json.dumps({"status": r.status, "headers": dict(r.headers.items()), "body": json.loads(r.read())}))
"""
STATS = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())"
DNS_CLIENT = """
import http.client, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sys.argv[1])
c = C("localhost"); c.request("GET", "/dns"); r = c.getresponse(); print(r.read().decode())
"""


class Netns:
    def __init__(self, tmp: Path) -> None:
        self.name = f"kdpD{uuid.uuid4().hex[:8]}"
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.ip("link", "set", "lo", "up")
        # The VIP range needs a route for connect() to get as far as iptables; `src` gives the client a real
        # source address (with lo's scope-host 127.0.0.1 alone the kernel would pick 0.0.0.0).
        self.ip("route", "add", "240.0.0.0/4", "dev", "lo", "src", "127.0.0.1")

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True)

    def exec(self, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, **kw)

    def spawn(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv], stdout=log, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc, grace=10)
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def _envoy(ns: Netns, envoy: str, resource: dict[str, Any], cp_port: int, admin: int) -> Path:
    workdir = ns.tmp / resource["name"]
    workdir.mkdir()
    config = ads_bootstrap(resource=resource, ads_port=cp_port, admin_port=admin, workdir=workdir)
    path = workdir / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(config))
    ns.spawn(resource["name"], envoy, "-c", str(path), "--disable-hot-restart", "--concurrency", "1")
    return workdir


def test_transparent_proxy_through_vip(require_root: None, short_tmp: Path, envoy_binary: str) -> None:
    ns = Netns(short_tmp)
    try:
        ns.exec("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "240.0.0.0/4",
                "-j", "REDIRECT", "--to-ports", "15001", check=True)  # fmt: skip
        ready = short_tmp / "cp.json"
        ns.spawn(
            "dev-cp", sys.executable, "-m", "kuma_dp", "dev-cp", "--port", "0", "--ready-file", str(ready)
        )
        cp_port = wait_until(lambda: ready.exists() and json.loads(ready.read_text()), 20, what="dev-cp")[
            "port"
        ]
        ns.spawn(
            "app", sys.executable, "-m", "kuma_dp_dev.demoapp", "--service", "backend", "--port", "18080"
        )
        backend = {
            "type": "Dataplane", "mesh": "default", "name": "backend-1",
            "networking": {"address": "127.0.0.1", "inbound": [
                {"port": 18081, "servicePort": 18080,
                 "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}}]},
        }  # fmt: skip
        web = {
            "type": "Dataplane", "mesh": "default", "name": "web-1",
            "networking": {
                "address": "127.0.0.1",
                "inbound": [{"port": 18091, "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}}],
                "transparentProxying": {"redirectPortOutbound": 15001, "redirectPortInbound": 15006,
                                        "ipFamilyMode": "IPv4"},
            },
        }  # fmt: skip
        _envoy(ns, envoy_binary, backend, cp_port, 19901)
        web_dir = _envoy(ns, envoy_binary, web, cp_port, 19902)
        sock = str(web_dir / "kuma-mesh-metric-config.sock")

        def dns() -> dict[str, Any] | None:
            out = ns.exec(sys.executable, "-c", DNS_CLIENT, sock, timeout=10)
            if out.returncode != 0 or not out.stdout.strip():
                return None
            payload = json.loads(out.stdout)
            return payload if payload["records"] else None

        payload = wait_until(dns, 30, what="web's /dns payload")
        # Only what web has an outbound for: backend, not web itself.
        assert [r["name"] for r in payload["records"]] == ["backend.mesh"]
        vip = payload["records"][0]["ips"][0]
        assert vip.startswith("240.0.0.")

        def call() -> dict[str, Any] | None:
            out = ns.exec(sys.executable, "-c", CLIENT, f"http://{vip}:80/", timeout=10)
            return json.loads(out.stdout) if out.returncode == 0 else None

        resp = wait_until(call, 30, what=f"GET http://{vip}:80/ through the transparent proxy")
        assert resp["status"] == 200 and resp["body"]["service"] == "backend"
        assert resp["headers"]["server"] == "envoy" and "x-envoy-upstream-service-time" in resp["headers"]
        # The connection went 15001 -> outbound:<vip>:80 (stats of web's Envoy say so).
        stats = ns.exec(sys.executable, "-c", STATS, "http://127.0.0.1:19902/stats", timeout=10).stdout
        assert f"listener.{vip}_80.downstream_cx_total: " in stats  # handed off by the 15001 listener
        assert "http.backend.downstream_rq_2xx: " in stats
    finally:
        ns.close()
    assert os.path.exists(f"/run/netns/{ns.name}") is False
