"""A small OTLP collector for the demo, the tests and the benchmark: the three OTLP gRPC services (traces,
logs, metrics) on TCP or a unix socket, and OTLP/HTTP (`POST /v1/{traces,logs,metrics}`, protobuf) on TCP,
built on opentelemetry-proto and grpcio. Every request is decoded and kept (bounded), so a test asserts on
what a real exporter sent: span names, log bodies, metric names and attributes.

    collector = OtlpCollector()
    port = collector.start_grpc("127.0.0.1:0")       # or start_grpc("unix:/path.sock")
    ...
    collector.wait_for(lambda c: c.span_names(), timeout=10)
    collector.stop()

`start_grpc(..., tls=CollectorTls(cert, key))` and `start_http(..., tls=...)` serve over TLS; with `client_ca`
the collector also requires a client certificate chaining to it (mTLS), as a collector behind mTLS does.

`python -m kuma_dp_dev.otlp_collector --grpc 127.0.0.1:4317 --http 127.0.0.1:4318` prints one line per
received request.
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import logging
import ssl
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_svc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_svc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_svc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc

log = logging.getLogger(__name__)

__all__ = ["CollectorTls", "OtlpCollector"]

T = TypeVar("T")
MAX_KEPT = 10_000


@dataclass(frozen=True)
class CollectorTls:
    """The collector's server certificate chain and key (PEM); `client_ca` set = clients must present a
    certificate that chains to it."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as d:  # load_cert_chain reads files only
            cert, key = Path(d, "cert.pem"), Path(d, "key.pem")
            cert.write_bytes(self.cert)
            key.touch(mode=0o600)
            key.write_bytes(self.key)
            ctx.load_cert_chain(cert, key)
        if self.client_ca is not None:
            ctx.load_verify_locations(cadata=self.client_ca.decode())
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


