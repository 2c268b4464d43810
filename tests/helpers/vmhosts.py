"""The "VMs" harness for tests/netns/test_vm_*.py: `kuma_dp_dev.demo_netns.Topology` (the same topology
`kuma-dp demo --netns` runs) plus what the tests look at from outside: processes per namespace, Envoy stats,
and a teardown that proves nothing was left behind.

Each host is a `kvm-<id>-<role>` network namespace on a bridge in `kvm-<id>-lan`, with its own
/etc/netns/<ns>/resolv.conf; the CP runs in `kvm-<id>-cp`; rules are installed by root with
`kuma-dp transparent-proxy install --redirect-dns`, then `kuma-dp run --transparent-proxy` runs as uid 5678.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from kuma_dp_dev.demo_netns import PROXY_UID, Host, Topology, wait_until

REPO = Path(__file__).resolve().parents[2]
#: The repo's venv Python comes from /usr/bin/python3, so uid 5678 can run it (a /root/.pyenv one cannot).
PY = str(REPO / ".venv" / "bin" / "python")


def netns_inode(ns: str) -> int:
    return os.stat(f"/run/netns/{ns}").st_ino


def processes_in(ns: str) -> list[psutil.Process]:
    """Every process whose network namespace is `ns` (there is no PID namespace: look at /proc/*/ns/net)."""
    inode = netns_inode(ns)
    found = []
    for proc in psutil.process_iter():
        try:
            if os.stat(f"/proc/{proc.pid}/ns/net").st_ino == inode:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def stat(topo: Topology, host: str, name: str) -> int | None:
    """One Envoy counter/gauge from the host's admin API (None when Envoy does not answer).

    Envoy versions differ in whether ':' in a stat prefix (`inbound:10.0.0.1:80`) stays or becomes '_', so
    names are compared with ':' read as '_'."""
    suffix = name.rsplit(".", 1)[-1]
    out = topo.admin(host, f"/stats?filter=[.]{suffix}$")
    want = name.replace(":", "_")
    for line in out.splitlines():
        key, _, value = line.partition(": ")
        if key.replace(":", "_") == want:
            return int(value)
    return None


def ensure_agent(topo: Topology, role: str) -> Host:
    """The host's app and agent running (a test before may have stopped them)."""
    host = topo.hosts[role]
    if host.service == "backend" and ("app" not in host.procs or host.procs["app"].poll() is not None):
        host.procs.pop("app", None)
        topo.start_app(host, role)
    if "kuma-dp" not in host.procs or host.procs["kuma-dp"].poll() is not None:
        host.procs.pop("kuma-dp", None)
        topo.start_agent(host)
    return host


def wait_endpoints(topo: Topology, want: list[str], timeout: float = 30) -> list[str]:
    """Until web's Envoy holds exactly these backend endpoints (the CP pushed them)."""
    return wait_until(
        lambda: (eps := topo.endpoints("web", "backend")) == sorted(want) and eps,
        timeout,
        f"web's Envoy to hold backend endpoints {want}",
    )


def topology(envoy: str) -> Iterator[Topology]:
    """Body of a module-scoped fixture: CP, web, be1, be2 up; all removed afterwards, even on failure."""
    for tool in ("ip", "setpriv", "curl", "getent", "iptables", "iptables-save"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (iproute2, util-linux, curl, iptables)")
    if not Path(PY).exists():
        pytest.skip(f"{PY} missing: the agent runs as uid {PROXY_UID} and needs a Python it can execute")
    topo = Topology(envoy=envoy, python=PY)
    try:
        topo.up()
        yield topo
    finally:
        namespaces = list(topo.created_ns)
        left = topo.close()
        assert left == [], f"namespaces left behind: {left}"
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not [ns for ns in namespaces if ns in listed.split()]
        assert not [ns for ns in namespaces if Path("/etc/netns", ns).exists()]
