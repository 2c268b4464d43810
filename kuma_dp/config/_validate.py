"""Kuma's configuration validation, with Kuma's exact messages.

Operators and scripts grep for these strings, so the wording, the `.Section is not valid: ` prefixes and the
`; ` joining follow `pkg/config/app/kuma-dp/config.go` in kumahq/kuma v2.14.3 (multierr) to the character.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from kuma_dp.config._model import RunConfig

#: Kuma's ProxyType.IsValid() set; only the first three may be configured (gateway -> "not supported").
_KNOWN_PROXY_TYPES = ("dataplane", "ingress", "egress", "gateway")
_SUPPORTED_PROXY_TYPES = ("dataplane", "ingress", "egress")
_XDS_VARIANTS = ("", "GRPC", "DELTA_GRPC")


class ConfigError(ValueError):
    """Invalid configuration; str() is the one-line message to print."""


def _validate_mesh_or_name(label: str, value: str) -> str | None:
    if value == "":
        return f"{label} must be non-empty"
    if any(c in value for c in "$(){}"):
        return f'{label} "{value}" contains invalid characters'
    return None


def validate_control_plane(cfg: RunConfig) -> list[str]:
    errs: list[str] = []
    cp = cfg.control_plane
    try:
        parts = urlsplit(cp.url)
        if parts.scheme not in ("http", "https"):
            errs.append(f'.Url is not valid: unsupported scheme "{parts.scheme}". Use one of [http https]')
        elif not parts.hostname:
            errs.append(f'.Url is not valid: parse "{cp.url}": missing host')
        else:
            _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        errs.append(f'.Url is not valid: parse "{cp.url}": {exc}')
    if cp.retry.backoff <= 0:
        errs.append(".Retry is not valid: .Backoff must be a positive duration")
    elif cp.retry.max_duration <= 0:
        errs.append(".Retry is not valid: .MaxDuration must be a positive duration")
    return errs


def validate_dataplane(cfg: RunConfig) -> list[str]:
    dp = cfg.dataplane
    errs: list[str] = []
    if cfg.has_resource:
        # With a template, name and mesh come from the resource: only the drain time (and port) are checked.
        if dp.drain_time <= 0:
            errs.append(".DrainTime must be positive")
    else:
        if dp.proxy_type not in _SUPPORTED_PROXY_TYPES:
            if dp.proxy_type in _KNOWN_PROXY_TYPES:
                errs.append(f'.ProxyType "{dp.proxy_type}" is not supported')
            else:
                errs.append(f".ProxyType is not valid: {dp.proxy_type} is not a valid proxy type")
        zone_proxy = dp.proxy_type in ("ingress", "egress")
        if not zone_proxy:
            err = _validate_mesh_or_name(".Mesh", dp.mesh)
            if err:
                errs.append(err)
        err = _validate_mesh_or_name(".Name", dp.name)
        if err:
            errs.append(err)
        if dp.drain_time <= 0:
            errs.append(".DrainTime must be positive")
    # Kuma rejects 0; we accept it on purpose: the readiness reporter then binds a free port and logs it,
    # so two proxies on one VM do not collide on 9902 (kumahq/kuma#11769). Out-of-range keeps Kuma's text.
    if not 0 <= dp.readiness_port <= 65535:
        errs.append(".ReadinessPort has to be in (0, 65535] range")
    return errs


def validate_runtime(cfg: RunConfig) -> list[str]:
    rt = cfg.dataplane_runtime
    errs: list[str] = []
    if rt.binary_path == "":
        errs.append(".BinaryPath must be non-empty")
    if rt.envoy_xds_transport_protocol_variant not in _XDS_VARIANTS:
        errs.append(
            f".EnvoyXdsTransportProtocolVariant invalid value: {rt.envoy_xds_transport_protocol_variant} ."
            " Must be one of: DELTA_GRPC or GRPC when defined"
        )
    return errs


def validate_dns(cfg: RunConfig) -> list[str]:
    dns = cfg.dns
    if not dns.enabled:
        return []
    # Kuma returns the first DNS error only (plain `return`, not multierr).
    if not 0 < dns.proxy_port <= 65535:
        return [".ProxyPort has to be in (0, 65535] range"]
    if dns.core_dns_port > 65353:
        return [".CoreDNSPort has to be in [0, 65353] range"]
    if dns.envoy_dns_port > 65353:
        return [".EnvoyDNSPort has to be in [0, 65353] range"]
    if dns.prometheus_port > 65353:
        return [".PrometheusPort has to be in [0, 65353] range"]
    if dns.core_dns_binary_path == "":
        return [".CoreDNSBinaryPath cannot be empty"]
    return []


def validation_errors(cfg: RunConfig) -> list[str]:
    """Every message, already prefixed with its section, in Kuma's order."""
    out: list[str] = []
    for section, check in (
        (".ControlPlane", validate_control_plane),
        (".Dataplane", validate_dataplane),
        (".DataplaneRuntime", validate_runtime),
        (".DNS", validate_dns),
    ):
        errs = check(cfg)
        if errs:
            out.append(f"{section} is not valid: " + "; ".join(errs))
    if cfg.log.level not in ("off", "info", "debug"):
        out.append(f'invalid log level "{cfg.log.level}": use one of off, info, debug')
    if cfg.log.format not in ("text", "json"):
        out.append(f'invalid log format "{cfg.log.format}": use text or json')
    if cfg.bootstrap_source not in ("remote", "local"):
        out.append(f'invalid --bootstrap-source "{cfg.bootstrap_source}": use remote or local')
    return out


def validate(cfg: RunConfig) -> None:
    """Raise ConfigError with Kuma's `; `-joined message when the configuration is invalid."""
    errs = validation_errors(cfg)
    if errs:
        raise ConfigError("; ".join(errs))
