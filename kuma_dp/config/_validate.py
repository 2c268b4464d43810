"""Kuma's configuration validation, with Kuma's exact messages.

Operators and scripts grep for these strings, so the wording, the `.Section is not valid: ` prefixes, the
`; ` joining and the `configuration validation failed: ` prefix follow `pkg/config/app/kuma-dp/config.go` and
`pkg/config/loader.go` in kumahq/kuma v2.14.3 (multierr) to the character, and only the checks Kuma makes are
made: the CP URL goes through Go's url.Parse alone, the dataplane name is only required to be non-empty.
"""

from __future__ import annotations

from kuma_dp.config._model import RunConfig
from kuma_dp.goparse import go_quote, url_parse_error

#: Kuma's ProxyType.IsValid() set (api/mesh/v1alpha1/dataplane_helpers.go): `gateway` is not in it either.
_SUPPORTED_PROXY_TYPES = ("dataplane", "ingress", "egress")
_XDS_VARIANTS = ("", "GRPC", "DELTA_GRPC")


#: What Kuma's config loader (pkg/config/loader.go) puts before the joined messages.
VALIDATION_PREFIX = "configuration validation failed"
POST_PROCESS_PREFIX = "configuration post-processing failed"


class ConfigError(ValueError):
    """Invalid configuration; str() is the one-line message to print, with Kuma's loader prefix."""


def name_error(label: str, value: str) -> str | None:
    """Kuma's validateMeshOrName: used by post-processing (the POD_NAME.POD_NAMESPACE fallback), not by
    Validate, which only checks that the name is non-empty."""
    if value == "":
        return f"{label} must be non-empty"
    if any(c in value for c in "$(){}"):
        return f"{label} {go_quote(value, ascii_only=True)} contains invalid characters"
    return None


def validate_control_plane(cfg: RunConfig) -> list[str]:
    """ControlPlane.Validate: `url.Parse` only (a scheme or a host is the bootstrap request's concern)."""
    errs: list[str] = []
    cp = cfg.control_plane
    url_error = url_parse_error(cp.url)
    if url_error is not None:
        errs.append(f".Url is not valid: {url_error}")
    if cp.retry.backoff <= 0:
        errs.append(".Retry is not valid: .Backoff must be a positive duration")
    elif cp.retry.max_duration <= 0:
        errs.append(".Retry is not valid: .MaxDuration must be a positive duration")
    return errs


def validate_dataplane(cfg: RunConfig) -> list[str]:
    """Dataplane.Validate, or ValidateForTemplate (drain time only) when a Dataplane template is given."""
    dp = cfg.dataplane
    errs: list[str] = []
    if cfg.has_resource:
        if dp.drain_time <= 0:
            errs.append(".DrainTime must be positive")
        return errs
    if dp.proxy_type not in _SUPPORTED_PROXY_TYPES:
        errs.append(f".ProxyType is not valid: {dp.proxy_type} is not a valid proxy type")
    if dp.mesh == "" and dp.proxy_type not in ("ingress", "egress"):
        errs.append(".Mesh must be non-empty")
    if dp.name == "":
        errs.append(".Name must be non-empty")
    if dp.drain_time <= 0:
        errs.append(".DrainTime must be positive")
    # Kuma rejects 0; we accept it on purpose: the readiness reporter then binds a free port and logs it,
    # so two proxies on one VM do not collide on 9902 (kumahq/kuma#11769). Out-of-range keeps Kuma's text.
    if not 0 <= dp.readiness_port <= 65535:
        errs.append(".ReadinessPort has to be in (0, 65535] range")
    # Ours (KUMA_READINESS_MAX_CONNECTIONS), worded as Kuma's other positive-value checks.
    if dp.readiness_max_connections < 1:
        errs.append(".ReadinessMaxConnections must be positive")
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
    if dns.core_dns_port > 65353:
        return [".CoreDNSPort has to be in [0, 65353] range"]
    if dns.envoy_dns_port > 65353:
        return [".EnvoyDNSPort has to be in [0, 65353] range"]
    if dns.prometheus_port > 65353:
        return [".PrometheusPort has to be in [0, 65353] range"]
    if dns.core_dns_binary_path == "":
        return [".CoreDNSBinaryPath cannot be empty"]
    # Ours: Kuma has no check and fails later, binding the embedded DNS proxy; 0 turns the proxy off.
    if dns.proxy_port > 65535:
        return [".ProxyPort has to be in [0, 65535] range"]
    # Ours: the DNS proxy's caps (KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS[_PER_SOURCE],
    # KUMA_DNS_PROXY_UPSTREAM_MAX_PENDING_QUERIES); 0 would refuse every client.
    if dns.proxy_tcp_max_connections < 1:
        return [".ProxyTCPMaxConnections must be positive"]
    if dns.proxy_tcp_max_connections_per_source < 1:
        return [".ProxyTCPMaxConnectionsPerSource must be positive"]
    if dns.proxy_upstream_max_pending_queries < 1:
        return [".ProxyUpstreamMaxPendingQueries must be positive"]
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
    """Raise ConfigError (`configuration validation failed: <Kuma's ;-joined messages>`) when invalid."""
    errs = validation_errors(cfg)
    if errs:
        raise ConfigError(f"{VALIDATION_PREFIX}: " + "; ".join(errs))
