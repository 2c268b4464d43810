"""The development control plane's `/bootstrap` endpoint, with kuma-cp's status codes.

`BootstrapService.handle(method, path, headers, body)` is pure request -> response logic over a small store
interface, so every status code is testable without a socket; `start_bootstrap_server` puts it behind a
threaded HTTP/1.1 server (plain or TLS, the handshake done in the connection's own thread) that the
`kuma-dp dev-cp` command starts next to the ADS server.

kuma-cp's order (pkg/xds/bootstrap/{handler,generator}.go): read the body (500) -> parse JSON (400, empty)
-> token required (422) -> Host in the certificate SANs (400) -> Dataplane from the request (validated: 422)
or from the store (404, empty) -> CA usable (400) -> render -> JSON or YAML by the `accept` header.

Deliberate differences: a 500 for a resource that cannot be parsed or rendered carries a one-line text body
(kuma-cp sends none; kuma-dp ignores 5xx bodies, a person with curl does not); the metrics `aggregate` list
comes from the Dataplane's own Prometheus settings only (the dev CP has no Mesh metrics backends).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import errno
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

from kuma_dp.bootstrap.render import (
    RenderError,
    RenderParams,
    dump_yaml,
    is_ip,
    parse_dataplane_resource,
    render_bootstrap,
)
from kuma_dp.component import Component
from kuma_dp.logs import EventLimiter
from kuma_dp_dev.devcp.state import StateError, parse_dataplane
from kuma_dp_dev.devcp.tls import TLSFiles, load_server_tls

log = logging.getLogger(__name__)

BOOTSTRAP_PATH = "/bootstrap"
PAGE_NOT_FOUND = "404: Page Not Found"
TOKEN_REQUIRED = (
    "Dataplane Token is required. Generate token using 'kumactl generate dataplane-token > /path/file' and "
    "provide it via --dataplane-token-file=/path/file argument to Kuma DP"
)
NOT_CA = (
    "A data plane proxy is trying to verify the control plane using the certificate which is not a "
    "certificate authority (basic constraint 'CA' is set to 'false').\n"
    "Provide CA that was used to sign a certificate used in the control plane by using "
    "'kuma-dp run --ca-cert-file=file' or via KUMA_CONTROL_PLANE_CA_CERT_FILE"
)
TPROXY_OUTBOUND = "outbound: should be empty since dataplane is in Transparent Proxying mode"

#: Request keys whose JSON type Go's decoder enforces (a mismatch is a parse error: 400).
_TYPES: dict[str, type | tuple[type, ...]] = {
    "mesh": str,
    "name": str,
    "proxyType": str,
    "dataplaneToken": str,
    "dataplaneTokenPath": str,
    "dataplaneResource": str,
    "caCert": str,
    "operatingSystem": str,
    "workdir": str,
    "systemCaPath": str,
    "version": dict,
    "dynamicMetadata": dict,
    "features": list,
    "resources": dict,
    "metricsResources": dict,
    "spireResources": dict,
    "dataplaneConfig": dict,
    "otelEnv": dict,
    "ipv6Enabled": bool,
    "appProbeProxyDisabled": bool,
    "dnsPort": int,
    "readinessPort": int,
}

Response = tuple[int, dict[str, str], bytes]


def san_mismatch_message(host: str, sans: list[str]) -> str:
    """kuma-cp's SANMismatchErr text (Go %q formatting of the host and the SAN list)."""
    quoted = " ".join(json.dumps(s) for s in sans)
    return (
        "A data plane proxy is trying to connect to the control plane using "
        f"{json.dumps(host)} address, but the certificate in the control plane has the following "
        f"SANs [{quoted}]. Either change the --cp-address in kuma-dp to one of those or execute the "
        "following steps:\n"
        "1) Generate a new certificate with the address you are trying to use. It is recommended to use "
        "trusted Certificate Authority, but you can also generate self-signed certificates using "
        f"'kumactl generate tls-certificate --type=server --hostname={host}'\n"
        "2) Set KUMA_GENERAL_TLS_CERT_FILE and KUMA_GENERAL_TLS_KEY_FILE or the equivalent in Kuma CP config "
        "file to the new certificate.\n"
        "3) Restart the control plane to read the new certificate and start kuma-dp."
    )


