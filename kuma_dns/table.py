"""The mesh name table: Kuma's `/dns` payload turned into precomputed wire answers.

A `MeshTable` is immutable and built off the hot path whenever the payload changes: every name (lower-cased,
plus its form under each resolv.conf search domain) maps, per query type, to the exact bytes that follow the
question in the reply. Serving a query is then a dict lookup and a concatenation (see `kuma_dns.server`).

`TableStore` holds the current table, swaps it atomically (one reference assignment: a reader sees the old
table or the new one, never a mix), and persists the last-known-good payload to the work directory so a
restarted agent answers mesh names from its first millisecond and through control-plane outages (Kuma's
proxy starts empty and forwards every mesh name upstream until its first `/dns` poll).

Big tables (100k names) are decoded, encoded and thrown away without holding the interpreter for long: a
worker thread only gives the event loop the GIL between bytecodes, so a single C call over the whole
document (json.loads, json.dumps, freeing a million objects, a full cyclic collection) would stall every
answer for its whole length. Hence `loads_chunked`/`dumps_chunked` (record by record), `quiet_gc` (no
cyclic collection mid-build; the built table is frozen out of later ones) and `dispose` (freeing piecewise).

Files: a persisted table is only trusted when it is a regular file owned by this uid, not writable by
others, not a symlink, within MAX_TABLE_BYTES, and stamped no later than now (+ FUTURE_SKEW): in a shared
work dir another user could otherwise plant answers, or a far-future `fetchedAt` that is never flagged stale.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import ipaddress
import json
import json.decoder
import logging
import math
import os
import re
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuma_dp.fsutil import atomic_write

from . import _wire as w
from . import early
from ._files import FileRefused, read_checked

log = logging.getLogger(__name__)

#: File in the work dir holding the last-known-good payload (with its ETag and when it was fetched).
PERSIST_NAME = "kuma-dns-table.json"
PERSIST_VERSION = 1
#: Largest records file or persisted table read (the agent's HTTP client caps a /dns body the same way).
MAX_TABLE_BYTES = 64 << 20
#: A persisted table stamped further than this in the future was not written by this clock: not trusted.
FUTURE_SKEW = 60.0
#: Documents above this size are decoded record by record, and their build runs under `quiet_gc`.
BIG_DOCUMENT = 256 << 10
DEFAULT_TTL = 30
MESH_SUFFIX = b"\x04mesh\x00"
QTYPE_CNAME = 5

_A = struct.pack("!HH", w.QTYPE_A, w.CLASS_IN)
_AAAA = struct.pack("!HH", w.QTYPE_AAAA, w.CLASS_IN)


class PayloadError(ValueError):
    """The `/dns` payload (or a records file) is not what kuma-cp sends."""


@dataclass(frozen=True, slots=True)
class Record:
    name: str  # lower-case, no trailing dot
    a: tuple[str, ...]
    aaaa: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Payload:
    """The decoded `/dns` payload: `{records: [{name, ips}], ttl, extraLabels}` (Kuma's
    `pkg/dns/dpapi/api.go`)."""

    records: Sequence[Record]  # a list: `dispose` frees it piecewise
    ttl: int
    extra_labels: Mapping[str, str]
    raw: Mapping[str, Any]
    owned: bool = False  # `raw` was decoded here (not the caller's object): `dispose` may empty it


def _classify_ip(ip: object) -> tuple[int, str]:
    """(4, dotted) for an A record, (6, canonical) for AAAA, (0, "") if invalid; inet_pton is the fast check.

    kuma-dp tests for '.' first, so "::ffff:1.2.3.4" is an A record (of 1.2.3.4).
    """
    if not isinstance(ip, str):
        return 0, ""
    try:
        if ":" not in ip:
            socket.inet_pton(socket.AF_INET, ip)
            return 4, ip
        packed = socket.inet_pton(socket.AF_INET6, ip.split("%", 1)[0])
    except (OSError, ValueError):
        return 0, ""
    if "." in ip:
        mapped = ipaddress.IPv6Address(packed).ipv4_mapped
        if mapped is not None:
            return 4, str(mapped)
    return 6, ip


def parse_payload(data: bytes | str | Mapping[str, Any]) -> Payload:
    """Decode and check a payload; invalid IPs and names are skipped with a warning, as kuma-dp does."""
    if isinstance(data, bytes | str):
        try:
            obj = loads_chunked(data) if len(data) > BIG_DOCUMENT else json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PayloadError(
                f"DNS payload is not JSON ({exc}); expected the /dns body from kuma-cp"
            ) from exc
    else:
        obj = data
    if not isinstance(obj, Mapping):
        raise PayloadError("DNS payload must be a JSON object with a 'records' list")
    records = obj.get("records")
    if records is None:
        records = []
    if not isinstance(records, list):
        raise PayloadError("DNS payload field 'records' must be a list of {name, ips}")
    ttl = obj.get("ttl", DEFAULT_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= 0x7FFFFFFF:
        raise PayloadError(f"DNS payload field 'ttl' must be a non-negative integer, got {ttl!r}")
    labels = obj.get("extraLabels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise PayloadError("DNS payload field 'extraLabels' must map strings to strings")
    merged: dict[str, tuple[list[str], list[str]]] = {}
    for rec in records:
        if not isinstance(rec, Mapping) or not isinstance(rec.get("name"), str):
            log.warning("dns: skipping record without a string name: %.100r", rec)
            continue
        name = rec["name"].rstrip(".").lower()
        try:
            w.name_to_wire(name)
        except (ValueError, UnicodeError) as exc:
            log.warning("dns: skipping record with invalid name %r: %s", rec["name"], exc)
            continue
        a, aaaa = merged.setdefault(name, ([], []))
        ips = rec.get("ips") or []
        if not isinstance(ips, list):
            log.warning("dns: skipping non-list ips of %s", name)
            continue
        for ip in ips:
            kind, text = _classify_ip(ip)
            if kind == 4:
                a.append(text)
            elif kind == 6:
                aaaa.append(text)
            else:
                log.warning("dns: skipping invalid IP %r of %s", ip, name)
    recs = [Record(n, tuple(a), tuple(aaaa)) for n, (a, aaaa) in sorted(merged.items())]
    return Payload(recs, ttl, dict(labels), obj, owned=isinstance(data, bytes | str))


@dataclass(frozen=True, slots=True)
class Answer:
    """Everything of a reply except the ID, the flag bits copied from the query, and the question itself."""

    flags3: int  # second flag byte without CD: RA + rcode
    counts: bytes  # QD/AN/NS/AR without EDNS0
    tail: bytes | None  # answer+authority sections; None when too big for 512-byte UDP (slow path truncates)
    counts_edns: bytes
    tail_edns: bytes  # with our OPT appended
    fast_edns: bytes | None  # tail_edns if the reply fits 512 bytes (any EDNS0 client takes it), else None
    rcode: int
    local_kind: int  # 0 = A, 1 = AAAA, 2 = other (metrics)


def _rr(rtype: int, ttl: int, rdata: bytes) -> bytes:
    # Owner = compression pointer to the question name at offset 12: valid for any case the client used.
    return b"\xc0\x0c" + struct.pack("!HHIH", rtype, w.CLASS_IN, ttl, len(rdata)) + rdata


def _soa(owner_ptr: int, ttl: int) -> bytes:
    """Authority SOA for `mesh.` so caches downstream of us apply RFC 2308 negative TTLs."""
    mname = b"\x02ns" + struct.pack("!H", 0xC000 | owner_ptr)
    rname = b"\x0ahostmaster" + struct.pack("!H", 0xC000 | owner_ptr)
    rdata = mname + rname + struct.pack("!IIIII", 1, ttl, ttl, ttl, ttl)
    return struct.pack("!HHHIH", 0xC000 | owner_ptr, w.QTYPE_SOA, w.CLASS_IN, ttl, len(rdata)) + rdata


def build_answer(qname_wire: bytes, rcode: int, rrs: list[bytes], soa_ttl: int | None, kind: int) -> Answer:
    """Encode one reply; `qname_wire` is only used for sizes and the `mesh.` suffix offset."""
    ns: list[bytes] = []
    if not rrs and soa_ttl is not None and qname_wire.endswith(MESH_SUFFIX):
        ns.append(_soa(12 + len(qname_wire) - len(MESH_SUFFIX), soa_ttl))
    body = b"".join(rrs) + b"".join(ns)
    counts = struct.pack("!HHHH", 1, len(rrs), len(ns), 0)
    counts_edns = struct.pack("!HHHH", 1, len(rrs), len(ns), 1)
    size = 12 + len(qname_wire) + 4 + len(body)
    tail = body if size <= w.CLASSIC_UDP_SIZE else None
    tail_edns = body + w.opt_record()
    fast_edns = tail_edns if size + len(w.opt_record()) <= w.CLASSIC_UDP_SIZE else None
    return Answer(0x80 | rcode, counts, tail, counts_edns, tail_edns, fast_edns, rcode, kind)


@dataclass(frozen=True)
class MeshTable:
    """An immutable, fully encoded table; `answers` is what the hot path reads."""

    answers: dict[bytes, Answer]
    names: AbstractSet[str]  # sets, not frozensets: never mutated while served, and `dispose` empties them
    ttl: int
    extra_labels: Mapping[str, str]
    digest: str
    loaded: bool  # False only for the empty table before any payload: then everything is forwarded
    wire_names: AbstractSet[bytes] = frozenset()  # every answered name (with search forms), lower-case wire
    nxdomain_mesh: bool = True
    encoded: dict[RecordKey, Encoded] = field(default_factory=dict, repr=False)
    suffixes: tuple[str, ...] = ()

    def lookup(self, qname_wire_lower: bytes, qtype: int) -> Answer | None:
        """Slow-path lookup (the hot path indexes `answers` itself)."""
        return self.answers.get(qname_wire_lower + struct.pack("!HH", qtype, w.CLASS_IN))

    def nxdomain(self, qname_wire_lower: bytes) -> Answer | None:
        """NXDOMAIN for an unknown name under `.mesh` once a table is loaded (before that: forward)."""
        if self.loaded and self.nxdomain_mesh and qname_wire_lower.endswith(MESH_SUFFIX):
            return build_answer(qname_wire_lower, w.RCODE_NXDOMAIN, [], self.ttl, 2)
        return None

    def is_mesh_name(self, qname_wire_lower: bytes) -> bool:
        return qname_wire_lower in self.wire_names


#: Per-record encodings, reused by the next build: (name, A, AAAA) -> (own answers, search-form answers).
RecordKey = tuple[str, tuple[str, ...], tuple[str, ...]]
Encoded = tuple[list[tuple[bytes, bytes, Answer]], list[tuple[bytes, bytes, Answer]]]


def _encode_record(rec: Record, ttl: int, suffixes: list[str]) -> Encoded:
    """All answers of one record: (wire name, key, answer) for its own name and for each search form."""
    a_rr = [_rr(w.QTYPE_A, ttl, ipaddress.IPv4Address(ip).packed) for ip in rec.a]
    aaaa_rr = [_rr(w.QTYPE_AAAA, ttl, ipaddress.IPv6Address(ip).packed) for ip in rec.aaaa]
    target = w.name_to_wire(rec.name)
    real = [
        (target, target + _A, build_answer(target, w.RCODE_NOERROR, a_rr, ttl, 0)),
        (target, target + _AAAA, build_answer(target, w.RCODE_NOERROR, aaaa_rr, ttl, 1)),
    ]
    # Search-domain forms (`backend.mesh.<domain>`): a CNAME to the mesh name, then its records, in one
    # reply, so glibc stops at the first search domain and reports the mesh name as the canonical name.
    search = []
    cname = _rr(QTYPE_CNAME, ttl, target)
    for suffix in suffixes:
        try:
            qn = w.name_to_wire(rec.name + suffix)
        except (ValueError, UnicodeError):
            continue  # too long with this search domain
        ptr = struct.pack("!H", 0xC000 | (12 + len(qn) + 4 + 12))  # -> the CNAME target
        for rtype, recs, kind in ((_A, a_rr, 0), (_AAAA, aaaa_rr, 1)):
            ans = build_answer(qn, w.RCODE_NOERROR, [cname, *(ptr + rr[2:] for rr in recs)], ttl, kind)
            search.append((qn, qn + rtype, ans))
    return real, search


def build_table(
    payload: Payload,
    search_domains: Iterable[str] = (),
    nxdomain_mesh: bool = True,
    previous: MeshTable | None = None,
) -> MeshTable:
    """Encode every answer of a payload (pure: same input, same bytes).

    Records unchanged since `previous` (same name, addresses, TTL and search list) reuse their encodings,
    so a control-plane update that touches a few services costs little even in a 10k-name mesh.
    """
    ttl = payload.ttl
    suffixes = [f".{d.strip('.').lower()}" for d in search_domains if d.strip(".")]
    reusable = (
        previous.encoded
        if previous is not None and previous.ttl == ttl and previous.suffixes == tuple(suffixes)
        else {}
    )
    encoded: dict[RecordKey, Encoded] = {}
    for rec in payload.records:
        key = (rec.name, rec.a, rec.aaaa)
        encoded[key] = reusable.get(key) or _encode_record(rec, ttl, suffixes)
    answers: dict[bytes, Answer] = {}
    wire_names: set[bytes] = set()
    for real, _ in encoded.values():
        for qn, k, ans in real:
            wire_names.add(qn)
            answers[k] = ans
    for _, search in encoded.values():
        for qn, k, ans in search:
            if qn not in wire_names:  # a real record (or an earlier record's search form) wins
                answers[k] = ans
        wire_names.update(qn for qn, _, _ in search)
    # The digest identifies the content (records, TTL, labels); hashed record by record, not as one dump.
    h = hashlib.sha256(repr((ttl, sorted(payload.extra_labels.items()))).encode())
    names: set[str] = set()
    for r in payload.records:
        h.update(repr((r.name, r.a, r.aaaa)).encode())
        names.add(r.name)
    return MeshTable(
        answers=answers,
        names=names,
        ttl=ttl,
        extra_labels=dict(payload.extra_labels),
        digest=h.hexdigest(),
        loaded=True,
        wire_names=wire_names,
        nxdomain_mesh=nxdomain_mesh,
        encoded=encoded,
        suffixes=tuple(suffixes),
    )


def empty_table() -> MeshTable:
    return MeshTable({}, frozenset(), DEFAULT_TTL, {}, "", loaded=False)


# -- big documents without long interpreter holds ---------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class _NotShaped(Exception):
    pass


def loads_chunked(data: bytes | str) -> Any:
    """`json.loads` of a `/dns` document, the top-level object's values decoded one by one and the `records`
    array element by element, so the interpreter can switch threads between records (json.loads is one C
    call: 0.1-0.6 s for 100k names). A document of any other shape, or an invalid one, goes to json.loads,
    which returns the same value or raises the same error."""
    text = data.decode(json.detect_encoding(data), "surrogatepass") if isinstance(data, bytes) else data
    try:
        return _loads_object(text)
    except (_NotShaped, ValueError):
        return json.loads(text)


def _loads_object(s: str) -> dict[str, Any]:
    ws = _WS.match
    dec = _DECODER.raw_decode
    scan = json.decoder.scanstring
    i = ws(s, 0).end()
    if s[i : i + 1] != "{":
        raise _NotShaped
    i = ws(s, i + 1).end()
    out: dict[str, Any] = {}
    if s[i : i + 1] == "}":
        i += 1
    else:
        while True:
            if s[i : i + 1] != '"':
                raise _NotShaped
            key, i = scan(s, i + 1)
            i = ws(s, i).end()
            if s[i : i + 1] != ":":
                raise _NotShaped
            i = ws(s, i + 1).end()
            val: Any
            if key == "records" and s[i : i + 1] == "[":
                arr: list[Any] = []
                i = ws(s, i + 1).end()
                if s[i : i + 1] == "]":
                    i += 1
                else:
                    while True:
                        item, i = dec(s, i)
                        arr.append(item)
                        i = ws(s, i).end()
                        c = s[i : i + 1]
                        if c == ",":
                            i = ws(s, i + 1).end()
                        elif c == "]":
                            i += 1
                            break
                        else:
                            raise _NotShaped
                val = arr
            else:
                val, i = dec(s, i)
            out[key] = val
            i = ws(s, i).end()
            c = s[i : i + 1]
            if c == ",":
                i = ws(s, i + 1).end()
            elif c == "}":
                i += 1
                break
            else:
                raise _NotShaped
    if ws(s, i).end() != len(s):
        raise _NotShaped
    return out


def dumps_chunked(obj: Mapping[str, Any]) -> str:
    """Compact JSON of a mapping whose list values are encoded element by element (see `loads_chunked`)."""
    parts = []
    for k, v in obj.items():
        if isinstance(v, Mapping):
            body = dumps_chunked(v)
        elif isinstance(v, list):
            body = "[" + ",".join([json.dumps(x, separators=(",", ":")) for x in v]) + "]"
        else:
            body = json.dumps(v, separators=(",", ":"))
        parts.append(json.dumps(str(k)) + ":" + body)
    return "{" + ",".join(parts) + "}"


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """No cyclic collection while a big table is built, then the survivors frozen out of later collections.

    A full collection walks every tracked object holding the GIL (a 100k-name table is over a million:
    0.5-3 s), in whichever thread happens to allocate. The table is acyclic, so reference counting frees it
    when it is retired even from the permanent generation. A full collection runs first, so that the only
    cyclic garbage frozen with the table is what the build itself made: without it, cycles waiting in the
    oldest generation would be frozen, and kept, on every swap. It is cheap after the first swap, since the
    previous tables (the bulk of the heap) are already frozen and not scanned (the same trade `kuma-dp dns`
    makes with gc.freeze() once serving).
    """
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()


def dispose(junk: list[Any]) -> None:
    """Drop the last references to retired tables and payloads piece by piece (run in a worker thread).

    Freeing a 100k-name table is one C-level cascade of a million deallocations (0.1-0.3 s with the GIL
    held); emptying its containers an item at a time lets the event loop run in between.
    """
    while junk:
        obj = junk.pop()
        if isinstance(obj, MeshTable):
            for d in (obj.answers, obj.encoded):
                while d:
                    d.popitem()
            for st in (obj.names, obj.wire_names):
                if isinstance(st, set):
                    while st:
                        st.pop()
        elif isinstance(obj, Payload):
            recs = obj.records
            if isinstance(recs, list):
                while recs:
                    recs.pop()
            raw_recs = obj.raw.get("records") if obj.owned and isinstance(obj.raw, dict) else None
            if isinstance(raw_recs, list):
                while raw_recs:
                    raw_recs.pop()
        del obj


def read_table_file(path: Path, private: bool) -> bytes:
    """The bytes of a records file (`private=False`: symlinks followed, any owner) or of a persisted table
    (`private=True`: not a symlink, owned by this uid, not group/world-writable). Either way a regular file
    of at most MAX_TABLE_BYTES: opened non-blocking, so a FIFO or a device is refused instead of blocking.
    Raises PayloadError naming what is wrong, or OSError. The checks are kuma_dns/_files.py's, which the
    early responder's hot snapshot shares."""
    try:
        return read_checked(path, private, MAX_TABLE_BYTES)
    except FileRefused as exc:
        raise PayloadError(str(exc)) from None


