"""The CPython the packages ship, built from source inside a Debian 11 root so that it runs on any x86_64
distribution with glibc >= 2.31: Debian 11-13, Ubuntu 22.04/24.04, RHEL/Rocky 9, Amazon Linux 2023.

Why build one: the agent needs Python >= 3.11, and Debian 11, RHEL 9 and Amazon Linux 2023 ship 3.9; the Envoy
wheel already needs glibc >= 2.31 (Debian 11's), so an interpreter linked against Debian 11's glibc adds no
newer floor. Ready-made portable interpreters are downloaded from GitHub, which this project's machines cannot
reach; Debian's archive (a package registry they can reach) carries the upstream source tarballs, which are
pinned here by SHA-256.

What is linked how: OpenSSL (built here) and libffi (Debian 11's) are linked statically (their sonames
differ between the target distributions: libssl.so.1.1/3, libffi.so.7/8); zlib (libz.so.1), liblzma
(liblzma.so.5) and glibc are linked dynamically, being present with the same soname on every target.
Modules the agent never imports and whose libraries differ between targets (bz2, sqlite3, readline, curses,
dbm, tkinter, uuid) are not built. The result is cached under the CI cache directory, keyed by the sources
and the build recipe.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import rootfs

PREFIX = "/opt/kuma-dp"


@dataclass(frozen=True)
class Source:
    name: str
    version: str
    pool_path: str
    sha256: str
    top_dir: str
    licence: str  # the licence file inside the tarball

    @property
    def filename(self) -> str:
        return self.pool_path.rsplit("/", 1)[1]


PYTHON = Source(
    "cpython",
    "3.13.15",
    "pool/main/p/python3.13/python3.13_3.13.15.orig.tar.xz",
    "1e66a7945a48390ee4c2a4268a0e4185884059a13c4aab6d148aa208deea4a76",
    "Python-3.13.15",
    "LICENSE",
)
OPENSSL = Source(
    "openssl",
    "3.5.7",
    "pool/main/o/openssl/openssl_3.5.7.orig.tar.gz",
    "a8c0d28a529ca480f9f36cf5792e2cd21984552a3c8e4aa11a24aa31aeac98e8",
    "openssl-3.5.7",
    "LICENSE.txt",
)
SOURCES = (PYTHON, OPENSSL)
#: libffi comes from Debian 11 itself: libffi-dev ships a position-independent static library (libffi_pic.a).
LIBFFI_PACKAGE = "libffi7"
#: The Debian 11 root the build runs in: a compiler, perl for OpenSSL's Configure, zlib and liblzma headers.
BUILD_SUITE = "bullseye"
BUILD_PACKAGES = (
    "build-essential",
    "perl",
    "zlib1g-dev",
    "liblzma-dev",
    "libffi-dev",
    "ca-certificates",
    "xz-utils",
)

# Runs inside the build root with /build bound to a scratch directory holding the three tarballs.
BUILD_SCRIPT = r"""
set -eu
export SOURCE_DATE_EPOCH MAKEFLAGS=-j$(nproc)
cd /build
tar xf {openssl_file}
cd {openssl_dir}
./Configure linux-x86_64 no-shared no-tests no-docs no-apps -fPIC --prefix=/build/deps --libdir=lib \
    --openssldir=/etc/ssl >/build/openssl.log 2>&1
make build_sw >>/build/openssl.log 2>&1 && make install_sw >>/build/openssl.log 2>&1
# CPython links `-l:libcrypto.a` before nothing: make that name a linker script that brings libpthread and
# libdl (where glibc 2.31 keeps dlopen) after the archive, as a static libcrypto needs.
mv /build/deps/lib/libcrypto.a /build/deps/lib/libcrypto_real.a
echo 'INPUT(/build/deps/lib/libcrypto_real.a -lpthread -ldl)' >/build/deps/lib/libcrypto.a
cd /build
tar xf {python_file}
cd {python_dir}
# PY_UNSUPPORTED_OPENSSL_BUILD=static: CPython's own switch for linking a position-independent static
# OpenSSL into _ssl and _hashlib; LIBS: the static libcrypto needs libdl and libpthread (glibc 2.31 keeps
# dlopen there), without which configure's link test fails and _ssl is silently left out.
PY_UNSUPPORTED_OPENSSL_BUILD=static LIBS='-ldl -lpthread' \
./configure --prefix={prefix} --with-openssl=/build/deps --with-openssl-rpath=no --without-ensurepip \
    --disable-test-modules --with-lto=no \
    LIBFFI_CFLAGS= LIBFFI_LIBS='-l:libffi_pic.a' >/build/python.log 2>&1
