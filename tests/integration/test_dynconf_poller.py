"""The dynconf poller feeding the DNS server, against a real Envoy serving `/dns` on its unix socket.

The outage test takes the table source away (Envoy stopped, socket removed) while a client keeps asking for
mesh names: zero may fail. It lasts KUMA_DNS_OUTAGE_SECONDS (default 3 s to keep the suite fast; the required
60 s is `KUMA_DNS_OUTAGE_SECONDS=60 pytest tests/integration/test_dynconf_poller.py`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kuma_dns.component import DNSComponent
from kuma_dp.dynconf import ConfigFetcher
from kuma_dp.paths import dynconf_socket_path as socket_path
from kuma_dp_dev.harness.poll import wait_until, wait_until_async
from kuma_dp_dev.harness.procs import stop

pytestmark = pytest.mark.integration

OUTAGE = float(os.environ.get("KUMA_DNS_OUTAGE_SECONDS", "3"))


def body(*names: tuple[str, str]) -> bytes:
    # The IPv6 form as kuma-cp writes it: hex groups (::ffff:f000:1), never dotted (that would be an A).
    recs = [{"name": n, "ips": [ip, str(ipaddress.IPv6Address("::ffff:" + ip))]} for n, ip in sorted(names)]
    labels = {"kuma_workload": "backend", "mesh": "default"}
    return json.dumps({"records": recs, "ttl": 30, "extraLabels": labels}, separators=(",", ":")).encode()


class Envoy:
    """Envoy with only the `_kuma:dynamicconfig` listener the dev control plane generates."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.n = 0

    def start(self, payload: bytes) -> None:
        from kuma_dp_dev.devcp.xds import dynconf_listener

        self.n += 1
        boot = {
            "node": {"id": "kdns-dynconf", "cluster": "kdns"},
            "staticResources": {"listeners": [dynconf_listener(str(self.workdir), {"/dns": payload})]},
        }
        path = self.workdir / f"envoy-{self.n}.json"
        path.write_text(json.dumps(boot))
        with open(self.workdir / "envoy.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "-c",
                    str(path),
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "-l",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        sock = socket_path(self.workdir)

        def serving() -> bool:
            with httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=1) as c:
                return c.get("http://localhost/dns").status_code == 200

        def alive() -> None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError((self.workdir / "envoy.log").read_text()[-2000:])

        try:
            wait_until(serving, 20, "Envoy to serve /dns", before=alive)
        except TimeoutError:
            raise RuntimeError((self.workdir / "envoy.log").read_text()[-2000:]) from None

    def stop(self) -> None:
        if self.proc:
            stop(self.proc, grace=10)
        sock = Path(socket_path(self.workdir))
        sock.unlink(missing_ok=True)  # the source is *gone*, not just refusing


async def ask(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    return await dns.asyncquery.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=2)


def test_poller_feeds_dns_and_mesh_names_survive_the_source_outage(
    envoy_binary: str, short_tmp: Path
) -> None:
    envoy = Envoy(envoy_binary, short_tmp)
    envoy.start(body(("backend.mesh", "240.0.0.1"), ("web.mesh", "240.0.0.2")))
    registry = CollectorRegistry()

    async def main() -> dict[str, Any]:
        comp = DNSComponent(port=0, workdir=short_tmp, upstreams=[], registry=registry)
        fetcher = ConfigFetcher(socket_path(short_tmp), interval=0.2)
        unchanged = 0

        def not_modified() -> None:  # counts the 304 answers
            nonlocal unchanged
            unchanged += 1
            comp.not_modified()

        fetcher.register("/dns", comp.update_async, not_modified)  # as the agent wires it
        tasks = [asyncio.ensure_future(comp.run()), asyncio.ensure_future(fetcher.run())]
        try:
            await asyncio.wait_for(comp.ready.wait(), 10)  # listening (the table may arrive before that)
            await asyncio.wait_for(comp.has_records.wait(), 10)
            r = await ask(comp.port, "backend.mesh")
            assert r.answer[0][0].to_text() == "240.0.0.1"
            await wait_until_async(lambda: unchanged >= 4, 10, "four polls answered 304")
            ph = fetcher.paths["/dns"]
            # Polled 5 times or more, fetched once: the rest were 304 thanks to If-None-Match.
            assert ph.fetches == 1 and ph.etag is not None and len(ph.etag) == 64

            # Outage: Envoy gone, socket removed; a client keeps resolving mesh names.
            await asyncio.to_thread(envoy.stop)
            failures = 0
            asked = 0
            end = time.monotonic() + OUTAGE
            while time.monotonic() < end:
                for name, rdtype, want in (
                    ("backend.mesh", "A", "240.0.0.1"),
                    ("web.mesh", "AAAA", "::ffff:240.0.0.2"),
                ):
                    asked += 1
                    try:
                        r = await ask(comp.port, name, rdtype)
                        if r.rcode() != dns.rcode.NOERROR or r.answer[0][0].to_text() != want:
                            failures += 1
                    except Exception:
                        failures += 1
                await asyncio.sleep(0.02)  # kept: paces the client for the whole outage, nothing to wait for
            age_during_outage = comp.store.age()

            # The source comes back with a changed map: picked up, removed names now NXDOMAIN.
            await asyncio.to_thread(
                envoy.start, body(("backend.mesh", "240.0.0.1"), ("new.mesh", "240.0.0.7"))
            )

            async def has_new() -> bool:
                return (await ask(comp.port, "new.mesh")).rcode() == dns.rcode.NOERROR

            await wait_until_async(has_new, 10, "the new table")
            gone = await ask(comp.port, "web.mesh")
            return {
                "asked": asked,
                "failures": failures,
                "age": age_during_outage,
                "gone": gone.rcode(),
                "metrics": generate_latest(registry).decode(),
            }
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        res = asyncio.run(main())
    finally:
        envoy.stop()
    assert res["asked"] > 10 and res["failures"] == 0
    assert res["age"] is not None and res["age"] >= OUTAGE * 0.8
    assert res["gone"] == dns.rcode.NXDOMAIN
    m = res["metrics"]
    assert 'kuma_dp_dns_entries_total{kuma_workload="backend",mesh="default"} 2.0' in m
    assert 'kuma_dp_dns_queries_total{kuma_workload="backend",mesh="default",qtype="A",source="local"}' in m
    assert "kuma_dp_dns_table_age_seconds" in m and "kuma_dp_dns_config_ready_wait_seconds_bucket" in m


