"""Filesystem helpers shared by every component.

Files the agent writes (bootstrap.yaml, tokens, the persisted DNS table, rule backups) must never be seen
half-written by Envoy, by a restarted agent, or by an operator: write a temp file in the same directory,
fsync, then rename over the target.

`open_private_fifo` makes the access-log FIFO (kuma_dp.accesslog reads it): here rather than beside its
reader because `kuma-dp run` makes it before Envoy's exec, before it loads the event loop (kuma_dp/launch.py).
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def atomic_write(
    path: str | os.PathLike[str], data: bytes | str, mode: int = 0o600, *, durable: bool = True
) -> Path:
    """Replace `path` with `data` atomically; the file has `mode` from its first byte (no chmod race).

    `durable=False` skips the fsync: for a file rewritten on every start (the bootstrap), where a crash
    loses nothing worth keeping and the sync would only add its latency to the start-up's critical path;
    readers still see the old file or the whole new one, never a part.
    """
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


class PrivateFifoError(RuntimeError):
    """The FIFO path holds something that is not our private FIFO and cannot be replaced."""


def _private_fifo(st: os.stat_result, uid: int) -> bool:
    """A FIFO owned by `uid` that nobody else may open."""
    return stat.S_ISFIFO(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077


def open_private_fifo(path: str, on_rejected: Callable[[str], None] | None = None) -> int:
    """Create (or reuse our own) FIFO and open its read end; the fd, checked to be our private FIFO.

    Kuma's `accesslogs/streamer.go` removes the path and calls `mkfifo(0666)`; we make it 0600 (Envoy
    is our child, same uid), so no other local user can inject lines (which would make us connect to
    any address, from the uid the transparent proxy exempts) or read the logs. A FIFO is reused only
    when it is ours and private, so Envoy's open write end survives a restart of this component;
    anything else at the path (another user's FIFO, a file, a symlink) is removed and replaced. The
    open uses O_NOFOLLOW and the opened fd is checked again, so a swap between check and open is
    caught rather than trusted.
    """
    Path(path).parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    uid = os.geteuid()
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not _private_fifo(st, uid):
        log.warning(
            "replacing a file at the access-log FIFO path that is not our private FIFO",
            extra={"fifo": path, "owner": st.st_uid, "mode": stat.filemode(st.st_mode)},
        )
        try:
            os.unlink(path)
        except OSError as exc:
            _reject(on_rejected, "unremovable")
            raise PrivateFifoError(
                f"cannot remove {path} (owner uid {st.st_uid}): {exc.strerror}; it is not our FIFO, "
                "remove it or use a --work-dir only kuma-dp's user can write to"
            ) from None
        _reject(on_rejected, "replaced")
        st = None
    if st is None:
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            _reject(on_rejected, "changed")
            raise PrivateFifoError(
                f"{path} was re-created by someone else while we replaced it; use a --work-dir only "
                "kuma-dp's user can write to"
            ) from None
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    opened = os.fstat(fd)
    if not _private_fifo(opened, uid):
        os.close(fd)
        _reject(on_rejected, "changed")
        raise PrivateFifoError(
            f"{path} changed while we opened it (now owner uid {opened.st_uid}, mode "
            f"{oct(stat.S_IMODE(opened.st_mode))}); use a --work-dir only kuma-dp's user can write to"
        )
    # mkfifo's mode is narrowed by the umask, never widened; fchmod keeps it exactly 0600.
    os.fchmod(fd, 0o600)
    return fd


def _reject(on_rejected: Callable[[str], None] | None, reason: str) -> None:
    if on_rejected is not None:
        on_rejected(reason)
