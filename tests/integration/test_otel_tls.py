"""The OpenTelemetry pipe to a collector over TLS, configured as a user configures Kuma: a `/otel` backend
from the control plane plus the `OTEL_EXPORTER_OTLP_*` environment, with the precedence of Kuma's
app/kuma-dp/pkg/dataplane/otelenv/runtime.go (an `https://` scheme means TLS and beats `INSECURE` in the same
layer; a bare endpoint takes TLS from `INSECURE`; the backend's `useHTTPS` when the environment is silent) and
the TLS of otelreceiver/transport.go `newTLSConfig` (the configured CA replaces the system roots; a client
certificate and key for mTLS; a bad file fails the backend's start).

A real OTLP collector on loopback serves gRPC over TLS, OTLP/HTTP over HTTPS, and both with mTLS, using
certificates the test issues; a real gRPC client sends to the receiver's unix socket as Envoy does."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc import aio
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_svc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_svc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_svc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from kuma_dp.metrics import AgentMetrics
from kuma_dp.otel import OtelPipeManager, discover
from kuma_dp.otel._receiver import MAX_ATTEMPTS
from kuma_dp.paths import otel_socket_path
from kuma_dp_dev.harness.poll import wait_until_async
from kuma_dp_dev.otlp_collector import CollectorTls, OtlpCollector

pytestmark = pytest.mark.integration

EXPORT = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}
SIGNALS = ("traces", "logs", "metrics")
RECEIVER_LOGGER = "kuma_dp.otel._receiver"


# -- certificates ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Issued:
    cert: bytes
    key: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Ca:
    """A CA that issues server certificates for localhost / 127.0.0.1 and client certificates."""

    def __init__(self, cn: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, cn: str, *, client: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        if not client:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass(frozen=True)
class Pki:
    ca_file: str  # the CA the agent is told to trust
    server: Issued  # chains to it
    rogue_server: Issued  # chains to another CA
    client_ca: bytes  # the CA the mTLS collector requires client certificates from
    client_cert_file: str
    client_key_file: str
    rogue_client_cert_file: str  # a client certificate from a CA the collector does not know
    rogue_client_key_file: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, rogue, client_ca = Ca("otel test CA"), Ca("someone else's CA"), Ca("client CA")
    client, rogue_client = client_ca.issue("kuma-dp", client=True), rogue.issue("kuma-dp", client=True)

    def write(name: str, data: bytes) -> str:
        path = d / name
        path.touch(mode=0o600)
        path.write_bytes(data)
        return str(path)

    return Pki(
        ca_file=write("ca.pem", ca.pem),
        server=ca.issue("collector"),
        rogue_server=rogue.issue("collector"),
        client_ca=client_ca.pem,
        client_cert_file=write("client.pem", client.cert),
        client_key_file=write("client-key.pem", client.key),
        rogue_client_cert_file=write("rogue-client.pem", rogue_client.cert),
        rogue_client_key_file=write("rogue-client-key.pem", rogue_client.key),
    )


# -- OTLP payloads as Envoy sends them ---------------------------------------------------------------------
def span_request(name: str) -> trace_svc.ExportTraceServiceRequest:
    span = trace_pb2.Span(name=name, trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    return trace_svc.ExportTraceServiceRequest(
        resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[span])])]
    )


def log_request(body: str) -> logs_svc.ExportLogsServiceRequest:
    record = logs_pb2.LogRecord(body=common_pb2.AnyValue(string_value=body))
    return logs_svc.ExportLogsServiceRequest(
        resource_logs=[logs_pb2.ResourceLogs(scope_logs=[logs_pb2.ScopeLogs(log_records=[record])])]
    )


def metric_request(name: str) -> metrics_svc.ExportMetricsServiceRequest:
    point = metrics_pb2.NumberDataPoint(as_int=7)
    metric = metrics_pb2.Metric(name=name, gauge=metrics_pb2.Gauge(data_points=[point]))
    return metrics_svc.ExportMetricsServiceRequest(
        resource_metrics=[
            metrics_pb2.ResourceMetrics(scope_metrics=[metrics_pb2.ScopeMetrics(metrics=[metric])])
        ]
    )


PAYLOADS = {"traces": span_request, "logs": log_request, "metrics": metric_request}


def arrived(collector: OtlpCollector) -> dict[str, list[str]]:
    return {
        "traces": collector.span_names(),
        "logs": [r.body.string_value for r in collector.log_records()],
        "metrics": sorted(collector.metric_names()),
    }


async def send(sock: str, signal: str, tag: str) -> None:
    async with aio.insecure_channel(f"unix:{sock}") as channel:
        call = channel.unary_unary(EXPORT[signal], request_serializer=lambda m: m.SerializeToString())
        await call(PAYLOADS[signal](tag), timeout=5)


def backend(sock: str, endpoint: str, **extra: Any) -> dict[str, Any]:
    """An `OtelPipeBackend` as the control plane sends it on `/otel`, every signal enabled."""
    return {
        "name": "col",
        "socketPath": sock,
        "endpoint": endpoint,
        "useHTTP": False,
        "useHTTPS": False,
        "traces": {"enabled": True},
        "logs": {"enabled": True},
        "metrics": {"enabled": True},
        **extra,
    }


def counter(metrics: AgentMetrics, name: str, **labels: str) -> float:
    return float(getattr(metrics, name).labels(backend="col", **labels)._value.get())


def dropped(metrics: AgentMetrics, reason: str) -> float:
    return sum(counter(metrics, "otel_dropped", signal=s, reason=reason) for s in SIGNALS)


def run_pipe(
    short_tmp: Path, env: dict[str, str], endpoint: str, *, until: str = "arrived", **backend_extra: Any
) -> tuple[AgentMetrics, OtelPipeManager]:
    """Start the pipe for one backend, send one trace, log and metric to its socket as Envoy does, and wait
    until they are forwarded (`until="arrived"`) or dropped after the retries (`until="dropped"`)."""
    sock = otel_socket_path(short_tmp, "col")
    metrics = AgentMetrics()
    manager = OtelPipeManager(discover(True, env), metrics)

    async def scenario() -> None:
        task = asyncio.create_task(manager.run())
        try:
            await manager.on_change(
                json.dumps({"backends": [backend(sock, endpoint, **backend_extra)]}).encode()
            )
            assert sock in manager.running, "the receiver did not start"
            for signal in SIGNALS:
                await send(sock, signal, f"{signal}-1")
            if until == "arrived":
                await wait_until_async(
                    lambda: counter_sum(metrics, "otel_forwarded") == 3 or None, 20, "3 exports forwarded"
                )
            else:
                await wait_until_async(
                    lambda: dropped(metrics, "retries_exhausted") == 3 or None, 30, "3 exports dropped"
                )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    return metrics, manager


def counter_sum(metrics: AgentMetrics, name: str) -> float:
    return sum(counter(metrics, name, signal=s) for s in SIGNALS)


@pytest.fixture
def collector() -> Iterator[OtlpCollector]:
    c = OtlpCollector()
    yield c
    c.stop()


EXPECTED = {"traces": ["traces-1"], "logs": ["logs-1"], "metrics": ["metrics-1"]}


# -- gRPC over TLS -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "how",
    ["https-scheme", "https-scheme-beats-insecure-true", "bare-endpoint-insecure-false", "backend-useHTTPS"],
)
def test_grpc_over_tls_with_the_configured_ca(
    short_tmp: Path, pki: Pki, collector: OtlpCollector, how: str
) -> None:
    """Every way Kuma's rules turn TLS on for gRPC, with `OTEL_EXPORTER_OTLP_CERTIFICATE` as the only trusted
    CA: spans, logs and metrics reach the collector."""
    port = collector.start_grpc("127.0.0.1:0", tls=CollectorTls(pki.server.cert, pki.server.key))
    env = {"OTEL_EXPORTER_OTLP_CERTIFICATE": pki.ca_file}
    endpoint, extra = "127.0.0.1:1", {}  # the backend's own endpoint: nothing listens (env wins)
    if how == "https-scheme":
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"https://localhost:{port}"
    elif how == "https-scheme-beats-insecure-true":  # otelenv runtime_test.go: the scheme wins in its layer
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"https://localhost:{port}"
        env["OTEL_EXPORTER_OTLP_INSECURE"] = "true"
    elif how == "bare-endpoint-insecure-false":
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"localhost:{port}"
        env["OTEL_EXPORTER_OTLP_INSECURE"] = "false"
    else:  # the environment only supplies the CA; the control plane says where, and TLS
        endpoint, extra = f"127.0.0.1:{port}", {"useHTTPS": True}
    metrics, _ = run_pipe(short_tmp, env, endpoint, **extra)
    assert arrived(collector) == EXPECTED
    assert dropped(metrics, "retries_exhausted") == 0


# -- OTLP/HTTP over HTTPS ----------------------------------------------------------------------------------
def test_otlp_http_over_https_with_per_signal_certificates(
    short_tmp: Path, pki: Pki, collector: OtlpCollector
) -> None:
    """OTLP/HTTP to an HTTPS collector, the CA given per signal (`OTEL_EXPORTER_OTLP_{TRACES,LOGS,METRICS}_
    CERTIFICATE`), metrics with their own full-URL endpoint: each signal is POSTed to its `/v1/<signal>`."""
    port = collector.start_http("127.0.0.1", 0, tls=CollectorTls(pki.server.cert, pki.server.key))
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://localhost:{port}",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"https://127.0.0.1:{port}/v1/metrics",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t0ken",
        **{f"OTEL_EXPORTER_OTLP_{s.upper()}_CERTIFICATE": pki.ca_file for s in SIGNALS},
    }
    run_pipe(short_tmp, env, "127.0.0.1:1")
    assert arrived(collector) == EXPECTED
    assert {h.get("authorization") for h in collector.headers} == {"Bearer t0ken"}


def test_backend_https_with_the_ca_from_the_environment(
    short_tmp: Path, pki: Pki, collector: OtlpCollector
) -> None:
    """The control plane's backend says OTLP/HTTP over HTTPS (`useHTTP`, `useHTTPS`, `path`); the node's
    environment only adds the CA."""
    port = collector.start_http("127.0.0.1", 0, tls=CollectorTls(pki.server.cert, pki.server.key))
    env = {"OTEL_EXPORTER_OTLP_CERTIFICATE": pki.ca_file}
    run_pipe(short_tmp, env, f"127.0.0.1:{port}", useHTTP=True, useHTTPS=True, path="/")
    assert arrived(collector) == EXPECTED


# -- mTLS --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_mtls_collector_accepts_the_configured_client_certificate(
    short_tmp: Path, pki: Pki, collector: OtlpCollector, protocol: str
) -> None:
    tls = CollectorTls(pki.server.cert, pki.server.key, client_ca=pki.client_ca)
    port = (
        collector.start_grpc("127.0.0.1:0", tls=tls) if protocol == "grpc" else collector.start_http(tls=tls)
    )
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://localhost:{port}",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": pki.ca_file,
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": pki.client_cert_file,
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": pki.client_key_file,
    }
    run_pipe(short_tmp, env, "127.0.0.1:1")
    assert arrived(collector) == EXPECTED


def _tls_failure_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == RECEIVER_LOGGER and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("client", ["none", "from-another-ca"])
def test_mtls_collector_refuses_without_an_accepted_client_certificate(
    short_tmp: Path,
    pki: Pki,
    collector: OtlpCollector,
    caplog: pytest.LogCaptureFixture,
    protocol: str,
    client: str,
) -> None:
    """No client certificate, or one the collector does not trust: the handshake fails, the collector keeps
    nothing, and each export is dropped after a bounded number of attempts, with one log line per signal."""
    caplog.set_level(logging.WARNING, RECEIVER_LOGGER)
    tls = CollectorTls(pki.server.cert, pki.server.key, client_ca=pki.client_ca)
    port = (
        collector.start_grpc("127.0.0.1:0", tls=tls) if protocol == "grpc" else collector.start_http(tls=tls)
    )
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://localhost:{port}",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": pki.ca_file,
    }
    if client == "from-another-ca":
        env["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"] = pki.rogue_client_cert_file
        env["OTEL_EXPORTER_OTLP_CLIENT_KEY"] = pki.rogue_client_key_file
    metrics, _ = run_pipe(short_tmp, env, "127.0.0.1:1", until="dropped")
    assert collector.requests == 0
    assert counter_sum(metrics, "otel_forwarded") == 0
    assert counter_sum(metrics, "otel_retries") == 3 * (MAX_ATTEMPTS - 1)
    lines = _tls_failure_lines(caplog)
    assert sorted(r.signal for r in lines) == sorted(SIGNALS)  # type: ignore[attr-defined]
    assert all(r.getMessage().startswith("collector unreachable over TLS") for r in lines)


# -- a collector the agent must not trust ------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("trust", ["configured-ca", "system-roots"])
def test_collector_not_chaining_to_the_trusted_ca_gets_nothing(
    short_tmp: Path,
    pki: Pki,
    collector: OtlpCollector,
    caplog: pytest.LogCaptureFixture,
    protocol: str,
    trust: str,
) -> None:
    """The collector's certificate is from another CA: with `OTEL_EXPORTER_OTLP_CERTIFICATE` set (which
    replaces the system roots) or without it (the system roots), the agent refuses the collector: nothing
    is sent, each export is dropped and counted after MAX_ATTEMPTS, one clear line per signal."""
    caplog.set_level(logging.WARNING, RECEIVER_LOGGER)
    tls = CollectorTls(pki.rogue_server.cert, pki.rogue_server.key)
    port = (
        collector.start_grpc("127.0.0.1:0", tls=tls) if protocol == "grpc" else collector.start_http(tls=tls)
    )
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://127.0.0.1:{port}",
    }
    if trust == "configured-ca":
        env["OTEL_EXPORTER_OTLP_CERTIFICATE"] = pki.ca_file
    metrics, _ = run_pipe(short_tmp, env, "127.0.0.1:1", until="dropped")
    assert collector.requests == 0
    assert counter_sum(metrics, "otel_retries") == 3 * (MAX_ATTEMPTS - 1)
    lines = _tls_failure_lines(caplog)
    assert sorted(r.signal for r in lines) == sorted(SIGNALS)  # type: ignore[attr-defined]
    assert all(r.getMessage().startswith("collector unreachable over TLS") for r in lines)
    assert all("CERTIFICATE_VERIFY_FAILED" in r.error for r in lines)  # type: ignore[attr-defined]


# -- insecure and plaintext ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "how", ["signal-insecure-overrides-shared-https", "http-scheme-beats-insecure-false"]
)
def test_plaintext_as_kumas_precedence_says(short_tmp: Path, collector: OtlpCollector, how: str) -> None:
    """A later layer's `OTEL_EXPORTER_OTLP_<SIGNAL>_INSECURE=true` turns off the TLS a shared `https://`
    endpoint turned on; an `http://` scheme is plaintext whatever `INSECURE` says in its layer. The
    collector here speaks only plaintext, so arriving proves no TLS was attempted."""
    port = collector.start_grpc("127.0.0.1:0")
    if how == "signal-insecure-overrides-shared-https":
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://127.0.0.1:{port}",
            **{f"OTEL_EXPORTER_OTLP_{s.upper()}_INSECURE": "true" for s in SIGNALS},
        }
    else:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "false",
        }
    run_pipe(short_tmp, env, "127.0.0.1:1")
    assert arrived(collector) == EXPECTED


# -- TLS files that cannot be used ---------------------------------------------------------------------------
@pytest.mark.parametrize("problem", ["missing-ca", "not-a-ca", "key-does-not-match"])
def test_unusable_tls_files_fail_the_backend_with_one_line_naming_the_file(
    short_tmp: Path, pki: Pki, caplog: pytest.LogCaptureFixture, problem: str
) -> None:
    """As Kuma's `newTLSConfig` failing in `startBackend`: the backend's receiver does not start (no socket),
    and one error names the file; no export is attempted."""
    caplog.set_level(logging.WARNING, "kuma_dp.otel")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://localhost:1",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": pki.ca_file,
    }
    if problem == "missing-ca":
        env["OTEL_EXPORTER_OTLP_CERTIFICATE"] = bad = str(short_tmp / "no-such-ca.pem")
        expected = f"could not read certificate {bad}: No such file or directory"
    elif problem == "not-a-ca":
        bad = str(short_tmp / "garbage.pem")
        Path(bad).write_text("not a certificate\n")
        env["OTEL_EXPORTER_OTLP_CERTIFICATE"] = bad
        expected = f"failed to parse root certificate {bad}"
    else:
        env["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"] = pki.client_cert_file
        env["OTEL_EXPORTER_OTLP_CLIENT_KEY"] = bad = pki.rogue_client_key_file
        expected = f"could not create key pair from client cert and client key {pki.client_cert_file}, {bad}"
    sock = otel_socket_path(short_tmp, "col")
    manager = OtelPipeManager(discover(True, env), AgentMetrics())
    asyncio.run(manager.on_change(json.dumps({"backends": [backend(sock, "127.0.0.1:1")]}).encode()))
    assert manager.running == {}
    assert not Path(sock).exists()
    lines = [r for r in caplog.records if r.name.startswith("kuma_dp.otel")]
    assert len(lines) == 1
    assert lines[0].getMessage() == "failed to start OTel receiver"
    assert lines[0].error == expected  # type: ignore[attr-defined]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_without_a_configured_ca_the_system_trust_store_decides(
    short_tmp: Path, pki: Pki, collector: OtlpCollector, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    """No `OTEL_EXPORTER_OTLP_CERTIFICATE`: like Go's system pool, the host's trust store (here made of the
    test CA through OpenSSL's `SSL_CERT_FILE`) decides, for gRPC too (not the roots bundled with grpcio)."""
    monkeypatch.setenv("SSL_CERT_FILE", pki.ca_file)
    tls = CollectorTls(pki.server.cert, pki.server.key)
    port = (
        collector.start_grpc("127.0.0.1:0", tls=tls) if protocol == "grpc" else collector.start_http(tls=tls)
    )
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://127.0.0.1:{port}",
    }
    run_pipe(short_tmp, env, "127.0.0.1:1")
    assert arrived(collector) == EXPECTED


@pytest.mark.parametrize(
    ("endpoint", "use_tls", "expected"),
    [
        ("collector.example", True, ("collector.example", 443)),
        ("collector.example", False, ("collector.example", 80)),
        ("collector.example:4318", True, ("collector.example", 4318)),
        ("[2001:db8::1]:4318", False, ("2001:db8::1", 4318)),
        ("[2001:db8::1]", True, ("2001:db8::1", 443)),
    ],
)
def test_otlp_http_endpoint_without_a_port_uses_the_schemes(
    endpoint: str, use_tls: bool, expected: tuple[str, int]
) -> None:
    """`OTEL_EXPORTER_OTLP_ENDPOINT=https://collector.example` dials port 443 (http: 80), as Go's
    url.URL{Scheme, Host} does in receiver.go `otlpHTTPURL`."""
    from kuma_dp.otel._receiver import _split_endpoint

    assert _split_endpoint(endpoint, use_tls) == expected
