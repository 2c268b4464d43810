"""Byte-level DNS helpers for the hot path and the upstream leg.

dnslib is correct but costs tens of microseconds per message; a mesh answer must cost a slice, a dict lookup
and a concatenation. These helpers work on raw wire bytes and never raise on hostile input: they return None
(or a safe default) when a packet does not have the shape they need, and the caller falls back to the slow
path, which may answer FORMERR or drop.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("!HHHHHH")
U16 = struct.Struct("!H")
U32 = struct.Struct("!I")

QTYPE_A = 1
QTYPE_AAAA = 28
QTYPE_SOA = 6
QTYPE_OPT = 41
CLASS_IN = 1

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
#: Extended rcode (RFC 6891 §6.1.3): 4 bits in the header, the upper 8 in the OPT record's TTL.
RCODE_BADVERS = 16
QTYPE_CNAME = 5
QTYPE_NS = 2
QTYPE_PTR = 12

#: The UDP limit without EDNS0 (RFC 1035) and the EDNS0 size we offer (DNS flag day 2020).
CLASSIC_UDP_SIZE = 512
EDNS_UDP_SIZE = 1232
MAX_MESSAGE = 65535


def name_to_wire(name: str) -> bytes:
    """Encode a dotted name (with or without the final dot) as uncompressed wire labels."""
    out = bytearray()
    for label in name.rstrip(".").split("."):
        if not label:
            raise ValueError(f"empty label in DNS name {name!r}")
        raw = label.encode("idna") if not label.isascii() else label.encode("ascii")
        if len(raw) > 63:
            raise ValueError(f"label longer than 63 bytes in DNS name {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"DNS name longer than 255 bytes: {name!r}")
    return bytes(out)


def wire_to_text(wire: bytes) -> str:
    """Best-effort dotted form of uncompressed wire labels, for logs and cache keys shown to people."""
    labels = []
    i = 0
    while i < len(wire) and wire[i]:
        n = wire[i]
        labels.append(wire[i + 1 : i + 1 + n].decode("ascii", "backslashreplace"))
        i += 1 + n
    return ".".join(labels) + "."


def skip_name(buf: bytes, off: int) -> int:
    """Offset just past a (possibly compressed) name at `off`; -1 when it runs off the end or is malformed."""
    end = len(buf)
    while True:
        if off >= end:
            return -1
        n = buf[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2 if off + 2 <= end else -1
        if n & 0xC0:
            return -1
        off += 1 + n


def skip_questions(buf: bytes, qd: int) -> int:
    """Offset just past the question section of a message with `qd` questions, or -1 if it is cut short."""
    off = 12
    for _ in range(qd):
        off = skip_name(buf, off)
        if off < 0:
            return -1
        off += 4
    return off


def question_end(buf: bytes) -> int:
    """Offset just past the first question (uncompressed name + type + class), or -1."""
    off = 12
    end = len(buf)
    while True:
        if off >= end:
            return -1
        n = buf[off]
        if n == 0:
            off += 1
            break
        if n & 0xC0:
            return -1
        off += 1 + n
    if off + 4 > end or off - 12 > 255:
        return -1
    return off + 4


@dataclass(slots=True)
class QueryInfo:
    """What the forwarder needs to know about a client query (parsed once, without dnslib)."""

    qid: int
    flags: int
    qend: int  # offset just past the first question
    key: bytes  # lower-cased qname wire + qtype + qclass: the cache and in-flight key
    qtype: int
    edns: bool  # client sent an OPT record
    udp_size: int  # the client's UDP limit: 512 without EDNS0, else max(512, advertised)
    do_bit: bool
    edns_version: int = 0  # the OPT's VERSION; anything but 0 is answered BADVERS (RFC 6891 §6.1.3)


def parse_query(buf: bytes) -> QueryInfo | None:
    """Parse the header, first question and (if present) OPT of a query; None if it is not a usable query."""
    if len(buf) < 12:
        return None
    qid, flags, qd, an, ns, ar = HEADER.unpack_from(buf)
    if flags & 0x8000 or qd != 1:
        return None
    qend = question_end(buf)
    if qend < 0:
        return None
    qtype = U16.unpack_from(buf, qend - 4)[0]
    edns = False
    udp_size = CLASSIC_UDP_SIZE
    do_bit = False
    version = 0
    off = qend
    # Walk answer/authority/additional to find the OPT; malformed sections make the query unusable.
    for i in range(an + ns + ar):
        off = skip_name(buf, off)
        if off < 0 or off + 10 > len(buf):
            return None
        rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", buf, off)
        if rtype == QTYPE_OPT and i >= an + ns:
            if edns:
                return None  # more than one OPT: FORMERR (RFC 6891 §6.1.1)
            edns = True
            udp_size = max(CLASSIC_UDP_SIZE, rclass)
            do_bit = bool(ttl & 0x8000)
            version = (ttl >> 16) & 0xFF
        off += 10 + rdlen
        if off > len(buf):
            return None
    key = buf[12 : qend - 4].lower() + buf[qend - 4 : qend] + (b"\x01" if do_bit else b"\x00")
    return QueryInfo(qid, flags, qend, key, qtype, edns, udp_size, do_bit, version)


def rr_ttl_offsets(buf: bytes) -> tuple[list[int], int] | None:
    """Offsets of every RR's TTL field (OPT excluded) and the minimum TTL; None if the message is malformed.

    The cache rewrites these four-byte fields to count TTLs down, as a real resolver does.
    """
    if len(buf) < 12:
        return None
    _, _, qd, an, ns, ar = HEADER.unpack_from(buf)
    off = skip_questions(buf, qd)
    if off < 0:
        return None
    offsets: list[int] = []
    min_ttl = 1 << 31
    for _ in range(an + ns + ar):
        off = skip_name(buf, off)
        if off < 0 or off + 10 > len(buf):
            return None
        rtype = U16.unpack_from(buf, off)[0]
        ttl = U32.unpack_from(buf, off + 4)[0]
        rdlen = U16.unpack_from(buf, off + 8)[0]
        if rtype != QTYPE_OPT:
            offsets.append(off + 4)
            min_ttl = min(min_ttl, ttl)
        off += 10 + rdlen
        if off > len(buf):
            return None
    return offsets, (min_ttl if offsets else 0)


def negative_ttl(buf: bytes) -> int | None:
    """RFC 2308 negative-caching TTL: min(SOA TTL, SOA MINIMUM) from the authority section, or None."""
    _, _, qd, an, ns, _ = HEADER.unpack_from(buf)
    off = skip_questions(buf, qd)
    if off < 0:
        return None
    for i in range(an + ns):
        off = skip_name(buf, off)
        if off < 0 or off + 10 > len(buf):
            return None
        rtype, _, ttl, rdlen = struct.unpack_from("!HHIH", buf, off)
        start = off + 10
        off = start + rdlen
        if off > len(buf):
            return None
        if i >= an and rtype == QTYPE_SOA and rdlen >= 22:
            return min(ttl, U32.unpack_from(buf, off - 4)[0])
    return None


def strip_additional_opt(buf: bytes) -> bytes:
    """Remove OPT from a response's additional section (a client that sent no EDNS0 must not get one)."""
    _, _, qd, an, ns, ar = HEADER.unpack_from(buf)
    if not ar:
        return buf
    off = skip_questions(buf, qd)
    if off < 0:
        return buf
    for _ in range(an + ns):
        off = skip_name(buf, off)
        if off < 0 or off + 10 > len(buf):
            return buf
        off += 10 + U16.unpack_from(buf, off + 8)[0]
    out = bytearray(buf[:off])
    kept = 0
    for _ in range(ar):
        start = off
        off = skip_name(buf, off)
        if off < 0 or off + 10 > len(buf):
            return buf
        rtype = U16.unpack_from(buf, off)[0]
        off += 10 + U16.unpack_from(buf, off + 8)[0]
        if rtype != QTYPE_OPT:
            out += buf[start:off]
            kept += 1
    out[10:12] = U16.pack(kept)
    return bytes(out)


