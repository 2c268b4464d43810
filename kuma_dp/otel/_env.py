"""The `OTEL_EXPORTER_OTLP_*` environment as Kuma reads it: app/kuma-dp/pkg/dataplane/otelenv/ (discovery.go,
runtime.go, types.go) and the wire types of pkg/core/xds/otel_env.go and otel_pipe.go.

`discover(pipe_enabled, env)` gives the layers (shared, traces, logs, metrics) and the inventory the bootstrap
request carries as `otelEnv` (`OtelBootstrapInventory`: which fields are present, never their values);
`resolve_backend(cfg, backend)` merges a `/otel` backend from the control plane with those layers, in the
precedence the backend's env policy sets (environment first by default, `ExplicitFirst` otherwise), giving
per signal where and how to forward.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

__all__ = [
    "BackendRuntime",
    "EnvConfig",
    "Layer",
    "SignalRuntime",
    "Transport",
    "discover",
    "resolve_backend",
]

SIGNALS = ("traces", "logs", "metrics")
_PREFIX = {
    "shared": "OTEL_EXPORTER_OTLP",
    "traces": "OTEL_EXPORTER_OTLP_TRACES",
    "logs": "OTEL_EXPORTER_OTLP_LOGS",
    "metrics": "OTEL_EXPORTER_OTLP_METRICS",
}
_FIELDS = (
    "endpoint",
    "protocol",
    "headers",
    "timeout",
    "compression",
    "insecure",
    "certificate",
    "client_certificate",
    "client_key",
)
GRPC, HTTP_PROTOBUF, UNKNOWN = "grpc", "http/protobuf", "unknown"
#: Blocked reasons that do not stop a signal (pkg/core/xds/otel_pipe.go `HasHardBlockedReason`).
SOFT_BLOCKS = frozenset({"EnvDisabledByPolicy", "SignalOverridesDisallowed"})


class Layer(NamedTuple):
    """One signal's (or the shared) `OTEL_EXPORTER_OTLP_*` variables; None = unset or blank."""

    signal: str
    endpoint: str | None = None
    protocol: str | None = None
    headers: str | None = None
    timeout: str | None = None
    compression: str | None = None
    insecure: str | None = None
    certificate: str | None = None
    client_certificate: str | None = None
    client_key: str | None = None


class EnvConfig(NamedTuple):
    pipe_enabled: bool
    shared: Layer
    traces: Layer
    logs: Layer
    metrics: Layer
    inventory: dict[str, Any]

    def layer(self, signal: str) -> Layer:
        return {"traces": self.traces, "logs": self.logs, "metrics": self.metrics}.get(signal, Layer(signal))


class Transport(NamedTuple):
    protocol: str = ""
    endpoint: str = ""
    use_tls: bool | None = None
    headers: tuple[tuple[str, str], ...] = ()
    compression: str = ""
    timeout: float = 0.0
    certificate: str = ""
    client_certificate: str = ""
    client_key: str = ""


class SignalRuntime(NamedTuple):
    enabled: bool = False
    blocked_reasons: tuple[str, ...] = ()
    http_path: str = ""
    transport: Transport = Transport()

    @property
    def hard_blocked(self) -> bool:
        return any(r not in SOFT_BLOCKS for r in self.blocked_reasons)

    @property
    def usable(self) -> bool:
        """run.go `metricsRuntimeUsable`, which also decides whether a receiver forwards at all."""
        t = self.transport
        if not self.enabled or self.hard_blocked or not t.protocol or not t.endpoint:
            return False
        return t.protocol != HTTP_PROTOBUF or bool(self.http_path)


class BackendRuntime(NamedTuple):
    traces: SignalRuntime
    logs: SignalRuntime
    metrics: SignalRuntime

    def signal(self, name: str) -> SignalRuntime:
        return {"traces": self.traces, "logs": self.logs, "metrics": self.metrics}[name]


