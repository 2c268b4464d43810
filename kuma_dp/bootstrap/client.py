"""The bootstrap client: `POST <cp>/bootstrap` as Kuma v2.14's kuma-dp does
(`app/kuma-dp/pkg/dataplane/envoy/remote_bootstrap.go`; request types in
`pkg/xds/bootstrap/types/bootstrap_request.go`).

Three parts, split so that each is testable on its own:

* `params_from_config(...) -> BootstrapParams` and `build_request(params) -> dict`: pure; the request
  object with every v2.14 key in Kuma's emitted order (conformance-tested against Kuma's goldens);
* `parse_response(status, content_type, body) -> BootstrapResult`: pure; Kuma's status handling and both
  response formats (JSON with base64 bootstrap, legacy raw YAML);
* `fetch_bootstrap(cfg, request) -> BootstrapResult` (async): TLS, the 10 s per-request timeout and the retry
  policy (constant backoff within a total budget, both from `cfg.control_plane.retry`; `sleep`/`clock` are
  injectable for tests). When the budget is spent it raises `BootstrapError` with the last attempt's error;
  the `run` command prints `Failed to fetch Envoy bootstrap config. <error>` and exits 1.

TLS: a configured CA (`--ca-cert-file` / `KUMA_CONTROL_PLANE_CA_CERT`) is the **only** trusted root; without
one the system roots verify the CP (`ssl.create_default_context()`; Kuma <= 2.13 silently skipped
verification, we never do); `--skip-verify` disables verification with a loud warning. TLS >= 1.2.

The POST is spoken with the agent's own HTTP/1.1 (`Connection: close`) rather than an HTTP library:
httpx/httpcore/anyio cost ~100 ms of imports and several MiB of RSS. The first attempt is blocking
(`first_attempt_blocking`, kuma_dp._httpwire), so a start that needs one request reaches Envoy's exec without
importing asyncio; retries run in `fetch_bootstrap` over asyncio streams, going on from that first attempt.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from kuma_dp import _httpwire
from kuma_dp.bootstrap.features import (
    FEATURE_BIND_OUTBOUNDS,
    FEATURE_DELTA_GRPC,
    FEATURE_EMBEDDED_DNS,
    FEATURE_OTEL_VIA_KUMA_DP,
    FEATURE_REUSE_PORT,
    FEATURE_SPIRE,
    FEATURE_STRICT_INBOUND_PORTS,
    FEATURE_TCP_ACCESSLOG_VIA_NAMED_PIPE,
    FEATURE_TRANSPARENT_PROXY_IN_DATAPLANE_METADATA,
    FEATURE_UNIFIED_RESOURCE_NAMING,
)
from kuma_dp.config import RunConfig
from kuma_dp.dataplane import DataplaneResource, go_json
from kuma_dp.fsutil import atomic_write

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0

DP_NOT_FOUND = (
    "Dataplane entity not found. If you are running on Universal please create a Dataplane entity on "
    "kuma-cp before starting kuma-dp or pass it to kuma-dp run --dataplane-file=/file. If you are running "
    "on Kubernetes, please check the kuma-cp logs to determine why the Dataplane entity could not be "
    "created by the automatic sidecar injection."
)
API_PORT_HINT = (
    "There is no /bootstrap endpoint for provided CP address. Double check if the address passed to the CP "
    "has a DP Server port (5678 by default), not HTTP API (5681 by default)"
)
FETCH_FAILED_PREFIX = "Failed to fetch Envoy bootstrap config."


class BootstrapError(RuntimeError):
    """An attempt failed in a way Kuma retries (404 not found, 5xx, network, bad response)."""


class FatalBootstrapError(BootstrapError):
    """Not retried: other 4xx (`Invalid request: <body>`) or a local problem (bad CA, bad URL)."""


class MalformedBootstrapError(BootstrapError):
    """A 200 whose body is not a bootstrap (bad JSON, base64 or Envoy YAML): retried, and counted."""


@dataclass(frozen=True)
class BootstrapResult:
    """What the CP returned: the Envoy bootstrap YAML and `kumaSidecarConfiguration` ({} for legacy YAML)."""

    bootstrap_yaml: bytes
    sidecar_config: dict[str, Any] = field(default_factory=dict)
    #: The bootstrap as parsed when it was checked (kuma_dp.envoy.parse_bootstrap), for its admin address;
    #: None when not parsed yet.
    document: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def metrics_aggregate(self) -> list[dict[str, Any]]:
        """`kumaSidecarConfiguration.metrics.aggregate` (applications the metrics hijacker scrapes)."""
        metrics = self.sidecar_config.get("metrics") or {}
        return list(metrics.get("aggregate") or [])


# ------------------------------------------------------------------------------------------ the request


@dataclass
class BootstrapParams:
    """Everything the request carries; `build_request` lays it out. Field names follow the JSON keys."""

    mesh: str
    name: str
    proxy_type: str = "dataplane"
    token: str = field(default="", repr=False)
    token_path: str = ""
    resource_json: str = ""
    kuma_dp_version: dict[str, str] = field(default_factory=dict)
    envoy_version: dict[str, Any] = field(default_factory=dict)
    ca_cert: str = ""
    dynamic_metadata: dict[str, str] | None = None
    otel_env: dict[str, Any] | None = None
    dns_port: int = 0
    readiness_port: int = 0
    app_probe_proxy_enabled: bool = False
    operating_system: str = "linux"
    features: list[str] = field(default_factory=list)
    max_heap_size_bytes: int = 0
    workdir: str = ""
    metrics_cert_path: str = ""
    metrics_key_path: str = ""
    system_ca_path: str = ""
    dataplane_config: dict[str, Any] | None = None
    ipv6_enabled: bool = True
    spire_socket_path: str = ""


def build_request(p: BootstrapParams) -> dict[str, Any]:
    """The BootstrapRequest object in Kuma's key order; `omitempty` keys are left out when empty."""
    req: dict[str, Any] = {"mesh": p.mesh, "name": p.name, "proxyType": p.proxy_type}
    if p.token:
        req["dataplaneToken"] = p.token
    if p.token_path:
        req["dataplaneTokenPath"] = p.token_path
    if p.resource_json:
        req["dataplaneResource"] = p.resource_json
    req["version"] = {"kumaDp": dict(p.kuma_dp_version), "envoy": dict(p.envoy_version)}
    req["caCert"] = p.ca_cert
    req["dynamicMetadata"] = dict(p.dynamic_metadata) if p.dynamic_metadata is not None else None
    if p.otel_env is not None:
        # Go sends a non-nil *OtelBootstrapInventory from run.go, so `{}` goes out as is (omitempty only
        # drops nil); kuma_dp.otel.discover builds it.
        req["otelEnv"] = p.otel_env
    if p.dns_port:
        req["dnsPort"] = p.dns_port
    if p.readiness_port:
        req["readinessPort"] = p.readiness_port
    if p.app_probe_proxy_enabled:
        # Kuma's wire name says "disabled", the value means enabled (kumahq/kuma#13885).
        req["appProbeProxyDisabled"] = True
    req["operatingSystem"] = p.operating_system
    req["features"] = list(p.features)
    req["resources"] = {"maxHeapSizeBytes": p.max_heap_size_bytes}
    req["workdir"] = p.workdir
    req["metricsResources"] = {"certPath": p.metrics_cert_path, "keyPath": p.metrics_key_path}
    req["systemCaPath"] = p.system_ca_path
    if p.dataplane_config is not None:
        req["dataplaneConfig"] = p.dataplane_config
    req["ipv6Enabled"] = p.ipv6_enabled
    req["spireResources"] = {"socketPath": p.spire_socket_path}
    return req


