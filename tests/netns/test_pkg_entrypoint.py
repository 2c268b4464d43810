"""The kuma-init image's entrypoint script, run in a fresh network namespace the way the container runtime
runs it: Kuma's flags as arguments, root, no container engine needed. The namespace stands in for the pod's.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "packaging" / "docker" / "kuma-init-entrypoint.sh"
KUMA_INIT = Path(sys.executable).parent / "kuma-init"
#: What Kuma's injector passes to the init container (builtin DNS on), plus ipv4 so no IPv6 setup is needed.
KUMA_FLAGS = [
    "--kuma-dp-user", "5678",
    "--redirect-outbound-port", "15001",
    "--redirect-inbound-port", "15006",
    "--exclude-inbound-ports", "22",
    "--redirect-all-dns-traffic",
    "--redirect-dns-port", "15053",
    "--ip-family-mode", "ipv4",
]
_count = itertools.count()

pytestmark = pytest.mark.netns


@pytest.fixture
def netns(require_root: None) -> Iterator[str]:
    for tool in ("ip", "iptables-nft-save"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (./dev installs iproute2 and iptables)")
    name = f"kpk-{os.getpid()}-{next(_count)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def entrypoint(ns: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the script as the image would (`/bin/sh` script as PID 1's command), inside the namespace."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env}
    return subprocess.run(["ip", "netns", "exec", ns, str(ENTRYPOINT), *args], capture_output=True, text=True,
                          env=full_env, check=False, timeout=120)


def nat_rules(ns: str | None) -> str:
    cmd = ["iptables-nft-save", "-t", "nat"]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout


def require_kuma_init() -> None:
    if not KUMA_INIT.exists() or not (REPO / "iptables" / "cli.py").exists():
        pytest.skip(f"kuma-init is not installed at {KUMA_INIT} (./dev setup installs the project)")


def test_pkg_entrypoint_passes_kumas_flags_to_kuma_init(netns: str) -> None:
    require_kuma_init()
    host_before = nat_rules(None).count("KUMA_MESH")
    proc = entrypoint(netns, *KUMA_FLAGS, KUMA_INIT_BIN=str(KUMA_INIT))
    assert proc.returncode == 0, proc.stderr
    rules = nat_rules(netns)
    assert ":KUMA_MESH_INBOUND " in rules and ":KUMA_MESH_OUTBOUND " in rules
    assert "--dport 22 -j RETURN" in rules
    assert "--to-ports 15006" in rules and "--to-ports 15001" in rules and "--to-ports 15053" in rules
    assert "--uid-owner 5678" in rules
    assert nat_rules(None).count("KUMA_MESH") == host_before  # the pod's namespace only


def test_pkg_entrypoint_runs_a_command_for_debugging_with_the_lock_file_set(netns: str) -> None:
    proc = entrypoint(netns, "sh", "-c", 'echo "lock=$XTABLES_LOCKFILE"; ip -o link show lo')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "lock=/tmp/xtables.lock"
    assert "lo:" in lines[1] and "UP" in lines[1]  # the namespace's own loopback, set up by the fixture
    proc = entrypoint(netns, "sh", "-c", 'echo "lock=$XTABLES_LOCKFILE"', XTABLES_LOCKFILE="/run/other.lock")
    assert proc.stdout.strip() == "lock=/run/other.lock"


def test_pkg_entrypoint_fails_clearly_without_kuma_init(netns: str) -> None:
    proc = entrypoint(netns, *KUMA_FLAGS, KUMA_INIT_BIN="/nonexistent/kuma-init")
    assert proc.returncode == 127
    assert proc.stderr.strip() == (
        "kuma-init-entrypoint: /nonexistent/kuma-init is not an executable (set KUMA_INIT_BIN)"
    )
    assert "KUMA_MESH" not in nat_rules(netns)


def test_pkg_entrypoint_propagates_kuma_init_rejecting_flags(netns: str) -> None:
    require_kuma_init()
    proc = entrypoint(netns, "--redirect-dns", "--redirect-all-dns-traffic", KUMA_INIT_BIN=str(KUMA_INIT))
    assert proc.returncode != 0
    assert "--redirect-all-dns-traffic" in proc.stderr
    assert "KUMA_MESH" not in nat_rules(netns)


def image_requirements(dockerfile: Path) -> list[str]:
    """The requirement specs the kuma-init image installs beside the project's wheel (its pip line)."""
    for line in dockerfile.read_text().splitlines():
        if "pip install" in line and '"' in line:
            return re.findall(r'"([^"]+)"', line)
    raise AssertionError(f"{dockerfile.name} has no pip install line with quoted requirements")


def test_pkg_kuma_init_image_python_set_installs_rules(netns: str, tmp_path: Path) -> None:
    """The kuma-init image installs the wheel without its dependencies plus a short list (no Envoy, no grpc).
    Make that same virtualenv here, from the Dockerfile's own list, and have it install the rules: a module
    kuma-init starts importing that the list lacks fails this test instead of the image at a customer's."""
    require_kuma_init()
    if not Path("/usr/bin/python3").exists():
        pytest.skip("the image's venv is made from the distribution's /usr/bin/python3, absent here")
    reqs = image_requirements(REPO / "packaging" / "docker" / "kuma-init.Dockerfile")
    assert {r.split(">")[0].split("=")[0] for r in reqs} == {"click", "pyyaml", "pyroute2"}
    venv = tmp_path / "venv"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    for cmd in (
        [*pip, "wheel", "--no-deps", "-w", str(tmp_path / "wheels"), str(REPO)],
        ["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)],
    ):
        subprocess.run(cmd, check=True, capture_output=True)
    wheel = next((tmp_path / "wheels").glob("*.whl"))
    for args in (["--no-deps", str(wheel)], reqs):
        cmd = [*pip, "--python", str(venv / "bin" / "python"), "install", "--no-compile", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
    proc = entrypoint(netns, *KUMA_FLAGS, KUMA_INIT_BIN=str(venv / "bin" / "kuma-init"))
    assert proc.returncode == 0, proc.stderr
    rules = nat_rules(netns)
    assert ":KUMA_MESH_OUTBOUND " in rules and "--to-ports 15001" in rules
