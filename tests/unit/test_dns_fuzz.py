"""Malformed packets never crash or wedge the DNS server.

1,000,000 random and mutated packets go straight into the packet handler (`DNSServer.process`, the code
behind both listeners) in process; every reply must be a well-formed response to that packet or a drop,
and a real query must still be answered afterwards. Hypothesis adds structure-aware packets. The smaller
over-the-wire run (real UDP and TCP sockets) is in tests/integration/test_dns_fuzz_wire.py.
KUMA_DNS_FUZZ_PACKETS overrides the count (the default is the required 1,000,000; ~20 s on one core).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Coroutine
from typing import Any

import dns.message
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kuma_dns._wire import parse_query
from kuma_dns.metrics import DNSMetrics
from kuma_dns.server import DNSServer
from kuma_dns.table import TableStore

pytestmark = pytest.mark.unit

PACKETS = int(os.environ.get("KUMA_DNS_FUZZ_PACKETS", "1000000"))
PAYLOAD = {
    "records": [
        {"name": "backend.mesh", "ips": ["240.0.0.0", "::ffff:f000:0"]},
        {"name": "many.mesh", "ips": [f"240.0.1.{i}" for i in range(1, 60)]},
    ],
    "ttl": 30,
}


def drive(coro: Coroutine[Any, Any, bytes | None]) -> bytes | None:
    """Run the handler to completion without a loop: with no upstream it must never suspend."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("handler suspended without an upstream")


def make_server() -> DNSServer:
    store = TableStore(search_domains=("ns.svc.cluster.local",))
    store.update(json.dumps(PAYLOAD))
    return DNSServer(store, None, DNSMetrics())


def seeds() -> list[bytes]:
    out = []
    for name in (
        "backend.mesh.",
        "BACKEND.mesh.",
        "many.mesh.",
        "nope.mesh.",
        "example.com.",
        "backend.mesh.ns.svc.cluster.local.",
        "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.",
    ):
        for rdtype in ("A", "AAAA", "TXT", "SRV", "ANY"):
            for edns in (-1, 0):
                out.append(
                    dns.message.make_query(name, rdtype, use_edns=edns, want_dnssec=edns == 0).to_wire()
                )
    two = dns.message.make_query("backend.mesh.", "A")
    two.question.append(dns.rrset.RRset(dns.name.from_text("many.mesh."), 1, 1))
    out.append(two.to_wire())
    cookie = dns.message.make_query(
        "backend.mesh.", "A", use_edns=0, options=[dns.edns.GenericOption(10, b"x" * 8)]
    )
    out.append(cookie.to_wire())
    return out


INTERESTING = (0x00, 0x01, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xC0, 0xFF, 0x29)


def mutate(rng: random.Random, base: bytes) -> bytes:
    buf = bytearray(base)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.choice(INTERESTING)
        elif op == 2:
            del buf[rng.randrange(len(buf) + 1) :]
        elif op == 3:
            buf += rng.randbytes(rng.randrange(1, 40))
        elif op == 4 and len(buf) >= 12:
            i = rng.choice((4, 6, 8, 10))  # section counts
            buf[i : i + 2] = rng.choice((b"\x00\x00", b"\x00\x02", b"\xff\xff", b"\x00\x01"))
        elif op == 5 and len(buf) > 14:
            i = rng.randrange(12, len(buf) - 1)
            buf[i : i + 2] = bytes((0xC0, rng.choice((0, 12, i & 0xFF, 0xFF))))  # compression pointers
        elif op == 6 and buf:
            i, j = sorted(rng.randrange(len(buf)) for _ in range(2))
            buf[i:i] = buf[i:j]
    return bytes(buf)


def test_a_million_random_and_mutated_packets() -> None:
    server = make_server()
    rng = random.Random(4242)
    base = seeds()
    sent = replied = parsed = 0
    for i in range(PACKETS):
        if i % 4 == 0:
            pkt = rng.randbytes(rng.randrange(0, 80 if i % 8 else 600))
        else:
            pkt = mutate(rng, rng.choice(base))
        resp = drive(server.process(pkt))
        sent += 1
        if resp is not None:
            replied += 1
            if len(resp) < 12 or resp[0:2] != pkt[0:2] or not resp[2] & 0x80:
                raise AssertionError(f"bad reply {resp.hex()} to {pkt.hex()}")
            info = parse_query(pkt)
            if len(resp) > (info.udp_size if info else 512):
                raise AssertionError(f"reply above the client's UDP size to {pkt.hex()}")
            if i % 997 == 0:
                dns.message.from_wire(resp)  # a strict parser accepts what we send
                parsed += 1
    assert sent == PACKETS and replied > PACKETS // 10 and parsed > 0
    # Still answering correctly.
    q = dns.message.make_query("backend.mesh.", "A")
    r = dns.message.from_wire(drive(server.process(q.to_wire())))  # type: ignore[arg-type]
    assert r.answer[0][0].to_text() == "240.0.0.0"


dns_name = st.lists(st.binary(min_size=0, max_size=70), min_size=0, max_size=6).map(
    lambda labels: b"".join(bytes([len(lab) & 0xFF]) + lab for lab in labels) + b"\x00"
)
packet = st.builds(
    lambda hdr, counts, name, qtype, rest: hdr + counts + name + qtype + rest,
    st.binary(min_size=4, max_size=4),
    st.tuples(*[st.sampled_from([0, 1, 2, 0xFFFF])] * 4).map(
        lambda c: b"".join(x.to_bytes(2, "big") for x in c)
    ),
    dns_name,
    st.binary(min_size=0, max_size=4),
    st.one_of(st.just(b""), st.binary(max_size=40), st.just(b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00")),
)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pkt=packet, tcp=st.booleans())
def test_structured_packets_hypothesis(pkt: bytes, tcp: bool) -> None:
    server = _SERVER
    resp = drive(server.process(pkt, tcp=tcp))
    if resp is not None:
        assert len(resp) >= 12 and resp[0:2] == pkt[0:2] and resp[2] & 0x80
        dns.message.from_wire(resp)


_SERVER = make_server()