def request_body(request: Mapping[str, Any]) -> bytes:
    """The body as Kuma writes it: one-space indent, Go's JSON escaping."""
    return go_json(dict(request), indent=1).encode()


def compute_features(cfg: RunConfig, *, transparent_proxy: bool) -> list[str]:
    """The `features` list, in the order Kuma's `app/kuma-dp/cmd/run.go` builds it (the strings are
    `pkg/core/xds/types/features.go`)."""
    rt = cfg.dataplane_runtime
    out = [FEATURE_TCP_ACCESSLOG_VIA_NAMED_PIPE]
    if rt.otel_pipe_enabled:
        out.append(FEATURE_OTEL_VIA_KUMA_DP)
    if cfg.dns.enabled and cfg.dns.proxy_port != 0:
        out.append(FEATURE_EMBEDDED_DNS)
    if transparent_proxy:
        out.append(FEATURE_TRANSPARENT_PROXY_IN_DATAPLANE_METADATA)
    if rt.bind_outbounds:
        out.append(FEATURE_BIND_OUTBOUNDS)
    if rt.envoy_xds_transport_protocol_variant == "DELTA_GRPC":
        out.append(FEATURE_DELTA_GRPC)
    if rt.unified_resource_naming_enabled:
        out.append(FEATURE_UNIFIED_RESOURCE_NAMING)
    if rt.spire_supported:
        out.append(FEATURE_SPIRE)
    if rt.strict_inbound_ports_enabled:
        out.append(FEATURE_STRICT_INBOUND_PORTS)
    if rt.reuse_port_enabled:
        out.append(FEATURE_REUSE_PORT)
    return out


