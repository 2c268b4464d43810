"""Envoy: finding it, checking its version, its command line, supervising it, and its admin API."""

from typing import TYPE_CHECKING

from kuma_dp._lazy import lazy_exports

if TYPE_CHECKING:  # what the names are, for type checkers; at run time each loads on first use
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
    from kuma_dp.envoy._process import EnvoyComponent, EnvoyExitedError
    from kuma_dp.envoy._spawn import needs_redaction, spawn_envoy

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
    "spawn_envoy",
    "start_version_probe",
    "wheel_envoy",
]

#: Public name -> the submodule defining it, imported on first use (kuma_dp/_lazy.py).
_EXPORTS = {
    "FULL_PARSE_MAX_BYTES": "_admin",
    "AdminAddress": "_admin",
    "AdminClient": "_admin",
    "AdminError": "_admin",
    "BootstrapFormatError": "_admin",
    "HttpResponse": "_admin",
    "admin_address_from_bootstrap": "_admin",
    "http_request": "_admin",
    "is_loopback_host": "_admin",
    "load_bootstrap": "_admin",
    "parse_bootstrap": "_admin",
    "EnvoyNotFoundError": "_binary",
    "EnvoyVersion": "_binary",
    "EnvoyVersionError": "_binary",
    "EnvoyVersionProbe": "_binary",
    "envoy_version": "_binary",
    "find_envoy": "_binary",
    "is_compatible": "_binary",
    "parse_version_output": "_binary",
    "start_version_probe": "_binary",
    "wheel_envoy": "_binary",
    "EnvoyOptions": "_command",
    "build_command": "_command",
    "EnvoyComponent": "_process",
    "EnvoyExitedError": "_process",
    "needs_redaction": "_spawn",
    "spawn_envoy": "_spawn",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
