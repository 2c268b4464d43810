"""The readiness socket on `::` accepts IPv4 even where `net.ipv6.bindv6only=1` (Kuma v2.14.3's
component_test.go "accepts probes on IPv4 loopback (dual-stack)", on a host configured against it).

The sysctl is per network namespace, so the test sets it in a namespace of its own and leaves the host alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.netns

#: In the namespace: bind like the agent, then connect over IPv4 and IPv6 loopback; prints what was accepted.
PROBE = """
import socket
from kuma_dp.readiness import bind_readiness_socket
srv = bind_readiness_socket("::", 0)
srv.setblocking(True)
port = srv.getsockname()[1]
seen = []
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    with socket.socket(family, socket.SOCK_STREAM) as c:
        c.settimeout(2)
        c.connect((host, port))
        conn, peer = srv.accept()
        seen.append(peer[0])
        conn.close()
print(open("/proc/sys/net/ipv6/bindv6only").read().strip(), *seen)
"""


@pytest.fixture
def netns(require_root: None) -> Iterator[str]:
    if not shutil.which("ip"):
        pytest.skip("ip (iproute2) not installed")
    name = f"kdp-rdy-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_ipv4_reaches_the_readiness_socket_on_ipv6_wildcard_with_bindv6only(netns: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv6.bindv6only=1"], check=True)
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "::ffff:127.0.0.1", "::1"]
