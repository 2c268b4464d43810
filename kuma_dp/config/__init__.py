"""`kuma-dp run` configuration: Kuma's flags and `KUMA_*` variables as one dataclass tree.

Public surface (the rest is private):

* `RunConfig` and its nested dataclasses (`ControlPlaneConfig`, `RetryConfig`, `DataplaneConfig`,
  `DataplaneRuntimeConfig`, `MetricsConfig`, `DNSConfig`, `LogConfig`, `SystemdConfig`), durations in float
  seconds;
* `SETTINGS`: one `Setting` row per leaf (path, flags, variable, default, parser, help), from which the
  environment loader, the `kuma-dp run` options and docs/settings.md are derived; `get_path` / `set_path`;
* `load_config(cfg, environ)`: apply the environment over the flags (env wins, like Kuma) and post-process;
  the only reader of the process environment;
* `validate(cfg)` -> raises `ConfigError` with Kuma's `; `-joined messages; `validation_errors(cfg)`;
* `effective_config(cfg)` for logging; `parse_bool` / `parse_duration` / `format_duration` re-exported from
  `kuma_dp.goparse`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from kuma_dp.config._env import ENV_VARS, EnvError, apply_env, env_value
from kuma_dp.config._model import (
    SETTINGS,
    ControlPlaneConfig,
    DataplaneConfig,
    DataplaneRuntimeConfig,
    DNSConfig,
    LogConfig,
    MetricsConfig,
    RetryConfig,
    RunConfig,
    SystemdConfig,
)
from kuma_dp.config._settings import Setting, get_path, set_path
from kuma_dp.config._validate import ConfigError, validate, validation_errors
from kuma_dp.goparse import format_duration, parse_bool, parse_duration

__all__ = [
    "ENV_VARS",
    "SETTINGS",
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
    "Setting",
    "SystemdConfig",
    "apply_env",
    "effective_config",
    "env_value",
    "format_duration",
    "get_path",
    "load_config",
    "parse_bool",
    "parse_duration",
    "post_process",
    "set_path",
    "validate",
    "validation_errors",
]


def post_process(cfg: RunConfig) -> RunConfig:
    """Kuma's PostProcess: on Kubernetes an unset name becomes `<POD_NAME>.<POD_NAMESPACE>`.

    Also folds the deprecated `--config-dir` into `work_dir` so the rest of the agent reads one field.
    """
    dp = cfg.dataplane
    bad_name = not dp.name or any(c in dp.name for c in "$(){}")
    if bad_name and cfg.pod_name is not None and cfg.pod_namespace is not None:
        dp.name = f"{cfg.pod_name}.{cfg.pod_namespace}"
    rt = cfg.dataplane_runtime
    if not rt.work_dir and rt.config_dir:
        rt.work_dir = rt.config_dir
    return cfg


def load_config(cfg: RunConfig | None = None, environ: Mapping[str, str] | None = None) -> RunConfig:
    """Flags (already in `cfg`) + environment (wins) + post-processing. Does not validate: call `validate`.

    `environ` None means the process environment; nothing else in the agent reads it, components get what
    they need from the RunConfig this returns.
    """
    env = os.environ if environ is None else environ
    out = cfg if cfg is not None else RunConfig()
    apply_env(out, env)
    return post_process(out)


def effective_config(cfg: RunConfig) -> dict[str, Any]:
    """The configuration as a dict for the start-up log line, with the token and CA text redacted."""
    data = dataclasses.asdict(cfg)
    for s in SETTINGS:
        if s.redact and get_path(cfg, s.path):
            *parents, leaf = s.path.split(".")
            section = data
            for name in parents:
                section = section[name]
            section[leaf] = s.redact
    return data
