"""Observability against a real Envoy: the merged metrics page through Envoy's own Prometheus listener
(as kuma-cp configures it), and access logs from Envoy's file logger on our FIFO to TCP collectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kuma_dp import logs
from kuma_dp._http import get
from kuma_dp.accesslog import AccessLogStreamer
from kuma_dp.envoy._admin import AdminAddress, AdminClient
from kuma_dp.metrics import AgentMetrics, MetricsHijacker, ScrapeTarget, StartupObserver
from kuma_dp.paths import proxy_socket_path as socket_path
from kuma_dp_dev.harness.poll import wait_until_async
from kuma_dp_dev.harness.ports import free_port
from kuma_dp_dev.harness.procs import stop

pytestmark = pytest.mark.integration

TOKEN = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJOYW1lIjoiZHAtMSIsIk1lc2giOiJkZWZhdWx0In0."
    "dGhpcy1pcy1ub3QtYS1yZWFsLXNpZ25hdHVyZQ"
)


@dataclass
class App:
    port: int
    peers: list[str]


@contextlib.contextmanager
def healthy_app() -> Iterator[App]:
    """A real application metrics endpoint (prometheus_client page over HTTP) that records who scraped it."""
    registry = CollectorRegistry()
    Counter("app_orders", "Orders placed.", registry=registry).inc(7)
    peers: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            peers.append(self.client_address[0])
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield App(server.server_address[1], peers)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def hanging_app() -> Iterator[int]:
    """Accepts TCP connections (the kernel completes the handshake) and never answers."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def hcm(stat_prefix: str, route: dict, access_log: list | None = None) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "access_log": access_log or [],
            "route_config": {
                "virtual_hosts": [
                    {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, **route}]}
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                }
            ],
        },
    }


def file_log(path: str, log_format: dict) -> dict:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": log_format,
        },
    }


def bootstrap(
    admin_sock: str, fifo: str, mh_sock: str, app_port: int, prom_port: int, c1: int, c2: int
) -> dict:
    """Like kuma-cp's config for a TCP log backend (file logger on the FIFO, `address;message` and JSON
    lines) and the `kuma:metrics:prometheus` listener forwarding to the hijacker socket."""
    access_log = [
        file_log(
            fifo,
            {
                "text_format_source": {
                    "inline_string": f"127.0.0.1:{c1};%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE%\n"
                }
            },
        ),
        file_log(
            fifo,
            {
                "json_format": {
                    "address": f"127.0.0.1:{c2}",
                    "message": {"path": "%REQ(:PATH)%", "code": "%RESPONSE_CODE%"},
                }
            },
        ),
    ]
    return {
        "admin": {"address": {"pipe": {"path": admin_sock}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "inbound:127.0.0.1:app",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": app_port}},
                    "filter_chains": [
                        {
                            "filters": [
                                hcm(
                                    "inbound",
                                    {"direct_response": {"status": 200, "body": {"inline_string": "hi"}}},
                                    access_log,
                                )
                            ]
                        }
                    ],
                },
                {
                    "name": "kuma:metrics:prometheus",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": prom_port}},
                    "filter_chains": [
                        {
                            "filters": [
                                hcm(
                                    "kuma_metrics_prometheus", {"route": {"cluster": "kuma:metrics:hijacker"}}
                                )
                            ]
                        }
                    ],
                },
            ],
            "clusters": [
                # Two config variants of one destination, named as kuma-cp does: merged on the page.
                *(
                    {"name": f"backend-{h}", "type": "STATIC", "connect_timeout": "1s"}
                    for h in ("0123456789abcdef", "fedcba9876543210")
                ),
                {
                    "name": "kuma:metrics:hijacker",
                    "alt_stat_name": "kuma_metrics_hijacker",
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "load_assignment": {
                        "cluster_name": "kuma:metrics:hijacker",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": mh_sock}}}}]}
                        ],
                    },
                },
            ],
        },
    }


