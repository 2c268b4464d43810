"""Envoy's command line, exactly as Kuma's kuma-dp builds it (`app/kuma-dp/pkg/dataplane/envoy/envoy.go`).

Pure: the supervisor and the tests share it, and `kuma-dp run --dry-run`-style tooling can print it.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EnvoyOptions:
    """The subset of the run configuration that shapes Envoy's argv."""

    binary: str
    config_path: str
    drain_time_s: float = 30.0
    log_level: str = "info"
    component_log_level: str = ""
    concurrency: int = 0


#: Kuma accepts `warn` as a spelling of Envoy's `warning`.
_LEVEL_ALIASES = {"warn": "warning"}


def build_command(opts: EnvoyOptions, *, platform: str = sys.platform) -> list[str]:
    """`envoy --config-path … --drain-time-s N --drain-strategy immediate --disable-hot-restart …`."""
    # Kuma: `Dataplane.DrainTime.Duration/time.Second`, integer division: 1.9s -> 1, 0.5s -> 0 (truncated).
    drain = max(0, math.trunc(opts.drain_time_s + 1e-9))
    argv = [
        os.fspath(opts.binary),
        "--config-path",
        os.fspath(Path(opts.config_path)),
        "--drain-time-s",
        str(drain),
        "--drain-strategy",
        "immediate",
        "--disable-hot-restart",
        "--log-level",
        _LEVEL_ALIASES.get(opts.log_level, opts.log_level),
    ]
    if opts.component_log_level:
        argv += ["--component-log-level", opts.component_log_level]
    if opts.concurrency > 0:
        argv += ["--concurrency", str(opts.concurrency)]
    elif platform.startswith("linux"):
        argv.append("--cpuset-threads")
    return argv
