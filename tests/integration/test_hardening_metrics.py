"""Every rejection is counted (issue: hardening): each hostile peer of test_hardening_agent.py and
test_dns_hardening.py is replayed here and the counter it must move is read back from the agent's metrics
endpoint (the hijacker's `/meshmetric` page) or its Prometheus registry; and each limit made configurable
(`KUMA_READINESS_MAX_CONNECTIONS`, `KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS[_PER_SOURCE]`,
`KUMA_DNS_PROXY_UPSTREAM_MAX_PENDING_QUERIES`) is shown to change what the agent does when set.

Counters in the process-wide registry (`agent_metrics()`) are compared before and after, since other tests
in this process may have moved them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kuma_dp import _http
from kuma_dp.accesslog import AccessLogStreamer
from kuma_dp.agent import AgentContext, run_agent
from kuma_dp.component import Component
from kuma_dp.config import RunConfig, load_config
from kuma_dp.dynconf import ConfigFetcher
from kuma_dp.envoy import AdminAddress, AdminClient
from kuma_dp.metrics import AgentMetrics, MetricsHijacker, ScrapeTarget
from kuma_dp.paths import metrics_hijacker_socket_path
from kuma_dp.readiness import ReadinessState
from kuma_dp_dev.harness.poll import wait_until, wait_until_async
from kuma_dp_dev.harness.ports import free_port
from kuma_dp_dev.harness.static_agent import agent_config
from tests.integration.test_dns_hardening import (  # the peers and helpers of the DNS adversarial suite
    PAYLOAD,
    _closed,
    start_server,
)
from tests.integration.test_hardening_agent import (
    NOFILE,
    OTHER_UID,
    RawPeer,
    _low_nofile,
    as_other_user,
    forever,
    idle_connections,
    shared_dir,  # noqa: F401 - the fixture, reused
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


# ------------------------------------------------------------------------------------------------ helpers


def page_value(page: str, name: str, **labels: str) -> float:
    """A sample's value on a Prometheus text page (0 when absent, as for a counter never moved)."""
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def registry_value(name: str, registry: CollectorRegistry = REGISTRY, **labels: str) -> float:
    """The sum of a series' samples in a registry; labels not named are not compared (the DNS series carry
    the table's extra labels, and another DNS component of this process may still be registered)."""
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += float(sample.value)
    return total


async def scrape(sock: str, target: str = "/meshmetric") -> str:
    return (await _http.get(target=target, unix_path=sock, timeout=60)).text


def _page_with(sock: str, text: str) -> str | None:
    """The agent's metrics page once it contains `text` (None before: for wait_until)."""
    try:
        page = asyncio.run(scrape(sock))
    except _http.HttpError:
        return None
    return page if text in page else None


# ---------------------------------------------------------------------------------- body over the cap