class Collector:
    """A TCP log collector: stores every line it receives, from any number of connections."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.got = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            self.lines.append(line.rstrip(b"\n"))
            self.got.set()
        writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def wait_for(self, n: int, deadline: float = 30) -> None:
        async with asyncio.timeout(deadline):
            while len(self.lines) < n:
                self.got.clear()
                await self.got.wait()


@contextlib.asynccontextmanager
async def running(*components: object) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(c.run()) for c in components]  # type: ignore[attr-defined]
    try:
        for c, t in zip(components, tasks, strict=True):
            waiter = asyncio.create_task(c.ready.wait())  # type: ignore[attr-defined]
            done, _ = await asyncio.wait({waiter, t}, return_when=asyncio.FIRST_COMPLETED, timeout=30)
            if t in done:
                waiter.cancel()
                t.result()  # raises the component's error
            assert waiter in done, f"{c} never became ready"
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_envoy_live(admin_sock: str, proc: subprocess.Popen[bytes]) -> None:
    def alive() -> None:
        assert proc.poll() is None, "Envoy exited; see its stderr above"

    async def live() -> bool:
        return (await get(target="/ready", unix_path=admin_sock)).status == 200

    await wait_until_async(live, 60, "Envoy's admin /ready to answer 200", before=alive)


async def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    resp = await get(target=path, host="127.0.0.1", port=port, headers=headers)
    return resp.status, resp.headers, resp.body


def test_envoy_metrics_merged_and_access_logs_streamed(envoy_binary: str, short_tmp: Path) -> None:
    log_file = short_tmp / "agent.log"
    handler = logs.setup_logging("debug", str(log_file), 10, 2, 1, "json")
    try:
        asyncio.run(_scenario(envoy_binary, short_tmp))
    finally:
        handler.flush()
        root = logging.getLogger()
        root.removeHandler(handler)
        handler.close()
        logs._installed.clear()
    # The whole run's log: JSON lines, the components logged, and the token never appears.
    text = log_file.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    messages = {r["msg"] for r in records}
    assert "starting metrics hijacker" in messages and "started access-log streamer" in messages
    assert "metrics endpoint did not answer in time; skipped" in messages
    assert TOKEN not in text and TOKEN.split(".")[1] not in text


async def _scenario(envoy: str, tmp: Path) -> None:
    log = logging.getLogger("kuma_dp.test")
    log.info("agent config", extra={"config": {"name": "dp-1", "dataplaneToken": TOKEN}})
    fifo = socket_path(tmp, "kuma-al", "dp-1", "default")
    mh_sock = socket_path(tmp, "kuma-mh", "dp-1", "default")
    admin_sock = str(tmp / "kuma-envoy-admin.sock")
    c1, c2 = Collector(), Collector()
    c1_port, c2_port = await c1.start(), await c2.start()
    app_port, prom_port = free_port(), free_port()
    metrics = AgentMetrics()

    class Admin:
        host, port, socket_path = "", 0, admin_sock

    async def ready_state() -> str:
        return "READY"

    with healthy_app() as app, hanging_app() as hanging_port:
        hijacker = MetricsHijacker(
            mh_sock,
            Admin(),
            [
                {"name": "app", "address": "127.0.0.1", "port": app.port, "path": "/metrics"},
                ScrapeTarget("hanging", "127.0.0.1", hanging_port, "/metrics"),
            ],
            transparent_proxy=True,
            metrics=metrics,
            readiness_state=ready_state,
        )
        streamer = AccessLogStreamer(fifo, metrics=metrics)
        cfg = tmp / "bootstrap.json"
        cfg.write_text(
            json.dumps(bootstrap(admin_sock, fifo, mh_sock, app_port, prom_port, c1_port, c2_port))
        )
        async with running(streamer, hijacker):
            proc = subprocess.Popen(
                [
                    envoy,
                    "-c",
                    str(cfg),
                    "--disable-hot-restart",
                    "--log-level",
                    "warn",
                    "--concurrency",
                    "1",
                    "--file-flush-interval-msec",
                    "100",
                ],
                stdin=subprocess.DEVNULL,
            )
            try:
                observer = StartupObserver(AdminClient(AdminAddress(socket_path=admin_sock)), metrics)
                observer_task = asyncio.create_task(observer.run())
                await wait_envoy_live(admin_sock, proc)
                await wait_until_async(lambda: "envoy_live" in metrics.phases(), 30, "the envoy_live phase")
                observer_task.cancel()
                await asyncio.gather(observer_task, return_exceptions=True)
                for i in range(3):
                    status, _, body = await http_get(app_port, f"/order/{i}")
                    assert (status, body) == (200, b"hi")

                # Access logs: both line forms reach their own collector.
                await c1.wait_for(3)
                await c2.wait_for(3)
                assert sorted(c1.lines) == [f"GET /order/{i} 200".encode() for i in range(3)]
                got = sorted((json.loads(x) for x in c2.lines), key=lambda d: d["path"])
                assert [d["path"] for d in got] == [f"/order/{i}" for i in range(3)]
                assert all(str(d["code"]) == "200" for d in got)

                # Metrics: scrape through Envoy's Prometheus listener, as Prometheus does.
                status, headers, body = await http_get(
                    prom_port,
                    "/metrics",
                    {
                        "Accept": "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                        "X-Prometheus-Scrape-Timeout-Seconds": "1",
                    },
                )
                assert status == 200
                assert headers["content-type"].startswith("text/plain")
                families = {f.name: f for f in text_string_to_metric_families(body.decode())}
                # Envoy's part: the inbound listener's request counter saw our three requests.
                rq = families["envoy_http_downstream_rq"]
                inbound = [
                    s for s in rq.samples if s.labels.get("envoy_http_conn_manager_prefix") == "inbound"
                ]
                assert inbound and inbound[0].value >= 3
                # The application's part, scraped from the passthrough source address.
                assert families["app_orders"].samples[0].value == 7
                # Kuma's cluster merging: one `backend` series, marked as mesh traffic, no hashed names.
                members = [
                    s.labels
                    for s in families["envoy_cluster_membership_total"].samples
                    if s.labels["envoy_cluster_name"].startswith("backend")
                ]
                assert members == [{"envoy_cluster_name": "backend", "kuma_io_mesh_traffic": "true"}]
                assert app.peers and set(app.peers) == {"127.0.0.6"}
                # The hanging app was skipped and counted; the agent's own series are on the page.
                failures = families["kuma_dp_metrics_scrape_failures"].samples
                assert any(
                    s.labels == {"endpoint": "hanging", "reason": "timeout"} and s.value == 1
                    for s in failures
                )
                sent = {
                    s.labels["address"]: s.value
                    for s in families["kuma_dp_access_log_lines"].samples
                    if s.name.endswith("_total")
                }
                assert sent == {f"127.0.0.1:{c1_port}": 3, f"127.0.0.1:{c2_port}": 3}
                phases = {
                    s.labels["phase"]: s.value
                    for s in families["kuma_dp_startup_phase_duration_seconds"].samples
                }
                assert phases["envoy_live"] > 0
                assert families["kuma_dp_envoy_starts"].samples[0].value == 1
                readiness = {
                    s.labels["kuma_dp_readiness_state"]: s.value
                    for s in families["kuma_dp_readiness_state"].samples
                }
                assert readiness["READY"] == 1

                # /meshmetric: only the agent's registry.
                status, _, body = await http_get(prom_port, "/meshmetric")
                names = {f.name for f in text_string_to_metric_families(body.decode())}
                assert "kuma_dp_metrics_scrape_failures" in names and "app_orders" not in names
                assert not any(n.startswith("envoy_") for n in names)
            finally:
                stop(proc, grace=10)
        for c in (c1, c2):
            assert c.server is not None
            c.server.close()
    assert not Path(mh_sock).exists()