def detect_max_heap_bytes(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The cgroup memory limit (v1 `memory.limit_in_bytes`, v2 `memory.max`); 0 for `max` or no file."""
    root = Path(cgroup_root)
    for name in ("memory.limit_in_bytes", "memory.max"):
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        try:
            return int(text)
        except ValueError:
            return 0
    return 0


def host_has_ipv6(proc_file: str = "/proc/net/if_inet6") -> bool:
    """True when an interface other than loopback has an IPv6 address (else Kuma sends false)."""
    try:
        lines = Path(proc_file).read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and parts[5] != "lo" and parts[0] != "0" * 31 + "1":
            return True
    return False


#: Where Kuma looks for the OS CA bundle, in its order (`GetOsCaFilePath` in
#: app/kuma-dp/pkg/dataplane/certificate/cert.go, after Go's crypto/x509/root_linux.go).
OS_CA_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian/Ubuntu/Gentoo etc.
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora/RHEL 6
    "/etc/ssl/ca-bundle.pem",  # OpenSUSE
    "/etc/pki/tls/cacert.pem",  # OpenELEC
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # CentOS/RHEL 7
    "/etc/ssl/cert.pem",  # Alpine Linux
)


def system_ca_bundle(candidates: tuple[str, ...] = OS_CA_FILES) -> str:
    """The OS CA bundle path Envoy can use (`systemCaPath`): the first of Kuma's paths that exists (os.Stat,
    so any kind of file), "" when none does; logged as Kuma logs it."""
    for path in candidates:
        if os.path.exists(path):
            log.info("using OS provided CA certificate certificate path=%s", path)
            return path
    log.info("OS provided certificate not found")
    return ""


def kuma_dp_version_info() -> dict[str, str]:
    """Our build info in Kuma's `version.kumaDp` shape."""
    from kuma_dp.versions import build_info

    return build_info()