def certificate_sans(pem: str) -> list[str]:
    """DNS names and IPs of the first certificate in `pem`, sorted (kuma-cp's SANSet.slice())."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [str(n) for n in ext.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    return sorted(set(names))


def check_ca(pem: str) -> str | None:
    """NOT_CA when the PEM's first certificate says CA=false, a parse error text, or None when usable."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        return f"could not parse certificate from request .CaCert: {exc}"
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None  # a CA without the basic constraint is valid (kuma-cp checks only a present CA=false)
    return None if constraints.ca else NOT_CA


class DataplaneStore(Protocol):
    """What the service reads: `kuma_dp_dev.devcp.state.Store` satisfies it (its Dataplane has `.raw`)."""

    def mesh_exists(self, mesh: str) -> bool: ...

    def get_dataplane(self, mesh: str, name: str) -> Any: ...


def _resource_of(stored: Any) -> Mapping[str, Any] | None:
    """The resource mapping of a stored Dataplane: a mapping, or an object with `.raw` (state.Dataplane)."""
    if stored is None:
        return None
    if isinstance(stored, Mapping):
        return stored
    raw = getattr(stored, "raw", None)
    return raw if isinstance(raw, Mapping) else None


def _validate_resource(resource: Mapping[str, Any], mesh: str, name: str) -> str | None:
    """kuma-cp's Dataplane validation (422 text) for a resource sent in the request, or None if valid."""
    try:
        parse_dataplane(resource, mesh=mesh, name=name)
    except StateError as exc:
        return str(exc)
    networking = resource.get("networking") or {}
    if not isinstance(networking, Mapping):
        return None
    # kuma-cp: any transparentProxying section plus outbounds is refused, even with zero ports.
    if networking.get("transparentProxying") and networking.get("outbound"):
        return TPROXY_OUTBOUND
    return None