make >>/build/python.log 2>&1
grep -i "openssl" config.log | grep -i "checking\|result" | tail -8 >>/build/python.log 2>&1 || true
./python -c 'import _ssl, _hashlib, _ctypes, zlib, _lzma' >>/build/python.log 2>&1
make install DESTDIR=/build/dest >>/build/python.log 2>&1
"""

#: What an installed CPython has that a service never runs: development files, GUI and REPL tools, tests.
DROP = (
    "include",
    "share",
    "lib/pkgconfig",
    "bin/idle3",
    "bin/idle3.13",
    "bin/pydoc3",
    "bin/pydoc3.13",
    "bin/python3-config",
    "bin/python3.13-config",
    "lib/python3.13/idlelib",
    "lib/python3.13/tkinter",
    "lib/python3.13/turtledemo",
    "lib/python3.13/turtle.py",
    "lib/python3.13/ensurepip",
    "lib/python3.13/config-3.13-x86_64-linux-gnu",
    "lib/python3.13/lib2to3",
    "lib/python3.13/pydoc_data",
    "lib/libpython3.13.a",
)


def cache_key() -> str:
    """What decides the result: the sources, the build root's packages, the build script and what is dropped
    (not this file's prose, so editing a comment does not cost a rebuild)."""
    parts = [*(src.sha256 for src in SOURCES), BUILD_SUITE, *BUILD_PACKAGES, BUILD_SCRIPT, *DROP, PREFIX]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def fetch(src: Source, dest_dir: Path) -> Path:
    """The source tarball from Debian's archive (cached), checked against its pinned SHA-256."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / src.filename
    if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != src.sha256:
        url = f"{rootfs.MIRROR}/{src.pool_path}"
        tmp = path.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=300) as resp, tmp.open("wb") as out:
            shutil.copyfileobj(resp, out)
        got = hashlib.sha256(tmp.read_bytes()).hexdigest()
        if got != src.sha256:
            tmp.unlink()
            raise rootfs.RootfsError(f"{url}: SHA-256 {got}, expected {src.sha256}: not using it")
        tmp.rename(path)
    return path


def ensure_interpreter(source_date_epoch: str = "0") -> Path:
    """A directory holding `tree/` (the interpreter laid out for /opt/kuma-dp) and `licenses/<component>`;
    built on first use (~10 minutes on 2 cores), then reused."""
    out = rootfs.cache_dir() / "python" / cache_key()
    if (out / "tree" / "bin" / "python3").exists():
        return out
    src_dir = rootfs.cache_dir() / "src"
    tarballs = {s.name: fetch(s, src_dir) for s in SOURCES}
    root = rootfs.ensure_rootfs(BUILD_SUITE, BUILD_PACKAGES)
    work = Path(tempfile.mkdtemp(prefix="kuma-dp-python-", dir=out.parent.parent))
    try:
        for path in tarballs.values():
            shutil.copy2(path, work / path.name)
        script = BUILD_SCRIPT.format(
            prefix=PREFIX,
            python_file=PYTHON.filename,
            python_dir=PYTHON.top_dir,
            openssl_file=OPENSSL.filename,
            openssl_dir=OPENSSL.top_dir,
        )
        proc = rootfs.in_root(
            root,
            ["sh", "-c", script],
            env={"SOURCE_DATE_EPOCH": source_date_epoch},
            binds=[(work, "/build")],
            check=False,
            timeout=3600,
        )
        if proc.returncode != 0:
            kept = out.parent / "failed-logs"
            kept.mkdir(parents=True, exist_ok=True)
            for log in work.glob("*.log"):
                shutil.copy2(log, kept / log.name)
            for log in work.glob("Python-*/config.log"):
                shutil.copy2(log, kept / "config.log")
            logs = "".join(p.read_text(errors="replace")[-3000:] for p in sorted(work.glob("*.log")))
            raise rootfs.RootfsError(
                f"building CPython in {BUILD_SUITE} failed:\n{proc.stderr[-2000:]}\n{logs}"
            )
        tree = work / "dest" / PREFIX.lstrip("/")
        for rel in DROP:
            target = tree / rel
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        for cache in list(tree.rglob("__pycache__")):
            shutil.rmtree(cache)
        strip(tree)
        check_portable(tree)
        licenses = work / "licenses"
        licenses.mkdir()
        for src in SOURCES:
            top = work / src.top_dir
            if not top.exists():
                with tarfile.open(tarballs[src.name]) as tar:
                    tar.extractall(work, filter="data")
            shutil.copy2(top / src.licence, licenses / src.name)
        shutil.copy2(root / "usr/share/doc" / LIBFFI_PACKAGE / "copyright", licenses / "libffi")
        version = rootfs.in_root(root, ["dpkg-query", "-W", "-f=${Version}", LIBFFI_PACKAGE]).stdout
        (licenses / "libffi.version").write_text(version.strip())
        staged = work / "out"
        staged.mkdir()
        (work / "dest" / PREFIX.lstrip("/")).rename(staged / "tree")
        licenses.rename(staged / "licenses")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        staged.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def strip(tree: Path) -> None:
    """Debug symbols are a third of the interpreter and no one debugs a production agent with them."""
    elves = [
        p for p in tree.rglob("*") if p.is_file() and not p.is_symlink() and p.read_bytes()[:4] == b"\x7fELF"
    ]
    if elves:
        subprocess.run(["strip", "--strip-unneeded", *map(str, elves)], check=True, capture_output=True)


def check_portable(tree: Path) -> None:
    """Every ELF file may need only libraries with the same soname on all the target distributions."""
    allowed = {
        "libc.so.6",
        "libm.so.6",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "libutil.so.1",
        "ld-linux-x86-64.so.2",
        "libz.so.1",
        "liblzma.so.5",
    }
    for path in tree.rglob("*"):
        if not path.is_file() or path.is_symlink() or path.read_bytes()[:4] != b"\x7fELF":
            continue
        out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
        needed = {line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line}
        if needed - allowed:
            raise rootfs.RootfsError(
                f"{path.relative_to(tree)} needs {sorted(needed - allowed)}: not portable"
            )


if __name__ == "__main__":
    print(ensure_interpreter(os.environ.get("SOURCE_DATE_EPOCH", "0")))