def params_from_config(
    cfg: RunConfig,
    *,
    dataplane: DataplaneResource | None,
    token: str = "",
    token_path: str = "",
    envoy_version: Mapping[str, Any],
    workdir: str,
    features: list[str] | None = None,
    dynamic_metadata: dict[str, str] | None = None,
    dataplane_config: dict[str, Any] | None = None,
    kuma_dp_version: Mapping[str, str] | None = None,
    operating_system: str | None = None,
    max_heap_size_bytes: int | None = None,
) -> BootstrapParams:
    """Map the run configuration (+ resolved dataplane, token, Envoy version) to request parameters.

    `dataplane_config` is the transparent-proxy `dataplaneConfig` (None = not sent). `max_heap_size_bytes`
    None = `max_memory_bytes` or, when 0, the cgroup limit. `features` None = `compute_features`.
    """
    rt = cfg.dataplane_runtime
    dp = cfg.dataplane
    if max_heap_size_bytes is None:
        max_heap_size_bytes = rt.max_memory_bytes or detect_max_heap_bytes()
    if features is None:
        features = compute_features(cfg, transparent_proxy=dataplane_config is not None)
    return BootstrapParams(
        mesh=dataplane.mesh if dataplane is not None else dp.mesh,
        name=dataplane.name if dataplane is not None else dp.name,
        proxy_type=dp.proxy_type,
        token=token,
        token_path=token_path,
        resource_json=dataplane.to_request_json() if dataplane is not None else "",
        kuma_dp_version=dict(kuma_dp_version) if kuma_dp_version is not None else kuma_dp_version_info(),
        envoy_version=dict(envoy_version),
        ca_cert=cfg.control_plane.ca_cert,
        dynamic_metadata=dynamic_metadata,
        # Kuma <= 2.14 sends the Envoy DNS port, even with the embedded proxy (`DNSPort:
        # opts.Config.DNS.EnvoyDNSPort` in `remote_bootstrap.go`).
        dns_port=cfg.dns.envoy_dns_port if cfg.dns.enabled else 0,
        readiness_port=dp.readiness_port,
        app_probe_proxy_enabled=cfg.application_probe_proxy_port > 0,
        operating_system=operating_system or sys.platform.replace("win32", "windows"),
        features=list(features),
        max_heap_size_bytes=max_heap_size_bytes,
        workdir=rt.socket_dir or workdir,
        metrics_cert_path=rt.metrics.cert_path,
        metrics_key_path=rt.metrics.key_path,
        system_ca_path=rt.system_ca_path,
        dataplane_config=dataplane_config,
        ipv6_enabled=rt.ipv6_enabled,
        spire_socket_path=rt.spire_socket_path,
    )


def transparent_proxy_dataplane_config(cfg: RunConfig) -> dict[str, Any] | None:
    """`dataplaneConfig` for `--transparent-proxy[-config]` (None without them).

    Uses the installer's loader (`iptables.config.load_config`, same schema as `kumactl install
    transparent-proxy --config`); the DNS redirect is overridden by kuma-dp's own DNS settings, as in Kuma.
    """
    rt = cfg.dataplane_runtime
    if not rt.transparent_proxy and not rt.transparent_proxy_config:
        return None
    if not sys.platform.startswith("linux"):
        raise FatalBootstrapError("transparent proxy is supported only on Linux systems")
    from iptables.config import ConfigError as TProxyConfigError
    from iptables.config import load_config as load_tproxy_config

    try:
        tp = load_tproxy_config(rt.transparent_proxy_config, env={})
    except TProxyConfigError as exc:
        raise FatalBootstrapError(f"--transparent-proxy-config: {exc}") from None
    return tp.dataplane_config(dns_enabled=cfg.dns.enabled, dns_port=cfg.dns.proxy_port)


# ------------------------------------------------------------------------------------------ the response


