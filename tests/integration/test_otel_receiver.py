"""The OpenTelemetry pipe's receiver with real gRPC clients and a real collector: OTLP/HTTP forwarding with
the `OTEL_*` environment taking precedence, a disabled signal answered UNAVAILABLE, the socket private to
the agent, a collector outage with bounded memory and counted drops, and live reconfiguration via `/otel`."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_svc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_svc
from opentelemetry.proto.trace.v1 import trace_pb2

from kuma_dp.metrics import AgentMetrics
from kuma_dp.otel import OtelPipeManager, discover
from kuma_dp.otel._receiver import EXPORT_CONCURRENCY
from kuma_dp.paths import otel_socket_path
from kuma_dp_dev.harness.poll import wait_until_async
from kuma_dp_dev.otlp_collector import OtlpCollector

pytestmark = pytest.mark.integration

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def span_request(name: str) -> trace_svc.ExportTraceServiceRequest:
    span = trace_pb2.Span(name=name, trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    return trace_svc.ExportTraceServiceRequest(
        resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[span])])]
    )


async def send(sock: str, method: str, request: Any) -> None:
    async with aio.insecure_channel(f"unix:{sock}") as channel:
        call = channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString())
        await call(request, timeout=5)


def backend(sock: str, endpoint: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "col",
        "socketPath": sock,
        "endpoint": endpoint,
        "useHTTP": False,
        "traces": {"enabled": True},
        "logs": {"enabled": False},
        **extra,
    }


def test_http_collector_from_env_takes_precedence_over_the_backend(short_tmp: Path) -> None:
    """The control plane says gRPC to a dead port; OTEL_EXPORTER_OTLP_TRACES_* say OTLP/HTTP to the real
    collector, with a header: environment first is Kuma's default precedence."""
    collector = OtlpCollector()
    http_port = collector.start_http()
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{http_port}/v1/traces",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=team%20a",
    }
    sock = otel_socket_path(short_tmp, "col")
    manager = OtelPipeManager(discover(True, env), AgentMetrics())

    async def scenario() -> None:
        task = asyncio.create_task(manager.run())
        try:
            await manager.on_change(json.dumps({"backends": [backend(sock, "127.0.0.1:1")]}).encode())
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
            await send(sock, TRACE_EXPORT, span_request("from-envoy"))
            # logs are not enabled for this backend: Kuma's unavailable exporter
            with pytest.raises(aio.AioRpcError) as err:
                await send(sock, LOGS_EXPORT, logs_svc.ExportLogsServiceRequest())
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            await wait_until_async(lambda: collector.span_names() or None, 10, "the span over OTLP/HTTP")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        collector.stop()
    assert collector.span_names() == ["from-envoy"]
    assert collector.headers[-1].get("x-tenant") == "team a"
    assert not os.path.exists(sock)


def test_collector_outage_is_bounded_counted_and_recovers(short_tmp: Path) -> None:
    """Nothing listens at the collector's address: the receiver still answers at once, keeps at most its
    buffer (count and bytes), counts every drop, and forwards again once a collector is there."""
    from kuma_dp_dev.harness.ports import free_port

    port = free_port()
    sock = otel_socket_path(short_tmp, "col")
    metrics = AgentMetrics()
    manager = OtelPipeManager(discover(True, {}), metrics)
    collector = OtlpCollector()

    async def scenario() -> dict[str, Any]:
        task = asyncio.create_task(manager.run())
        try:
            await manager.on_change(json.dumps({"backends": [backend(sock, f"127.0.0.1:{port}")]}).encode())
            forwarder = manager.running[sock].forwarders["traces"]
            forwarder.max_requests = 20  # a small buffer makes the bound visible quickly
            loop = asyncio.get_running_loop()
            started = loop.time()
            for i in range(200):
                await send(sock, TRACE_EXPORT, span_request(f"s{i}"))
            answered_in = loop.time() - started
            queued, queued_bytes = forwarder.buffered
            dropped = metrics.otel_dropped.labels(
                backend="col", signal="traces", reason="buffer_full"
            )._value.get()
            collector.start_grpc(f"127.0.0.1:{port}")
            await wait_until_async(
                lambda: collector.span_names() or None, 30, "spans after the collector came"
            )
            return {"answered_in": answered_in, "queued": queued, "bytes": queued_bytes, "dropped": dropped}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        seen = asyncio.run(scenario())
    finally:
        collector.stop()
    assert seen["queued"] <= 20
    # at most `concurrency` exports are in flight (retrying), outside the buffer; the rest were dropped
    assert seen["dropped"] >= 200 - 20 - EXPORT_CONCURRENCY
    assert metrics.otel_retries.labels(backend="col", signal="traces")._value.get() > 0
    assert collector.span_names()  # delivery resumed


def test_reconfiguration_replaces_and_removes_receivers(short_tmp: Path) -> None:
    collector = OtlpCollector()
    port = collector.start_grpc("127.0.0.1:0")
    sock_a = otel_socket_path(short_tmp, "a")
    sock_b = otel_socket_path(short_tmp, "b")
    manager = OtelPipeManager(discover(True, {}), AgentMetrics())
    reported: list[list[str]] = []
    manager.on_reconcile = lambda running: reported.append([b["name"] for b, _ in running])

    async def scenario() -> None:
        task = asyncio.create_task(manager.run())
        try:
            a = {**backend(sock_a, f"127.0.0.1:{port}"), "name": "a"}
            b = {**backend(sock_b, f"127.0.0.1:{port}"), "name": "b"}
            await manager.on_change(json.dumps({"backends": [a, b]}).encode())
            assert os.path.exists(sock_a) and os.path.exists(sock_b)
            await manager.on_change(json.dumps({"backends": [b]}).encode())
            assert not os.path.exists(sock_a) and os.path.exists(sock_b)
            await send(sock_b, TRACE_EXPORT, span_request("via-b"))
            await wait_until_async(lambda: collector.span_names() or None, 10, "the span via b")
            with pytest.raises(ValueError, match="otel dp config decode error"):
                await manager.on_change(b"{not json")
            assert os.path.exists(sock_b)  # a bad body changes nothing
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        collector.stop()
    assert reported == [["a", "b"], ["b"]]
    assert not os.path.exists(sock_b)


def test_a_planted_file_at_a_backend_socket_is_not_deleted(short_tmp: Path) -> None:
    sock = otel_socket_path(short_tmp, "col")
    Path(sock).write_text("someone else's")
    manager = OtelPipeManager(discover(True, {}), AgentMetrics())

    async def scenario() -> None:
        await manager.on_change(json.dumps({"backends": [backend(sock, "127.0.0.1:1")]}).encode())

    asyncio.run(scenario())
    assert Path(sock).read_text() == "someone else's"
    assert manager.running == {}
