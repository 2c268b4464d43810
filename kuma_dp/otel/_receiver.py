"""One OpenTelemetry pipe backend: an OTLP gRPC receiver (traces, logs, metrics) on the backend's unix socket,
and per signal a forwarder to the real collector, over gRPC or OTLP/HTTP as the resolved runtime says.

Follows app/kuma-dp/pkg/dataplane/otelreceiver/ (manager.go `startBackend`, transport.go senders), with one
deliberate difference: Kuma forwards inside Envoy's export call, so a slow or absent collector holds Envoy's
exporter; here the receiver answers at once and a bounded buffer (count and bytes) feeds one sender per
signal that retries with backoff. What cannot be buffered or delivered is dropped and counted
(`kuma_dp_otel_dropped_requests_total{reason}`), never pushed back to Envoy.

Payloads are forwarded as the bytes Envoy sent (the `Export*ServiceRequest` protobuf), so nothing is decoded
on the way. grpcio is imported only here, and this module only when a backend is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import ssl
import stat
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from kuma_dp import _http
from kuma_dp.metrics._agent import AgentMetrics
from kuma_dp.otel._env import HTTP_PROTOBUF, BackendRuntime, SignalRuntime

log = logging.getLogger(__name__)

__all__ = ["EXPORT_METHODS", "BackendReceiver", "SignalForwarder", "TlsConfigError"]

#: gRPC method -> signal, the three OTLP collector services.
EXPORT_METHODS = {
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export": "traces",
    "/opentelemetry.proto.collector.logs.v1.LogsService/Export": "logs",
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export": "metrics",
}
_METHOD_FOR = {v: k for k, v in EXPORT_METHODS.items()}
MAX_BUFFERED_REQUESTS = 1024
MAX_BUFFERED_BYTES = 16 * 1024 * 1024
MAX_ATTEMPTS = 5
#: Exports in flight per signal: enough to keep one HTTP/2 connection busy, few enough to bound memory.
EXPORT_CONCURRENCY = 4
DEFAULT_TIMEOUT = 10.0
_RETRYABLE_GRPC = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DATA_LOSS,
}
_RETRYABLE_HTTP = {429, 502, 503, 504}


class _Rejected(Exception):
    """The collector refused the payload for good (no retry)."""


class TlsConfigError(ValueError):
    """A CA, client certificate or key file that cannot be used; the backend's receiver does not start."""