def parse_response(status: int, content_type: str, body: bytes) -> BootstrapResult:
    """Kuma's status handling (`requestForBootstrap` in `remote_bootstrap.go`) and both response formats
    (JSON with the bootstrap base64-encoded, and the legacy raw YAML)."""
    if status != 200:
        text = body.decode("utf-8", "replace")
        if status == 404 and not body:
            raise BootstrapError(DP_NOT_FOUND)
        if status == 404 and text.strip() == "404: Page Not Found":
            raise BootstrapError(API_PORT_HINT)
        if 400 <= status < 500:
            raise FatalBootstrapError(f"Invalid request: {text}")
        raise BootstrapError(f"unexpected status code: {status}")
    sidecar: dict[str, Any] = {}
    if content_type.split(";")[0].strip().lower() == "application/json":
        try:
            doc = json.loads(body)
            raw = doc.get("bootstrap")
            bootstrap = base64.b64decode(raw, validate=True) if raw else b""
        except (ValueError, AttributeError, TypeError, binascii.Error) as exc:
            raise MalformedBootstrapError(f"could not parse the bootstrap response: {exc}") from None
        sidecar = doc.get("kumaSidecarConfiguration") or {}
        if not isinstance(sidecar, dict):
            sidecar = {}
    else:
        bootstrap = body
    # Bounded whatever the size (kuma_dp.envoy.parse_bootstrap): a huge bootstrap must not stall the loop,
    # the request timeout or a SIGTERM.
    from kuma_dp.envoy import BootstrapFormatError, parse_bootstrap

    try:
        document = parse_bootstrap(bootstrap)
    except BootstrapFormatError as exc:
        raise MalformedBootstrapError(
            f"could not parse the Envoy bootstrap from the control plane: {exc}"
        ) from None
    return BootstrapResult(bootstrap_yaml=bootstrap, sidecar_config=sidecar, document=document)


def write_bootstrap(work_dir: str | os.PathLike[str], result: BootstrapResult | bytes) -> Path:
    """`<work_dir>/bootstrap.yaml`, 0600, atomically (Envoy or an operator never sees half a file); not
    synced to disk, as Kuma's `os.WriteFile` does not: it is fetched anew on every start."""
    data = result.bootstrap_yaml if isinstance(result, BootstrapResult) else result
    return atomic_write(Path(work_dir) / "bootstrap.yaml", data, mode=0o600, durable=False)


# ------------------------------------------------------------------------------------------ transport


def bootstrap_url(cp_url: str) -> str:
    """Only scheme, host and port of `--cp-address` count; the path is always /bootstrap."""
    parts = urlsplit(cp_url)
    if parts.scheme not in ("http", "https"):
        raise FatalBootstrapError(f'unsupported scheme "{parts.scheme}". Use one of [http https]')
    return urlunsplit((parts.scheme, parts.netloc, "/bootstrap", "", ""))


def ssl_context(cfg: RunConfig) -> ssl.SSLContext:
    """TLS to the CP: the configured CA as the only root, else the system roots; TLS >= 1.2."""
    import ssl

    cp = cfg.control_plane
    if cp.skip_verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif cp.ca_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            ctx.load_verify_locations(cadata=cp.ca_cert)
        except (ssl.SSLError, ValueError) as exc:
            source = f"--ca-cert-file {cp.ca_cert_file}" if cp.ca_cert_file else "KUMA_CONTROL_PLANE_CA_CERT"
            raise FatalBootstrapError(
                f"could not use the CA certificate from {source}: {exc}; pass a PEM certificate"
            ) from None
    else:
        ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _describe_transport_error(exc: BaseException, cfg: RunConfig) -> str:
    import ssl

    detail = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        detail = f"no answer within {REQUEST_TIMEOUT:g}s (context deadline exceeded)"
    elif isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        detail = exc.strerror
    msg = f"request to bootstrap server failed: {detail}"
    if "CERTIFICATE_VERIFY_FAILED" in detail or "certificate verify failed" in detail:
        if cfg.control_plane.ca_cert:
            msg += (
                " (the control plane's certificate is not signed by the CA given with --ca-cert-file / "
                "KUMA_CONTROL_PLANE_CA_CERT, or does not name the --cp-address host; pass the right CA)"
            )
        else:
            msg += (
                " (the control plane's certificate is not trusted by the system CAs; pass the CA that "
                "signed it with --ca-cert-file or KUMA_CONTROL_PLANE_CA_CERT)"
            )
    return msg