def opt_record(udp_size: int = EDNS_UDP_SIZE, do: bool = False, ext_rcode: int = 0) -> bytes:
    """A minimal EDNS0 OPT pseudo-RR (root owner, version 0, no options); `do` is the query's DO bit, which
    RFC 3225 §3 says a response copies; `ext_rcode` the upper 8 bits of an extended rcode (BADVERS = 1)."""
    return b"\x00" + struct.pack("!HHIH", QTYPE_OPT, udp_size, (ext_rcode << 24) | (0x8000 if do else 0), 0)


#: The OPT of a local answer to a query with DO set (RFC 3225: the bit is copied into the response).
OPT_DO = opt_record(do=True)
OPT_LEN = len(OPT_DO)


def add_opt(query: bytes, udp_size: int = EDNS_UDP_SIZE) -> bytes:
    """Append an OPT to a query that has none, so the upstream may answer up to `udp_size` bytes over UDP."""
    ar = U16.unpack_from(query, 10)[0]
    return query[:10] + U16.pack(ar + 1) + query[12:] + opt_record(udp_size)


def error_response(query: bytes, rcode: int, qend: int, edns: bool, do: bool = False) -> bytes:
    """A header-plus-question reply with `rcode` (RD and CD copied, RA set); question echoed if parseable.

    An extended rcode (> 15, e.g. BADVERS) puts its upper bits in the OPT, so it needs `edns`.
    """
    qid = query[0:2]
    flags = (0x8000 | (U16.unpack_from(query, 2)[0] & 0x7910) | 0x0080 | (rcode & 0xF)) & 0xFFFF
    if qend > 0:
        body = query[12:qend]
        qd = 1
    else:
        body = b""
        qd = 0
    tail = opt_record(do=do, ext_rcode=rcode >> 4) if edns else b""
    return qid + U16.pack(flags) + struct.pack("!HHHH", qd, 0, 0, 1 if edns else 0) + body + tail


