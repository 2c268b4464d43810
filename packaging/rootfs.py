"""Minimal Debian root file systems (debootstrap), cached outside the repository; commands run inside them.

Used twice: `interpreter.py` builds the packaged CPython inside a Debian 11 root (so the interpreter needs no
newer glibc than 2.31, the floor the Envoy wheel already sets), and the distro tests (tests/distro/) install
the .deb into Debian 11, 12 and 13 roots as an operator would.

A root is made once per (suite, extra packages) and kept under the cache directory
(`KUMA_DP_CI_CACHE`, default /var/cache/kuma-dp-ci); callers that change a root work on a copy
(`scratch_copy`). Commands run in a private mount namespace (`unshare --mount`) with /proc, /dev and /sys
mounted, and `chroot`: nothing is mounted in the host's namespace, so nothing is left mounted if a test dies.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
#: Debian suites by release: the distro tests run on each.
SUITES = {"11": "bullseye", "12": "bookworm", "13": "trixie"}
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RootfsError(Exception):
    """A root could not be made or a command in it failed; the message says which and its output's tail."""


def cache_dir() -> Path:
    return Path(os.environ.get("KUMA_DP_CI_CACHE", "/var/cache/kuma-dp-ci"))


def _run(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RootfsError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{tail}")
    return proc.stdout


def ensure_rootfs(suite: str, include: Sequence[str] = ()) -> Path:
    """The cached root for `suite` with `include` installed, made with debootstrap on first use.

    debootstrap is made into a temporary sibling and renamed, so an interrupted run never leaves a half-made
    root that later runs would trust."""
    if not shutil.which("debootstrap"):
        raise RootfsError("debootstrap not found: `apt-get install debootstrap` (./dev test-distros does)")
    extras = hashlib.sha256(",".join(sorted(include)).encode()).hexdigest()[:10]
    key = f"{suite}-{extras}" if include else suite
    root = cache_dir() / "rootfs" / key
    if (root / "etc" / "debian_version").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root.parent))
    try:
        cmd = ["debootstrap", "--variant=minbase"]
        if include:
            cmd.append("--include=" + ",".join(include))
        _run([*cmd, suite, str(tmp), MIRROR], env={"PATH": PATH, "LANG": "C.UTF-8"})
        sources = f"deb {MIRROR} {suite} main\ndeb {MIRROR} {suite}-updates main\n"
        sources += f"deb {SECURITY} {suite}-security main\n"
        (tmp / "etc" / "apt" / "sources.list").write_text(sources)
        # apt's package lists and the downloaded .debs are not needed in a cached root: they double its size.
        shutil.rmtree(tmp / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        (tmp / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        tmp.chmod(0o755)  # mkdtemp made it 0700: unprivileged users in the root could not reach /usr
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def scratch_copy(root: Path, dest: Path) -> Path:
    """A private copy of a cached root (hard links would let a test change the cache: copy the bytes)."""
    _run(["cp", "-a", "--", f"{root}/.", str(dest)])
    return dest


def root_command(
    root: Path, argv: Sequence[str], binds: Sequence[tuple[Path, str]] = (), chroot: bool = True
) -> list[str]:
    """The command line that runs `argv` chrooted into `root` in a private mount namespace with /proc, /dev,
    /sys, an empty /run and the host's resolv.conf; `binds` are (host path, path in root) pairs bind-mounted
    for it. `unshare`, `sh` and `chroot` exec one another, so the returned process's pid is `argv`'s.
    chroot=False runs a host command (`rpm --root`) with the same mounts in place."""
    mounts = [
        f"mount -t proc proc {root}/proc",
        f"mount --rbind /dev {root}/dev",
        f"mount --rbind /sys {root}/sys",
        f"mount -t tmpfs -o mode=0755 tmpfs {root}/run",
    ]
    if Path("/etc/resolv.conf").exists():
        (root / "etc" / "resolv.conf").unlink(missing_ok=True)
        (root / "etc" / "resolv.conf").write_bytes(Path("/etc/resolv.conf").read_bytes())
    for host, inside in binds:
        target = root / inside.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        mounts.append(f"mount --bind {host} {target}")
    script = " && ".join(mounts) + (f' && exec chroot {root} "$@"' if chroot else ' && exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec", script, "in_root", *argv]


def root_env(env: dict[str, str] | None = None) -> dict[str, str]:
    return {"PATH": PATH, "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", **(env or {})}


def in_root(
    root: Path,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 1800,
    binds: Sequence[tuple[Path, str]] = (),
    chroot: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` in `root` (see root_command) to completion; raise with its output's tail if `check`."""
    cmd = root_command(root, argv, binds, chroot)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env=root_env(env), timeout=timeout
    )
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise RootfsError(f"in {root.name}: {' '.join(argv)} exited {proc.returncode}:\n{tail}")
    return proc


if __name__ == "__main__":
    # `python3 packaging/rootfs.py bullseye bookworm trixie`: make the cached roots ahead of the tests
    # (./dev test-distros runs this while the interpreter builds).
    import sys

    for name in sys.argv[1:] or sorted(SUITES.values()):
        print(ensure_rootfs(name))