MAX_PEM_BYTES = 4 * 1024 * 1024


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise TlsConfigError(f"could not read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_BYTES:
        raise TlsConfigError(f"{what} {path} is larger than {MAX_PEM_BYTES} bytes")
    return data


def _system_roots() -> bytes | None:
    """The OS trust store, which Kuma's Go client uses when no CA is configured (grpcio would otherwise
    use the roots bundled with it, ignoring a CA the host added)."""
    paths = ssl.get_default_verify_paths()
    for path in (paths.cafile, paths.openssl_cafile):
        if path and os.path.isfile(path):
            with contextlib.suppress(OSError):
                return _read(path, "system CA bundle")
    return None


def _split_endpoint(endpoint: str, use_tls: bool) -> tuple[str, int]:
    """OTLP/HTTP `host[:port]` as Go's url.URL{Host: endpoint} dials it: no port = the scheme's (443/80)."""
    default = 443 if use_tls else 80
    if endpoint.startswith("["):
        host, _, rest = endpoint[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif endpoint.count(":") == 1:
        host, _, port = endpoint.partition(":")
    else:
        host, port = endpoint, ""
    if not port:
        return host, default
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid port in OTLP endpoint {endpoint!r}")
    return host, int(port)


@dataclass
class _Item:
    payload: bytes
    enqueued: float


class SignalForwarder:
    """A bounded FIFO and the one task that drains it to the collector."""

    def __init__(
        self,
        backend: str,
        signal: str,
        runtime: SignalRuntime,
        metrics: AgentMetrics | None,
        *,
        max_requests: int = MAX_BUFFERED_REQUESTS,
        max_bytes: int = MAX_BUFFERED_BYTES,
        base_backoff: float = 0.2,
        max_backoff: float = 5.0,
        concurrency: int = EXPORT_CONCURRENCY,
    ) -> None:
        self.backend, self.signal, self.runtime = backend, signal, runtime
        self.metrics = metrics
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.base_backoff, self.max_backoff = base_backoff, max_backoff
        self.concurrency = max(1, concurrency)
        self._queue: deque[_Item] = deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self._channel: aio.Channel | None = None
        self._ssl: ssl.SSLContext | None = None
        self._grpc_creds: grpc.ChannelCredentials | None = None
        self.forwarded = 0
        self.dropped = 0
        self._last_error_log = 0.0

    # -- intake (the receiver's handler: never blocks) ------------------------------------------------------
    def offer(self, payload: bytes) -> bool:
        if len(self._queue) >= self.max_requests or self._bytes + len(payload) > self.max_bytes:
            self._drop("buffer_full")
            return False
        self._queue.append(_Item(payload, time.monotonic()))
        self._bytes += len(payload)
        self._gauge()
        self._wake.set()
        return True

    @property
    def buffered(self) -> tuple[int, int]:
        return len(self._queue), self._bytes

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.otel_buffered_bytes.labels(backend=self.backend, signal=self.signal).set(self._bytes)

    def _drop(self, reason: str, count: int = 1) -> None:
        self.dropped += count
        if self.metrics is not None:
            self.metrics.otel_dropped.labels(backend=self.backend, signal=self.signal, reason=reason).inc(
                count
            )

    # -- TLS ------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Load and check the TLS material now, as Kuma's transport.go `newTLSConfig` does when it builds
        the sender: an unreadable or unparsable CA, or a client key that does not match its certificate,
        fails the backend's start with one error naming the file, instead of every export failing later.
        The files are read once; a rotated file takes effect when the backend is reconfigured."""
        t = self.runtime.transport
        if not t.use_tls:
            return
        if bool(t.client_certificate) != bool(t.client_key):
            raise TlsConfigError("both client certificate and client key must be provided")
        ca = _read(t.certificate, "certificate") if t.certificate else None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # newTLSConfig's MinVersion
        if ca is None:
            ctx.load_default_certs()  # Go's system pool
        else:  # only the configured CA, like Go's RootCAs
            try:
                ctx.load_verify_locations(cadata=ca.decode("ascii", "replace"))
            except ssl.SSLError:
                raise TlsConfigError(f"failed to parse root certificate {t.certificate}") from None
        chain = key = None
        if t.client_certificate and t.client_key:
            chain = _read(t.client_certificate, "client certificate")
            key = _read(t.client_key, "client key")
            try:
                ctx.load_cert_chain(t.client_certificate, t.client_key)
            except (ssl.SSLError, OSError):
                raise TlsConfigError(
                    "could not create key pair from client cert and client key "
                    f"{t.client_certificate}, {t.client_key}"
                ) from None
        self._ssl = ctx
        if t.protocol != HTTP_PROTOBUF:
            self._grpc_creds = grpc.ssl_channel_credentials(
                root_certificates=ca if ca is not None else _system_roots(),
                private_key=key,
                certificate_chain=chain,
            )

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self.prepare()
        assert self._ssl is not None
        return self._ssl

    # -- sending --------------------------------------------------------------------------------------------
    def _grpc_channel(self) -> aio.Channel:
        if self._channel is None:
            t = self.runtime.transport
            if t.use_tls:
                if self._grpc_creds is None:
                    self.prepare()
                self._channel = aio.secure_channel(t.endpoint, self._grpc_creds)
            else:
                self._channel = aio.insecure_channel(t.endpoint)
        return self._channel

    async def _send_grpc(self, payload: bytes) -> None:
        t = self.runtime.transport
        call = self._grpc_channel().unary_unary(_METHOD_FOR[self.signal])  # bytes in, bytes out
        try:
            await call(
                payload,
                timeout=t.timeout or DEFAULT_TIMEOUT,
                metadata=tuple((k.lower(), v) for k, v in t.headers) or None,
                compression=grpc.Compression.Gzip if t.compression == "gzip" else None,
            )
        except aio.AioRpcError as exc:
            if exc.code() in _RETRYABLE_GRPC:
                raise ConnectionError(f"{exc.code().name}: {exc.details()}") from None
            raise _Rejected(f"{exc.code().name}: {exc.details()}") from None

    async def _send_http(self, payload: bytes) -> None:
        t = self.runtime.transport
        host, port = _split_endpoint(t.endpoint, bool(t.use_tls))
        headers = {"Content-Type": "application/x-protobuf", **dict(t.headers)}
        body = payload
        if t.compression == "gzip":
            body = gzip.compress(payload)
            headers["Content-Encoding"] = "gzip"
        try:
            resp = await _http.request(
                "POST",
                self.runtime.http_path or "/",
                host=host,
                port=port,
                headers=headers,
                body=body,
                timeout=t.timeout or DEFAULT_TIMEOUT,
                ssl=self._tls() if t.use_tls else None,
            )
        except _http.HttpError as exc:
            raise ConnectionError(str(exc)) from None
        if resp.status in _RETRYABLE_HTTP:
            raise ConnectionError(f"HTTP {resp.status}")
        if not 200 <= resp.status < 300:
            raise _Rejected(f"HTTP {resp.status}")

    async def _send(self, payload: bytes) -> None:
        if self.runtime.transport.protocol == HTTP_PROTOBUF:
            await self._send_http(payload)
        else:
            await self._send_grpc(payload)

    def _log_failure(self, message: str, **extra: Any) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:  # one line per 10 s while the collector is down
            self._last_error_log = now
            log.warning(message, extra={"backend": self.backend, "signal": self.signal, **extra})

    async def _deliver(self, item: _Item) -> None:
        """Send one payload, retrying transient failures with exponential backoff; count the outcome."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                await self._send(item.payload)
            except _Rejected as exc:
                self._drop("rejected")
                self._log_failure("collector rejected an OTLP export; dropped", error=str(exc))
                return
            except (ConnectionError, OSError, ValueError) as exc:
                if attempt + 1 == MAX_ATTEMPTS:
                    self._drop("retries_exhausted")
                    if self.runtime.transport.use_tls:
                        # a refused client certificate looks like a closed socket under TLS 1.3: name
                        # the TLS settings whatever the error says
                        self._log_failure(
                            "collector unreachable over TLS; OTLP export dropped after retries (if it is "
                            "up: does its certificate chain to OTEL_EXPORTER_OTLP_[SIGNAL_]CERTIFICATE, does "
                            "it require OTEL_EXPORTER_OTLP_[SIGNAL_]CLIENT_CERTIFICATE and _CLIENT_KEY?)",
                            error=str(exc),
                            endpoint=self.runtime.transport.endpoint,
                        )
                    else:
                        self._log_failure(
                            "collector unreachable; OTLP export dropped after retries", error=str(exc)
                        )
                    return
                if self.metrics is not None:
                    self.metrics.otel_retries.labels(backend=self.backend, signal=self.signal).inc()
                await asyncio.sleep(min(self.max_backoff, self.base_backoff * 2**attempt))
            else:
                self.forwarded += 1
                if self.metrics is not None:
                    self.metrics.otel_forwarded.labels(backend=self.backend, signal=self.signal).inc()
                return

    async def _worker(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            item = self._queue.popleft()
            try:
                await self._deliver(item)
            finally:
                self._bytes -= len(item.payload)
                self._gauge()

    async def run(self) -> None:
        """`concurrency` exports in flight at most (one HTTP/2 connection multiplexes them); what is still
        buffered when the backend goes away is counted as dropped (`shutdown`)."""
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(self.concurrency):
                    tg.create_task(self._worker())
        finally:
            if self._queue:
                self._drop("shutdown", len(self._queue))
                self._queue.clear()
                self._bytes = 0
            if self._channel is not None:
                await self._channel.close()


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, receiver: BackendReceiver) -> None:
        self.receiver = receiver

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        signal = EXPORT_METHODS.get(handler_call_details.method)
        if signal is None:
            return None
        receiver = self.receiver

        async def export(request: bytes, context: aio.ServicerContext) -> bytes:
            forwarder = receiver.forwarders.get(signal)
            if forwarder is None:
                # Kuma's unavailable*Exporter: the signal is not enabled (or is blocked) for this backend.
                receiver.dropped_disabled(signal)
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, f"OTel {signal} export is not available for {receiver.name}"
                )
            forwarder.offer(request)
            return b""  # an empty Export*ServiceResponse: everything accepted

        return grpc.unary_unary_rpc_method_handler(export)


class BackendReceiver:
    """The gRPC server on `socket_path` and the forwarders of the usable signals; `start()`, then `stop()`."""

    def __init__(
        self, name: str, socket_path: str, runtime: BackendRuntime, metrics: AgentMetrics | None = None
    ) -> None:
        self.name, self.socket_path, self.runtime, self.metrics = name, socket_path, runtime, metrics
        self.forwarders = {
            s: SignalForwarder(name, s, runtime.signal(s), metrics)
            for s in ("traces", "logs", "metrics")
            if runtime.signal(s).usable
        }
        self._server: aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def dropped_disabled(self, signal: str) -> None:
        if self.metrics is not None:
            self.metrics.otel_dropped.labels(backend=self.name, signal=signal, reason="signal_disabled").inc()

    async def start(self) -> None:
        for forwarder in self.forwarders.values():
            forwarder.prepare()  # a bad CA or client key: fail here, before anything listens
        _clear_stale_socket(self.socket_path)
        server = aio.server(options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)])
        server.add_generic_rpc_handlers([_Handler(self)])
        if server.add_insecure_port(f"unix:{self.socket_path}") == 0:
            raise OSError(f"cannot listen on {self.socket_path}")
        await server.start()
        os.chmod(self.socket_path, 0o600)  # Envoy and the agent run as one uid; nobody else may send
        self._server = server
        self._tasks = [
            asyncio.create_task(f.run(), name=f"otel-forward-{self.name}-{s}")
            for s, f in self.forwarders.items()
        ]
        log.info(
            "started OTel receiver",
            extra={
                "socketPath": self.socket_path,
                **{f"{s}Enabled": s in self.forwarders for s in ("traces", "logs", "metrics")},
            },
        )

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                os.unlink(self.socket_path)


def _clear_stale_socket(path: str) -> None:
    """Kuma removes whatever is at the path; we remove only a socket (a leftover of ours) and refuse other
    files, which are not ours to delete."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket; remove it or choose another --work-dir")
    os.unlink(path)
