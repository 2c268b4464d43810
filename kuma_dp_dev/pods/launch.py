"""The container side of the pod runtime: `python -m kuma_dp_dev.pods.launch SPEC.json`, run as root inside
the pod's network namespace by `ip netns exec` (which also gives it a mount namespace of its own, slave to the
host's, so nothing mounted here reaches the host).

It does what a container runtime does between "create" and "start" for the parts of a container that matter
to kuma-dp and kuma-init: volume mounts (emptyDir and secret directories, the pod's /etc/hosts and
/etc/resolv.conf bound over the host's, as kubelet manages them), `readOnlyRootFilesystem` (every mount but
/proc, /sys, /dev and the volumes made read-only), then the user, group, capability bounding set and
no_new_privs of the securityContext, by exec'ing `setpriv`, which execs the container's command. Every exec
keeps the pid, so the runtime's Popen is the container's main process and signals reach it directly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys
from pathlib import Path
from typing import Any

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

#: Kernel file systems a container gets as mounts of their own; readOnlyRootFilesystem leaves them alone.
_KERNEL_MOUNTS = ("/proc", "/sys", "/dev")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount(source: str, target: str, fstype: str, flags: int, data: str = "") -> None:
    ret = _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None)
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target} ({fstype or 'bind'}): {os.strerror(err)}")


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        points.append(fields[4].encode().decode("unicode_escape"))
    return points


def _ensure_target(target: Path, is_file: bool) -> None:
    """The mount point must exist, as in an image; created on the host's file system if missing."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_file:
        target.touch()
    else:
        target.mkdir()


def _software_paths() -> list[str]:
    """Where the container's programs come from: this checkout (editable install) and the virtualenv. An
    image carries its software in its own root; here it is the host's, so a volume mounted over one of its
    parents (the goldens mount an emptyDir on /tmp, and a checkout may live under /tmp) must not hide it."""
    repo = Path(__file__).resolve().parents[2]
    return sorted({str(repo), str(Path(sys.prefix).resolve())})


def setup(spec: dict[str, Any]) -> None:
    volumes = spec.get("mounts") or []
    targets: list[tuple[str, bool]] = []
    # Held open before any volume is mounted, so they can be bound back over the volume that hides them.
    held = {path: os.open(path, os.O_PATH) for path in _software_paths()}
    for m in volumes:
        target = Path(m["target"]).resolve()
        _ensure_target(target, Path(m["source"]).is_file())
        _mount(m["source"], str(target), "", MS_BIND | MS_REC)
        targets.append((str(target), bool(m.get("read_only"))))
    for path, fd in held.items():
        if any(path.startswith(t + "/") for t, _ in targets):
            os.makedirs(path, exist_ok=True)  # inside the volume now: a mount point for the original
            _mount(f"/proc/self/fd/{fd}", path, "", MS_BIND | MS_REC)
        os.close(fd)
    if spec.get("read_only_root"):
        volume_targets = {t for t, _ in targets}
        for point in _mount_points():
            if point in volume_targets or any(
                point == k or point.startswith(k + "/") for k in _KERNEL_MOUNTS
            ):
                continue
            try:
                _mount("", point, "", MS_REMOUNT | MS_BIND | MS_RDONLY)
            except OSError:
                # A mount we may not touch (e.g. a namespace file under /run/netns): it is not the root
                # file system the container writes to.
                continue
    for target, read_only in targets:
        if read_only:
            _mount("", target, "", MS_REMOUNT | MS_BIND | MS_RDONLY)


def exec_argv(spec: dict[str, Any]) -> list[str]:
    """setpriv with the securityContext, then the container's command."""
    uid, gid = int(spec.get("uid", 0)), int(spec.get("gid", 0))
    argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    caps = [c.lower().removeprefix("cap_") for c in spec.get("caps") or []]
    if spec.get("drop_all_caps") or caps:
        keep = "".join(f",+{c}" for c in caps)
        argv += [f"--bounding-set=-all{keep}", f"--inh-caps=-all{keep}"]
        if uid != 0 and caps:
            argv.append(f"--ambient-caps=-all{keep}")
    if spec.get("no_new_privs"):
        argv.append("--no-new-privs")
    return [*argv, "--", *spec["argv"]]


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    try:
        setup(spec)
    except OSError as exc:
        print(f"pod runtime: cannot create container {spec.get('name')}: {exc}", file=sys.stderr)
        sys.exit(128)
    os.chdir(spec.get("workdir") or "/")
    argv = exec_argv(spec)
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as exc:
        print(f"pod runtime: cannot exec {spec['argv'][0]}: {exc.strerror}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
