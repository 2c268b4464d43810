"""Never advertise what isn't there: `kuma-dp run` against a stand-in control plane, then every entry of the
bootstrap request's `features` is checked against a live component of the running agent (a feature with no
check here fails the test, so a new feature cannot be announced without one). With
`KUMA_DATAPLANE_RUNTIME_OTEL_PIPE_ENABLED=false` the OpenTelemetry feature and its receivers are gone even
when the control plane sends `/otel`. The request's `otelEnv` is what Kuma's discovery builds from the
`OTEL_*` environment."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from grpc import aio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_svc

from kuma_dp.otel import discover
from kuma_dp.paths import access_log_socket_path, dynconf_socket_path, otel_socket_path
from kuma_dp_dev.devcp.xds import dynconf_listener
from kuma_dp_dev.harness.ports import free_port
from kuma_dp_dev.otlp_collector import OtlpCollector
from tests.helpers.agent_proc import kuma_dp_run
from tests.helpers.fake_cp import FakeCP, Reply, make_token

pytestmark = pytest.mark.integration

OTEL_ENV = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.example:4318",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
}


def bootstrap_yaml(work: Path, admin_port: int, collector_port: int) -> str:
    otel = {"backends": [{
        "name": "col", "socketPath": otel_socket_path(work, "col"), "endpoint": f"127.0.0.1:{collector_port}",
        "useHTTP": False, "envPolicy": {"mode": "Disabled"},
        # what kuma-cp plans for mode Disabled when the inventory shows OTEL_* input: the env is not used
        "traces": {"enabled": True, "envInputPresent": True, "blockedReasons": ["EnvDisabledByPolicy"]},
    }]}  # fmt: skip
    listener = dynconf_listener(str(work), {"/otel": json.dumps(otel).encode()})
    doc = {
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": admin_port}}},
        "node": {"id": "default.dp-1", "cluster": "backend"},
        "staticResources": {"listeners": [listener]},
    }
    return yaml.safe_dump(doc)


def otel_receiver_forwards(work: Path, collector: OtlpCollector) -> bool:
    sock = otel_socket_path(work, "col")
    if not os.path.exists(sock) or not stat.S_ISSOCK(os.stat(sock).st_mode):
        return False
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600

    async def send() -> None:
        async with aio.insecure_channel(f"unix:{sock}") as ch:
            call = ch.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                request_serializer=lambda m: m.SerializeToString(),
            )
            await call(trace_svc.ExportTraceServiceRequest(), timeout=5)

    asyncio.run(send())
    collector.wait_for(lambda c: len(c.traces), timeout=10)
    return True


def access_log_pipe(work: Path) -> bool:
    path = access_log_socket_path(work, "dp-1", "default")
    return os.path.exists(path) and stat.S_ISFIFO(os.stat(path).st_mode)


@pytest.mark.parametrize("pipe_enabled", [True, False])
def test_every_announced_feature_is_live(envoy_binary: str, short_tmp: Path, pipe_enabled: bool) -> None:
    work = short_tmp / "wd"
    work.mkdir()
    admin_port = free_port()
    collector = OtlpCollector()
    collector_port = collector.start_grpc("127.0.0.1:0")
    token = make_token({"Name": "dp-1", "Mesh": "default", "Tags": {}})
    env = {"KUMA_DNS_ENABLED": "false", "KUMA_DATAPLANE_RUNTIME_OTEL_PIPE_ENABLED": str(pipe_enabled).lower(),
           **OTEL_ENV}  # fmt: skip
    try:
        with FakeCP([Reply.bootstrap(bootstrap_yaml(work, admin_port, collector_port))]) as cp:
            args = ["--cp-address", cp.url, "--name", "dp-1", "--mesh", "default", "--dataplane-token", token,
                    "--binary-path", envoy_binary, "--work-dir", str(work), "--drain-time", "1s",
                    "--concurrency", "1"]  # fmt: skip
            with kuma_dp_run(args, short_tmp / "run.log", env=env) as agent:
                agent.wait_ready()
                request = cp.requests[-1].json
                checks: dict[str, Callable[[], bool]] = {
                    "feature-tcp-accesslog-via-named-pipe": lambda: access_log_pipe(work),
                    "feature-otel-via-kuma-dp": lambda: otel_receiver_forwards(work, collector),
                    # The control plane turns these on for listeners Envoy serves; the live part on the
                    # agent's side is Envoy itself, ready and configured (the readiness answer above).
                    "feature-reuse-port": lambda: agent.ready().status_code == 200,
                    "feature-strict-inbound-ports": lambda: agent.ready().status_code == 200,
                }
                for feature in request["features"]:
                    assert feature in checks, f"{feature} is announced but nothing checks it is live"
                    agent.wait_for(lambda f=feature: checks[f]() or None, 30, f"a live {feature}")
                assert ("feature-otel-via-kuma-dp" in request["features"]) is pipe_enabled
                assert request["otelEnv"] == discover(pipe_enabled, OTEL_ENV).inventory
                if not pipe_enabled:
                    # The control plane's /otel is served, yet nothing listens: no receiver without the
                    # feature.
                    agent.wait_for(lambda: os.path.exists(dynconf_socket_path(work)) or None, 30, "dynconf")
                    # Three rounds of the agent's dynamic-config polling have happened (Envoy counts them):
                    # every registered path was fetched, so a /otel handler would have started a receiver.
                    agent.wait_for(
                        lambda: dynconf_requests(admin_port) >= 3 or None, 30, "three dynconf polls"
                    )
                    assert not os.path.exists(otel_socket_path(work, "col"))
                    with pytest.raises(grpc.RpcError):
                        otel_receiver_forwards_or_raise(work)
                assert agent.stop_draining() == 0
    finally:
        collector.stop()
    assert request["otelEnv"]["shared"]["effectiveProtocol"] == "http/protobuf"
    assert request["otelEnv"]["traces"]["overrideKinds"] == ["protocol"]


def dynconf_requests(admin_port: int) -> int:
    resp = httpx.get(
        f"http://127.0.0.1:{admin_port}/stats?filter=dynamicconfig.downstream_rq_total", timeout=5
    )
    return sum(int(line.rpartition(":")[2]) for line in resp.text.splitlines() if line.strip())


def otel_receiver_forwards_or_raise(work: Path) -> None:
    """Dial the backend's socket as Envoy would: fails when no receiver listens."""

    async def send() -> None:
        async with aio.insecure_channel(f"unix:{otel_socket_path(work, 'col')}") as ch:
            call = ch.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                request_serializer=lambda m: m.SerializeToString(),
            )
            await call(trace_svc.ExportTraceServiceRequest(), timeout=2)

    asyncio.run(send())
