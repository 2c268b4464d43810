"""The .deb on real Debian 11, 12 and 13 (minimal debootstrap roots), used as an operator would: `apt install`
the file, `kuma-dp version`, the systemd unit's ExecStart run as the unit runs it until the agent says
READY=1 against a development control plane, `apt install` of a newer build (configuration under /etc kept),
`apt remove` and `apt purge`.

Each root is a scratch copy of a cached debootstrap (packaging/rootfs.py); commands run chrooted in a private
mount namespace. The chroot shares the host's network namespace, so the dev CP and Envoy's admin API are on
the host's loopback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kuma_dp_dev.harness.ports import free_port
from tests.distro import pkgs
from tests.distro.pkgs import VERSION, rootfs
from tests.helpers.agent_proc import AgentProcess, Agents, envoy_server_info, start_dev_cp

pytestmark = pytest.mark.distro


@pytest.fixture(scope="module")
def packages() -> dict[str, dict[str, Path]]:
    return pkgs.built_packages()


class Root:
    """A scratch Debian root with the packages copied into /tmp/pkgs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run(
        self, *argv: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return rootfs.in_root(self.path, argv, check=check, env=env, timeout=600)

    def file(self, inside: str) -> Path:
        return self.path / inside.lstrip("/")

    def uid(self, user: str) -> tuple[int, int]:
        for line in self.file("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
        raise AssertionError(f"no user {user} in the root's /etc/passwd")


@pytest.fixture(params=sorted(rootfs.SUITES), ids=lambda r: f"debian{r}")
def debian(
    request: pytest.FixtureRequest, packages: dict[str, dict[str, Path]], tmp_path: Path
) -> Iterator[Root]:
    suite = rootfs.SUITES[request.param]
    root = Root(rootfs.scratch_copy(rootfs.ensure_rootfs(suite), tmp_path / suite))
    (root.file("/tmp/pkgs")).mkdir(parents=True)
    for release, files in packages.items():
        (root.file(f"/tmp/pkgs/{files['deb'].name}")).write_bytes(files["deb"].read_bytes())
        del release
    try:
        yield root
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(root.path)], check=False)