class OtlpCollector:
    def __init__(self, *, echo: bool = False) -> None:
        self.traces: deque[Any] = deque(maxlen=MAX_KEPT)
        self.logs: deque[Any] = deque(maxlen=MAX_KEPT)
        self.metrics: deque[Any] = deque(maxlen=MAX_KEPT)
        self.headers: deque[dict[str, str]] = deque(maxlen=MAX_KEPT)
        self.requests = 0
        self.echo = echo
        self._lock = threading.Condition()
        self._grpc: grpc.Server | None = None
        self._http: http.server.ThreadingHTTPServer | None = None

    # -- receiving ---------------------------------------------------------------------------------------
    def _keep(self, kind: str, request: Any, headers: dict[str, str]) -> None:
        with self._lock:
            getattr(self, kind).append(request)
            self.headers.append(headers)
            self.requests += 1
            self._lock.notify_all()
        if self.echo:
            print(f"otlp {kind}: {self._summary(kind, request)}", flush=True)

    def _summary(self, kind: str, request: Any) -> str:
        if kind == "traces":
            return ", ".join(self._span_names(request))
        if kind == "metrics":
            names = self._metric_names(request)
            return f"{len(names)} metrics ({', '.join(sorted(names)[:5])}...)"
        return f"{sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)} records"

    def start_grpc(self, address: str = "127.0.0.1:0", *, tls: CollectorTls | None = None) -> int:
        """Serve OTLP gRPC on `address` ("host:port" or "unix:/path"); returns the bound port (0 for unix)."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        collector = self

        class Trace(trace_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                collector._keep("traces", request, dict(context.invocation_metadata()))
                return trace_svc.ExportTraceServiceResponse()

        class Logs(logs_grpc.LogsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                collector._keep("logs", request, dict(context.invocation_metadata()))
                return logs_svc.ExportLogsServiceResponse()

        class Metrics(metrics_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                collector._keep("metrics", request, dict(context.invocation_metadata()))
                return metrics_svc.ExportMetricsServiceResponse()

        trace_grpc.add_TraceServiceServicer_to_server(Trace(), server)
        logs_grpc.add_LogsServiceServicer_to_server(Logs(), server)
        metrics_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            creds = grpc.ssl_server_credentials(
                [(tls.key, tls.cert)],
                root_certificates=tls.client_ca,
                require_client_auth=tls.client_ca is not None,
            )
            port = server.add_secure_port(address, creds)
        server.start()
        self._grpc = server
        return port

    def start_http(self, host: str = "127.0.0.1", port: int = 0, *, tls: CollectorTls | None = None) -> int:
        """Serve OTLP/HTTP (protobuf), over HTTPS with `tls`; returns the bound port."""
        collector = self
        types = {
            "/v1/traces": (
                "traces",
                trace_svc.ExportTraceServiceRequest,
                trace_svc.ExportTraceServiceResponse,
            ),
            "/v1/logs": ("logs", logs_svc.ExportLogsServiceRequest, logs_svc.ExportLogsServiceResponse),
            "/v1/metrics": (
                "metrics",
                metrics_svc.ExportMetricsServiceRequest,
                metrics_svc.ExportMetricsServiceResponse,
            ),
        }

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 16 * 1024 * 1024))
                entry = types.get(self.path.split("?")[0])
                if entry is None:
                    self.send_error(404)
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                kind, req_type, resp_type = entry
                request = req_type()
                request.ParseFromString(body)
                collector._keep(kind, request, {k.lower(): v for k, v in self.headers.items()})
                out = resp_type().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer((host, port), Handler)
        if tls is not None:
            # the handshake runs in accept(); a failed one (untrusted or missing client cert) is an OSError
            # the server drops, so nothing from that client is kept
            server.socket = tls.ssl_context().wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True, name="otlp-http").start()
        self._http = server
        return server.server_address[1]

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(0.5).wait()
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    # -- reading -----------------------------------------------------------------------------------------
    @staticmethod
    def _span_names(request: Any) -> list[str]:
        return [span.name for r in request.resource_spans for s in r.scope_spans for span in s.spans]

    @staticmethod
    def _metric_names(request: Any) -> set[str]:
        return {m.name for r in request.resource_metrics for s in r.scope_metrics for m in s.metrics}

    def spans(self) -> list[Any]:
        with self._lock:
            reqs = list(self.traces)
        return [span for req in reqs for r in req.resource_spans for s in r.scope_spans for span in s.spans]

    def span_names(self) -> list[str]:
        return [s.name for s in self.spans()]

    def log_records(self) -> list[Any]:
        with self._lock:
            reqs = list(self.logs)
        return [rec for req in reqs for r in req.resource_logs for s in r.scope_logs for rec in s.log_records]

    def metric_names(self) -> set[str]:
        with self._lock:
            reqs = list(self.metrics)
        return set().union(*(self._metric_names(r) for r in reqs)) if reqs else set()

    def metrics_named(self, name: str) -> list[Any]:
        with self._lock:
            reqs = list(self.metrics)
        return [
            m
            for req in reqs
            for r in req.resource_metrics
            for s in r.scope_metrics
            for m in s.metrics
            if m.name == name
        ]

    def wait_for(self, check: Callable[[OtlpCollector], T], timeout: float = 10.0) -> T:
        """Wait until `check(self)` is truthy; returns it, raises TimeoutError with what was seen."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                value = check(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"OTLP collector: condition not met in {timeout}s (requests={self.requests}, "
                        f"traces={len(self.traces)}, logs={len(self.logs)}, metrics={len(self.metrics)})"
                    )
                self._lock.wait(min(left, 0.2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kuma_dp_dev.otlp_collector", description=__doc__)
    parser.add_argument(
        "--grpc", default="127.0.0.1:4317", help="OTLP gRPC address (host:port or unix:/path)"
    )
    parser.add_argument("--http", default="", help="OTLP/HTTP host:port (off when empty)")
    args = parser.parse_args(argv)
    collector = OtlpCollector(echo=True)
    port = collector.start_grpc(args.grpc)
    print(f"OTLP gRPC on {args.grpc} (port {port})", flush=True)
    if args.http:
        host, _, hport = args.http.rpartition(":")
        print(f"OTLP/HTTP on {host}:{collector.start_http(host, int(hport))}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        collector.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