def aggregate_metrics(resource: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """kumaSidecarConfiguration.metrics.aggregate from the Dataplane's own Prometheus `aggregate` list.

    kuma-cp merges the Mesh backend's list with the Dataplane's overrides; the dev CP has no Mesh metrics
    backends, so only the Dataplane's entries apply: `enabled: false` drops one, an empty address is the
    Dataplane's address.
    """
    resource = resource or {}
    conf = ((resource.get("metrics") or {}).get("conf")) or {}
    address = str((resource.get("networking") or {}).get("address") or "")
    out: list[dict[str, Any]] = []
    for entry in conf.get("aggregate") or []:
        if not isinstance(entry, Mapping) or entry.get("enabled") is False:
            continue
        out.append(
            {
                "name": str(entry.get("name") or ""),
                "address": str(entry.get("address") or address),
                "port": int(entry.get("port") or 0),
                "path": str(entry.get("path") or ""),
            }
        )
    return out


def resolve_ips(host: str) -> list[str]:
    """The addresses `host` resolves to (kuma-cp: net.LookupIP); [] when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})


def dns_lookup_family(host: str, resolver: Callable[[str], list[str]]) -> str:
    """kuma-cp's dnsLookupFamilyFromXdsHost: V4_ONLY for a host name with only IPv4 addresses, else AUTO."""
    if host == "localhost" or is_ip(host) or not host:
        return "AUTO"
    ips = resolver(host)
    if ips and all(":" not in ip for ip in ips):
        return "V4_ONLY"
    return "AUTO"


def _host_without_port(host: str) -> str:
    """Go's net.SplitHostPort on the Host header, falling back to the header itself."""
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def _text(status: int, text: str) -> Response:
    return status, {"content-type": "text/plain; charset=utf-8"}, text.encode()


def _empty(status: int) -> Response:
    return status, {}, b""


@dataclass
class BootstrapService:
    """kuma-cp's bootstrap handler and generator over a store; pure (no sockets, no clock) unless given a
    `resolver`."""

    store: DataplaneStore
    params: RenderParams = dataclasses.field(default_factory=RenderParams)
    #: kuma-cp's default: xdsHost is the request's Host header (without port). False = `params.xds_host`
    #: (KUMA_BOOTSTRAP_SERVER_PARAMS_XDS_HOST) and no SAN check.
    xds_host_from_request: bool = False
    #: Token auth for dataplane/ingress/egress: a bootstrap without a token is refused (422).
    auth_enabled: bool = False
    #: The DP server's certificate: its SANs are what a request Host must match when the host comes from the
    #: request. None = no SAN check (plaintext dev CP).
    server_cert_pem: str | None = None
    #: Returned as kumaSidecarConfiguration.networking.corefileTemplate (kuma-cp's corefileTemplatePath).
    corefile_template: bytes | None = None
    #: kuma-cp resolves a non-localhost xDS host name and renders `dnsLookupFamily: V4_ONLY` when it has only
    #: IPv4 addresses. None keeps the service pure (no lookups); `resolve_ips` does what kuma-cp does.
    resolver: Callable[[str], list[str]] | None = None

    def __post_init__(self) -> None:
        self._sans = certificate_sans(self.server_cert_pem) if self.server_cert_pem else []
        if self.server_cert_pem and not self.xds_host_from_request and self.params.xds_host not in self._sans:
            raise ValueError(
                f"hostname: {self.params.xds_host} (the xDS host) is not available in the DP Server "
                f"certificate. Available hostnames: {self._sans}. Change the hostname or generate a "
                "certificate with it."
            )

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes | None) -> Response:
        """One HTTP exchange: (status, headers, body). `body` None means it could not be read (500)."""
        if urlsplit(path).path != BOOTSTRAP_PATH:
            return _text(404, PAGE_NOT_FOUND)
        if body is None:
            return _empty(500)
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply
            return _empty(400)
        if not isinstance(request, dict) or any(
            request.get(k) is not None
            and (not isinstance(request[k], t) or (t is int and isinstance(request[k], bool)))
            for k, t in _TYPES.items()
        ):
            return _empty(400)
        lower = {k.lower(): v for k, v in headers.items()}
        try:
            status, out_headers, out = self._generate(request, lower)
        except RecursionError:
            _events.log("nested", logging.WARNING, "bootstrap: refused a request nested too deeply (400)")
            return _text(400, "the request is nested too deeply")
        except Exception:
            # A bug, or input we did not foresee: the traceback once per kind and interval, never a flood.
            if _events.allow("generate-failed") is not None:
                log.exception("bootstrap: could not generate a bootstrap configuration")
            return _empty(500)
        log.info(
            "bootstrap mesh=%s name=%s status=%d", request.get("mesh", ""), request.get("name", ""), status
        )
        return status, out_headers, out

    def _generate(self, request: dict[str, Any], headers: Mapping[str, str]) -> Response:
        proxy_type = request.get("proxyType") or "dataplane"
        request["proxyType"] = proxy_type
        mesh = request.get("mesh") or ""
        name = request.get("name") or ""
        if self.auth_enabled and not request.get("dataplaneToken") and not request.get("dataplaneTokenPath"):
            return _text(422, TOKEN_REQUIRED)
        params = self.params
        if self.xds_host_from_request:
            host = _host_without_port(headers.get("host", ""))
            if self.server_cert_pem and host not in self._sans:
                return _text(400, san_mismatch_message(host, self._sans))
            if host:  # HTTP/1.0 without Host: keep the configured host
                params = dataclasses.replace(params, xds_host=host)
        if self.resolver is not None and params.xds_dns_lookup_family is None:
            family = dns_lookup_family(params.xds_host, self.resolver)
            params = dataclasses.replace(params, xds_dns_lookup_family=family)

        resource_text = request.get("dataplaneResource") or ""
        if resource_text:
            try:
                resource: Mapping[str, Any] | None = parse_dataplane_resource(resource_text)
            except RenderError as exc:
                return _text(500, str(exc))
            if proxy_type == "dataplane":
                if resource.get("type", "Dataplane") != "Dataplane":
                    return _text(500, "invalid resource")
                problem = _validate_resource(resource, mesh, name)
                if problem:
                    return _text(422, problem)
                res_mesh = str(resource.get("mesh") or mesh)
                if not self.store.mesh_exists(res_mesh):
                    return _text(422, f"mesh: mesh {json.dumps(res_mesh)} does not exist")
        else:
            resource = _resource_of(self.store.get_dataplane(mesh, name))
            if resource is None:
                return _empty(404)
            params = dataclasses.replace(params, dataplane=resource)

        if params.xds_tls and request.get("caCert"):
            problem = check_ca(request["caCert"])
            if problem:
                return _text(400, problem)
        try:
            bootstrap = render_bootstrap(request, params)
        except RenderError as exc:
            return _text(500, str(exc))
        yaml_bytes = dump_yaml(bootstrap).encode()
        if headers.get("accept") == "application/json":
            networking = (resource or {}).get("networking") or {}
            payload = {
                "bootstrap": base64.b64encode(yaml_bytes).decode(),
                "kumaSidecarConfiguration": {
                    "networking": {
                        "corefileTemplate": (
                            base64.b64encode(self.corefile_template).decode()
                            if self.corefile_template is not None
                            else None
                        ),
                        "address": str(networking.get("address") or ""),
                    },
                    "metrics": {
                        "aggregate": aggregate_metrics(resource) if proxy_type == "dataplane" else []
                    },
                },
            }
            return 200, {"content-type": "application/json"}, json.dumps(payload).encode()
        return 200, {"content-type": "text/x-yaml"}, yaml_bytes


