"""The built .deb's payload, unpacked into a scratch directory: the unit verifies with this host's systemd,
and the bundled interpreter runs the agent from wherever it lies, carrying the agent and nothing of the
development tools. Installing on real distributions is tests/distro/ (marker `distro`, `./dev test-distros`),
which builds the packages this module uses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.distro import pkgs
from tests.distro.pkgs import VERSION

pytestmark = [pytest.mark.integration, pytest.mark.distro]


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    deb = pkgs.built_packages()["1"]["deb"]
    out = tmp_path_factory.mktemp("payload")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True, capture_output=True)
    return out


def run(*cmd: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, env=env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_pkg_unit_verifies_with_systemd(payload: Path) -> None:
    unit = payload / "usr/lib/systemd/system/kuma-dp@.service"
    assert pkgs.unitcheck.unit_problems(unit.read_text()) == []
    if not shutil.which("systemd-analyze"):
        pytest.skip("no systemd-analyze here: the parser check above is the whole check")
    # systemd-analyze checks that ExecStart exists: point the unit at the unpacked payload (the one change).
    units = payload / "verify"
    units.mkdir(exist_ok=True)
    text = unit.read_text()
    assert "/opt/kuma-dp/bin/kuma-dp run" in text
    (units / unit.name).write_text(text.replace("/opt/kuma-dp/", f"{payload}/opt/kuma-dp/"))
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}
    proc = run("systemd-analyze", "verify", "kuma-dp@pkgtest.service", env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "kuma-dp@" not in proc.stderr, proc.stderr


def test_pkg_payload_runs_from_anywhere_and_ships_only_the_agent(payload: Path) -> None:
    python = str(payload / "opt/kuma-dp/bin/python3")
    # -I: neither the current directory (a checkout) nor PYTHON* variables can stand in for the payload.
    assert VERSION in run(python, "-I", "-m", "kuma_dp", "version").stdout
    where = run(
        python, "-I", "-c", "import kuma_dp, ssl; print(kuma_dp.__file__, ssl.OPENSSL_VERSION)"
    ).stdout
    assert where.startswith(str(payload / "opt/kuma-dp/lib/python3.13/site-packages/")), where
    assert "OpenSSL 3." in where
    site = payload / "opt/kuma-dp/lib/python3.13/site-packages"
    assert not (site / "kuma_dp_dev").exists()
    shipped = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert shipped.isdisjoint({"httpx", "psutil", "dnslib", "cryptography", "xds_protos", "pip"}), shipped
    proc = run(python, "-I", "-m", "kuma_dp", "dev-cp", env={"PATH": "/usr/bin:/bin"}, check=False)
    assert proc.returncode == 1
    assert "pip install 'kuma-dp-py[dev]'" in proc.stderr and "Traceback" not in proc.stderr
    # The launchers run isolated and name the packaged interpreter.
    for name in ("kuma-dp", "kuma-init"):
        text = (payload / "opt/kuma-dp/bin" / name).read_text()
        assert text.startswith("#!/bin/sh\n") and "exec /opt/kuma-dp/bin/python3 -I -c" in text
