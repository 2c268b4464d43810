"""`KUMA_*` environment variables applied over the flags.

Kuma parses flags first and then applies the environment, so **a set variable overrides the same flag**
(KUMA-DP.md §2.1). A variable counts as set when it is present, even empty, like Go's envconfig; an empty
value for a number, bool or duration is ignored rather than turned into an error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kuma_dp.config._duration import parse_duration
from kuma_dp.config._model import RunConfig


class EnvError(ValueError):
    """An environment variable whose value cannot be converted; the message names the variable."""


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool, which is what Kuma applies to KUMA_* booleans."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f'strconv.ParseBool: parsing "{text}": invalid syntax')


def _uint(text: str) -> int:
    value = int(text.strip(), 10)
    if value < 0:
        raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    return value


def _str(text: str) -> str:
    return text


#: env name -> (dotted attribute path in RunConfig, converter). Order is irrelevant: each name is independent.
ENV_VARS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "KUMA_CONTROL_PLANE_URL": ("control_plane.url", _str),
    "KUMA_CONTROL_PLANE_CA_CERT_FILE": ("control_plane.ca_cert_file", _str),
    "KUMA_CONTROL_PLANE_CA_CERT": ("control_plane.ca_cert", _str),
    "KUMA_CONTROL_PLANE_TLS_SKIP_VERIFY": ("control_plane.skip_verify", parse_bool),
    "KUMA_CONTROL_PLANE_RETRY_BACKOFF": ("control_plane.retry.backoff", parse_duration),
    "KUMA_CONTROL_PLANE_RETRY_MAX_DURATION": ("control_plane.retry.max_duration", parse_duration),
    "KUMA_DATAPLANE_NAME": ("dataplane.name", _str),
    "KUMA_DATAPLANE_MESH": ("dataplane.mesh", _str),
    "KUMA_DATAPLANE_PROXY_TYPE": ("dataplane.proxy_type", _str),
    "KUMA_DATAPLANE_DRAIN_TIME": ("dataplane.drain_time", parse_duration),
    "KUMA_READINESS_PORT": ("dataplane.readiness_port", _uint),
    "KUMA_DATAPLANE_RESILIENT_COMPONENT_BASE_BACKOFF": (
        "dataplane.resilient_component_base_backoff",
        parse_duration,
    ),
    "KUMA_DATAPLANE_RESILIENT_COMPONENT_MAX_BACKOFF": (
        "dataplane.resilient_component_max_backoff",
        parse_duration,
    ),
    "KUMA_DATAPLANE_RUNTIME_BINARY_PATH": ("dataplane_runtime.binary_path", _str),
    "KUMA_DATAPLANE_RUNTIME_CONCURRENCY": ("dataplane_runtime.concurrency", _uint),
    "KUMA_DATAPLANE_RUNTIME_WORK_DIR": ("dataplane_runtime.work_dir", _str),
    "KUMA_DATAPLANE_RUNTIME_CONFIG_DIR": ("dataplane_runtime.config_dir", _str),
    "KUMA_DATAPLANE_RUNTIME_SOCKET_DIR": ("dataplane_runtime.socket_dir", _str),
    "KUMA_DATAPLANE_RUNTIME_TOKEN_PATH": ("dataplane_runtime.token_path", _str),
    "KUMA_DATAPLANE_RUNTIME_TOKEN": ("dataplane_runtime.token", _str),
    "KUMA_DATAPLANE_RUNTIME_RESOURCE": ("dataplane_runtime.resource", _str),
    "KUMA_DATAPLANE_RUNTIME_RESOURCE_PATH": ("dataplane_runtime.resource_path", _str),
    "KUMA_DATAPLANE_RUNTIME_ENVOY_LOG_LEVEL": ("dataplane_runtime.envoy_log_level", _str),
    "KUMA_DATAPLANE_RUNTIME_ENVOY_COMPONENT_LOG_LEVEL": ("dataplane_runtime.envoy_component_log_level", _str),
    "KUMA_DATAPLANE_RUNTIME_METRICS_CERT_PATH": ("dataplane_runtime.metrics.cert_path", _str),
    "KUMA_DATAPLANE_RUNTIME_METRICS_KEY_PATH": ("dataplane_runtime.metrics.key_path", _str),
    "KUMA_DATAPLANE_RUNTIME_BIND_OUTBOUNDS": ("dataplane_runtime.bind_outbounds", parse_bool),
    "KUMA_DATAPLANE_RESOURCES_MAX_MEMORY_BYTES": ("dataplane_runtime.max_memory_bytes", _uint),
    "KUMA_DATAPLANE_RUNTIME_DYNAMIC_CONFIGURATION_REFRESH_INTERVAL": (
        "dataplane_runtime.dynamic_configuration_refresh_interval",
        parse_duration,
    ),
    "KUMA_DATAPLANE_RUNTIME_DYNAMIC_SYSTEM_CA_PATH": ("dataplane_runtime.system_ca_path", _str),
    "KUMA_DATAPLANE_RUNTIME_IPV6_ENABLED": ("dataplane_runtime.ipv6_enabled", parse_bool),
    "KUMA_DATAPLANE_RUNTIME_STRICT_INBOUND_PORTS_ENABLED": (
        "dataplane_runtime.strict_inbound_ports_enabled",
        parse_bool,
    ),
    "KUMA_DATAPLANE_RUNTIME_OTEL_PIPE_ENABLED": ("dataplane_runtime.otel_pipe_enabled", parse_bool),
    "KUMA_DATAPLANE_RUNTIME_REUSE_PORT_ENABLED": ("dataplane_runtime.reuse_port_enabled", parse_bool),
    "KUMA_DATAPLANE_RUNTIME_SPIRE_SUPPORTED": ("dataplane_runtime.spire_supported", parse_bool),
    "KUMA_DATAPLANE_RUNTIME_SPIRE_SOCKET_PATH": ("dataplane_runtime.spire_socket_path", _str),
    "KUMA_DATAPLANE_RUNTIME_ENVOY_XDS_TRANSPORT_PROTOCOL_VARIANT": (
        "dataplane_runtime.envoy_xds_transport_protocol_variant",
        _str,
    ),
    "KUMA_DATAPLANE_RUNTIME_UNIFIED_RESOURCE_NAMING_ENABLED": (
        "dataplane_runtime.unified_resource_naming_enabled",
        parse_bool,
    ),
    "KUMA_DNS_ENABLED": ("dns.enabled", parse_bool),
    "KUMA_DNS_PROXY_PORT": ("dns.proxy_port", _uint),
    "KUMA_DNS_CORE_DNS_PORT": ("dns.core_dns_port", _uint),
    "KUMA_DNS_ENVOY_DNS_PORT": ("dns.envoy_dns_port", _uint),
    "KUMA_DNS_CORE_DNS_BINARY_PATH": ("dns.core_dns_binary_path", _str),
    "KUMA_DNS_CORE_DNS_CONFIG_TEMPLATE_PATH": ("dns.core_dns_config_template_path", _str),
    "KUMA_DNS_CONFIG_DIR": ("dns.config_dir", _str),
    "KUMA_DNS_PROMETHEUS_PORT": ("dns.prometheus_port", _uint),
    "KUMA_DNS_ENABLE_LOGGING": ("dns.core_dns_logging", parse_bool),
    "KUMA_APPLICATION_PROBE_PROXY_PORT": ("application_probe_proxy_port", _uint),
    "HOST_IP": ("host_ip", _str),
}


def _set_path(cfg: RunConfig, path: str, value: Any) -> None:
    obj: Any = cfg
    *parents, leaf = path.split(".")
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, leaf, value)


def apply_env(cfg: RunConfig, environ: Mapping[str, str]) -> RunConfig:
    """Override `cfg` in place with every set variable of ENV_VARS; EnvError names the bad variable."""
    for name, (path, convert) in ENV_VARS.items():
        if name not in environ:
            continue
        raw = environ[name]
        if raw == "" and convert is not _str:
            continue
        try:
            value = convert(raw)
        except ValueError as exc:
            # Never echo the value of a secret-bearing variable.
            shown = "<hidden>" if name == "KUMA_DATAPLANE_RUNTIME_TOKEN" else repr(raw)
            raise EnvError(f"invalid value {shown} in environment variable {name}: {exc}") from None
        _set_path(cfg, path, value)
    return cfg