# -- the HTTP edge ---------------------------------------------------------------------------------------


#: kuma-cp's bootstrap requests are a few KiB (the Dataplane, a CA): a body over this is refused with 413
#: from its Content-Length, or as soon as a chunked one passes it, before more is read.
MAX_REQUEST_BODY_BYTES = 1024 * 1024
#: A connection that sends nothing for this long (idle keep-alive, a half-sent request) is closed.
IDLE_TIMEOUT = 10.0
#: At most this many requests are served at once, each in its own thread; over it, a connection gets a 503
#: at once from the accepting thread instead of a thread of its own.
MAX_THREADS = 32
#: After an early answer (413), how long the client's remaining bytes are read and discarded before closing.
LINGER = 2.0

#: Rate-limited lines for what a client can trigger at will (kuma_dp.logs.EventLimiter).
_events = EventLimiter(log, 30.0)


class _ChunkError(Exception):
    pass


class _TooLarge(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kuma-dp-devcp"
    sys_version = ""
    timeout = IDLE_TIMEOUT  # socket timeout: BaseHTTPRequestHandler.setup applies it to every read
    service: ClassVar[BootstrapService]

    def _read_body(self) -> bytes | None:
        """The body, None when it could not be read; raises _TooLarge over MAX_REQUEST_BODY_BYTES."""
        try:
            if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
                return self._read_chunked()
            length = int(self.headers.get("content-length") or 0)
            if length < 0:
                return None
            if length > MAX_REQUEST_BODY_BYTES:
                raise _TooLarge(f"Content-Length {length}")
            data = self.rfile.read(length)
            return data if len(data) == length else None
        except (OSError, ValueError, _ChunkError):
            return None

    def _read_chunked(self) -> bytes:
        parts = []
        total = 0
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _ChunkError from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_REQUEST_BODY_BYTES:
                raise _TooLarge("chunked")
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise _ChunkError
            parts.append(chunk)
            self.rfile.readline(3)

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except _TooLarge as exc:
            _events.log(
                "too-large", logging.WARNING,
                "bootstrap-http: refused a request body from %s over the %d-byte limit (%s) with 413",
                self.client_address[0], MAX_REQUEST_BODY_BYTES, exc,
            )  # fmt: skip
            self.close_connection = True
            self._send(413, {"content-type": "text/plain; charset=utf-8"},
                       f"request body over the {MAX_REQUEST_BODY_BYTES}-byte limit\n".encode())  # fmt: skip
            self._linger()
            return
        if body is None:
            self.close_connection = True
        status, headers, payload = self.service.handle(self.command, self.path, dict(self.headers), body)
        self._send(status, headers, payload)

    def _linger(self) -> None:
        """nginx's lingering close: after answering early, stop sending and discard what the client still
        sends for at most LINGER seconds, so that closing does not reset the connection (a reset drops
        the answer from the client's receive buffer before it reads it)."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER
            self.connection.settimeout(0.5)
            while time.monotonic() < deadline and self.connection.recv(65536):
                pass
        except OSError:
            pass

    def _send(self, status: int, headers: Mapping[str, str], payload: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("content-length", str(len(payload)))
        if self.close_connection:
            self.send_header("connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("bootstrap-http %s " + format, self.address_string(), *args)


_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with bounds: at most MAX_THREADS request threads (a 503 beyond), each connection
    idle at most IDLE_TIMEOUT, and an accept that backs off with one log line when descriptors run out
    (socketserver retries a failed accept at once: a busy loop)."""

    daemon_threads = True
    block_on_close = False
    ssl_context: ssl.SSLContext | None = None
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_THREADS)
        self._backoff = 0.0

    def get_request(self) -> tuple[Any, Any]:
        try:
            request = super().get_request()
        except OSError as exc:
            if exc.errno in _EXHAUSTED:
                self._backoff = min(max(self._backoff * 2, 0.01), 1.0)
                _events.log(
                    "exhausted", logging.WARNING,
                    "bootstrap-http: cannot accept connections: %s; pausing accepts up to 1s (raise the "
                    "open-file limit, ulimit -n, if this is not an attack)", exc.strerror,
                )  # fmt: skip
                time.sleep(self._backoff)
            raise
        self._backoff = 0.0
        return request

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _events.log(
                "busy", logging.WARNING,
                "bootstrap-http: %d requests in progress; answered %s with 503",
                MAX_THREADS, client_address[0],
            )  # fmt: skip
            try:
                request.settimeout(1)
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs in the connection's thread, so a slow client cannot stall accept().
        if self.ssl_context is not None:
            request.settimeout(10)
            try:
                request = self.ssl_context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.debug("bootstrap-http TLS handshake with %s failed: %s", client_address, exc)
                return
            request.settimeout(None)
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("bootstrap-http connection from %s ended with an error", client_address, exc_info=True)