def notifications_from(
    sock: socket.socket, pid: int, want: bytes, timeout: float, alive: Callable[[], bool] = lambda: True
) -> list[bytes]:
    """sd_notify datagrams until one has `want`, keeping only those systemd would accept with
    NotifyAccess=main (the sender's pid, from SCM_CREDENTIALS, is the main process)."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(want in m for m in got) and alive():
        sock.settimeout(min(1.0, max(0.01, deadline - time.monotonic())))  # wake to see if it died
        try:
            data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            continue
        for level, kind, cred in ancdata:
            if (
                level == socket.SOL_SOCKET
                and kind == socket.SCM_CREDENTIALS
                and struct.unpack("3i", cred[:12])[0] == pid
            ):
                got.append(data)
    return got


def run_unit_until_ready(root: Root, agents: Agents, log_dir: Path) -> None:
    """The installed unit's ExecStart with its environment and a per-dataplane env file, as the kuma-dp user
    (setpriv stands in for User=/Group=), the token in a credentials directory only kuma-dp can read, and a
    NOTIFY_SOCKET as systemd provides for Type=notify. Passes when READY=1 comes from the main pid, Envoy
    serves as kuma-dp with the node id the template names, and SIGTERM stops everything with status 0."""
    uid, gid = root.uid("kuma-dp")
    base_inside = "/tmp/kpk"
    base = root.file(base_inside)
    base.mkdir(mode=0o755)
    work = base / "run" / "kuma-dp" / "pkgtest"  # RuntimeDirectory=kuma-dp/%i, mode 0711, owned by User=
    work.mkdir(parents=True)
    work.chmod(0o711)
    os.chown(work, uid, gid)
    creds = base / "creds"
    creds.mkdir(mode=0o500)
    (creds / "token").write_text(pkgs.fake_jwt("pkgtest") + "\n")
    for path, mode in ((creds / "token", 0o400), (creds, 0o500)):
        os.chown(path, uid, gid)
        path.chmod(mode)
    admin = free_port()
    template = json.dumps(
        {  # JSON is YAML, and fits on one env-file line
            "type": "Dataplane",
            "mesh": "default",
            "name": "pkgtest",
            "networking": {
                "address": "127.0.0.1",
                "admin": {"port": admin},
                "inbound": [{"port": free_port(), "tags": {"kuma.io/service": "web"}}],
            },
        }
    )
    _, cp_info = start_dev_cp(agents, log_dir / "cp.log")
    env_file = {
        "KUMA_CONTROL_PLANE_URL": cp_info["url"],
        "KUMA_DNS_PROXY_PORT": str(free_port()),
        "KUMA_DATAPLANE_RUNTIME_RESOURCE": template,
        "KUMA_READINESS_PORT": str(free_port()),
        "KUMA_DP_RUN_ARGS": "--bootstrap-source local --drain-time 1s --concurrency 1",
    }
    unit = root.file(pkgs.UNIT).read_text()
    assert pkgs.unit_value(unit, "Type") == "notify"
    argv, env = pkgs.unit_command(unit, "pkgtest", f"{base_inside}/run", f"{base_inside}/creds", env_file)
    assert argv[:2] == ["/opt/kuma-dp/bin/kuma-dp", "run"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(str(base / "notify"))
    os.chown(base / "notify", uid, gid)
    env["NOTIFY_SOCKET"] = f"{base_inside}/notify"
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    agent = AgentProcess(
        rootfs.root_command(root.path, [*setpriv, *argv]),
        log_dir / "agent.log",
        env=rootfs.root_env(env),
        inherit_env=False,
        cwd="/",
    )
    agents.add(agent).start()
    proc = agent.proc
    try:
        got = notifications_from(sock, proc.pid, b"READY=1", 90, lambda: proc.poll() is None)
        assert any(b"READY=1" in m for m in got), (got, agent.output())
        info = envoy_server_info(admin)
        assert info and info["node"]["id"] == "default.pkgtest", agent.output()
        envoy_pids = [
            p
            for p in os.listdir("/proc")
            if p.isdigit() and _exe(p).endswith("/envoy/_bin/envoy") and _ppid(p) == proc.pid
        ]
        assert envoy_pids, agent.output()
        assert all(os.stat(f"/proc/{p}").st_uid == uid for p in envoy_pids)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, agent.output()
    finally:
        agents.close()
        sock.close()


def _exe(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _ppid(pid: str) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_deb_lifecycle(
    debian: Root, packages: dict[str, dict[str, Path]], agents: Agents, tmp_path: Path
) -> None:
    first, second = (packages[r]["deb"].name for r in pkgs.RELEASES)
    # Install with apt from the file: its dependencies are all in a minimal Debian (no network needed).
    debian.run("apt-get", "install", "-y", "--no-install-recommends", f"/tmp/pkgs/{first}")
    status = debian.run("dpkg-query", "-W", "-f=${Status} ${Version}", "kuma-dp").stdout
    assert status == f"install ok installed {VERSION}-1"
    uid, _ = debian.uid("kuma-dp")
    assert uid == 5678

    # kuma-dp version, as root and as the service user; the packaged Envoy is the one it reports.
    out = debian.run("kuma-dp", "version").stdout
    assert VERSION in out and "at /opt/kuma-dp/bin/envoy" in out, out
    envoy = debian.run("/opt/kuma-dp/bin/envoy", "--version").stdout
    found = re.search(r"version: [0-9a-f]+/(\d+\.\d+\.\d+)/", envoy)
    assert found and f"Envoy: {found.group(1)} " in out, (envoy, out)
    assert (
        VERSION
        in debian.run(
            "setpriv", "--reuid=5678", "--regid=5678", "--clear-groups", "--", "kuma-dp", "version"
        ).stdout
    )
    # kuma-init (the init container's command) runs from the same package: the rules it would install.
    rules = debian.run("kuma-init", "--dry-run", "--kuma-dp-user", "5678", "--ip-family-mode", "ipv4").stdout
    assert "-A PREROUTING" in rules and "--uid-owner 5678" in rules, rules

    # Byte code was compiled at install (none ships) and dpkg's own record is untouched.
    assert list(debian.file("/opt/kuma-dp/lib/python3.13/__pycache__").glob("os.cpython-313.pyc"))
    assert list(debian.file("/opt/kuma-dp/lib/python3.13/site-packages/kuma_dp/__pycache__").glob("*.pyc"))
    assert debian.run("dpkg", "--verify", "kuma-dp").stdout == ""

    run_unit_until_ready(debian, agents, tmp_path)

    # Upgrade to the newer build: operators' files and edits to the conffile survive.
    example = debian.file("/etc/kuma-dp/example.env")
    example.write_text(example.read_text() + "KUMA_DATAPLANE_MESH=edited\n")
    token = debian.file("/etc/kuma-dp/web.token")
    token.write_text("token-for-web\n")
    token.chmod(0o600)
    debian.file("/etc/kuma-dp/web.env").write_text("KUMA_CONTROL_PLANE_URL=https://127.0.0.1:5678\n")
    debian.run(
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confold",
        f"/tmp/pkgs/{second}",
    )
    assert debian.run("dpkg-query", "-W", "-f=${Version}", "kuma-dp").stdout == f"{VERSION}-2"
    assert "KUMA_DATAPLANE_MESH=edited" in example.read_text()
    assert token.read_text() == "token-for-web\n"
    assert (debian.file("/etc/kuma-dp").stat().st_mode & 0o777) == 0o700
    assert VERSION in debian.run("kuma-dp", "version").stdout

    # Remove: the program goes entirely (no stray byte code keeps /opt/kuma-dp), the configuration stays.
    debian.run("apt-get", "remove", "-y", "kuma-dp")
    assert not debian.file("/opt/kuma-dp").exists() and not debian.file("/usr/bin/kuma-dp").exists()
    assert token.exists() and example.exists()
    # Purge: the configuration goes too.
    debian.run("apt-get", "purge", "-y", "kuma-dp")
    assert not debian.file("/etc/kuma-dp").exists()
    assert (
        debian.run("dpkg-query", "-W", "kuma-dp", check=False).returncode != 0
        or "ok not-installed" in debian.run("dpkg-query", "-W", "-f=${Status}", "kuma-dp", check=False).stdout
    )
