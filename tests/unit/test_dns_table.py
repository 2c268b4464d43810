"""The pure core of kuma_dns: payload decoding, precomputed answers, persistence, wire helpers, the cache."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from kuma_dns import _wire as w
from kuma_dns.metrics import DNSMetrics
from kuma_dns.server import DNSServer
from kuma_dns.table import PERSIST_NAME, PayloadError, TableStore, parse_payload
from kuma_dns.upstream import Cache, parse_hostport, parse_resolv_conf

pytestmark = pytest.mark.unit

PAYLOAD = {
    "records": [
        {"name": "backend.mesh", "ips": ["240.0.0.0", "::ffff:f000:0"]},
        {"name": "Web.Mesh", "ips": ["240.0.0.5", "bogus", "::ffff:1.2.3.4"]},
        {"name": "v6.mesh", "ips": ["fd00::1", "fd00::2"]},
    ],
    "ttl": 45,
    "extraLabels": {"mesh": "default"},
}


def serve(server: DNSServer, q: dns.message.Message, tcp: bool = False) -> dns.message.Message:
    """Run the full packet handler without sockets and parse the reply strictly."""
    wire = asyncio.run(server.process(q.to_wire(), tcp=tcp))
    assert wire is not None
    return dns.message.from_wire(wire)


def make_server(payload: object = PAYLOAD, search: tuple[str, ...] = ()) -> DNSServer:
    store = TableStore(search_domains=search)
    server = DNSServer(store, None, DNSMetrics())
    store.update(json.dumps(payload))
    return server


def test_answers_are_authoritative_case_insensitive_and_echo_the_question() -> None:
    server = make_server()
    q = dns.message.make_query("BaCkEnD.mEsH.", "A")
    r = serve(server, q)
    assert (
        r.id == q.id and r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA and r.flags & dns.flags.RA
    )
    assert r.question[0].name.to_text() == "BaCkEnD.mEsH."
    assert r.answer[0].to_text() == "BaCkEnD.mEsH. 45 IN A 240.0.0.0"
    r = serve(server, dns.message.make_query("backend.mesh.", "AAAA"))
    assert r.answer[0].to_text() == "backend.mesh. 45 IN AAAA ::ffff:240.0.0.0"
    # Payload names match case-insensitively; invalid IPs skipped; ::ffff:dotted is an A (as Kuma).
    r = serve(server, dns.message.make_query("web.mesh.", "A"))
    assert sorted(rr.to_text() for rr in r.answer[0]) == ["1.2.3.4", "240.0.0.5"]
    r = serve(server, dns.message.make_query("web.mesh.", "AAAA"))
    assert r.rcode() == dns.rcode.NOERROR and not r.answer  # NODATA, not NXDOMAIN
    r = serve(server, dns.message.make_query("v6.mesh.", "AAAA"))
    assert sorted(rr.to_text() for rr in r.answer[0]) == ["fd00::1", "fd00::2"]


def test_fast_path_and_slow_path_give_the_same_bytes() -> None:
    server = make_server()
    for edns in (-1, 0):
        q = dns.message.make_query("backend.mesh.", "A", use_edns=edns)
        fast = server.answer_local(q.to_wire())
        assert fast is not None
        info = w.parse_query(q.to_wire())
        assert info is not None
        ans = server._table.lookup(info.key[:-5], 1)
        assert ans is not None
        assert fast == server._local_reply(q.to_wire(), info, ans, tcp=False)


def test_unknown_mesh_name_nxdomain_only_after_a_table_and_other_types_nodata() -> None:
    store = TableStore()
    server = DNSServer(store, None, DNSMetrics())
    # No table yet: everything is forwarded (here: no forwarder, so SERVFAIL), never a premature NXDOMAIN.
    assert serve(server, dns.message.make_query("nope.mesh.", "A")).rcode() == dns.rcode.SERVFAIL
    store.update(json.dumps(PAYLOAD))
    r = serve(server, dns.message.make_query("nope.mesh.", "A"))
    assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA
    assert r.authority[0].to_text() == "mesh. 45 IN SOA ns.mesh. hostmaster.mesh. 1 45 45 45 45"
    r = serve(server, dns.message.make_query("backend.mesh.", "SRV"))
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.flags & dns.flags.AA
    # Not under .mesh and not in the table: forwarded (SERVFAIL without upstream).
    assert serve(server, dns.message.make_query("example.com.", "A")).rcode() == dns.rcode.SERVFAIL


def test_search_domain_forms_are_answered_directly() -> None:
    server = make_server(search=("ns.svc.cluster.local", "svc.cluster.local", "cluster.local"))
    for suffix in ("ns.svc.cluster.local", "svc.cluster.local", "cluster.local"):
        r = serve(server, dns.message.make_query(f"Backend.mesh.{suffix}.", "A"))
        # A CNAME to the mesh name and its records in one reply (glibc then reports the mesh name).
        assert [rrset.to_text() for rrset in r.answer] == [
            f"Backend.mesh.{suffix}. 45 IN CNAME backend.mesh.",
            "backend.mesh. 45 IN A 240.0.0.0",
        ]
        r = serve(server, dns.message.make_query(f"web.mesh.{suffix}.", "AAAA"))
        assert r.rcode() == dns.rcode.NOERROR and [x.rdtype for x in r.answer] == [dns.rdatatype.CNAME]


def test_big_answer_truncated_on_udp_complete_on_tcp() -> None:
    payload = {"records": [{"name": "many.mesh", "ips": [f"240.0.1.{i}" for i in range(1, 60)]}], "ttl": 30}
    server = make_server(payload)
    q = dns.message.make_query("many.mesh.", "A", use_edns=-1)
    assert server.answer_local(q.to_wire()) is None  # too big for the hot path
    r = serve(server, q)
    assert r.flags & dns.flags.TC and not r.answer
    assert len(serve(server, q, tcp=True).answer[0]) == 59
    assert (
        len(serve(server, dns.message.make_query("many.mesh.", "A", use_edns=0, payload=1232)).answer[0])
        == 59
    )


def test_malformed_queries() -> None:
    server = make_server()
    q = dns.message.make_query("backend.mesh.", "A")
    wire = q.to_wire()
    assert asyncio.run(server.process(wire[:7])) is None  # no full header: dropped
    resp = bytearray(wire)
    resp[2] |= 0x80
    assert asyncio.run(server.process(bytes(resp))) is None  # a response: never answered (no loops)
    r = dns.message.from_wire(asyncio.run(server.process(wire[:20])))  # type: ignore[arg-type]
    assert r.rcode() == dns.rcode.FORMERR
    two = dns.message.make_query("backend.mesh.", "A")
    two.question.append(dns.rrset.RRset(dns.name.from_text("web.mesh."), 1, 1))
    assert dns.message.from_wire(asyncio.run(server.process(two.to_wire()))).rcode() == dns.rcode.FORMERR  # type: ignore[arg-type]
    notify = bytearray(wire)
    notify[2] = (notify[2] & 0x87) | (4 << 3)
    r = dns.message.from_wire(asyncio.run(server.process(bytes(notify))))  # type: ignore[arg-type]
    assert r.rcode() == dns.rcode.NOTIMP


def test_bad_payloads_keep_the_old_table() -> None:
    store = TableStore()
    store.update(json.dumps(PAYLOAD))
    before = store.current
    for bad in (
        "{",
        "[]",
        '{"records": {}}',
        '{"records": [], "ttl": -1}',
        '{"records": [], "extraLabels": [1]}',
    ):
        with pytest.raises(PayloadError):
            store.update(bad)
        assert store.current is before
    assert store.update(json.dumps(PAYLOAD)) is False  # same content: no swap
    assert store.current is before


def test_persisted_table_roundtrip_and_corrupt_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    t = [1000.0]
    store = TableStore(workdir=tmp_path, clock=lambda: t[0], stale_after=60)
    store.update(json.dumps(PAYLOAD), etag="abc", source="dynconf")
    path = tmp_path / PERSIST_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["etag"] == "abc" and doc["fetchedAt"] == 1000.0 and doc["payload"] == PAYLOAD

    t[0] = 1100.0
    fresh = TableStore(workdir=tmp_path, clock=lambda: t[0], stale_after=60)
    assert fresh.load_persisted()
    assert fresh.current.names == {"backend.mesh", "web.mesh", "v6.mesh"} and fresh.age() == 100.0
    with caplog.at_level(logging.WARNING, "kuma_dns.table"):
        assert fresh.check_stale() and fresh.check_stale()
    assert len([r for r in caplog.records if "stale" in r.message]) == 1  # logged once per stale period
    fresh.confirm()
    assert fresh.age() == 0.0 and not fresh.check_stale()

    path.write_text("{garbage")
    assert not TableStore(workdir=tmp_path).load_persisted()


def test_conformance_payload_builds(conformance_dir: Path) -> None:
    body = (conformance_dir / "dns" / "dns-payload.from-4-envoy-config.json").read_bytes()
    p = parse_payload(body)
    assert [r.name for r in p.records] == [
        "backend.test-ns.svc.8080.mesh",
        "backend_test-ns_svc_8080.mesh",
        "httpbin.mesh",
    ]
    assert p.records[2].a == ("240.0.0.1",) and p.records[2].aaaa == ("::ffff:f000:1",)
    assert p.ttl == 30 and p.extra_labels["kuma_io_zone"] == "zone-1"


def test_wire_helpers_against_dnspython() -> None:
    q = dns.message.make_query("Example.COM.", "MX", use_edns=0, payload=4096, want_dnssec=True)
    info = w.parse_query(q.to_wire())
    assert info is not None and info.edns and info.udp_size == 4096 and info.do_bit and info.qtype == 15
    assert info.key == w.name_to_wire("example.com") + b"\x00\x0f\x00\x01\x01"
    plain = dns.message.make_query("example.com.", "A", use_edns=-1).to_wire()
    with_opt = dns.message.from_wire(w.add_opt(plain))
    assert with_opt.edns == 0 and with_opt.payload == w.EDNS_UDP_SIZE
    r = dns.message.make_response(dns.message.make_query("example.com.", "A", use_edns=0))
    r.answer.append(dns.rrset.from_text("example.com.", 60, "IN", "A", "1.1.1.1"))
    stripped = dns.message.from_wire(w.strip_additional_opt(r.to_wire()))
    assert stripped.edns == -1 and stripped.answer == r.answer
    offsets, min_ttl = w.rr_ttl_offsets(r.to_wire())  # type: ignore[misc]
    assert len(offsets) == 1 and min_ttl == 60
    for bad in (b"", b"\x00" * 11, b"\x00" * 12 + b"\x3f"):
        assert w.parse_query(bad) is None


def _response(name: str, rcode: int = 0, ttl: int = 10, soa_ttl: int | None = None) -> bytes:
    r = dns.message.make_response(dns.message.make_query(name, "A"))
    r.set_rcode(rcode)
    if rcode == 0 and soa_ttl is None:
        r.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", "10.0.0.1"))
    if soa_ttl is not None:
        r.authority.append(dns.rrset.from_text("test.", soa_ttl, "IN", "SOA", "ns. h. 1 2 3 4 5"))
    return r.to_wire()


def test_cache_counts_ttls_down_negative_caching_and_stale() -> None:
    now = [0.0]
    cache = Cache(size=2, max_ttl=86400, max_stale=100, clock=lambda: now[0])
    cache.put(b"k", _response("a.test."), 0)
    now[0] = 3.5
    assert dns.message.from_wire(cache.get(b"k")).answer[0].ttl == 7  # type: ignore[arg-type]
    now[0] = 10.0
    assert cache.get(b"k") is None
    assert dns.message.from_wire(cache.get(b"k", allow_stale=True)).answer[0].ttl == 30  # type: ignore[arg-type]
    now[0] = 200.0
    assert cache.get(b"k", allow_stale=True) is None  # beyond the stale window
    # Negative answers: cached for min(SOA TTL, SOA MINIMUM) = 5; without SOA not at all (RFC 2308 §5).
    cache.put(b"nx", _response("nx.test.", rcode=3, soa_ttl=100), 0)
    cache.put(b"nosoa", _response("nx.test.", rcode=3), 0)
    assert cache.get(b"nx") is not None and cache.get(b"nosoa") is None
    now[0] = 205.0
    assert cache.get(b"nx") is None
    cache.put(b"sf", _response("sf.test.", rcode=2), 0)
    assert cache.get(b"sf") is None  # SERVFAIL is never cached
    # LRU bound.
    for k in (b"1", b"2", b"3"):
        cache.put(k, _response("a.test."), 0)
    assert len(cache.entries) == 2


def test_resolv_conf_and_hostport() -> None:
    rc = parse_resolv_conf(
        "# comment\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nsearch a.example b.example.\n"
        "options ndots:5\nnameserver 10.0.0.3 ; trailing\n"
    )
    assert rc.nameservers == (("10.0.0.2", 53), ("fe80::1", 53), ("10.0.0.3", 53))
    assert rc.search == ("a.example", "b.example")
    assert parse_hostport("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_hostport("[::1]:53") == ("::1", 53)
    assert parse_hostport("::1") == ("::1", 53)


def test_incremental_build_reuses_unchanged_records_and_real_names_beat_search_forms() -> None:
    from kuma_dns.table import build_table

    search = ("ns.svc",)
    base = {"records": [{"name": "a.mesh", "ips": ["240.0.0.1"]}, {"name": "b.mesh", "ips": ["240.0.0.2"]}]}
    t1 = build_table(parse_payload(json.dumps(base)), search)
    changed = {
        "records": [{"name": "a.mesh", "ips": ["240.0.0.1"]}, {"name": "b.mesh", "ips": ["240.0.0.9"]}]
    }
    t2 = build_table(parse_payload(json.dumps(changed)), search, previous=t1)
    a_key = w.name_to_wire("a.mesh") + b"\x00\x01\x00\x01"
    b_key = w.name_to_wire("b.mesh") + b"\x00\x01\x00\x01"
    assert t2.answers[a_key] is t1.answers[a_key]  # reused, not re-encoded
    assert t2.answers[b_key] is not t1.answers[b_key]
    t3 = build_table(parse_payload(json.dumps(dict(changed, ttl=5))), search, previous=t2)
    assert t3.answers[a_key] is not t2.answers[a_key]  # TTL changed: everything re-encoded
    # A real record named like another record's search form keeps its own answer.
    clash = {
        "records": [{"name": "a.mesh", "ips": ["240.0.0.1"]}, {"name": "a.mesh.ns.svc", "ips": ["10.0.0.7"]}]
    }
    server = DNSServer(TableStore(search_domains=search), None, DNSMetrics())
    server.store.update(json.dumps(clash))
    r = serve(server, dns.message.make_query("a.mesh.ns.svc.", "A"))
    assert [rrset.to_text() for rrset in r.answer] == ["a.mesh.ns.svc. 30 IN A 10.0.0.7"]