def test_restarted_agent_answers_from_the_persisted_table_before_any_source(short_tmp: Path) -> None:
    async def first_life() -> None:
        comp = DNSComponent(port=0, workdir=short_tmp, upstreams=[], register_metrics=False)
        task = asyncio.ensure_future(comp.run())
        await asyncio.wait_for(comp.ready.wait(), 10)  # a failed start fails the test, not hangs it
        comp.update(body(("backend.mesh", "240.0.0.1")), etag="e1")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def second_life() -> tuple[bool, dns.message.Message]:
        # No Envoy, no socket: the fetcher finds nothing, the table comes from the work dir.
        comp = DNSComponent(port=0, workdir=short_tmp, upstreams=[], register_metrics=False)
        fetcher = ConfigFetcher(socket_path(short_tmp), interval=0.1)
        fetcher.register("/dns", comp.update, comp.not_modified)
        tasks = [asyncio.ensure_future(comp.run()), asyncio.ensure_future(fetcher.run())]
        try:
            await asyncio.wait_for(comp.ready.wait(), 10)  # a failed start fails the test, not hangs it
            return comp.has_records.is_set(), await ask(comp.port, "backend.mesh")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(first_life())
    has_records, r = asyncio.run(second_life())
    assert has_records and r.answer[0][0].to_text() == "240.0.0.1"


class FakeEnvoy:
    """A unix-socket HTTP/1.1 server with scripted statuses, recording the If-None-Match it got."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.script: list[tuple[int, bytes, str | None]] = []
        self.seen: list[str | None] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in head.decode().split("\r\n")[1:] if line)
                }
                self.seen.append(headers.get("if-none-match"))
                status, content, etag = self.script.pop(0) if self.script else (404, b"", None)
                extra = f"etag: {etag}\r\n" if etag else ""
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-length: {len(content)}\r\n{extra}\r\n".encode() + content
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_fetcher_status_handling(short_tmp: Path) -> None:
    sock = socket_path(short_tmp)
    fake = FakeEnvoy(sock)
    got: list[bytes] = []

    def handler(b: bytes, etag: str | None) -> None:
        if b == b"reject":
            raise ValueError("bad body")
        got.append(b)

    async def main() -> None:
        fetcher = ConfigFetcher(sock, interval=0.05)
        fetcher.register("/dns", handler)
        await fetcher.poll_once()  # no socket yet: skipped quietly
        server = await asyncio.start_unix_server(fake.handle, path=sock)
        async with server:
            fake.script = [
                (200, b"one", "e1"),  # stored
                (304, b"", None),  # kept
                (200, b"reject", "e2"),  # handler fails: etag cleared
                (200, b"two", "e3"),
                (404, b"", None),  # not configured: cleared
                (500, b"", None),
            ]
            for _ in range(6):
                await fetcher.poll_once()
        assert fake.seen == [None, "e1", "e1", None, "e3", None]
        assert got == [b"one", b"two"] and fetcher.paths["/dns"].failures == 1

    asyncio.run(main())
