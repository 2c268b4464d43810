"""The OpenTelemetry pipe and MeshMetric inside the real agent, with a real Envoy and a real OTLP collector.

Envoy's configuration is what kuma-cp gives a proxy with `feature-otel-via-kuma-dp`: tracing, OTLP access
logs and the OTLP stats sink all point at the agent's socket `<workdir>/kuma-otel-<backend>.sock`; the
dynamic-config listener serves `/otel` (the pipe's backends) and `/meshmetric` (the policy). Envoy loads its
listeners from a watched file, so a policy change is a file rename, as an xDS update would be, and the agent
applies it without a restart. The collector is the dev tool `kuma_dp_dev.otlp_collector`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuma_dp._http import get
from kuma_dp.agent import AgentContext, run_agent
from kuma_dp.component import Component
from kuma_dp.metrics import agent_metrics
from kuma_dp.paths import metrics_hijacker_socket_path, otel_socket_path
from kuma_dp_dev.devcp.xds import dynconf_listener
from kuma_dp_dev.harness.poll import wait_until_async
from kuma_dp_dev.harness.ports import free_port
from kuma_dp_dev.harness.static_agent import agent_config
from kuma_dp_dev.otlp_collector import OtlpCollector

pytestmark = pytest.mark.integration

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
BACKEND = "collector"


def otel_payload(work: Path, collector_port: int) -> bytes:
    return json.dumps(
        {
            "backends": [
                {
                    "name": BACKEND,
                    "socketPath": otel_socket_path(work, BACKEND),
                    "endpoint": f"127.0.0.1:{collector_port}",
                    "useHTTP": False,
                    "traces": {"enabled": True},
                    "logs": {"enabled": True},
                    "metrics": {"enabled": True, "refreshInterval": "1s"},
                }
            ]
        }
    ).encode()


def meshmetric_payload(sidecar: dict[str, Any] | None) -> bytes:
    metrics: dict[str, Any] = {
        "applications": [],
        "backends": [{"type": "Prometheus"}],
        "extraLabels": {"mesh": "default", "dataplane": "dp-1"},
    }
    if sidecar is not None:
        metrics["sidecar"] = sidecar
    return json.dumps({"observability": {"metrics": metrics}}).encode()


def app_listener(port: int, otel_cluster: str) -> dict[str, Any]:
    grpc_service = {"envoyGrpc": {"clusterName": otel_cluster}, "timeout": "1s"}
    hcm = {
        "@type": HCM,
        "statPrefix": "inbound_web",
        "tracing": {
            "randomSampling": {"value": 100},
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typedConfig": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "grpcService": grpc_service,
                    "serviceName": "web",
                },
            },
        },
        "accessLog": [
            {
                "name": "envoy.access_loggers.open_telemetry",
                "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3."
                    "OpenTelemetryAccessLogConfig",
                    "commonConfig": {
                        "logName": "otel_al",
                        "grpcService": grpc_service,
                        "transportApiVersion": "V3",
                    },
                    "body": {"stringValue": "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE%"},
                },
            }
        ],
        "routeConfig": {
            "virtualHosts": [
                {
                    "name": "web",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "directResponse": {"status": 200, "body": {"inlineString": "hello"}},
                        }
                    ],
                }
            ]
        },
        "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {"@type": ROUTER}}],
    }
    return {
        "@type": LISTENER,
        "name": "inbound:web",
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
        "filterChains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": hcm}]}
        ],
    }


def write_lds(work: Path, listeners: list[dict[str, Any]]) -> None:
    """Envoy reloads a watched LDS file when it is moved into place (temp + rename)."""
    tmp = work / "lds" / "lds.tmp"
    tmp.write_text(yaml.safe_dump({"resources": listeners}))
    os.replace(tmp, work / "lds" / "lds.yaml")


def listeners(work: Path, app_port: int, collector_port: int, sidecar: dict[str, Any] | None) -> list[Any]:
    dyn = dynconf_listener(
        str(work), {"/otel": otel_payload(work, collector_port), "/meshmetric": meshmetric_payload(sidecar)}
    )
    return [{"@type": LISTENER, **dyn}, app_listener(app_port, "otel_pipe")]


def bootstrap(work: Path, admin_port: int) -> Path:
    (work / "lds").mkdir()
    cluster = {
        "name": "otel_pipe",
        "type": "STATIC",
        "connectTimeout": "1s",
        "typedExtensionProtocolOptions": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicitHttpConfig": {"http2ProtocolOptions": {}},
            }
        },
        "loadAssignment": {
            "clusterName": "otel_pipe",
            "endpoints": [
                {
                    "lbEndpoints": [
                        {"endpoint": {"address": {"pipe": {"path": otel_socket_path(work, BACKEND)}}}}
                    ]
                }
            ],
        },
    }
    doc = {
        "node": {"id": "default.dp-1", "cluster": "web"},
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": admin_port}}},
        "staticResources": {"clusters": [cluster]},
        "dynamicResources": {
            "ldsConfig": {
                "resourceApiVersion": "V3",
                "pathConfigSource": {
                    "path": str(work / "lds" / "lds.yaml"),
                    "watchedDirectory": {"path": str(work / "lds")},
                },
            }
        },
        "statsFlushInterval": "1s",
        "statsSinks": [
            {
                "name": "envoy.stat_sinks.open_telemetry",
                "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig",
                    "grpcService": {"envoyGrpc": {"clusterName": "otel_pipe"}},
                },
            }
        ],
    }
    path = work / "bootstrap.yaml"
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    return path


async def http_get(port: int) -> int:
    resp = await get(target="/hello", host="127.0.0.1", port=port, timeout=5)
    return resp.status


class Driver(Component):
    """Plays the user: sends traffic, reads the collector and the agent's pages, changes the policy, stops
    the collector and brings it back, then sends SIGTERM."""

    name = "test-driver"

    def __init__(
        self, ctx: AgentContext, work: Path, app_port: int, collector_port: int, seen: dict[str, Any]
    ) -> None:
        super().__init__()
        self.ctx, self.work, self.app_port, self.collector_port, self.seen = (
            ctx,
            work,
            app_port,
            collector_port,
            seen,
        )

    async def run(self) -> None:
        self.ready.set()
        try:
            async with asyncio.timeout(150):
                await self.scenario()
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.Future()

    async def wait_collector(self, check: Any, what: str, timeout: float = 30) -> Any:
        collector: OtlpCollector = self.seen["collector"]
        return await wait_until_async(lambda: check(collector), timeout, what)

    async def scenario(self) -> None:
        sock = otel_socket_path(self.work, BACKEND)
        await wait_until_async(lambda: os.path.exists(sock) or None, 30, "the OTel receiver's socket")
        self.seen["socket_mode"] = stat.S_IMODE(os.stat(sock).st_mode)
        await wait_until_async(lambda: self._ok(), 30, "the app listener")

        async def traffic_until(check: Any, what: str) -> Any:
            async def step() -> Any:
                await http_get(self.app_port)
                return check(self.seen["collector"])

            return await wait_until_async(step, 30, what)

        # 1. Traces, access logs and Envoy's stats sink reach the collector through the agent.
        self.seen["spans"] = await traffic_until(lambda c: c.span_names(), "a span at the collector")
        self.seen["logs"] = await traffic_until(
            lambda c: [r.body.string_value for r in c.log_records()], "an access log at the collector"
        )
        self.seen["sink_metrics"] = await self.wait_collector(
            lambda c: {n for n in c.metric_names() if n.startswith("cluster.") or n.startswith("server.")},
            "Envoy's stats sink metrics",
        )
        # 2. MeshMetric pushes (Envoy's Prometheus stats through the Basic profile) arrive over OTLP.
        self.seen["pushed"] = await self.wait_collector(
            lambda c: {n for n in c.metric_names() if n.startswith("envoy_")}, "MeshMetric's pushed metrics"
        )
        hijacker = metrics_hijacker_socket_path(self.work, "dp-1", "default")

        async def page() -> str:
            return (await get(target="/meshmetric", unix_path=hijacker, timeout=5)).body.decode()

        self.seen["page_basic"] = await page()
        # 3. A policy change applied live: profile None plus one exact include.
        write_lds(
            self.work,
            listeners(
                self.work,
                self.app_port,
                self.collector_port,
                {
                    "profiles": {
                        "appendProfiles": [{"name": "None"}],
                        "include": [{"type": "Exact", "match": "envoy_server_live"}],
                    }
                },
            ),
        )

        async def changed() -> str | None:
            text = await page()
            return text if "envoy_server_live" in text and "envoy_cluster_" not in text else None

        self.seen["page_none"] = await wait_until_async(changed, 30, "the new profile on /meshmetric")
        # 4. Collector outage: Envoy keeps serving, the agent counts what it drops, then recovers.
        collector: OtlpCollector = self.seen["collector"]
        collector.stop()
        m = agent_metrics()
        dropped_before = sum(
            m.otel_dropped.labels(backend=BACKEND, signal="traces", reason=r)._value.get()
            for r in ("buffer_full", "retries_exhausted")
        )
        statuses = []
        started = time.monotonic()
        for _ in range(50):
            statuses.append(await http_get(self.app_port))
        self.seen["outage_statuses"] = statuses
        self.seen["outage_seconds"] = time.monotonic() - started
        fresh = OtlpCollector()
        fresh.start_grpc(f"127.0.0.1:{self.collector_port}")
        self.seen["collector"] = fresh
        self.seen["recovered_spans"] = await traffic_until(lambda c: c.span_names(), "spans after recovery")
        self.seen["forwarded"] = m.otel_forwarded.labels(backend=BACKEND, signal="traces")._value.get()
        self.seen["retries"] = m.otel_retries.labels(backend=BACKEND, signal="traces")._value.get()
        self.seen["dropped_delta"] = (
            sum(
                m.otel_dropped.labels(backend=BACKEND, signal="traces", reason=r)._value.get()
                for r in ("buffer_full", "retries_exhausted")
            )
            - dropped_before
        )
        self.seen["agent_page"] = await page()

    async def _ok(self) -> bool | None:
        try:
            return await http_get(self.app_port) == 200 or None
        except Exception:
            return None


def test_envoy_otlp_through_the_agent_to_a_collector(short_tmp: Path, envoy_binary: str) -> None:
    collector = OtlpCollector()
    collector_port = collector.start_grpc("127.0.0.1:0")
    app_port = free_port()
    cfg = agent_config(short_tmp, envoy_binary, readiness_port=free_port(), drain_time=0.5)
    cfg.dataplane.name, cfg.dataplane.mesh = "dp-1", "default"
    assert cfg.dataplane_runtime.otel_pipe_enabled
    path = bootstrap(short_tmp, free_port())
    write_lds(short_tmp, listeners(short_tmp, app_port, collector_port, None))
    seen: dict[str, Any] = {"collector": collector}
    try:
        code = asyncio.run(
            run_agent(
                cfg,
                path,
                extra_components=[lambda ctx: Driver(ctx, short_tmp, app_port, collector_port, seen)],
            )
        )
    finally:
        seen["collector"].stop()
        collector.stop()
    assert code == 0, {k: v for k, v in seen.items() if k != "collector"}
    assert seen["socket_mode"] == 0o600
    assert set(seen["spans"]) == {"ingress"}  # Envoy's name for a span of an inbound (ingress) request
    assert any(body.startswith("GET /hello 200") for body in seen["logs"])
    assert seen["sink_metrics"]
    # Basic profile: golden signals stay, unused and internal series go; extra labels are attributes.
    assert {"envoy_server_live", "envoy_http_downstream_rq_total"} <= seen["pushed"]
    pushed = collector.metrics_named("envoy_http_downstream_rq_total")
    attrs = {
        kv.key: kv.value.string_value for m in pushed for dp in m.sum.data_points for kv in dp.attributes
    }
    assert attrs.get("mesh") == "default" and attrs.get("dataplane") == "dp-1"
    assert "\nenvoy_http_downstream_rq_total{" in seen["page_basic"]
    assert 'otel_scope_name="kuma"' in seen["page_basic"]
    assert "envoy_server_live" in seen["page_none"]
    # The outage did not touch Envoy: every request answered 200.
    assert set(seen["outage_statuses"]) == {200}
    assert seen["recovered_spans"]
    assert seen["forwarded"] > 0
    assert seen["retries"] + seen["dropped_delta"] > 0  # the outage was noticed and counted
    assert "kuma_dp_otel_forwarded_requests_total" in seen["agent_page"]
    assert not os.path.exists(otel_socket_path(short_tmp, BACKEND))