class BootstrapServer:
    """A running /bootstrap server: `.host`, `.port`, `.url`, `.close()` (also a context manager)."""

    def __init__(self, server: _Server, thread: threading.Thread, scheme: str) -> None:
        self._server = server
        self._thread = thread
        self.host, self.port = server.server_address[:2]
        self.scheme = scheme

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> BootstrapServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_bootstrap_server(
    service: BootstrapService, host: str = "127.0.0.1", port: int = 0, tls: TLSFiles | None = None
) -> BootstrapServer:
    """Serve `service` on host:port (0 = any free port) in a background thread; HTTPS when `tls` is given."""
    handler = type("BootstrapHandler", (_Handler,), {"service": service})
    server_cls: type[_Server] = _Server
    if ":" in host:
        server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    server = server_cls((host, port), handler)
    if tls is not None:
        server.ssl_context = load_server_tls(tls).context
    # A short poll interval keeps close() (shutdown waits for the loop to notice) quick.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="devcp-bootstrap-http", daemon=True
    )
    thread.start()
    handle = BootstrapServer(server, thread, "https" if tls else "http")
    log.info("bootstrap server listening url=%s", handle.url)
    return handle


class BootstrapServerComponent(Component):
    """The server as an asyncio component: serves until cancelled; `on_start(handle)` sees the bound port."""

    name = "devcp-bootstrap"

    def __init__(
        self,
        service: BootstrapService,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: TLSFiles | None = None,
        on_start: Callable[[BootstrapServer], None] | None = None,
    ) -> None:
        super().__init__()
        self._args = (service, host, port, tls)
        self._on_start = on_start
        self.server: BootstrapServer | None = None

    async def run(self) -> None:
        self.server = start_bootstrap_server(*self._args)
        try:
            if self._on_start is not None:
                self._on_start(self.server)
            self.ready.set()
            await asyncio.Event().wait()
        finally:
            await asyncio.to_thread(self.server.close)
