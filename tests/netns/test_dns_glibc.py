"""glibc's resolver (`getent`) inside a network namespace whose resolv.conf points at `kuma-dp dns` on :53.

This is how applications meet the server: nsswitch -> libresolv -> UDP 53, with ndots:5 and a Kubernetes-like
search list, so `backend.mesh` is first tried as `backend.mesh.<search domain>`; those forms are answered
directly, and none of the lookups of a mesh name reaches the upstream (dnsmasq in the same namespace).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kuma_dp_dev.harness.dnsmasq import start_dnsmasq
from kuma_dp_dev.harness.procs import stop

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = {
    "records": [
        {"name": "backend.mesh", "ips": ["240.0.0.1", "::ffff:f000:1"]},
        {"name": "v4only.mesh", "ips": ["240.0.0.2"]},
    ],
    "ttl": 30,
    "extraLabels": {"mesh": "default"},
}


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=check)


@pytest.fixture
def netns(require_root: None) -> Iterator[str]:
    if not shutil.which("ip"):
        pytest.skip("iproute2 not installed")
    name = f"kdns-{secrets.token_hex(3)}"
    run("ip", "netns", "add", name)
    etc = Path("/etc/netns") / name
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        # getaddrinfo(AI_ADDRCONFIG), as `getent ahosts` and most programs call it, skips a family the host
        # has no non-loopback address for: give the namespace one of each, on a veth pair kept inside it.
        run("ip", "-n", name, "link", "add", "kdns-d0", "type", "veth", "peer", "name", "kdns-d1")
        run("ip", "-n", name, "link", "set", "kdns-d1", "up")
        run("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", check=False)
        run("ip", "-n", name, "addr", "add", "10.77.0.1/24", "dev", "kdns-d0")
        run("ip", "-n", name, "addr", "add", "fd77::1/64", "dev", "kdns-d0", "nodad")
        run("ip", "-n", name, "link", "set", "kdns-d0", "up")
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(
            "search ns.svc.cluster.local svc.cluster.local cluster.local\n"
            "nameserver 127.0.0.1\noptions ndots:5 attempts:2 timeout:2\n"
        )
        (etc / "hosts").write_text("127.0.0.1 localhost\n")
        yield name
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        run("ip", "netns", "del", name, check=False)


def test_getent_in_netns_resolves_mesh_and_forwarded_names(netns: str, tmp_path: Path) -> None:
    if not shutil.which("dnsmasq") or not shutil.which("getent"):
        pytest.skip("dnsmasq and getent needed")
    # Port 5300 in the test's own namespace; the log records every query dnsmasq is asked.
    args = ["--address=/example.test/10.9.9.9", "--local-ttl=60", "--log-queries"]
    upstream = start_dnsmasq(tmp_path, *args, port=5300, netns=netns)
    qlog = upstream.log
    records = tmp_path / "records.json"
    records.write_text(json.dumps(PAYLOAD))
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            "-m",
            "kuma_dp",
            "dns",
            "--port",
            "53",
            "--address",
            "127.0.0.1",
            "--records",
            str(records),
            "--upstream",
            "127.0.0.1:5300",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("listening port=53"), server.stderr.read() if server.stderr else ""

        def getent(db: str, name: str) -> str:
            return run("ip", "netns", "exec", netns, "getent", db, name, check=False).stdout

        # IPv4 via getaddrinfo (AF_INET), and the v4-mapped IPv6 form as Kuma serves it.
        assert getent("ahostsv4", "backend.mesh").split()[0] == "240.0.0.1"
        # (glibc drops v4-mapped AAAA data for AF_INET6-only lookups without AI_V4MAPPED; AF_UNSPEC keeps it.)
        both = getent("ahosts", "backend.mesh")
        assert "240.0.0.1       STREAM backend.mesh" in both and "::ffff:240.0.0.1 STREAM" in both
        assert getent("hosts", "v4only.mesh").split()[:2] == ["240.0.0.2", "v4only.mesh"]
        assert "BACKEND.MESH" in getent("hosts", "BACKEND.MESH")
        # Unknown mesh name: NXDOMAIN -> no output, exit code 2.
        assert run("ip", "netns", "exec", netns, "getent", "hosts", "nope.mesh", check=False).returncode == 2
        # Everything else goes upstream.
        assert getent("ahostsv4", "www.example.test").split()[0] == "10.9.9.9"

        log = qlog.read_text()
        assert "www.example.test" in log  # the upstream really was asked for the forwarded name
        assert "backend.mesh" not in log and "v4only.mesh" not in log  # ... and never for mesh names
    finally:
        stop(server)
        upstream.stop()
