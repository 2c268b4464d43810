"""`kuma-dp dns` driven by real clients (dig, dnspython) against a real upstream (dnsmasq started here)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from kuma_dp.fsutil import atomic_write
from kuma_dp_dev.harness import dnsmasq
from kuma_dp_dev.harness.dnsmasq import ServerProcess
from kuma_dp_dev.harness.poll import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = {
    "records": [
        {"name": "backend.test-ns.svc.8080.mesh", "ips": ["240.0.0.0", "::ffff:f000:0"]},
        {"name": "httpbin.mesh", "ips": ["240.0.0.1", "::ffff:f000:1"]},
        {"name": "v4only.mesh", "ips": ["240.0.0.2"]},
    ],
    "ttl": 30,
    "extraLabels": {"mesh": "default"},
}


def query(port: int, name: str, rdtype: str = "A", tcp: bool = False, **kw: object) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=8)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=8, ignore_trailing=False)


def dig(port: int, *args: str) -> str:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+time=8", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return out.stdout


def start_dnsmasq(tmp: Path, *args: str) -> ServerProcess:
    if not shutil.which("dnsmasq"):
        pytest.skip("dnsmasq not installed (apt install dnsmasq-base; ./dev does)")
    return dnsmasq.start_dnsmasq(tmp, *args)


def start_server(tmp: Path, records: Path, *args: str, search: str = "ns.svc.cluster.local") -> ServerProcess:
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"search {search}\nnameserver 127.0.0.1\noptions ndots:5\n")
    cmd = [sys.executable, "-m", "kuma_dp", "dns", "--port", "0", "--records", str(records)]
    with open(tmp / "server.log", "w") as log:
        proc = subprocess.Popen(
            [*cmd, "--resolv-conf", str(resolv), *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=REPO,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening port="):
        proc.kill()
        raise RuntimeError(f"server did not start: {(tmp / 'server.log').read_text()}")
    return ServerProcess(proc, int(line.split("=")[1]), tmp / "server.log")


@pytest.fixture
def records(tmp_path: Path) -> Path:
    path = tmp_path / "records.json"
    path.write_text(json.dumps(PAYLOAD))
    return path


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[ServerProcess]:
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"10.1.0.{i} big.example.test\n" for i in range(1, 61)))
    p = start_dnsmasq(
        tmp_path,
        "--address=/example.test/10.9.9.9",
        "--local-ttl=300",
        f"--addn-hosts={hosts}",
    )
    yield p
    p.stop()


@pytest.fixture
def server(tmp_path: Path, records: Path, upstream: ServerProcess) -> Iterator[ServerProcess]:
    p = start_server(tmp_path, records, "--upstream", f"127.0.0.1:{upstream.port}")
    yield p
    p.stop()


def test_dig_mesh_names_udp_and_tcp(server: ServerProcess) -> None:
    for transport in ("+notcp", "+tcp"):
        out = dig(server.port, "HTTPbin.MESH", "A", transport)
        assert "status: NOERROR" in out and " aa " in out.split("flags:")[1].split(";")[0] + " "
        assert "HTTPbin.MESH.\t\t30\tIN\tA\t240.0.0.1" in out  # the client's case echoed, TTL from payload
        out6 = dig(server.port, "httpbin.mesh", "AAAA", transport, "+short")
        assert out6.strip() == "::ffff:240.0.0.1"
    # A name with only an IPv4 VIP: NOERROR, empty AAAA answer (never NXDOMAIN: curl needs this).
    out = dig(server.port, "v4only.mesh", "AAAA")
    assert "status: NOERROR" in out and "ANSWER: 0" in out
    # Unknown names under .mesh: NXDOMAIN with a SOA for negative caching.
    out = dig(server.port, "nope.mesh", "A", "+noedns")
    assert "status: NXDOMAIN" in out and "IN\tSOA\tns.mesh. hostmaster.mesh." in out


def test_dnspython_edns_noedns_search_domains(server: ServerProcess) -> None:
    for kw in ({}, {"use_edns": 0, "payload": 1232}, {"use_edns": 0, "payload": 4096, "want_dnssec": True}):
        for tcp in (False, True):
            r = query(server.port, "backend.test-ns.svc.8080.mesh", "A", tcp=tcp, **kw)
            assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
            assert [rr.to_text() for rr in r.answer[0]] == ["240.0.0.0"]
            assert (r.edns >= 0) == ("use_edns" in kw)
    # The search-domain form a glibc client with `search ns.svc.cluster.local` tries first is answered here.
    r = query(server.port, "httpbin.mesh.ns.svc.cluster.local", "A")
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].to_text() == "httpbin.mesh."
    assert r.answer[1][0].to_text() == "240.0.0.1"
    # Other types for a mesh name: authoritative NODATA (an upstream NXDOMAIN would poison the A record).
    r = query(server.port, "httpbin.mesh", "TXT")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.flags & dns.flags.AA


def test_forwarding_failover_cache_and_truncation(
    tmp_path: Path, records: Path, upstream: ServerProcess
) -> None:
    dead = dnsmasq.free_udp_tcp_port()  # nothing listens: ICMP port unreachable, then the next server
    srv = start_server(
        tmp_path, records, "--upstream", f"127.0.0.1:{dead}", "--upstream", f"127.0.0.1:{upstream.port}"
    )
    try:
        r = query(srv.port, "www.example.test", "A")
        assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].to_text() == "10.9.9.9"
        # More than 512 bytes: a classic client gets TC and an empty answer; TCP and EDNS0 get all 60.
        out = dig(srv.port, "big.example.test", "+noedns", "+ignore")
        assert "tc" in out.split("flags:")[1].split(";")[0] and "ANSWER: 0" in out
        assert (
            len(dig(srv.port, "big.example.test", "+noedns", "+short").split()) == 60
        )  # dig retried over TCP
        assert len(dig(srv.port, "big.example.test", "+tcp", "+short").split()) == 60
        assert len(dig(srv.port, "big.example.test", "+bufsize=4096", "+short").split()) == 60
        # Cached: with the upstream gone the same names still answer, TTL counting down from 300.
        upstream.stop()
        r = query(srv.port, "www.example.test", "A")
        assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].to_text() == "10.9.9.9"
        assert 0 < r.answer[0].ttl <= 300
        r = query(srv.port, "WWW.example.TEST", "A", tcp=True)  # cache is case-insensitive, case echoed
        assert r.question[0].name.to_text() == "WWW.example.TEST." and r.answer[0][0].to_text() == "10.9.9.9"
        # Never asked before and no upstream left: SERVFAIL (not a hang).
        r = query(srv.port, "other.example.test", "A")
        assert r.rcode() == dns.rcode.SERVFAIL
    finally:
        srv.stop()


def test_negative_cache_and_serve_stale(tmp_path: Path, records: Path) -> None:
    up = start_dnsmasq(
        tmp_path,
        "--auth-server=ns.neg.test,lo",
        "--auth-zone=neg.test",
        "--auth-ttl=2",
        "--auth-soa=1,hostmaster.neg.test,1200,120,1209600,2",
        "--host-record=h.neg.test,10.3.3.3",
    )
    srv = start_server(tmp_path, records, "--upstream", f"127.0.0.1:{up.port}")
    try:
        assert query(srv.port, "h.neg.test").answer[0][0].to_text() == "10.3.3.3"
        r = query(srv.port, "missing.neg.test")
        assert r.rcode() == dns.rcode.NXDOMAIN and r.authority  # SOA came through
        up.stop()
        r = query(srv.port, "missing.neg.test")
        assert r.rcode() == dns.rcode.NXDOMAIN  # RFC 2308: negative answer served from the cache
        time.sleep(2.2)  # kept: the point is time passing; both cached answers' TTLs (2 s) expire
        r = query(srv.port, "h.neg.test")
        # RFC 8767: upstream down, expired answer served with the stale TTL (30 s).
        assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].to_text() == "10.3.3.3"
        assert r.answer[0].ttl == 30
    finally:
        srv.stop()
        up.stop()


def test_records_file_is_reread_when_it_changes(tmp_path: Path, records: Path) -> None:
    srv = start_server(tmp_path, records)
    try:
        assert query(srv.port, "new.mesh").rcode() == dns.rcode.NXDOMAIN
        payload = dict(PAYLOAD, records=[*PAYLOAD["records"], {"name": "new.mesh", "ips": ["240.0.0.9"]}])
        atomic_write(records, json.dumps(payload))
        wait_until(
            lambda: query(srv.port, "new.mesh").rcode() == dns.rcode.NOERROR, 10, "the records file change"
        )
        assert query(srv.port, "new.mesh").answer[0][0].to_text() == "240.0.0.9"
        # A broken file keeps the last good table: once the server has read it (and said so), still answered.
        records.write_text("{not json")
        wait_until(lambda: "keeping the current table" in srv.log.read_text(), 10, "the broken file read")
        assert query(srv.port, "new.mesh").answer[0][0].to_text() == "240.0.0.9"
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def test_cli_rejects_bad_records_file_and_taken_port(tmp_path: Path) -> None:
    env = dict(os.environ)
    bad = subprocess.run(
        [sys.executable, "-m", "kuma_dp", "dns", "--port", "0", "--records", str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert bad.returncode == 2
    assert "missing.json" in bad.stderr and "/dns JSON payload" in bad.stderr
    rec = tmp_path / "r.json"
    rec.write_text(json.dumps(PAYLOAD))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [sys.executable, "-m", "kuma_dp", "dns", "--port", str(port), "--records", str(rec)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
            check=False,
        )
    assert busy.returncode == 1 and f"DNS port {port}" in busy.stderr and "in use" in busy.stderr


def test_fuzz_over_real_udp_and_tcp(server: ServerProcess) -> None:
    """20,000 random/mutated datagrams and 300 hostile TCP streams; the server keeps answering."""
    import random

    rng = random.Random(7)
    seeds = [
        dns.message.make_query(n, t, use_edns=e).to_wire()
        for n in ("backend.test-ns.svc.8080.mesh.", "nope.mesh.", "www.example.test.")
        for t in ("A", "AAAA", "TXT")
        for e in (-1, 0)
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for i in range(20000):
            if i % 3 == 0:
                pkt = rng.randbytes(rng.randrange(0, 200))
            else:
                buf = bytearray(rng.choice(seeds))
                for _ in range(rng.randint(1, 3)):
                    buf[rng.randrange(len(buf))] = rng.randrange(256)
                pkt = bytes(buf[: rng.randrange(len(buf) + 1)] if i % 5 == 0 else buf)
            try:
                s.sendto(pkt, ("127.0.0.1", server.port))
            except BlockingIOError:
                time.sleep(0.001)  # kept: the kernel's send buffer is full; pacing, not waiting for an event
            if i % 200 == 0:
                time.sleep(0.002)  # kept: lets the kernel queue drain; this tests robustness, not load
    for i in range(300):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
            kind = i % 3
            if kind == 0:
                c.sendall(rng.randbytes(rng.randrange(1, 100)))
            elif kind == 1:
                c.sendall(b"\xff\xff" + rng.randbytes(50))  # promises 65535 bytes, sends 50, hangs up
            else:
                body = bytearray(rng.choice(seeds))
                body[rng.randrange(len(body))] = rng.randrange(256)
                c.sendall(len(body).to_bytes(2, "big") + bytes(body))
    assert server.proc.poll() is None

    def mesh_answer() -> str | None:
        # While the server drains the flood its socket buffer may still overflow and drop a datagram (as
        # UDP may); a stub resolver retries, so does this check (a short timeout, then ask again).
        q = dns.message.make_query("backend.test-ns.svc.8080.mesh", "A")
        try:
            r = dns.query.udp(q, "127.0.0.1", port=server.port, timeout=1)
        except dns.exception.Timeout:
            return None
        return r.answer[0][0].to_text()

    assert wait_until(mesh_answer, 30, "a mesh answer after the flood") == "240.0.0.0"
    r = query(server.port, "www.example.test", "A", tcp=True)
    assert r.answer[0][0].to_text() == "10.9.9.9"


class ScriptedUpstream(asyncio.DatagramProtocol):
    """A real UDP nameserver on loopback: answers A 10.0.0.1 after `delay` (or never) and counts queries."""

    def __init__(self, delay: float, answer: bool = True) -> None:
        self.delay = delay
        self.answer = answer
        self.seen: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = dns.message.from_wire(data)
        self.seen.append(q.question[0].name.to_text().lower())
        if self.answer:
            r = dns.message.make_response(q)
            r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "10.0.0.1"))
            asyncio.get_running_loop().call_later(self.delay, self.transport.sendto, r.to_wire(), addr)  # type: ignore[union-attr]


async def scripted(delay: float, answer: bool = True) -> tuple[ScriptedUpstream, tuple[str, int]]:
    proto = ScriptedUpstream(delay, answer)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: proto, local_addr=("127.0.0.1", 0)
    )
    return proto, transport.get_extra_info("sockname")[:2]


def test_in_flight_merge_failover_parallel_and_metrics(tmp_path: Path) -> None:
    import dns.asyncquery
    from prometheus_client import CollectorRegistry, generate_latest

    from kuma_dns.component import DNSComponent

    registry = CollectorRegistry()

    async def main() -> dict[str, object]:
        slow, slow_addr = await scripted(0.3)
        hole, hole_addr = await scripted(0, answer=False)
        good, good_addr = await scripted(0)
        out: dict[str, object] = {}

        async def run_with(upstreams: list[tuple[str, int]], parallel: bool, **kw: object) -> DNSComponent:
            comp = DNSComponent(
                port=0,
                upstreams=upstreams,
                parallel=parallel,
                upstream_timeout=0.5,
                resolv_conf=tmp_path / "none",
                **kw,  # type: ignore[arg-type]
            )
            tasks.append(asyncio.ensure_future(comp.run()))
            await asyncio.wait_for(comp.ready.wait(), 10)  # a failed start fails the test, not hangs it
            comp.update(json.dumps(PAYLOAD))
            return comp

        tasks: list[asyncio.Task[None]] = []
        try:
            comp = await run_with([slow_addr], False, registry=registry)
            qs = [dns.message.make_query("Same.Example.", "A") for _ in range(30)]
            replies = await asyncio.gather(
                *(dns.asyncquery.udp(q, "127.0.0.1", port=comp.port, timeout=5) for q in qs)
            )
            out["merged_answers"] = [r.answer[0][0].to_text() for r in replies]
            out["merged_ids_ok"] = all(r.id == q.id for r, q in zip(replies, qs, strict=True))
            out["slow_seen"] = list(slow.seen)
            out["metrics"] = generate_latest(registry).decode()

            in_order = await run_with([hole_addr, good_addr], False, register_metrics=False)
            r = await dns.asyncquery.udp(
                dns.message.make_query("a.example.", "A"), "127.0.0.1", port=in_order.port, timeout=5
            )
            out["failover"] = (r.answer[0][0].to_text(), list(hole.seen), list(good.seen))
            hole.seen.clear()
            good.seen.clear()
            par = await run_with([hole_addr, good_addr], True, register_metrics=False)
            q = dns.message.make_query("b.example.", "A")
            r = await dns.asyncquery.udp(q, "127.0.0.1", port=par.port, timeout=5)
            out["parallel"] = r.answer[0][0].to_text()
            # Only a server that never answers: SERVFAIL at the 4.5 s deadline (retransmitting to it every
            # per-attempt timeout meanwhile), not a hang; the client waits longer than that deadline.
            silent = await run_with([hole_addr], False, register_metrics=False)
            r = await dns.asyncquery.udp(
                dns.message.make_query("c.example.", "A"), "127.0.0.1", port=silent.port, timeout=10
            )
            out["silent"] = dns.rcode.to_text(r.rcode())
            return out
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    res = asyncio.run(main())
    assert res["merged_answers"] == ["10.0.0.1"] * 30 and res["merged_ids_ok"]
    assert res["slow_seen"] == ["same.example."]  # 30 identical queries in flight: one upstream query
    m = res["metrics"]
    assert isinstance(m, str)
    assert 'kuma_dp_dns_queries_total{mesh="default",qtype="A",source="upstream"} 30.0' in m
    assert 'kuma_dp_dns_upstream_request_duration_seconds_count{mesh="default"} 1.0' in m
    assert 'kuma_dp_dns_response_codes_total{mesh="default",rcode="noerror"} 30.0' in m
    assert 'kuma_dp_dns_cache_misses_total{mesh="default"} 30.0' in m
    assert 'kuma_dp_dns_upstream_request_failure_count{mesh="default"} 0.0' in m
    assert res["failover"] == ("10.0.0.1", ["a.example."], ["a.example."])  # first timed out, second answered
    assert res["parallel"] == "10.0.0.1"
    assert res["silent"] == "SERVFAIL"


@pytest.mark.parametrize("mmsg", [True, False], ids=["recvmmsg", "recvfrom"])
def test_dual_stack_listeners_ipv4_and_ipv6(
    tmp_path: Path, mmsg: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Transparent-proxy binding (127.0.0.1 and ::1, separate sockets): both families, UDP and TCP."""
    import dns.asyncquery

    from kuma_dns.component import DNSComponent, bind_addresses

    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    import kuma_dns.server

    monkeypatch.setattr(kuma_dns.server, "USE_MMSG", mmsg)  # both UDP readers: batched and plain
    addresses = bind_addresses(transparent_proxy=True, ip_family="dualstack")
    assert addresses == ["127.0.0.1", "::1"]

    async def main() -> list[str]:
        _, good_addr = await scripted(0)
        comp = DNSComponent(
            port=0,
            addresses=addresses,
            upstreams=[good_addr],
            register_metrics=False,
            resolv_conf=tmp_path / "none",
        )
        task = asyncio.ensure_future(comp.run())
        try:
            await asyncio.wait_for(comp.ready.wait(), 10)  # a failed start fails the test, not hangs it
            comp.update(json.dumps(PAYLOAD))
            out = []
            for host in ("127.0.0.1", "::1"):
                for name in ("httpbin.mesh.", f"fwd-{host.replace(':', 'x').replace('.', '-')}.example."):
                    for fn in (dns.asyncquery.udp, dns.asyncquery.tcp):
                        r = await fn(dns.message.make_query(name, "A"), host, port=comp.port, timeout=5)
                        out.append(r.answer[-1][0].to_text())
            return out
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    got = asyncio.run(main())
    # Per family: mesh UDP, mesh TCP, forwarded UDP (IPv6 client address through the batched path), then the
    # same forwarded name over TCP, answered from the cache.
    assert got == ["240.0.0.1", "240.0.0.1", "10.0.0.1", "10.0.0.1"] * 2
