"""Envoy: finding it, checking its version, its command line, supervising it, and its admin API."""

from kuma_dp.envoy._admin import (
    FULL_PARSE_MAX_BYTES,
    AdminAddress,
    AdminClient,
    AdminError,
    BootstrapFormatError,
    HttpResponse,
    admin_address_from_bootstrap,
    http_request,
    is_loopback_host,
    load_bootstrap,
    parse_bootstrap,
)
from kuma_dp.envoy._binary import (
    EnvoyNotFoundError,
    EnvoyVersion,
    EnvoyVersionError,
    EnvoyVersionProbe,
    envoy_version,
    find_envoy,
    is_compatible,
    parse_version_output,
    start_version_probe,
    wheel_envoy,
)
from kuma_dp.envoy._command import EnvoyOptions, build_command
from kuma_dp.envoy._process import EnvoyComponent, EnvoyExitedError, needs_redaction

__all__ = [
    "FULL_PARSE_MAX_BYTES",
    "AdminAddress",
    "AdminClient",
    "AdminError",
    "BootstrapFormatError",
    "EnvoyComponent",
    "EnvoyExitedError",
    "EnvoyNotFoundError",
    "EnvoyOptions",
    "EnvoyVersion",
    "EnvoyVersionError",
    "EnvoyVersionProbe",
    "HttpResponse",
    "admin_address_from_bootstrap",
    "build_command",
    "envoy_version",
    "find_envoy",
    "http_request",
    "is_compatible",
    "is_loopback_host",
    "load_bootstrap",
    "needs_redaction",
    "parse_bootstrap",
    "parse_version_output",
    "start_version_probe",
    "wheel_envoy",
]
