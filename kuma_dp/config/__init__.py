"""`kuma-dp run` configuration: Kuma's flags and `KUMA_*` variables as one dataclass tree.

Public surface (the rest is private):

* `RunConfig` and its nested dataclasses (`ControlPlaneConfig`, `RetryConfig`, `DataplaneConfig`,
  `DataplaneRuntimeConfig`, `MetricsConfig`, `DNSConfig`, `LogConfig`, `SystemdConfig`), durations in float
  seconds;
* `SETTINGS`: one `Setting` row per leaf (path, flags, variable, default, parser, help), from which the
  environment loader, the `kuma-dp run` options and docs/settings.md are derived; `get_path` / `set_path`;
* `load_config(cfg, environ)`: apply the environment over the flags (env wins, like Kuma) and post-process;
  the only reader of the process environment;
* `validate(cfg)` -> raises `ConfigError` (`configuration validation failed: ` and Kuma's `; `-joined
  messages); `validation_errors(cfg)` the messages alone;
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
from kuma_dp.config._validate import (
    POST_PROCESS_PREFIX,
    ConfigError,
    name_error,
    validate,
    validation_errors,
)
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
    """Kuma's Dataplane.PostProcess (pkg/config/app/kuma-dp/config.go): on Kubernetes an unset or unexpanded
    name (`$(POD_NAME)...`) becomes `<POD_NAME>.<POD_NAMESPACE>`; ConfigError, with Kuma's loader prefix, when
    that name is still not valid.

    Also folds the deprecated `--config-dir` into `work_dir` so the rest of the agent reads one field.
    """
    dp = cfg.dataplane
    if name_error(".Name", dp.name) and cfg.pod_name is not None and cfg.pod_namespace is not None:
        dp.name = f"{cfg.pod_name}.{cfg.pod_namespace}"
        err = name_error(".Name", dp.name)
        if err:
            raise ConfigError(f"{POST_PROCESS_PREFIX}: Dataplane configuration post processing failed: {err}")
    rt = cfg.dataplane_runtime
    if not rt.work_dir and rt.config_dir:
        rt.work_dir = rt.config_dir
    return cfg


def load_config(cfg: RunConfig | None = None, environ: Mapping[str, str] | None = None) -> RunConfig:
    """Flags (already in `cfg`) + environment (wins) + post-processing. Does not validate: call `validate`.

    Raises EnvError for a variable that does not parse, ConfigError when post-processing fails.

    `environ` None means the process environment; nothing else in the agent reads it, components get what
    they need from the RunConfig this returns.
    """
    env = os.environ if environ is None else environ
    out = cfg if cfg is not None else RunConfig()
    apply_env(out, env)
    dns = out.dns
    # Kuma 2.14.3 runs CoreDNS on core_dns_port when its ProxyPort is 0 (its default); our default is
    # main's 15053, so "unset" is read from the environment, where the injector puts its DNS settings.
    proxy_given = "KUMA_DNS_PROXY_PORT" in env and dns.proxy_port != 0
    core_given = "KUMA_DNS_CORE_DNS_PORT" in env or dns.core_dns_port != 15053
    if dns.enabled and (dns.coredns_compat or dns.proxy_port == 0 or (core_given and not proxy_given)):
        dns.coredns_compat = True
        dns.proxy_port = dns.core_dns_port
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