def truncate_for_udp(resp: bytes, qend: int, limit: int, edns: bool, do: bool = False) -> bytes:
    """Fit a response into the client's UDP limit: if too big, header + question with TC set (RFC 2181 §9).

    The client retries over TCP and gets everything; a half RRset would be worse than none.
    """
    if len(resp) <= limit:
        return resp
    flags = U16.unpack_from(resp, 2)[0] | 0x0200
    tail = opt_record(do=do) if edns else b""
    return (
        resp[0:2] + U16.pack(flags) + struct.pack("!HHHH", 1, 0, 0, 1 if edns else 0) + resp[12:qend] + tail
    )


def _name_end(buf: bytes, off: int) -> int:
    """Offset just past the name at `off`, checking it the way a strict client parser does: labels inside the
    message, compression pointers only backwards to a name that ends before the one pointing at it (so they
    cannot loop, and a parser that resumes at the furthest byte read agrees), at most 255 bytes expanded.
    -1 when any of that fails."""
    bound = len(buf)  # bytes of the current run must lie before this
    end = -1
    limit = off  # a pointer must target bytes before the run it ends
    total = 0
    pos = off
    while True:
        if pos >= bound:
            return -1
        c = buf[pos]
        if c == 0:
            return end if end >= 0 else pos + 1
        if c & 0xC0 == 0xC0:
            if pos + 1 >= bound:
                return -1
            target = ((c & 0x3F) << 8) | buf[pos + 1]
            if end < 0:
                end = pos + 2
            if target >= limit or target < 12:
                return -1
            bound = limit
            limit = pos = target
            continue
        if c & 0xC0:
            return -1  # the reserved 01/10 label types
        total += c + 1
        if total > 254:
            return -1
        pos += 1 + c


def valid_response(buf: bytes) -> bool:
    """Whether an upstream reply parses completely: a response, every name and RR inside the message, A and
    AAAA data of their exact sizes, names in NS/CNAME/PTR data valid, at most one OPT (in the additional
    section, root owner), nothing after the last record. A reply that fails is not relayed: a client's
    parser (glibc, dnspython, Go) would reject it too, and caching it would serve the garbage for its TTL.
    """
    n = len(buf)
    if n < 12:
        return False
    _, flags, qd, an, ns, ar = HEADER.unpack_from(buf)
    if not flags & 0x8000:
        return False
    off = 12
    for _ in range(qd):
        off = _name_end(buf, off)
        if off < 0 or off + 4 > n:
            return False
        off += 4
    opts = 0
    for i in range(an + ns + ar):
        start = off
        off = _name_end(buf, off)
        if off < 0 or off + 10 > n:
            return False
        rtype, rclass, _, rdlen = struct.unpack_from("!HHIH", buf, off)
        off += 10
        if off + rdlen > n:
            return False
        if rtype == QTYPE_OPT:
            opts += 1
            if opts > 1 or i < an + ns or buf[start] != 0:
                return False
        elif not _rdata_ok(buf, off, rtype, rclass, rdlen):
            return False
        off += rdlen
    return off == n


#: Types whose data `valid_response` checks (the others are relayed as opaque bytes, as a client that does
#: not know them would treat them).
CHECKED_TYPES = frozenset({1, 2, 5, 6, 12, 15, 16, 28, 33})


def _rdata_ok(buf: bytes, off: int, rtype: int, rclass: int, rdlen: int) -> bool:
    end = off + rdlen
    if rtype == QTYPE_A:
        return rdlen == 4 or rclass != CLASS_IN
    if rtype == QTYPE_AAAA:
        return rdlen == 16 or rclass != CLASS_IN
    if rtype in (QTYPE_CNAME, QTYPE_NS, QTYPE_PTR):
        return _name_end(buf, off) == end
    if rtype == 15:  # MX: preference, exchange
        return rdlen >= 3 and _name_end(buf, off + 2) == end
    if rtype == 33:  # SRV: priority, weight, port, target
        return rdlen >= 7 and _name_end(buf, off + 6) == end
    if rtype == QTYPE_SOA:  # mname, rname, five 32-bit fields
        rname = _name_end(buf, off)
        return rname > 0 and _name_end(buf, rname) == end - 20
    if rtype == 16:  # TXT: one or more length-prefixed strings filling the data exactly
        if rdlen == 0:
            return False
        while off < end:
            off += 1 + buf[off]
        return off == end
    return True