# -- discovery ----------------------------------------------------------------------------------------------
def _parse_protocol(value: str) -> str | None:
    return value if value in (GRPC, HTTP_PROTOBUF) else None


def _parse_compression(value: str) -> str | None:
    v = value.lower()
    return "gzip" if v == "gzip" else ("" if v in ("none", "") else None)


def _parse_timeout(value: str) -> float | None:
    try:
        ms = int(value, 10)
    except ValueError:
        return None
    return ms / 1000 if ms >= 0 else None


def _go_url(value: str) -> tuple[str, str, str] | None:
    """(scheme, host, path) when Go's url.Parse gives both a scheme and a host, else None."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return parts.scheme, parts.netloc, parts.path


def _read_layer(signal: str, env: Mapping[str, str]) -> Layer:
    prefix = _PREFIX[signal]
    values = {}
    for name in _FIELDS:
        raw = env.get(f"{prefix}_{name.upper()}")
        values[name] = raw.strip() or None if raw is not None else None
    return Layer(signal, **values)


def _override_kinds(layer: Layer, shared: Layer | None) -> list[str]:
    if shared is None:
        return []
    pairs = [
        ("certificate", "certificate"),
        ("clientCertificate", "client_certificate"),
        ("clientKey", "client_key"),
        ("compression", "compression"),
        ("endpoint", "endpoint"),
        ("headers", "headers"),
        ("insecure", "insecure"),
        ("protocol", "protocol"),
        ("timeout", "timeout"),
    ]
    kinds = []
    for wire, attr in pairs:
        mine, theirs = getattr(layer, attr), getattr(shared, attr)
        if mine is not None and (theirs is None or mine != theirs):
            kinds.append(wire)
    return kinds


def _endpoint_protocol(layer: Layer, shared: Layer | None) -> str:
    for value in (layer.protocol, shared.protocol if shared else None):
        if value is None:
            continue
        return _parse_protocol(value) or UNKNOWN
    return GRPC


def _analyze(layer: Layer, shared: Layer | None) -> dict[str, Any] | None:
    """One `OtelSignalEnvInventory` in Go's JSON (omitempty: false, empty and nil are left out)."""
    inv: dict[str, Any] = {"signal": layer.signal}
    present = {
        "endpointPresent": layer.endpoint,
        "protocolPresent": layer.protocol,
        "headersPresent": layer.headers,
        "timeoutPresent": layer.timeout,
        "compressionPresent": layer.compression,
        "insecurePresent": layer.insecure,
        "certificatePresent": layer.certificate,
        "clientCertificatePresent": layer.client_certificate,
        "clientKeyPresent": layer.client_key,
    }
    errors: list[str] = []
    effective_protocol = ""
    if layer.protocol is not None:
        effective_protocol = _parse_protocol(layer.protocol) or UNKNOWN
        if effective_protocol == UNKNOWN:
            errors.append(f"{layer.signal}.protocol")
    parsed_url = has_path = False
    if layer.endpoint is not None:
        url = _go_url(layer.endpoint)
        if url is not None:
            parsed_url, has_path = True, url[2] != ""
            if has_path and _endpoint_protocol(layer, shared) == GRPC:
                errors.append(f"{layer.signal}.endpoint")
    if layer.compression is not None and _parse_compression(layer.compression) is None:
        errors.append(f"{layer.signal}.compression")
    if layer.timeout is not None and _parse_timeout(layer.timeout) is None:
        errors.append(f"{layer.signal}.timeout")
    if (layer.client_certificate is None) != (layer.client_key is None):
        errors.append(f"{layer.signal}.mtls")
    if layer.client_certificate is not None and layer.client_key is not None:
        auth = "mtls"
    elif layer.certificate is not None:
        auth = "tls"
    elif layer.headers is not None:
        auth = "headers"
    else:
        auth = "none"
    kinds = _override_kinds(layer, shared)
    if not any(v is not None for v in present.values()) and not kinds:
        return None
    # Go's struct field order
    inv["endpointPresent"] = layer.endpoint is not None
    inv["endpointParsedAsURL"] = parsed_url
    inv["endpointHasPath"] = has_path
    for key in (
        "protocolPresent",
        "headersPresent",
        "timeoutPresent",
        "compressionPresent",
        "insecurePresent",
        "certificatePresent",
        "clientCertificatePresent",
        "clientKeyPresent",
    ):
        inv[key] = present[key] is not None
    inv["effectiveProtocol"] = effective_protocol
    inv["effectiveAuthMode"] = auth
    inv["overrideKinds"] = kinds
    inv["validationErrors"] = errors
    return {k: v for k, v in inv.items() if v not in (False, "", [], None)}


