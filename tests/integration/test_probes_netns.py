"""Why the probe proxy dials from 127.0.0.6 / ::6, shown by the kernel: in a network namespace with Kuma's
transparent-proxy rules installed (`kuma-dp transparent-proxy install --kuma-dp-user 5678`), a connection
the kuma-dp user opens to the pod's own IP is redirected into Envoy's inbound port, except when it leaves
from the passthrough address. The proxy, run as uid 5678, reaches the application on the pod IP (IPv4 and
IPv6 pods), while a plain connection of the same user is captured. Without `::6` on lo (no installer ran),
an IPv6 pod's probes fail, as in Kuma.

Needs root (network namespaces, iptables); each namespace is named after this process and removed after.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.netns, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
KUMA_DP_UID = 5678
POD_V4 = "10.214.0.1"
POD_V6 = "fd00:214::1"
_ids = itertools.count()

#: Run inside the namespace as the kuma-dp user: an application on the pod IP, the proxy on all addresses,
#: one probe through the proxy (sent to loopback, which the rules leave alone) and one direct connection.
SCRIPT = r"""
import asyncio, json, socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from kuma_dp.probes.proxy import ProbeProxy

pod = sys.argv[1]
family = socket.AF_INET6 if ":" in pod else socket.AF_INET
peers = []

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        peers.append(self.client_address[0])
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass

class Server(ThreadingHTTPServer):
    address_family = family

app = Server((pod, 0), Handler)
threading.Thread(target=app.serve_forever, daemon=True).start()
app_port = app.server_address[1]

def direct():
    try:
        socket.create_connection((pod, app_port), timeout=5).close()
        return "connected"
    except ConnectionRefusedError:
        return "refused"

async def main():
    proxy = ProbeProxy(0, pod, version="test")
    task = asyncio.create_task(proxy.run())
    await proxy.ready.wait()
    loopback = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    reader, writer = await asyncio.open_connection(loopback, proxy.bound_port)
    writer.write(f"GET /{app_port}/healthz HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n".encode())
    answer = (await reader.read()).decode()
    writer.close()
    task.cancel()
    return answer

answer = asyncio.run(main())
print(json.dumps({"status": answer.split(" ")[1], "body": answer.rpartition("\r\n\r\n")[2],
                  "peers": peers, "direct": direct()}))
"""


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=True)


@pytest.fixture
def netns(require_root: None) -> Iterator[str]:
    """A namespace with lo up and a veth pair holding the pod's IPv4 and IPv6 addresses (a non-loopback
    IPv6 address is what makes the installer set up IPv6 too)."""
    n = next(_ids)
    name = f"kdp-probe-{os.getpid()}-{n}"
    a, b = f"kpa{os.getpid() % 100000}{n}", f"kpb{os.getpid() % 100000}{n}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", name, "link", "add", a, "type", "veth", "peer", "name", b)
        for dev in (a, b):
            sh("ip", "-n", name, "link", "set", dev, "up")
        sh("ip", "-n", name, "addr", "add", f"{POD_V4}/32", "dev", a)
        sh("ip", "-n", name, "addr", "add", f"{POD_V6}/128", "dev", a, "nodad")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def install_transparent_proxy(ns: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kuma_dp", "transparent-proxy", "install",
         "--kuma-dp-user", str(KUMA_DP_UID), "--netns", ns],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "families=ipv4,ipv6" in done.stdout + done.stderr


def run_as_kuma_dp(ns: str, pod: str) -> dict[str, object]:
    done = subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}", "-S", str(KUMA_DP_UID), "-G", str(KUMA_DP_UID),
         sys.executable, "-c", SCRIPT, pod],
        capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(("pod", "source"), [(POD_V4, "127.0.0.6"), (POD_V6, "::6")])
def test_probes_pass_the_transparent_proxy_from_the_passthrough_address(
    netns: str, pod: str, source: str
) -> None:
    install_transparent_proxy(netns)
    result = run_as_kuma_dp(netns, pod)
    assert (result["status"], result["body"]) == ("200", "HEALTHY\n")
    assert result["peers"] == [source]
    # The same user connecting from its ordinary address is sent to Envoy's inbound port (nothing there).
    assert result["direct"] == "refused"


def test_ipv6_pod_without_the_passthrough_address_fails_as_in_kuma(netns: str) -> None:
    result = run_as_kuma_dp(netns, POD_V6)
    assert (result["status"], result["body"]) == ("503", "UNHEALTHY\n")
    assert result["peers"] == []
    assert result["direct"] == "connected"  # no rules installed here