def test_app_endpoint_streaming_forever_is_counted_on_the_metrics_endpoint(short_tmp: Path) -> None:
    """The hijacker scrapes an app that streams 1 GiB: refused at the 64 MiB cap, and its own `/meshmetric`
    page then says so (body_too_large by source, and the skipped endpoint's reason)."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n"
    metrics = AgentMetrics(CollectorRegistry())
    sock = str(short_tmp / "mh.sock")

    async def scenario() -> str:
        with RawPeer(head, forever) as app:
            hijacker = MetricsHijacker(
                sock,
                None,
                [ScrapeTarget("app", "127.0.0.1", app.port)],
                metrics=metrics,
                endpoint_timeout=120,
            )
            task = asyncio.create_task(hijacker.run())
            try:
                await asyncio.wait_for(hijacker.ready.wait(), 10)
                await scrape(sock, "/metrics")  # the merged page, without the app
                return await scrape(sock)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    page = asyncio.run(scenario())
    assert page_value(page, "kuma_dp_http_body_too_large_total", source="application") == 1
    assert page_value(page, "kuma_dp_metrics_scrape_failures_total", endpoint="app", reason="too_large") == 1


def test_meshmetric_scrape_of_an_app_streaming_forever_is_counted(short_tmp: Path) -> None:
    """The same hostile app behind a MeshMetric policy: the manager's scrape is refused at the cap, the
    policy's Prometheus page still renders, and the agent's page counts the application body."""
    from kuma_dp.meshmetric import MeshMetricManager

    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n"
    metrics = AgentMetrics(CollectorRegistry())
    sock = str(short_tmp / "mh.sock")
    manager = MeshMetricManager(None, metrics=metrics)
    hijacker = MetricsHijacker(sock, None, metrics=metrics)
    hijacker.meshmetric_source = manager.prometheus_page

    async def scenario(app_port: int) -> str:
        task = asyncio.create_task(hijacker.run())
        try:
            await asyncio.wait_for(hijacker.ready.wait(), 10)
            apps = [{"name": "shop", "path": "/metrics", "port": app_port, "address": ""}]
            doc = {"observability": {"metrics": {"applications": apps, "backends": [{"type": "Prometheus"}]}}}
            manager.on_change(json.dumps(doc).encode())
            return await scrape(sock)  # renders the policy's page, which scrapes the app
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with RawPeer(head, forever) as app:
        asyncio.run(scenario(app.port))
    page = generate_latest(metrics.registry).decode()
    assert page_value(page, "kuma_dp_http_body_too_large_total", source="application") == 1


def _cp_config(port: int) -> RunConfig:
    cfg = RunConfig()
    cfg.control_plane.url = f"http://127.0.0.1:{port}"
    cfg.control_plane.retry.backoff = 0.05
    cfg.control_plane.retry.max_duration = 0.3
    cfg.dataplane.name, cfg.dataplane.mesh = "dp-1", "default"
    return cfg


def _fetch_rejected(port: int) -> int:
    """fetch_bootstrap against the peer until the retry budget is spent; how many attempts it made."""
    from kuma_dp.bootstrap.client import BootstrapError, fetch_bootstrap

    attempts: list[bool] = []

    async def run() -> None:
        await fetch_bootstrap(
            _cp_config(port), {"name": "dp-1"}, on_attempt=lambda ok, _s: attempts.append(ok)
        )

    with pytest.raises(BootstrapError):
        asyncio.run(run())
    assert attempts and not any(attempts)
    return len(attempts)


def test_cp_bootstrap_over_the_cap_is_counted() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
    before_rejected = registry_value("kuma_dp_bootstrap_rejections_total", reason="too_large")
    before_body = registry_value("kuma_dp_http_body_too_large_total", source="control_plane")
    with RawPeer(head, forever) as cp:
        attempts = _fetch_rejected(cp.port)
    assert (
        registry_value("kuma_dp_bootstrap_rejections_total", reason="too_large") - before_rejected == attempts
    )
    assert (
        registry_value("kuma_dp_http_body_too_large_total", source="control_plane") - before_body == attempts
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"bootstrap": "%%% not base64 %%%"}',  # bad base64
        b'{"bootstrap": ',  # truncated JSON
        json.dumps({"bootstrap": "YWRtaW46IFsxLCAy"}).encode(),  # base64 of YAML that does not parse
    ],
    ids=["base64", "json", "yaml"],
)
def test_cp_malformed_bootstrap_is_counted(body: bytes) -> None:
    head = (
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    before = registry_value("kuma_dp_bootstrap_rejections_total", reason="malformed")
    with RawPeer(head, lambda: [body]) as cp:
        attempts = _fetch_rejected(cp.port)
    assert registry_value("kuma_dp_bootstrap_rejections_total", reason="malformed") - before == attempts


class _HugeAnswer:
    """A unix-socket peer in Envoy's place on the dynamic-config socket, announcing a 1 GB body."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> _HugeAnswer:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n" + b"{" * 65536)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

        self.server = await asyncio.start_unix_server(answer, path=self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def test_dynamic_config_over_the_cap_is_counted_and_logged_once(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sock = str(short_tmp / "dc.sock")
    handled: list[bytes] = []
    before = registry_value("kuma_dp_http_body_too_large_total", source="dynamic_config")

    async def scenario() -> None:
        async with _HugeAnswer(sock):
            fetcher = ConfigFetcher(sock, interval=0.05, timeout=5)
            fetcher.register("/dns", lambda body, _etag: handled.append(body))
            for _ in range(3):
                await fetcher.poll_once()

    with caplog.at_level(logging.WARNING, logger="kuma_dp.dynconf"):
        asyncio.run(scenario())
    assert not handled
    assert registry_value("kuma_dp_http_body_too_large_total", source="dynamic_config") - before == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "kuma_dp.dynconf"]
    assert len(lines) == 1 and "/dns" in lines[0] and "64 MiB limit" in lines[0], lines


# ------------------------------------------------------------------------------------- access-log FIFO


@pytest.mark.parametrize("planted", ["fifo", "file", "symlink"])
def test_planted_object_at_the_fifo_path_is_counted(shared_dir: Path, planted: str) -> None:  # noqa: F811
    fifo = shared_dir / "kuma-al-dp-default.sock"
    plant = {
        "fifo": "import os, sys; os.mkfifo(sys.argv[1], 0o666); os.chmod(sys.argv[1], 0o666)",
        "file": "import sys; open(sys.argv[1], 'w').write('planted')",
        "symlink": "import os, sys; os.symlink('/etc/passwd', sys.argv[1])",
    }[planted]
    done = as_other_user(plant, str(fifo))
    assert done.returncode == 0, done.stderr
    assert os.lstat(fifo).st_uid == OTHER_UID
    metrics = AgentMetrics(CollectorRegistry())

    async def scenario() -> None:
        streamer = AccessLogStreamer(str(fifo), metrics=metrics)
        task = asyncio.create_task(streamer.run())
        try:
            await asyncio.wait_for(streamer.ready.wait(), 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # Restarted (a resilient component): our own private FIFO is reused, nothing more is counted.
        task = asyncio.create_task(streamer.run())
        try:
            await asyncio.wait_for(streamer.ready.wait(), 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    value = registry_value("kuma_dp_access_log_fifo_rejections_total", metrics.registry, reason="replaced")
    assert value == 1


# ------------------------------------------------------------------------------------ readiness server


def _agent_cfg(work: Path, envoy_binary: str, env: dict[str, str]) -> tuple[RunConfig, Path]:
    bootstrap = work / "bootstrap.yaml"
    admin = {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": free_port()}}}
    bootstrap.write_text(json.dumps({"admin": admin, "node": {"id": "default.dp-1", "cluster": "backend"}}))
    cfg = agent_config(work, envoy_binary, readiness_port=free_port(), drain_time=1.0)
    cfg.dataplane.name, cfg.dataplane.mesh = "dp-1", "default"
    load_config(cfg, env)
    return cfg, bootstrap


class _IdlePeer(Component):
    """Inside the agent: once /ready says 200, holds idle connections to it (as a local attacker would),
    then reads the agent's metrics page and stops the agent."""

    name = "idle-peer"

    def __init__(self, ctx: AgentContext, n: int, seen: dict[str, object]) -> None:
        super().__init__()
        self.ctx, self.n, self.seen = ctx, n, seen

    async def run(self) -> None:
        self.ready.set()
        port = self.ctx.cfg.dataplane.readiness_port

        async def ready() -> bool:
            try:
                return (
                    await _http.get(target="/ready", host="127.0.0.1", port=port, timeout=2)
                ).status == 200
            except _http.HttpError:
                return False

        await wait_until_async(ready, 60, "/ready 200")
        peers = [await asyncio.open_connection("127.0.0.1", port) for _ in range(self.n)]

        async def closed(reader: asyncio.StreamReader) -> bool:
            try:
                return await asyncio.wait_for(reader.read(1), 0.5) == b""
            except (TimeoutError, ConnectionError):
                return False

        await asyncio.sleep(0.5)  # every accept has run
        self.seen["closed"] = [await closed(r) for r, _ in peers]
        self.seen["ready_after"] = await ready()
        sock = metrics_hijacker_socket_path(self.ctx.work_dir, "dp-1", "default")
        self.seen["page"] = await scrape(sock)
        for _, w in peers:
            w.close()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.Future()


@pytest.mark.parametrize("cap", [None, 2])
def test_readiness_connection_cap_from_env_sheds_idle_and_is_counted(
    short_tmp: Path, envoy_binary: str, cap: int | None
) -> None:
    """KUMA_READINESS_MAX_CONNECTIONS=2: of 4 idle connections the 2 oldest are shed (counted on the page);
    with the default cap (64) none is."""
    env = {} if cap is None else {"KUMA_READINESS_MAX_CONNECTIONS": str(cap)}
    cfg, bootstrap = _agent_cfg(short_tmp, envoy_binary, env)
    labels = {"server": "readiness", "reason": "shed_idle"}
    before = registry_value("kuma_dp_connections_rejected_total", **labels)
    seen: dict[str, object] = {}
    code = asyncio.run(run_agent(cfg, bootstrap, extra_components=[lambda ctx: _IdlePeer(ctx, 4, seen)]))
    assert code == 0, seen
    shed = page_value(str(seen["page"]), "kuma_dp_connections_rejected_total", **labels) - before
    if cap is None:
        assert seen["closed"] == [False] * 4
        assert shed == 0
    else:
        # The two oldest made room for the two newest (and for the /ready check after them).
        assert seen["closed"][:2] == [True, True]  # type: ignore[index]
        assert shed >= 2
    assert seen["ready_after"] is True


#: The readiness reporter and the metrics endpoint as the agent wires them (process-wide registry), in a
#: process of their own under a low RLIMIT_NOFILE; the cap is set above the limit so that descriptors, not
#: the cap, run out first.
READINESS_UNDER_LOW_NOFILE = """
import asyncio, sys
from kuma_dp.envoy import AdminAddress, AdminClient
from kuma_dp.metrics import MetricsHijacker, agent_metrics
from kuma_dp.readiness import ReadinessReporter, ReadinessState, bind_readiness_socket

async def main() -> None:
    metrics = agent_metrics()
    sock = bind_readiness_socket("127.0.0.1", int(sys.argv[1]))
    admin = AdminClient(AdminAddress(port=int(sys.argv[3])))
    reporter = ReadinessReporter(sock, ReadinessState(), admin, max_connections=16 * 256, metrics=metrics)
    hijacker = MetricsHijacker(sys.argv[2], None, metrics=metrics)
    await asyncio.gather(reporter.run(), hijacker.run())

asyncio.run(main())
"""


def test_fd_exhaustion_on_ready_is_counted_on_the_metrics_endpoint(short_tmp: Path) -> None:
    """Idle connections to /ready until the process has no descriptor left (as in test_hardening_agent):
    accept() fails with EMFILE, idle connections are shed, and the metrics endpoint then shows both."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8 * NOFILE:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16 * NOFILE), hard))
    port, sock = free_port(), str(short_tmp / "mh.sock")
    log = short_tmp / "reporter.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", READINESS_UNDER_LOW_NOFILE, str(port), sock, str(free_port())],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_low_nofile,
        )
    try:
        wait_until(lambda: os.path.exists(sock), 30, "the metrics endpoint")
        with idle_connections(port, 4 * NOFILE) as opened:
            assert opened > NOFILE  # more than the process has descriptors
            time.sleep(1)
        page = wait_until(lambda: _page_with(sock, "fd_exhausted"), 30, "fd_exhausted on the metrics page")
    finally:
        proc.terminate()
        proc.wait(30)
    labels = {"server": "readiness"}
    assert page_value(page, "kuma_dp_connections_rejected_total", reason="fd_exhausted", **labels) > 0
    assert page_value(page, "kuma_dp_connections_rejected_total", reason="shed_idle", **labels) > 0
    assert "Traceback" not in log.read_text()


# ----------------------------------------------------------------------------------------- DNS limits


async def _dns_from_agent(work: Path, env: dict[str, str]) -> tuple[object, asyncio.Task[None]]:
    """The DNS component as `kuma-dp run` builds it (`kuma_dns.component:from_agent`) from `env`."""
    from kuma_dns.component import from_agent

    cfg = agent_config(work, "envoy")
    cfg.dns.enabled = True
    load_config(cfg, {"KUMA_DNS_PROXY_PORT": str(free_port()), **env})
    ctx = AgentContext(cfg, work / "bootstrap.yaml", work, AdminClient(AdminAddress()), ReadinessState())
    comp = from_agent(ctx)
    assert comp is not None
    comp.update(json.dumps(PAYLOAD))
    task = asyncio.create_task(comp.run())
    await asyncio.wait_for(comp.ready.wait(), 30)
    return comp, task


def _records(tmp: Path) -> Path:
    path = tmp / "records.json"
    path.write_text(json.dumps(PAYLOAD))
    return path


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


@pytest.mark.parametrize("cap", [None, 2])
def test_dns_per_source_tcp_cap_from_env(short_tmp: Path, cap: int | None) -> None:
    """KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS_PER_SOURCE=2 through the agent's factory: a third idle connection
    from the same address closes the oldest (kuma_dp_dns_tcp_evicted_connections); the default (64) keeps
    all three."""
    env = {} if cap is None else {"KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS_PER_SOURCE": str(cap)}

    async def scenario() -> tuple[list[bool], float]:
        before = registry_value("kuma_dp_dns_tcp_evicted_connections_total")
        comp, task = await _dns_from_agent(short_tmp, env)
        conns: list[socket.socket] = []
        try:
            for _ in range(3):
                conns.append(_connect(comp.port))  # type: ignore[attr-defined]
                await asyncio.sleep(0.2)  # accepted before the next one: "oldest" is well defined
            await asyncio.sleep(0.3)
            evicted = registry_value("kuma_dp_dns_tcp_evicted_connections_total") - before
            return [_closed(s) for s in conns], evicted
        finally:
            for s in conns:
                s.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    closed, evicted = asyncio.run(scenario())
    if cap is None:
        assert closed == [False, False, False] and evicted == 0
    else:
        assert closed == [True, False, False] and evicted == 1


def test_dns_total_tcp_cap_from_env_in_kuma_dp_dns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`kuma-dp dns` reads the same variable: with KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS=2, a third client on
    another address makes the server close the longest-idle connection."""
    monkeypatch.setenv("KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS", "2")
    srv = start_server(tmp_path, _records(tmp_path))
    conns: list[socket.socket] = []
    try:
        for source in ("127.0.0.1", "127.0.0.2"):
            conns.append(_connect(srv.port, source))
            time.sleep(0.2)
        assert not any(_closed(s) for s in conns)
        conns.append(_connect(srv.port, "127.0.0.3"))
        wait_until(lambda: _closed(conns[0]), 10, "the longest-idle connection closed")
        assert not _closed(conns[1]) and not _closed(conns[2])
    finally:
        for s in conns:
            s.close()
        srv.stop()


def test_kuma_dp_dns_refuses_a_zero_cap(tmp_path: Path) -> None:
    records = _records(tmp_path)
    env = {**os.environ, "KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS_PER_SOURCE": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "kuma_dp", "dns", "--port", "0", "--records", str(records)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "Error: KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS_PER_SOURCE must be positive"


class _BlackHole(asyncio.DatagramProtocol):
    """An upstream nameserver that reads queries and never answers: each forwarded query stays pending."""

    def __init__(self) -> None:
        self.received = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1


@pytest.mark.parametrize("cap", [None, 1])
def test_dns_upstream_pending_cap_from_env(short_tmp: Path, cap: int | None) -> None:
    """KUMA_DNS_PROXY_UPSTREAM_MAX_PENDING_QUERIES=1: with one query outstanding at a silent upstream, the
    next two to forward are dropped and counted (kuma_dp_dns_upstream_dropped_queries); by default all three
    reach the upstream."""
    env = {} if cap is None else {"KUMA_DNS_PROXY_UPSTREAM_MAX_PENDING_QUERIES": str(cap)}

    async def scenario() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        transport, hole = await loop.create_datagram_endpoint(_BlackHole, local_addr=("127.0.0.1", 0))
        before = registry_value("kuma_dp_dns_upstream_dropped_queries_total")
        comp, task = await _dns_from_agent(short_tmp, env)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # The silent upstream replaces resolv.conf's nameservers (what KUMA_DNS_PROXY_* cannot set).
            comp.server.forwarder.upstreams = [transport.get_extra_info("sockname")[:2]]  # type: ignore[attr-defined]
            for i in range(3):
                q = dns.message.make_query(f"host{i}.example.test", "A")
                client.sendto(q.to_wire(), ("127.0.0.1", comp.port))  # type: ignore[attr-defined]
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.3)
            return hole.received, registry_value("kuma_dp_dns_upstream_dropped_queries_total") - before
        finally:
            client.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            transport.close()

    received, dropped = asyncio.run(scenario())
    if cap is None:
        assert dropped == 0 and received >= 3
    else:
        assert dropped == 2 and received >= 1


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        (
            "KUMA_READINESS_MAX_CONNECTIONS",
            ".Dataplane is not valid: .ReadinessMaxConnections must be positive",
        ),
        ("KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS", ".DNS is not valid: .ProxyTCPMaxConnections must be positive"),
    ],
)
def test_kuma_dp_run_refuses_a_zero_cap(short_tmp: Path, variable: str, message: str) -> None:
    env = {**os.environ, variable: "0", "KUMA_DATAPLANE_NAME": "dp-1", "KUMA_DATAPLANE_MESH": "default"}
    argv = [sys.executable, "-m", "kuma_dp", "run", "--cp-address", "http://127.0.0.1:1"]
    done = subprocess.run(
        [*argv, "--work-dir", str(short_tmp)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"configuration validation failed: {message}" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