def discover(pipe_enabled: bool, env: Mapping[str, str] | None = None) -> EnvConfig:
    """otelenv.Discover: read the four layers and build the bootstrap inventory (`otelEnv`)."""
    env = os.environ if env is None else env
    shared = _read_layer("shared", env)
    layers = {s: _read_layer(s, env) for s in SIGNALS}
    inventory: dict[str, Any] = {"pipeEnabled": pipe_enabled}
    errors: list[str] = []
    for name, layer, base in (("shared", shared, None), *((s, layers[s], shared) for s in SIGNALS)):
        inv = _analyze(layer, base)
        if inv is not None:
            inventory[name] = inv
            errors += inv.get("validationErrors", [])
    inventory["validationErrors"] = errors
    inventory = {k: v for k, v in inventory.items() if v not in (False, [], None)}
    return EnvConfig(pipe_enabled, shared, layers["traces"], layers["logs"], layers["metrics"], inventory)


# -- runtime resolution -------------------------------------------------------------------------------------
def _join(*parts: str) -> str:
    """Go's path.Join (cleaned; "" parts skipped)."""
    joined = posixpath.join(*[p for p in parts if p]) if any(parts) else ""
    return posixpath.normpath(joined) if joined else ""


def _resolve_endpoint_address(endpoint: str, host_ip: str | None) -> str:
    """An endpoint with an empty host (":4317") points at the node: HOST_IP, else 127.0.0.1."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or host or "[" in endpoint:
        return endpoint
    return f"{host_ip or '127.0.0.1'}:{port}"


def _parse_headers(value: str) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for pair in value.split(","):
        key, eq, val = pair.partition("=")
        if not eq or not key.strip():
            continue
        try:
            val = unquote(val, errors="strict")
        except UnicodeDecodeError:
            pass
        out[key.strip()] = val
    return tuple(sorted(out.items()))


def _plan_allows(plan: Mapping[str, Any], *, signal_specific: bool) -> bool:
    reasons = plan.get("blockedReasons") or []
    if "EnvDisabledByPolicy" in reasons or "MultipleBackendsForSignal" in reasons:
        return False
    return not (signal_specific and "SignalOverridesDisallowed" in reasons)


def _apply_layer_protocol(rt: SignalRuntime, layer: Layer) -> SignalRuntime:
    if layer.protocol is not None and _parse_protocol(layer.protocol):
        return rt._replace(transport=rt.transport._replace(protocol=layer.protocol))
    return rt


def _apply_layer_fields(rt: SignalRuntime, layer: Layer, signal: str, signal_specific: bool) -> SignalRuntime:
    t = rt.transport
    http_path = rt.http_path
    tls_from_scheme = False
    if layer.endpoint is not None:
        url = _go_url(layer.endpoint)
        if url is None:
            t = t._replace(endpoint=layer.endpoint)
        elif not (url[2] and t.protocol != HTTP_PROTOBUF):
            scheme, host, path = url
            t = t._replace(endpoint=host, use_tls=scheme.lower() not in ("http", "unix"))
            tls_from_scheme = True
            if t.protocol == HTTP_PROTOBUF:
                if signal_specific:
                    http_path = path or "/"
                else:
                    http_path = _join(path, "v1", signal) if path else f"/v1/{signal}"
    if not tls_from_scheme and layer.insecure is not None:
        insecure = _go_bool(layer.insecure)
        if insecure is not None:
            t = t._replace(use_tls=not insecure)
    if layer.headers is not None:
        headers = _parse_headers(layer.headers)
        if headers:
            t = t._replace(headers=headers)
    if layer.compression is not None:
        c = _parse_compression(layer.compression)
        if c is not None:
            t = t._replace(compression=c)
    if layer.timeout is not None:
        timeout = _parse_timeout(layer.timeout)
        if timeout is not None:
            t = t._replace(timeout=timeout)
    if layer.certificate is not None:
        t = t._replace(certificate=layer.certificate)
    if layer.client_certificate is not None and layer.client_key is not None:
        t = t._replace(client_certificate=layer.client_certificate, client_key=layer.client_key)
    return rt._replace(transport=t, http_path=http_path)


def _go_bool(value: str) -> bool | None:
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def _resolve_signal(
    cfg: EnvConfig, backend: Mapping[str, Any], signal: str, host_ip: str | None
) -> SignalRuntime:
    plan = backend.get(signal)
    if not isinstance(plan, Mapping) or not plan.get("enabled"):
        return SignalRuntime()
    rt = SignalRuntime(enabled=True, blocked_reasons=tuple(plan.get("blockedReasons") or ()))
    if plan.get("missingFields") or "RequiredEnvMissing" in rt.blocked_reasons:
        return rt  # IsHardBlocked: no resolution at all
    policy = backend.get("envPolicy") or {}
    prefer_env = policy.get("precedence") != "ExplicitFirst"
    use_http = bool(backend.get("useHTTP"))

    def explicit_protocol(r: SignalRuntime) -> SignalRuntime:
        return r._replace(transport=r.transport._replace(protocol=HTTP_PROTOBUF if use_http else GRPC))

    def explicit_fields(r: SignalRuntime) -> SignalRuntime:
        t = r.transport._replace(
            endpoint=_resolve_endpoint_address(str(backend.get("endpoint") or ""), host_ip),
            use_tls=bool(backend.get("useHTTPS")),
        )
        path = _join("/", str(backend.get("path") or ""), "v1", signal) if use_http else r.http_path
        return r._replace(transport=t, http_path=path)

    sources: list[tuple[Any, Any]] = []
    env_sources = []
    if _plan_allows(plan, signal_specific=False):
        env_sources.append(
            (
                lambda r: _apply_layer_protocol(r, cfg.shared),
                lambda r: _apply_layer_fields(r, cfg.shared, signal, False),
            )
        )
    if _plan_allows(plan, signal_specific=True):
        layer = cfg.layer(signal)
        env_sources.append(
            (
                lambda r, lay=layer: _apply_layer_protocol(r, lay),
                lambda r, lay=layer: _apply_layer_fields(r, lay, signal, True),
            )
        )
    explicit = (explicit_protocol, explicit_fields)
    sources = [explicit, *env_sources] if prefer_env else [*env_sources, explicit]
    for protocol_opt, _ in sources:  # protocol first: endpoint handling depends on it
        rt = protocol_opt(rt)
    for _, fields_opt in sources:
        rt = fields_opt(rt)
    if rt.transport.protocol == HTTP_PROTOBUF and not rt.http_path:
        rt = rt._replace(http_path=_join("/", str(backend.get("path") or ""), "v1", signal))
    return rt


def resolve_backend(cfg: EnvConfig, backend: Mapping[str, Any], host_ip: str | None = None) -> BackendRuntime:
    """otelenv `Config.ResolveBackend` for one `/otel` backend (`OtelPipeBackend` JSON)."""
    host_ip = host_ip if host_ip is not None else os.environ.get("HOST_IP")
    return BackendRuntime(*(_resolve_signal(cfg, backend, s, host_ip) for s in SIGNALS))
