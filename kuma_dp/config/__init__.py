"""`kuma-dp run` configuration: Kuma's flags and `KUMA_*` variables as one dataclass tree.

Public surface (the rest is private):

* `RunConfig` and its nested dataclasses (`ControlPlaneConfig`, `RetryConfig`, `DataplaneConfig`,
  `DataplaneRuntimeConfig`, `MetricsConfig`, `DNSConfig`, `LogConfig`), durations in float seconds;
* `load_config(cfg, environ)`: apply the environment over the flags (env wins, like Kuma) and post-process;
* `validate(cfg)` -> raises `ConfigError` with Kuma's `; `-joined messages; `validation_errors(cfg)`;
* `parse_duration` / `format_duration` for Go duration strings; `effective_config(cfg)` for logging.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from kuma_dp.config._duration import format_duration, parse_duration
from kuma_dp.config._env import ENV_VARS, EnvError, apply_env, parse_bool
from kuma_dp.config._model import (
    ControlPlaneConfig,
    DataplaneConfig,
    DataplaneRuntimeConfig,
    DNSConfig,
    LogConfig,
    MetricsConfig,
    RetryConfig,
    RunConfig,
)
from kuma_dp.config._validate import ConfigError, validate, validation_errors

__all__ = [
    "ENV_VARS",
    "ConfigError",
    "ControlPlaneConfig",
    "DNSConfig",
    "DataplaneConfig",
    "DataplaneRuntimeConfig",
    "EnvError",
    "LogConfig",
    "MetricsConfig",
    "RetryConfig",
    "RunConfig",
    "apply_env",
    "effective_config",
    "format_duration",
    "load_config",
    "parse_bool",
    "parse_duration",
    "post_process",
    "validate",
    "validation_errors",
]


def post_process(cfg: RunConfig, environ: Mapping[str, str]) -> RunConfig:
    """Kuma's PostProcess: on Kubernetes an unset name becomes `<POD_NAME>.<POD_NAMESPACE>`.

    Also folds the deprecated `--config-dir` into `work_dir` so the rest of the agent reads one field.
    """
    dp = cfg.dataplane
    bad_name = not dp.name or any(c in dp.name for c in "$(){}")
    if bad_name and "POD_NAME" in environ and "POD_NAMESPACE" in environ:
        dp.name = f"{environ['POD_NAME']}.{environ['POD_NAMESPACE']}"
    rt = cfg.dataplane_runtime
    if not rt.work_dir and rt.config_dir:
        rt.work_dir = rt.config_dir
    return cfg


def load_config(cfg: RunConfig | None = None, environ: Mapping[str, str] | None = None) -> RunConfig:
    """Flags (already in `cfg`) + environment (wins) + post-processing. Does not validate: call `validate`."""
    env = os.environ if environ is None else environ
    out = cfg if cfg is not None else RunConfig()
    apply_env(out, env)
    return post_process(out, env)


def effective_config(cfg: RunConfig) -> dict[str, Any]:
    """The configuration as a dict for the start-up log line, with the token and CA text redacted."""
    data = dataclasses.asdict(cfg)
    if data["dataplane_runtime"]["token"]:
        data["dataplane_runtime"]["token"] = "<redacted>"
    if data["control_plane"]["ca_cert"]:
        data["control_plane"]["ca_cert"] = "<PEM>"
    return data
