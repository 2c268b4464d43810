"""Kuma's DNS-proxy unit-test table (`app/kuma-dp/pkg/dataplane/dnsproxy/component_test.go`), replayed
against our server over real UDP, with a real UDP upstream standing in for Kuma's mocked upstream function.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from prometheus_client import CollectorRegistry

from kuma_dns.component import DNSComponent
from kuma_dns.metrics import DNSMetrics
from kuma_dns.server import DNSServer
from kuma_dns.table import TableStore

pytestmark = pytest.mark.conformance

MAP = {
    "ttl": 123,
    "records": [{"name": "example.com", "ips": ["240.0.0.1", "::2"]}],
    "extraLabels": {"mesh": "default", "kuma_workload": "backend"},
}


class Upstream(asyncio.DatagramProtocol):
    def __init__(self, respond: Callable[[dns.message.Message], dns.message.Message]) -> None:
        self.respond = respond
        self.asked: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = dns.message.from_wire(data)
        self.asked.append(q.question[0].name.to_text())
        self.transport.sendto(self.respond(q).to_wire(), addr)  # type: ignore[attr-defined]


def answer_a(ip: str, ttl: int) -> Callable[[dns.message.Message], dns.message.Message]:
    def respond(q: dns.message.Message) -> dns.message.Message:
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA
        r.answer.append(dns.rrset.from_text(q.question[0].name, ttl, "IN", "A", ip))
        return r

    return respond


def servfail(q: dns.message.Message) -> dns.message.Message:
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.SERVFAIL)
    return r


async def with_server(
    respond: Callable[[dns.message.Message], dns.message.Message] | None,
    payload: dict | None,  # type: ignore[type-arg]
    queries: list[tuple[str, str]],
    registry: CollectorRegistry | None = None,
    snapshot: list[Any] | None = None,
) -> tuple[list[dns.message.Message], list[str]]:
    snapshot = snapshot if snapshot is not None else []
    loop = asyncio.get_running_loop()
    if respond is None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            up_addr = s.getsockname()
        proto = Upstream(servfail)
    else:
        proto = Upstream(respond)
        transport, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=("127.0.0.1", 0))
        up_addr = transport.get_extra_info("sockname")[:2]
    comp = DNSComponent(
        port=0,
        upstreams=[up_addr],
        registry=registry,
        register_metrics=registry is not None,
        resolv_conf="/nonexistent",
        upstream_timeout=0.5,
    )
    task = asyncio.ensure_future(comp.run())
    try:
        await asyncio.wait_for(comp.ready.wait(), 10)  # a failed start fails the test, not hangs it
        if payload is not None:
            comp.update(json.dumps(payload))
        out = []
        for name, rdtype in queries:
            q = dns.message.make_query(name, rdtype)
            q.flags |= dns.flags.RA
            out.append(await dns.asyncquery.udp(q, "127.0.0.1", port=comp.port, timeout=5))
        if registry is not None:
            snapshot.extend(registry.collect())  # before run() ends and unregisters the collector
        return out, proto.asked
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def text(rr: dns.rrset.RRset) -> str:
    """miekg/dns's `String()` form: name, TTL, class, type, data separated by tabs."""
    return "\t".join(rr.to_text().split(" ", 4))


def test_works_with_no_local_table(conformance_dir: Path) -> None:
    (r,), _ = asyncio.run(with_server(answer_a("17.0.0.1", 123), None, [("example.com.", "A")]))
    assert "17.0.0.1" in r.answer[0].to_text()


def test_failing_upstream_passed_through_and_failing_network(conformance_dir: Path) -> None:
    (r,), _ = asyncio.run(with_server(servfail, None, [("example.com.", "A")]))
    assert r.rcode() == dns.rcode.SERVFAIL
    (r,), _ = asyncio.run(with_server(None, None, [("example.com.", "A")]))
    assert r.rcode() == dns.rcode.SERVFAIL


def test_hit_the_map(conformance_dir: Path) -> None:
    def respond(q: dns.message.Message) -> dns.message.Message:
        assert q.question[0].name.to_text() != "example.com.", "mesh name went upstream"
        return answer_a("17.0.0.1", 125)(q)

    (a, aaaa, foo), asked = asyncio.run(
        with_server(respond, MAP, [("example.com.", "A"), ("example.com.", "AAAA"), ("foo.com.", "A")])
    )
    assert a.rcode() == dns.rcode.NOERROR and text(a.answer[0]) == "example.com.\t123\tIN\tA\t240.0.0.1"
    assert aaaa.rcode() == dns.rcode.NOERROR and text(aaaa.answer[0]) == "example.com.\t123\tIN\tAAAA\t::2"
    assert foo.rcode() == dns.rcode.NOERROR and text(foo.answer[0]) == "foo.com.\t125\tIN\tA\t17.0.0.1"
    assert asked == ["foo.com."]


def test_metrics_have_extra_labels(conformance_dir: Path) -> None:
    payload = {
        "ttl": 123,
        "records": [{"name": "example.com", "ips": ["240.0.0.1"]}],
        "extraLabels": {"mesh": "default", "kuma_workload": "backend", "k8s_kuma_io_namespace": "test-ns"},
    }
    registry = CollectorRegistry()
    snapshot: list[Any] = []
    asyncio.run(with_server(servfail, payload, [("example.com.", "A")], registry, snapshot))
    families = {m.name: m for m in snapshot}
    hist = families["kuma_dp_dns_request_duration_seconds"]
    labels = {k: v for k, v in hist.samples[0].labels.items() if k != "le"}
    assert labels == {"mesh": "default", "kuma_workload": "backend", "k8s_kuma_io_namespace": "test-ns"}


def test_listener_errors(conformance_dir: Path) -> None:
    async def start(addresses: list[str], port: int) -> None:
        server = DNSServer(TableStore(), None, DNSMetrics(), addresses, port)
        await server.start()
        await server.close()

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            asyncio.run(start(["127.0.0.1"], port))
        with pytest.raises(OSError, match="in use"):
            asyncio.run(start(["127.0.0.2", "127.0.0.1"], port))  # the free one is released again
    asyncio.run(start(["127.0.0.2"], port))


def test_payload_etag_is_sha256_of_the_body(conformance_dir: Path) -> None:
    body = (conformance_dir / "dns" / "dns-payload.from-4-envoy-config.json").read_bytes()
    assert (
        hashlib.sha256(body).hexdigest() == "3a7819834364a9832e4a7b58cf52f72bc5b33bb1766e86dfd5cfe5afab562693"
    )
    store = TableStore()
    assert store.update(body, etag=hashlib.sha256(body).hexdigest())
    assert store.current.names == {
        "backend.test-ns.svc.8080.mesh",
        "backend_test-ns_svc_8080.mesh",
        "httpbin.mesh",
    }
