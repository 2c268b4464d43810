"""Filesystem helpers shared by every component.

Files the agent writes (bootstrap.yaml, tokens, the persisted DNS table, rule backups) must never be seen
half-written by Envoy, by a restarted agent, or by an operator: write a temp file in the same directory,
fsync, then rename over the target.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o600) -> Path:
    """Replace `path` with `data` atomically; the file has `mode` from its first byte (no chmod race)."""
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target
