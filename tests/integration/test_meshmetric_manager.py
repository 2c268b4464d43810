"""MeshMetric's manager with real endpoints: an application serving Prometheus text over HTTP, the hijacker's
`/meshmetric` page over its unix socket, and an OpenTelemetry backend that is a real OTLP gRPC collector on
a unix socket (where Envoy's `kuma-otel-<name>.sock` listener would be). The configuration changes live:
backends come and go, the profile changes, a bad body is refused and changes nothing."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from kuma_dp._http import get
from kuma_dp.meshmetric import MeshMetricManager, parse_meshmetric_config
from kuma_dp.metrics import AgentMetrics, MetricsHijacker
from kuma_dp.paths import otel_socket_path
from kuma_dp_dev.harness.poll import wait_until_async
from kuma_dp_dev.otlp_collector import OtlpCollector

pytestmark = pytest.mark.integration

APP_PAGE = b"""# HELP orders_total Orders taken.
# TYPE orders_total counter
orders_total{shop="a"} 7
# TYPE queue_depth gauge
queue_depth 3
# TYPE latency_seconds histogram
latency_seconds_bucket{le="0.1"} 1
latency_seconds_bucket{le="1"} 3
latency_seconds_bucket{le="+Inf"} 4
latency_seconds_sum 2.5
latency_seconds_count 4
"""


@pytest.fixture
def app() -> Iterator[tuple[int, list[str]]]:
    """An application's /metrics; records the paths it was asked for."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(APP_PAGE)))
            self.end_headers()
            self.wfile.write(APP_PAGE)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], asked
    server.shutdown()
    server.server_close()


def config(app_port: int, backends: list[dict[str, Any]], sidecar: dict[str, Any] | None = None) -> bytes:
    metrics: dict[str, Any] = {
        "applications": [{"name": "shop", "path": "/metrics", "port": app_port, "address": ""}],
        "backends": backends,
        "extraLabels": {"mesh": "default", "kuma.workload": "shop"},
    }
    if sidecar is not None:
        metrics["sidecar"] = sidecar
    return json.dumps({"observability": {"metrics": metrics}}).encode()


