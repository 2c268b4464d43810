"""The pure pieces behind the DNS hardening: the upstream reply check, the record-by-record JSON codec, and
the file checks for records files and persisted tables."""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

import dns.edns
import dns.exception
import dns.message
import dns.rrset
import pytest

from kuma_dns import _wire as w
from kuma_dns import table
from kuma_dns.table import PayloadError, dumps_chunked, loads_chunked, read_table_file

pytestmark = pytest.mark.unit


def replies() -> list[bytes]:
    out = []
    for name, rdtype, rdata in (
        ("a.example.", "A", ["10.0.0.1", "10.0.0.2"]),
        ("b.example.", "AAAA", ["::1"]),
        ("c.example.", "CNAME", ["target.example."]),
        ("d.example.", "TXT", ['"hello" "world"']),
        ("e.example.", "MX", ["10 mx.example."]),
        ("f.example.", "SRV", ["1 2 80 www.example."]),
        ("g.example.", "SOA", ["ns.example. host.example. 1 2 3 4 5"]),
    ):
        for edns in (-1, 0):
            q = dns.message.make_query(name, rdtype, use_edns=edns)
            r = dns.message.make_response(q)
            r.answer.append(dns.rrset.from_text(name, 60, "IN", rdtype, *rdata))
            r.authority.append(dns.rrset.from_text("example.", 60, "IN", "NS", "ns.example."))
            out.append(r.to_wire())
    return out


def rr_types(data: bytes) -> set[int]:
    """The types of every RR in a message `valid_response` accepted (so every name in it parses)."""
    _, _, qd, an, ns, ar = w.HEADER.unpack_from(data)
    off = w.skip_questions(data, qd)
    types = set()
    for _ in range(an + ns + ar):
        off = w.skip_name(data, off)
        rtype, _, _, rdlen = struct.unpack_from("!HHIH", data, off)
        types.add(rtype)
        off += 10 + rdlen
    return types


def test_valid_response_accepts_real_replies_and_only_what_a_strict_parser_accepts() -> None:
    """Whatever `valid_response` lets through, dnspython parses (so no client chokes on what we relay);
    dnspython's own replies all pass. 30,000 mutations of real replies, including truncations."""
    seeds = replies()
    assert all(w.valid_response(r) for r in seeds)
    rng = random.Random(13)
    accepted = rejected = 0
    for _ in range(30000):
        buf = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            buf[rng.randrange(12, len(buf))] = rng.randrange(256)
        if rng.random() < 0.2:
            buf = buf[: rng.randrange(12, len(buf) + 1)]
        data = bytes(buf)
        if w.valid_response(data):
            accepted += 1
            if rr_types(data) <= w.CHECKED_TYPES | {41}:
                dns.message.from_wire(data)  # raises if we let through something a client would reject
        else:
            rejected += 1
    assert accepted > 1000 and rejected > 1000  # both branches exercised
    assert not w.valid_response(seeds[0] + b"\x00")  # trailing bytes
    assert not w.valid_response(b"\x00" * 11)
    query = dns.message.make_query("a.example.", "A").to_wire()
    assert not w.valid_response(query)  # not a response


def test_badvers_and_do_bit_encoding() -> None:
    q = dns.message.make_query("x.example.", "A", use_edns=1, want_dnssec=True).to_wire()
    info = w.parse_query(q)
    assert info is not None and info.edns_version == 1 and info.do_bit
    r = dns.message.from_wire(w.error_response(q, w.RCODE_BADVERS, info.qend, True, do=True))
    assert r.rcode() == dns.rcode.BADVERS and r.edns == 0 and r.ednsflags & dns.flags.DO
    two_opts = bytearray(dns.message.make_query("x.example.", "A", use_edns=0).to_wire())
    two_opts[10:12] = b"\x00\x02"
    assert w.parse_query(bytes(two_opts) + w.opt_record()) is None  # RFC 6891: one OPT at most


@pytest.mark.parametrize(
    "doc",
    [
        '{"records": [], "ttl": 30}',
        ' { "records" : [ {"name":"a.mesh","ips":["240.0.0.1"]} , {"name":"b\\u00e9.mesh","ips":[]} ] } ',
        '{"ttl": 5, "records": [{"name": "a.mesh", "ips": ["::1"]}], "extraLabels": {"mesh": "m"}}',
        '{"records": [1, "two", [3], {"x": null}], "records": [], "x": [true, false]}',  # duplicate key
        '{"records": {"not": "a list"}}',
        "[1, 2, 3]",
        '"just a string"',
        "{}",
    ],
)
def test_loads_chunked_equals_json_loads(doc: str) -> None:
    assert loads_chunked(doc) == json.loads(doc)
    assert loads_chunked(doc.encode()) == json.loads(doc.encode())


@pytest.mark.parametrize("doc", ['{"records": [1, 2', '{"records": [1,]}', '{"a": 1} x', "", '{"a" 1}'])
def test_loads_chunked_raises_what_json_loads_raises(doc: str) -> None:
    with pytest.raises(ValueError) as ours:
        loads_chunked(doc)
    with pytest.raises(ValueError) as theirs:
        json.loads(doc)
    assert str(ours.value) == str(theirs.value)


def test_dumps_chunked_round_trips() -> None:
    doc = {
        "version": 1,
        "etag": None,
        "fetchedAt": 1.5,
        "payload": {
            "records": [{"name": "a.mesh", "ips": ["240.0.0.1"]}],
            "ttl": 30,
            "extraLabels": {"k": "é"},
        },
    }
    assert json.loads(dumps_chunked(doc)) == doc


def test_read_table_file_refuses_what_is_not_a_private_regular_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "t.json"
    good.write_text("{}")
    os.chmod(good, 0o600)
    assert read_table_file(good, private=True) == b"{}"
    os.chmod(good, 0o666)
    with pytest.raises(PayloadError, match="writable by group or others"):
        read_table_file(good, private=True)
    assert read_table_file(good, private=False) == b"{}"  # a records file may be any mode (a ConfigMap)
    link = tmp_path / "link.json"
    link.symlink_to(good)
    with pytest.raises(PayloadError, match="symbolic link"):
        read_table_file(link, private=True)
    assert read_table_file(link, private=False) == b"{}"  # ConfigMap mounts are symlinks
    with pytest.raises(PayloadError, match="a directory"):
        read_table_file(tmp_path, private=False)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(PayloadError, match="a FIFO"):
        read_table_file(fifo, private=False)  # returns at once: opened non-blocking
    monkeypatch.setattr(table, "MAX_TABLE_BYTES", 10)
    good.write_text("x" * 11)
    with pytest.raises(PayloadError, match="limit"):
        read_table_file(good, private=False)


def test_dispose_empties_only_what_the_table_decoded_itself() -> None:
    """A payload passed in as a mapping (an in-process push) is the caller's: never emptied."""
    doc = {"records": [{"name": "a.mesh", "ips": ["240.0.0.1"]}], "ttl": 30}
    mine = table.parse_payload(doc)
    table.dispose([mine, table.build_table(mine)])
    assert doc["records"] == [{"name": "a.mesh", "ips": ["240.0.0.1"]}]
    decoded = table.parse_payload(json.dumps(doc))
    built = table.build_table(decoded)
    assert built.lookup(b"\x01a\x04mesh\x00", 1) is not None
    table.dispose([decoded, built])
    assert not decoded.raw["records"] and not decoded.records and not built.answers