def _target(url: str) -> tuple[str, int, str, dict[str, str]]:
    """Host, port, path and headers of the POST to `url`."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    headers = {
        "Host": parts.netloc.rpartition("@")[2],
        "User-Agent": f"kuma-dp/{_our_version()}",
        "accept": "application/json",
        "content-type": "application/json",
    }
    return host, port, parts.path or "/", headers


async def _exchange(url: str, body: bytes, ctx: ssl.SSLContext | None) -> _httpwire.Response:
    """One POST on a fresh connection (HTTP/1.1, Connection: close), with the agent's small HTTP module:
    the agent makes this one request per start, and an HTTP library would cost start-up time and resident
    memory for nothing."""
    from kuma_dp import _http

    host, port, path, headers = _target(url)
    return await _http.request("POST", path, host=host, port=port, headers=headers, body=body, ssl=ctx)


def _our_version() -> str:
    from kuma_dp import __version__

    return __version__


def _transport_failed(exc: BaseException, cfg: RunConfig) -> BootstrapError:
    """The BootstrapError (retried) for an attempt that got no usable HTTP response."""
    if isinstance(exc, _httpwire.HttpError):
        if isinstance(exc, _httpwire.BodyTooLarge):
            _count_rejection("too_large")
        # The transport's own exception (TLS verification, refused, reset) words the message best.
        cause = exc.__cause__
        exc = cause if isinstance(cause, OSError | EOFError) else exc
    return BootstrapError(_describe_transport_error(exc, cfg))


def _checked(resp: _httpwire.Response) -> BootstrapResult:
    try:
        return parse_response(resp.status, resp.headers.get("content-type", ""), resp.body)
    except MalformedBootstrapError:
        _count_rejection("malformed")
        raise


def _attempt_blocking(
    url: str, body: bytes, ctx: ssl.SSLContext | None, cfg: RunConfig, timeout: float
) -> BootstrapResult:
    """`_attempt` without an event loop (kuma_dp._httpwire.blocking_request): the same request, parser,
    limits, timeout and error texts."""
    host, port, path, headers = _target(url)
    try:
        resp = _httpwire.blocking_request(
            "POST", path, host=host, port=port, headers=headers, body=body, timeout=timeout, ssl=ctx
        )
    except (_httpwire.HttpError, OSError, EOFError, ValueError) as exc:
        raise _transport_failed(exc, cfg) from None
    return _checked(resp)


async def _attempt(
    url: str, body: bytes, ctx: ssl.SSLContext | None, cfg: RunConfig, timeout: float
) -> BootstrapResult:
    import asyncio

    try:
        async with asyncio.timeout(timeout):
            resp = await _exchange(url, body, ctx)
    except (
        _httpwire.HttpError,
        OSError,
        TimeoutError,
        EOFError,
        ValueError,
        asyncio.LimitOverrunError,
    ) as exc:
        raise _transport_failed(exc, cfg) from None
    return _checked(resp)


def _count_rejection(reason: str) -> None:
    """kuma_dp_bootstrap_rejections (and, for a body over the cap, kuma_dp_http_body_too_large), in the
    process-wide registry the hijacker serves; imported here, on the failure path only."""
    from kuma_dp.metrics import agent_metrics

    metrics = agent_metrics()
    metrics.bootstrap_rejected(reason)
    if reason == "too_large":
        metrics.body_too_large("control_plane")


def _prepare(
    cfg: RunConfig, request: Mapping[str, Any], *, warn: bool = True
) -> tuple[str, bytes, ssl.SSLContext | None]:
    """URL, body and TLS context of the POST (FatalBootstrapError for a bad URL or CA); `warn`: say once
    that TLS verification is off."""
    url = bootstrap_url(cfg.control_plane.url)
    body = request_body(request)
    ctx: ssl.SSLContext | None = None
    if url.startswith("https:"):
        ctx = ssl_context(cfg)
        if cfg.control_plane.skip_verify and warn:
            log.warning(
                "TLS verification of the control plane is DISABLED (--skip-verify / "
                "KUMA_CONTROL_PLANE_TLS_SKIP_VERIFY): anyone on the path can impersonate the control plane "
                "and receive the dataplane token. Use --ca-cert-file instead."
            )
    return url, body, ctx


@dataclass
class FirstAttempt:
    """What `first_attempt_blocking` found: a result, or the retryable failure `fetch_bootstrap` goes on
    from (`prior_failure`, `started`)."""

    result: BootstrapResult | None
    failure: BootstrapError | None
    started: float


def first_attempt_blocking(
    cfg: RunConfig,
    request: Mapping[str, Any],
    *,
    clock: Callable[[], float] = time.monotonic,
    request_timeout: float = REQUEST_TIMEOUT,
    on_attempt: Callable[[bool, float], None] | None = None,
) -> FirstAttempt:
    """The first POST, blocking, before any event loop exists.

    Most starts need only this one request, and without a loop `kuma-dp run` can spawn Envoy before it
    imports asyncio at all (kuma_dp/launch.py). A retryable failure is returned for `fetch_bootstrap` to
    continue from (its log line, backoff and budget then as if it had made this attempt itself); a fatal one
    (other 4xx, a bad CA or URL) raises FatalBootstrapError as `fetch_bootstrap` would.
    """
    started = clock()
    url, body, ctx = _prepare(cfg, request)
    try:
        result = _attempt_blocking(url, body, ctx, cfg, request_timeout)
    except FatalBootstrapError:
        if on_attempt:
            on_attempt(False, clock() - started)
        raise
    except BootstrapError as exc:
        if on_attempt:
            on_attempt(False, clock() - started)
        return FirstAttempt(None, exc, started)
    if on_attempt:
        on_attempt(True, clock() - started)
    return FirstAttempt(result, None, started)


async def fetch_bootstrap(
    cfg: RunConfig,
    request: Mapping[str, Any],
    *,
    sleep: Callable[[float], Awaitable[Any]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    request_timeout: float = REQUEST_TIMEOUT,
    on_attempt: Callable[[bool, float], None] | None = None,
    prior_failure: BootstrapError | None = None,
    started: float | None = None,
) -> BootstrapResult:
    """POST the request until it succeeds, a fatal error occurs, or the retry budget is spent.

    Retry timing follows go-retry's constant backoff with max duration: after a failed attempt, stop when
    the budget is spent, otherwise wait `min(backoff, remaining)` and try again. `on_attempt(ok, seconds)`
    hears every attempt (the agent's kuma_dp_bootstrap_* metrics and CP reachability). `prior_failure`: the
    first attempt was already made (`first_attempt_blocking`, at `started`) and failed with it; the loop
    goes on from there.
    """
    import asyncio

    sleep = sleep or asyncio.sleep
    url, body, ctx = _prepare(cfg, request, warn=prior_failure is None)
    backoff = cfg.control_plane.retry.backoff
    budget = cfg.control_plane.retry.max_duration
    start = clock() if started is None else started
    attempt = 0
    failure = prior_failure
    while True:
        attempt += 1
        if failure is None:
            began = clock()
            try:
                result = await _attempt(url, body, ctx, cfg, request_timeout)
            except FatalBootstrapError:
                if on_attempt:
                    on_attempt(False, clock() - began)
                raise
            except BootstrapError as exc:
                if on_attempt:
                    on_attempt(False, clock() - began)
                failure = exc
            else:
                if on_attempt:
                    on_attempt(True, clock() - began)
                return result
        exc, failure = failure, None
        remaining = budget - (clock() - start)
        if remaining <= 0:
            raise exc
        if str(exc) == DP_NOT_FOUND:
            log.info(
                "Dataplane entity is not yet found in the Control Plane. If you are running on "
                "Kubernetes, CP is most likely still in the process of converting Pod to Dataplane. "
                "If it takes too long, check kuma-cp logs. Retrying. backoff=%gs attempt=%d",
                backoff,
                attempt,
            )
        else:
            log.info(
                "could not fetch bootstrap configuration, make sure you are not trying to connect to "
                "global-cp. retrying (this could help only if you're connecting to zone-cp). "
                "backoff=%gs attempt=%d err=%s",
                backoff,
                attempt,
                exc,
            )
        await sleep(min(backoff, remaining))