def test_policy_applied_live_to_the_page_and_the_otlp_pushes(
    short_tmp: Path, app: tuple[int, list[str]]
) -> None:
    app_port, asked = app
    collector = OtlpCollector()
    sock = otel_socket_path(short_tmp, "otel-1")
    collector.start_grpc(f"unix:{sock}")
    otel = {"type": "OpenTelemetry", "name": "otel-1",
            "openTelemetry": {"endpoint": sock, "refreshInterval": "1s"}}  # fmt: skip
    metrics = AgentMetrics()
    registry = metrics.registry
    manager = MeshMetricManager(
        None, metrics=metrics, kuma_version="2.14.3", own_registry_text=lambda: generate_latest(registry)
    )
    hijacker_sock = str(short_tmp / "kuma-mh-dp-1-default.sock")
    hijacker = MetricsHijacker(hijacker_sock, None, registry=metrics.registry)
    hijacker.meshmetric_source = manager.prometheus_page

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        tasks = [asyncio.create_task(manager.run()), asyncio.create_task(hijacker.run())]
        try:
            await hijacker.ready.wait()
            manager.on_change(config(app_port, [{"type": "Prometheus"}, otel]))
            resp = await get(target="/meshmetric", unix_path=hijacker_sock, timeout=5)
            seen["page"] = resp.body.decode()
            seen["content_type"] = resp.headers["content-type"]
            await wait_until_async(
                lambda: collector.metrics_named("orders_total") or None, 15, "orders_total at the collector"
            )
            # The collector has the data before the export call returns to the manager, which then counts
            # it: wait for the count too, or removing the backend below may cancel the push in between.
            pushes = metrics.meshmetric_pushes.labels(backend="otel-1", result="success")
            await wait_until_async(lambda: pushes._value.get() >= 1 or None, 15, "a push counted")
            # The backend goes away: pushes stop (nothing new arrives after a few intervals).
            manager.on_change(config(app_port, [{"type": "Prometheus"}]))
            await asyncio.sleep(0)
            seen["direct_after_removal"] = dict(manager._direct)
            with pytest.raises(ValueError, match="mesh metric configuration decoding error"):
                manager.on_change(b"{")
            seen["apps_after_bad_body"] = [a.name for a in manager.apps]
            return seen
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        seen = asyncio.run(scenario())
    finally:
        collector.stop()
    page = seen["page"]
    # The application's families, with the policy's extra labels and the kuma scope, counters without _total
    assert 'orders_total{kuma.workload="shop",mesh="default",shop="a",otel_scope_name="kuma",' in page
    assert "# TYPE latency_seconds histogram" in page and "latency_seconds_bucket{" in page
    assert seen["content_type"].startswith("text/plain; version=0.0.4")
    assert "/metrics" in asked  # Kuma drops the scraper's query for applications
    (pushed,) = collector.metrics_named("orders_total")[:1]
    assert pushed.sum.is_monotonic
    attrs = {kv.key: kv.value.string_value for kv in pushed.sum.data_points[0].attributes}
    assert attrs == {"kuma.workload": "shop", "mesh": "default", "shop": "a"}
    scopes = {
        s.scope.name for req in collector.metrics for r in req.resource_metrics for s in r.scope_metrics
    }
    assert "kuma" in scopes  # the scraped data
    assert "go.opentelemetry.io/contrib/bridges/prometheus" in scopes  # the agent's own registry, bridged
    hist = collector.metrics_named("latency_seconds")[0].histogram.data_points[0]
    assert list(hist.explicit_bounds) == [0.1, 1.0] and list(hist.bucket_counts) == [1, 2, 1]
    assert seen["direct_after_removal"] == {}
    assert seen["apps_after_bad_body"] == ["shop"]
    assert metrics.meshmetric_pushes.labels(backend="otel-1", result="success")._value.get() >= 1


def test_envoy_query_always_asks_usedonly_as_kuma_does() -> None:
    class Admin:
        host, port, socket_path = "127.0.0.1", 9901, None

    manager = MeshMetricManager(Admin())
    for sidecar in (None, {"includeUnused": True}, {"includeUnused": False}):
        body = json.dumps({"observability": {"metrics": {"applications": [], "backends": [],
                                                         "sidecar": sidecar}}})  # fmt: skip
        manager.on_change(body.encode())
        (envoy,) = [a for a in manager.apps if a.is_envoy]
        # Kuma's AddSidecarParameters sets `usedonly` from EnvoyMetricsFilter's value, "" either way.
        assert envoy.path == "/stats" and envoy.query == "format=prometheus&text_readouts=&usedonly="


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[", "decoding error"),
        (b'{"observability": {"metrics": {"applications": [{"port": "x"}]}}}', "application port"),
        (b'{"observability": {"metrics": {"backends": {}}}}', "backends must be a list"),
        (b'{"observability": {"metrics": "no"}}', "must be an object"),
    ],
)
def test_bad_bodies_are_refused_with_one_clear_message(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_meshmetric_config(body)


def test_refresh_interval_is_a_go_duration_with_kumas_default() -> None:
    cfg = parse_meshmetric_config(json.dumps({"observability": {"metrics": {"backends": [
        {"type": "OpenTelemetry", "name": "a", "openTelemetry": {"endpoint": "/s", "refreshInterval": "30s"}},
        {"type": "OpenTelemetry", "name": "b", "openTelemetry": {"endpoint": "/s"}},
        {"type": "Prometheus"},
    ]}}}).encode())  # fmt: skip
    assert [(t.name, t.refresh_interval) for t in cfg.otel_targets()] == [("a", 30.0), ("b", 60.0)]
