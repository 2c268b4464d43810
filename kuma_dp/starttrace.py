"""The start-up timeline of `kuma-dp run`: CLOCK_MONOTONIC marks from interpreter start to Envoy LIVE.

Start-up latency is what a user feels on every rollout, and the phase metrics (`kuma_dp_startup_phase_*`)
only exist once the agent runs. This module records, from the first line of `python -m kuma_dp` on, when
each step of the start-up finished (`mark`), in memory: a list append, nothing else, so it costs nothing
when no one reads it. With `KUMA_DP_STARTUP_TRACE=<file>` (a setting, applied once the configuration is
loaded: `enable`) the marks are written to that file as one JSON object
`{"pid": ..., "clock": "monotonic", "marks": [[phase, seconds], ...]}`, replaced atomically (temp file +
rename, mode 0600; no fsync: it is a diagnostic, and a sync would distort the timeline it records). The
marks before Envoy's spawn are written together at the `envoy_spawned` mark (or at exit, for a start that
ends earlier), so tracing adds no file writes to the path to Envoy; every later mark is written at once.
`time.monotonic()` is CLOCK_MONOTONIC, shared by every process on the host, so a benchmark can lay these
marks beside its own (bench/startup.py, bench/e2e_mesh.py).

This module imports only the standard library's always-loaded modules: it runs before anything else.
"""

from __future__ import annotations

import atexit
import os
import time

__all__ = ["enable", "mark", "marks", "origin"]

_marks: list[tuple[str, float]] = []
_path: str | None = None
#: Envoy was spawned: from now on each mark is written as it comes.
_flushing = False


def mark(phase: str, at: float | None = None) -> None:
    """Record that `phase` finished now (or at `at`, a time.monotonic() value); only its first time counts."""
    global _flushing
    if any(name == phase for name, _ in _marks):
        return
    _marks.append((phase, time.monotonic() if at is None else at))
    _flushing = _flushing or phase == "envoy_spawned"
    if _path is not None and _flushing:
        _write()


def marks() -> list[tuple[str, float]]:
    """The marks so far, in the order they were recorded."""
    return list(_marks)


def origin() -> float | None:
    """When the process started running our code (the `interpreter` mark), or None if it was not marked."""
    return next((at for name, at in _marks if name == "interpreter"), None)


def enable(path: str) -> None:
    """Write the timeline to `path` (see the module's docstring for when); "" leaves it off."""
    global _path
    if not path:
        return
    _path = path
    atexit.register(_write_at_exit)


def _write_at_exit() -> None:
    if _path is not None:
        _write()


def _write() -> None:
    assert _path is not None
    import json

    body = json.dumps({"pid": os.getpid(), "clock": "monotonic", "marks": _marks}).encode()
    tmp = f"{_path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
        os.replace(tmp, _path)
    except OSError as exc:
        # A diagnostic must never stop the agent: say once what went wrong and stop tracing.
        _disable(exc)


def _disable(exc: OSError) -> None:
    global _path
    import logging

    logging.getLogger(__name__).warning(
        "cannot write the start-up trace to %s (%s); fix KUMA_DP_STARTUP_TRACE or unset it", _path, exc
    )
    _path = None