@dataclass
class TableStore:
    """The current table, swapped atomically; persisted when a `workdir` is given.

    `update()` is what the dynconf `/dns` handler, the records-file watcher and in-process pushes call.
    """

    workdir: Path | None = None
    search_domains: tuple[str, ...] = ()
    nxdomain_mesh: bool = True
    stale_after: float = 300.0
    clock: Callable[[], float] = time.time
    current: MeshTable = field(default_factory=empty_table)
    etag: str | None = None
    #: Wall-clock time the source last confirmed the table (200 or 304); persisted tables keep their time.
    confirmed_at: float | None = None
    source: str = "none"
    generation: int = 0
    listeners: list[Callable[[MeshTable], None]] = field(default_factory=list)
    #: Tables refused (planted or unsafe persisted file, bad records file...): kuma_dp_dns_tables_rejected.
    rejected: int = 0
    _stale_logged: bool = False

    @property
    def persist_path(self) -> Path | None:
        return self.workdir / PERSIST_NAME if self.workdir else None

    def age(self) -> float | None:
        """Seconds since the source last confirmed the table; None before any table."""
        return None if self.confirmed_at is None else max(0.0, self.clock() - self.confirmed_at)

    def update(
        self, data: bytes | str | Mapping[str, Any], etag: str | None = None, source: str = "push"
    ) -> bool:
        """Load a payload; returns True if the table changed. Raises PayloadError and keeps the old table."""
        payload, table = self.prepare(data)
        return self.commit(payload, table, etag, source)

    def prepare(self, data: bytes | str | Mapping[str, Any]) -> tuple[Payload, MeshTable]:
        """Decode and encode, touching nothing: safe to run in a worker thread for big meshes."""
        big = isinstance(data, bytes | str) and len(data) > BIG_DOCUMENT
        with quiet_gc() if big else contextlib.nullcontext():
            payload = parse_payload(data)
            table = build_table(payload, self.search_domains, self.nxdomain_mesh, previous=self.current)
        return payload, table

    def commit(
        self, payload: Payload, table: MeshTable, etag: str | None, source: str, persist: bool = True
    ) -> bool:
        """Swap in a prepared table (if it differs), record the confirmation, persist unless told not to."""
        now = self.clock()
        changed = table.digest != self.current.digest or not self.current.loaded
        self.etag = etag
        self.confirmed_at = now
        self.source = source
        self._stale_logged = False
        if changed:
            self._swap(table)
            log.info(
                "dns table loaded source=%s names=%d generation=%d etag=%s",
                source,
                len(table.names),
                self.generation,
                etag or "-",
            )
            if persist:
                self.persist(payload, etag, now)
        return changed

    def confirm(self) -> None:
        """The source said "unchanged" (304): the table is fresh again."""
        if self.current.loaded:
            self.confirmed_at = self.clock()
            self._stale_logged = False

    def check_stale(self) -> bool:
        """Log once when the table is older than `stale_after`; returns whether it is stale."""
        age = self.age()
        stale = age is not None and age > self.stale_after
        if stale and not self._stale_logged:
            log.warning(
                "dns table is stale age=%.0fs bound=%.0fs source=%s: still answering from it",
                age,
                self.stale_after,
                self.source,
            )
            self._stale_logged = True
        return stale

    def load_persisted(self) -> bool:
        """Serve the last-known-good table at start; an untrusted or bad file is logged and ignored."""
        got = self.read_persisted()
        if got is None:
            return False
        self.install_persisted(*got)
        return True

    def read_persisted(self) -> tuple[Payload, MeshTable, str | None, float] | None:
        """Read, check and encode the persisted table, touching nothing (a worker thread may run it).

        Refused, with one warning naming the file and the reason: anything `read_table_file(private=True)`
        refuses (another user's file planted in a shared work dir, a symlink, a FIFO, group-writable), an
        unknown format, or a `fetchedAt` in the future (it would never be flagged stale).
        """
        path = self.persist_path
        if path is None or not os.path.lexists(path):
            return None
        try:
            raw = read_table_file(path, private=True)
            with quiet_gc() if len(raw) > BIG_DOCUMENT else contextlib.nullcontext():
                doc = loads_chunked(raw) if len(raw) > BIG_DOCUMENT else json.loads(raw)
                if not isinstance(doc, dict) or doc.get("version") != PERSIST_VERSION:
                    raise PayloadError(
                        f"unknown format version {doc.get('version') if isinstance(doc, dict) else doc!r}"
                    )
                saved = float(doc.get("fetchedAt", 0))
                now = self.clock()
                if not math.isfinite(saved) or saved <= 0:
                    raise PayloadError(f"fetchedAt {doc.get('fetchedAt')!r} is not a time")
                if saved > now + FUTURE_SKEW:
                    raise PayloadError(
                        f"fetchedAt is {saved - now:.0f}s in the future: not written by this host's clock"
                    )
                payload = parse_payload(doc["payload"])
                table = build_table(payload, self.search_domains, self.nxdomain_mesh)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.rejected += 1
            log.warning(
                "dns: not serving the persisted table %s: %s (remove it; it is rewritten on the next update)",
                path,
                exc,
            )
            return None
        etag = doc.get("etag")
        return payload, table, etag if isinstance(etag, str) else None, min(saved, now)

    def install_persisted(self, payload: Payload, table: MeshTable, etag: str | None, saved: float) -> None:
        """Swap in what `read_persisted` returned; its age counts from when it was fetched, so a table
        persisted long ago is flagged stale at once."""
        self._swap(table)
        self.etag = etag
        self.confirmed_at = saved
        self.source = "persisted"
        self._stale_logged = False
        log.info(
            "dns table loaded source=persisted names=%d age=%.0fs path=%s",
            len(payload.records),
            max(0.0, self.clock() - saved),
            self.persist_path,
        )
        self.check_stale()

    def _swap(self, table: MeshTable) -> None:
        self.current = table
        self.generation += 1
        for fn in list(self.listeners):
            fn(table)

    def persist(self, payload: Payload, etag: str | None, now: float, table: MeshTable | None = None) -> None:
        """Write the payload (the last-known-good table), then the hot snapshot of `table` (the current one
        by default) for the next start's early responder (kuma_dns/early.py), both temp + rename, 0600."""
        path = self.persist_path
        if path is None:
            return
        doc = {"version": PERSIST_VERSION, "etag": etag, "fetchedAt": now, "payload": dict(payload.raw)}
        try:
            os.makedirs(path.parent, exist_ok=True)
            atomic_write(path, dumps_chunked(doc))
        except OSError as exc:
            log.warning("dns: cannot persist table to %s: %s (answers are unaffected)", path, exc)
            return
        self.persist_hot(self.current if table is None else table, now)

    def persist_hot(self, table: MeshTable, fetched_at: float) -> None:
        """The hot snapshot alone: `table`'s wire answers as `DNSServer._hot` serves them, and their fetch
        time (an early responder refuses a future one, as `read_persisted` does)."""
        if self.workdir is None or not table.loaded:
            return
        path = self.workdir / early.HOT_NAME
        try:
            atomic_write(path, early.encode_snapshot(table.answers, fetched_at, w.OPT_DO))
        except OSError as exc:
            log.warning("dns: cannot write the hot snapshot %s: %s (answers are unaffected)", path, exc)
