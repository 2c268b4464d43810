"""Envoy's exec, without asyncio: its own process group, the Linux parent-death signal, output piped only
when it must be redacted.

Envoy gets its own process group (a terminal's Ctrl-C reaches only the agent, which drains first) and the
parent-death signal SIGKILL, so even `kill -9` of the agent takes Envoy with it (Kuma:
`app/kuma-dp/pkg/dataplane/command/build_command_linux.go`). Kept apart from the supervisor
(kuma_dp.envoy._process, asyncio) so that `kuma-dp run` can exec Envoy before it loads the event loop
(kuma_dp/launch.py).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence

_PR_SET_PDEATHSIG = 1


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn: arm PR_SET_PDEATHSIG, then exit if the parent already died (closing the race window).

    libc is loaded here, in the parent: the child runs only the prctl call between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    # dlopen(NULL): the interpreter's own symbols, libc's prctl among them; find_library("c") would run
    # ldconfig in a subprocess, milliseconds on the start-up's critical path.
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def arm() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:
            os._exit(1)

    return arm


def needs_redaction(log_level: str, component_log_level: str) -> bool:
    """Whether Envoy's output must go through the agent's redaction.

    At debug and trace Envoy dumps request headers (its gRPC client's `authorization` metadata, the
    dataplane token, in the router's "decoding headers" lines) and parts of its configuration; at info and
    above it logs neither. So only then is its output piped through `kuma_dp.logs.redact`, and otherwise it
    writes to our stderr directly, at no cost."""
    levels = [log_level, *(part.rpartition(":")[2] for part in component_log_level.split(",") if part)]
    return any(level.strip().lower() in ("debug", "trace") for level in levels)


def spawn_envoy(
    argv: Sequence[str], *, env: dict[str, str] | None = None, redact_output: bool = False
) -> subprocess.Popen[bytes]:
    """Exec Envoy now, synchronously: its own process group, the parent-death signal armed, stdin closed, and
    its output piped (for `EnvoyComponent`'s redaction) only when `redact_output`.

    Synchronous so that `kuma-dp run` can start Envoy the moment its bootstrap is written, before the event
    loop and the other components exist (kuma_dp.launch); `EnvoyComponent` adopts the process.
    """
    pipe = subprocess.PIPE if redact_output else None
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=pipe,
        stderr=pipe,
        env=env,
        preexec_fn=_pdeathsig_preexec(),
        process_group=0,
    )
