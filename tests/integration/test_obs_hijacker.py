"""The hijacker's HTTP edge over its unix socket: OpenMetrics negotiation with real app endpoints,
keep-alive (Envoy's cluster reuses connections), bad requests, and the socket file's life cycle."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from kuma_dp.metrics import AgentMetrics, MetricsHijacker, ScrapeTarget
from kuma_dp.paths import proxy_socket_path as socket_path

pytestmark = pytest.mark.integration
OM_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@contextlib.asynccontextmanager
async def om_app(metric: str, value: float) -> AsyncIterator[int]:
    """An application endpoint that answers OpenMetrics 1.0.0 (body ends with `# EOF`)."""
    registry = CollectorRegistry()
    Counter(metric, "x", registry=registry).inc(value)
    body = om_latest(registry)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: {OM_TYPE}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def exchange(sock_path: str, raw: bytes, responses: int = 1) -> list[tuple[str, dict[str, str], bytes]]:
    reader, writer = await asyncio.open_unix_connection(sock_path)
    writer.write(raw)
    await writer.drain()
    out = []
    for _ in range(responses):
        head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        out.append((head[0], headers, body))
    writer.close()
    return out


def test_openmetrics_negotiation_keepalive_and_bad_requests(short_tmp: Path) -> None:
    async def scenario() -> None:
        sock = socket_path(short_tmp, "kuma-mh", "dp-1", "default")
        Path(sock).parent.mkdir(exist_ok=True)
        # A stale socket file from a crashed agent is replaced.
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(sock)
        stale.close()
        # The agent's registry also holds process/python collectors, like prometheus_client's default one.
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        metrics = AgentMetrics(registry)
        async with om_app("orders", 3) as p1, om_app("payments", 5) as p2:
            hijacker = MetricsHijacker(
                sock,
                None,
                [ScrapeTarget("a", "127.0.0.1", p1), ScrapeTarget("b", "127.0.0.1", p2)],
                metrics=metrics,
                registry=registry,
            )
            task = asyncio.create_task(hijacker.run())
            await asyncio.wait_for(hijacker.ready.wait(), 10)
            try:
                # A second agent with the same name and mesh must not steal the live socket.
                with pytest.raises(RuntimeError, match="in use by another kuma-dp"):
                    await MetricsHijacker(sock, None).run()

                two = (
                    b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n"
                    b"GET /meshmetric HTTP/1.1\r\nHost: x\r\n\r\n"
                )
                (status, headers, body), (status2, headers2, body2) = await exchange(sock, two, 2)
                assert status.startswith("HTTP/1.1 200") and headers["connection"] == "keep-alive"
                # The apps spoke OpenMetrics 1.0.0, so the page is OpenMetrics (app formats win over Accept).
                assert headers["content-type"] == OM_TYPE
                text = body.decode()
                assert text.endswith("# EOF\n") and text.count("# EOF") == 1
                families = {f.name: f for f in om_parse(text)}  # the strict OpenMetrics parser accepts it
                assert families["orders"].samples[0].value == 3
                assert families["payments"].samples[0].value == 5
                assert "kuma_dp_metrics_scrapes" in families
                # Only kuma_dp_* joins the merged page: process_* would clash with the apps' own.
                assert not any(name.startswith("process_") for name in families)
                assert status2.startswith("HTTP/1.1 200") and headers2["content-type"].startswith(
                    "text/plain"
                )
                assert b"kuma_dp_metrics_scrapes_total 1.0" in body2 and b"orders" not in body2
                assert b"process_cpu_seconds_total" in body2  # /meshmetric serves the whole registry

                # HEAD: headers only (read to EOF: the server closes as asked).
                reader, writer = await asyncio.open_unix_connection(sock)
                writer.write(b"HEAD /meshmetric HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                raw = await asyncio.wait_for(reader.read(-1), 10)
                writer.close()
                head, _, rest = raw.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200") and rest == b""

                ((status, _, _),) = await exchange(
                    sock, b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"
                )
                assert status.startswith("HTTP/1.1 405")
                ((status, headers, _),) = await exchange(sock, b"NONSENSE\r\n\r\n")
                assert status.startswith("HTTP/1.1 400") and headers["connection"] == "close"
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        assert not Path(sock).exists()

    asyncio.run(scenario())


def test_regular_file_of_ours_at_the_socket_path_is_moved_aside_not_fatal(short_tmp: Path) -> None:
    """Issue 13: a planted regular file made the agent exit; now it is moved aside (content kept) and the
    hijacker serves."""
    path = short_tmp / "kuma-mh-dp-1-default.sock"
    path.write_text("not a socket")

    async def scenario() -> None:
        hijacker = MetricsHijacker(str(path), None)
        task = asyncio.create_task(hijacker.run())
        try:
            await asyncio.wait_for(hijacker.ready.wait(), 5)
            assert stat.S_ISSOCK(path.lstat().st_mode)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert Path(str(path) + ".not-a-socket").read_text() == "not a socket"


def test_another_users_file_at_the_socket_path_is_left_alone_and_logged(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to plant a file owned by another uid")
    path = short_tmp / "kuma-mh-dp-1-default.sock"
    path.write_text("planted")
    os.chown(path, 5678, 5678)

    async def scenario() -> None:
        hijacker = MetricsHijacker(str(path), None)
        task = asyncio.create_task(hijacker.run())
        try:
            await asyncio.wait_for(hijacker.ready.wait(), 5)
            assert not task.done()  # no crash: the component idles
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level("ERROR", logger="kuma_dp.metrics"):
        asyncio.run(scenario())
    assert path.read_text() == "planted"
    lines = [r.getMessage() for r in caplog.records if "not a socket" in r.getMessage()]
    assert len(lines) == 1 and "uid 5678" in lines[0]


def test_ipv6_app_under_transparent_proxy_is_scraped_even_without_passthrough_address(
    short_tmp: Path,
) -> None:
    """Source ::6 is used when the host has it (the tproxy installer adds it); otherwise the scrape falls
    back to the default source instead of losing the application's metrics."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")

    async def scenario() -> tuple[bytes, list[str]]:
        peers: list[str] = []
        body = b"# TYPE v6_app_up gauge\nv6_app_up 1\n"

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peers.append(writer.get_extra_info("peername")[0])
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "::1", 0)
        port = server.sockets[0].getsockname()[1]
        sock = str(short_tmp / "kuma-mh-v6-default.sock")
        hijacker = MetricsHijacker(
            sock, None, [{"name": "v6", "address": "::1", "port": port}], transparent_proxy=True
        )
        task = asyncio.create_task(hijacker.run())
        try:
            await asyncio.wait_for(hijacker.ready.wait(), 10)
            ((_, _, page),) = await exchange(sock, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            server.close()
        return page, peers

    page, peers = asyncio.run(scenario())
    assert b"v6_app_up 1" in page
    assert peers and set(peers) <= {"::6", "::1"}
