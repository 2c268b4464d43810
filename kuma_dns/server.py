"""The DNS server: asyncio UDP and TCP listeners around one packet handler.

`DNSServer.answer_local(packet)` is the hot path: for a well-formed query for a mesh name it returns the reply
bytes (precomputed answer + the client's ID, flags and question), else None. `DNSServer.process(packet, tcp)`
is the full path (slow checks, FORMERR/NOTIMP, NXDOMAIN under `.mesh`, forwarding); it never raises: a bug or
an upstream failure gives SERVFAIL, a packet that is not a query is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _mmsg
from . import _wire as w
from .early import socket_key
from .metrics import RCODE_NAMES, DNSMetrics
from .table import MESH_SUFFIX, Answer, MeshTable, TableStore, build_answer
from .upstream import FD_EXHAUSTED, FLAG_BYTES, Forwarder

if TYPE_CHECKING:
    from .early import EarlyResponder

log = logging.getLogger(__name__)

#: Outstanding slow-path (forwarded) UDP queries before new ones are dropped (dnsmasq's default is 150).
#: The three caps here are defaults: the agent passes KUMA_DNS_PROXY_UPSTREAM_MAX_PENDING_QUERIES,
#: KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS and KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS_PER_SOURCE (kuma_dp/config).
MAX_PENDING = 2048
MAX_TCP_CLIENTS = 256
#: TCP connections one source address may hold. Past it (or past MAX_TCP_CLIENTS) the longest-idle
#: connection (no query being answered) is closed to make room, as RFC 7766 §6.2.3 lets a server do: a client
#: holding every slot open and silent cannot lock the others out. Nothing idle to close: the new one is.
MAX_TCP_PER_SOURCE = 64
#: Descriptors held back (on /dev/null) so a TCP client can still be accepted while something else in the
#: process holds every other one; given back when that connection ends.
FD_RESERVE = 2
#: accept() back-off while it fails (EMFILE...): first and longest pause, seconds.
ACCEPT_BACKOFF = (0.05, 2.0)
#: Seconds between two warnings about the same recurring condition (accept failures, refused connections).
LOG_EVERY = 60.0
#: Batched recvmmsg/sendmmsg on Linux when the caller does not say. The agent and `kuma-dp dns` pass the
#: `dns.mmsg` setting (KUMA_DNS_MMSG=0 turns it off, e.g. to compare in bench/dns); tests flip this default
#: to cover the plain recvfrom path through components that do not pass it.
USE_MMSG = True
TCP_IDLE_TIMEOUT = 10.0
_OPT_HEAD = b"\x00\x00\x29"
#: Reply flags for each query flag pair the hot path accepts (QR, AA, RA set; RD and CD copied; NOERROR).
_FLAGS = {
    bytes((b2, b3)): bytes((0x84 | (b2 & 0x01), 0x80 | (b3 & 0x10))) for b2 in (0, 1) for b3 in range(256)
}


class DNSServer:
    """Answers mesh names from the current table and forwards the rest."""

    def __init__(
        self,
        store: TableStore,
        forwarder: Forwarder | None,
        metrics: DNSMetrics,
        addresses: Sequence[str] = ("127.0.0.1",),
        port: int = 15053,
        mmsg: bool | None = None,
        *,
        max_tcp_connections: int = MAX_TCP_CLIENTS,
        max_tcp_per_source: int = MAX_TCP_PER_SOURCE,
        max_pending: int = MAX_PENDING,
        early: EarlyResponder | None = None,
    ) -> None:
        self.store = store
        #: The early responder to take over in `start()` (kuma_dns/early.py): its sockets and stash.
        self._early = early
        self.max_tcp_connections = max(1, max_tcp_connections)
        self.max_tcp_per_source = max(1, max_tcp_per_source)
        self.max_pending = max(1, max_pending)
        self._dropped_warned_at: float | None = None
        #: Batched UDP I/O where the platform has it; None = the module default USE_MMSG.
        self.use_mmsg = USE_MMSG if mmsg is None else mmsg
        self.forwarder = forwarder
        self.metrics = metrics
        self.addresses = list(addresses)
        self.port = port
        self._answers = store.current.answers
        self._table = store.current
        self._cache = forwarder.cache if forwarder is not None else None
        self._clock = self._cache.clock if self._cache is not None else time.monotonic
        store.listeners.append(self._on_table)
        self._pending: set[asyncio.Task[None]] = set()
        self._udp: list[_UDPReader] = []
        self._tcp_listeners: list[_TCPListener] = []
        self._conns: set[_TCPConn] = set()
        self._admitted = 0  # TCP connections admitted so far: their admission order
        self._per_source: dict[str, int] = {}
        self._reserve = _FdReserve()
        self._refused_warned_at: float | None = None
        self.bound: list[tuple[str, int]] = []
        self._multi_q_logged = False

    def _on_table(self, table: MeshTable) -> None:
        # One assignment each: a query sees the old table or the new one.
        self._table = table
        self._answers = table.answers
        if table.loaded:
            self.metrics.config_loaded(table.extra_labels)

    # -- hot path -----------------------------------------------------------------------------------------

    def answer_local(self, data: bytes) -> bytes | None:
        """Reply bytes for a plain query for a mesh name or a fresh cache entry, else None (slow path)."""
        start = time.perf_counter()
        resp = self._hot(data, self._clock())
        if resp is not None:
            self.metrics.request_duration.observe(time.perf_counter() - start)
        return resp

    def _hot(self, data: bytes, now: float) -> bytes | None:
        """The hot path, untimed (the UDP reader times whole batches); `now` is the cache clock.

        Accepts only the common shape: QR=0, opcode 0, AA=0, TC=0, one question, no answer/authority, at
        most one additional record that is a version-0 OPT ending the packet. The first zero byte after
        the header ends the name: a valid wire name is prefix-free, so a name that merely contains a zero
        byte can never equal a table or cache key.
        """
        if len(data) < 17 or data[2] & 0xFE or data[4:10] != b"\x00\x01\x00\x00\x00\x00":
            return None
        e = data.find(b"\x00", 12)
        if e < 0:
            return None
        qend = e + 5
        n = len(data)
        ar = data[10:12]
        if ar == b"\x00\x00":
            if n != qend:
                return None
            edns = False
        elif (
            ar == b"\x00\x01"
            and data[qend : qend + 3] == _OPT_HEAD
            and n >= qend + 11
            and data[qend + 6] == 0
            and n == qend + 11 + ((data[qend + 9] << 8) | data[qend + 10])
        ):
            edns = True
        else:
            return None
        # Lower-casing type and class too is exact for the table (its keys hold only A/AAAA/IN, which no
        # other byte lowers to); the cache key below keeps type and class as sent.
        mkey = data[12:qend].lower()
        ans = self._answers.get(mkey)
        m = self.metrics
        if ans is not None:
            if edns:
                tail = ans.fast_edns
                if tail is None:
                    return None
                if data[qend + 7] & 0x80:  # DO: RFC 3225 §3 has the response copy it
                    tail = tail[: -w.OPT_LEN] + w.OPT_DO
                resp = b"".join((data[0:2], _FLAGS[data[2:4]], ans.counts_edns, data[12:qend], tail))
            else:
                if ans.tail is None:
                    return None
                resp = b"".join((data[0:2], _FLAGS[data[2:4]], ans.counts, data[12:qend], ans.tail))
            m.queries[ans.local_kind][0] += 1
            m.rcodes["noerror"] += 1
            return resp
        cache = self._cache
        if cache is None:
            return None
        fl = (2 if data[3] & 0x10 else 0) | (1 if edns and data[qend + 7] & 0x80 else 0)
        lname = mkey[:-4]
        ckey = b"".join((lname, data[e + 1 : qend], FLAG_BYTES[fl]))
        entry = cache.entries.get(ckey)
        if entry is None:
            return None
        table = self._table
        if lname in table.wire_names or (table.loaded and lname.endswith(MESH_SUFFIX)):
            return None  # the table wins over an answer cached before the name joined the mesh
        if entry.memo_elapsed == int(now - entry.stored):
            reply = entry.memo if edns else entry.memo_noopt
        else:
            reply = None
        if reply is None:
            reply = cache.get(ckey, edns=edns)  # refreshes the memo, or expires the entry
            if reply is None:
                return None
        if len(reply) > (max(512, (data[qend + 3] << 8) | data[qend + 4]) if edns else 512):
            return None  # the slow path truncates
        m.cache_hits += 1
        qt = data[e + 2] if data[e + 1] == 0 else 255
        m.queries[0 if qt == 1 else 1 if qt == 28 else 2][1] += 1
        m.rcodes[RCODE_NAMES[reply[3] & 0x0F]] += 1
        return b"".join((data[0:2], reply[2:12], data[12:qend], reply[qend:]))

    # -- full path ----------------------------------------------------------------------------------------

    async def process(self, data: bytes, tcp: bool = False) -> bytes | None:
        """Answer any packet; None means drop (not a query, or too short to carry an ID)."""
        resp = self.answer_local(data)
        if resp is not None:
            return resp  # counted by answer_local (mesh names and cache hits)
        start = time.perf_counter()
        try:
            got = self._sync(data, tcp)
            if isinstance(got, w.QueryInfo):
                assert self.forwarder is not None
                resp = await self.forwarder.resolve_upstream(data, got, tcp)
                if not tcp:
                    resp = w.truncate_for_udp(resp, got.qend, got.udp_size, got.edns, got.do_bit)
            else:
                resp = got
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dns: handler error; answering SERVFAIL")
            resp = w.error_response(data, w.RCODE_SERVFAIL, -1, False) if len(data) >= 12 else None
        if resp is not None:
            self.metrics.rcode(resp[3] & 0x0F)
            self.metrics.request_duration.observe(time.perf_counter() - start)
        return resp

    def process_sync(self, data: bytes) -> bytes | w.QueryInfo | None:
        """The UDP second-fastest path: everything that needs no upstream exchange (errors, NXDOMAIN, cache
        hits) without creating a task. Returns the reply, None (drop), or the parsed query for
        `process_upstream` (a cache miss). Never raises.
        """
        start = time.perf_counter()
        try:
            got = self._sync(data, False)
        except Exception:
            log.exception("dns: handler error; answering SERVFAIL")
            got = w.error_response(data, w.RCODE_SERVFAIL, -1, False)
        if isinstance(got, bytes):
            self.metrics.rcode(got[3] & 0x0F)
            self.metrics.request_duration.observe(time.perf_counter() - start)
        return got

    async def process_upstream(self, data: bytes, info: w.QueryInfo) -> bytes | None:
        """The rest of a UDP query `process_sync` could not answer: SERVFAIL on any error."""
        start = time.perf_counter()
        try:
            assert self.forwarder is not None
            resp = await self.forwarder.resolve_upstream(data, info, False)
            resp = w.truncate_for_udp(resp, info.qend, info.udp_size, info.edns, info.do_bit)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dns: handler error; answering SERVFAIL")
            resp = w.error_response(data, w.RCODE_SERVFAIL, info.qend, info.edns, info.do_bit)
        self.metrics.rcode(resp[3] & 0x0F)
        self.metrics.request_duration.observe(time.perf_counter() - start)
        return resp

    def _sync(self, data: bytes, tcp: bool) -> bytes | w.QueryInfo | None:
        """Reply, drop (None), or the parsed query when only an upstream exchange can answer it."""
        m = self.metrics
        if len(data) < 12 or data[2] & 0x80:
            m.malformed += 1
            return None  # never answer a response (reflection loops) or a fragment
        qd = w.U16.unpack_from(data, 4)[0]
        qend = w.question_end(data) if qd >= 1 else -1
        opcode = (data[2] >> 3) & 0x0F
        if opcode != 0:
            # Header only: NOTIFY/UPDATE sections mean other things; echoing them is asking for trouble.
            return w.error_response(data, w.RCODE_NOTIMP, -1, False)
        if qd > 1 and not self._multi_q_logged:
            log.warning("dns: query with %d questions: answering FORMERR", qd)
            self._multi_q_logged = True
        info = w.parse_query(data)
        if info is None:
            m.malformed += 1
            return w.error_response(data, w.RCODE_FORMERR, qend if qd == 1 else -1, False)
        if info.edns_version != 0:
            # RFC 6891 §6.1.3: a version we do not implement gets BADVERS, with an OPT carrying the version
            # we do (0); never forwarded (what an upstream makes of EDNS1 is not ours to relay).
            return w.error_response(data, w.RCODE_BADVERS, info.qend, True, do=info.do_bit)
        kind = 0 if info.qtype == w.QTYPE_A else 1 if info.qtype == w.QTYPE_AAAA else 2
        qname = info.key[:-5]
        table = self._table
        ans = table.answers.get(info.key[:-1])
        if ans is None and table.is_mesh_name(qname):
            # A mesh name asked for another type: authoritative NODATA. Forwarding (as kuma-dp does) would
            # get NXDOMAIN from upstream, which RFC 2308 caches for *every* type of the name.
            ans = build_nodata(qname, table.ttl)
        if ans is None:
            ans = table.nxdomain(qname)
        if ans is not None:
            m.queries[kind][0] += 1
            return self._local_reply(data, info, ans, tcp)
        m.queries[kind][1] += 1
        if self.forwarder is None:
            return w.error_response(data, w.RCODE_SERVFAIL, info.qend, info.edns, info.do_bit)
        resp = self.forwarder.lookup_cache(data, info)
        if resp is None:
            return info
        if not tcp:
            resp = w.truncate_for_udp(resp, info.qend, info.udp_size, info.edns, info.do_bit)
        return resp

    @staticmethod
    def _local_reply(data: bytes, info: w.QueryInfo, ans: Answer, tcp: bool) -> bytes:
        flags = bytes((0x84 | (data[2] & 0x01), ans.flags3 | (data[3] & 0x10)))
        body = ans.tail_edns[: -w.OPT_LEN]
        if info.edns:
            opt = w.OPT_DO if info.do_bit else ans.tail_edns[-w.OPT_LEN :]
            resp = data[0:2] + flags + ans.counts_edns + data[12 : info.qend] + body + opt
        else:
            resp = data[0:2] + flags + ans.counts + data[12 : info.qend] + body
        if not tcp:
            resp = w.truncate_for_udp(resp, info.qend, info.udp_size, info.edns, info.do_bit)
        return resp

    # -- listeners ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind UDP and TCP on every address (IPv6 sockets v6-only); port 0 picks one port for all.

        With port 0 the kernel picks a UDP port whose TCP twin (or another address's) may be taken by
        someone else: then everything is released and another port tried.
        """
        early, self._early = self._early, None
        if early is not None:
            early.stop()  # from here its datagrams wait in the socket buffers for our readers
            early.keep_only(self.addresses, self.port)  # port 0 matches none of them
        attempts = 20 if self.port == 0 else 1
        try:
            for attempt in range(attempts):
                try:
                    await self._bind_all(self.port, early)
                    break
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                        continue
                    raise
            if early is not None:
                self._take_over(early)
        finally:
            if early is not None:
                early.close()  # the sockets our plan does not have (or all of them, if binding failed)
        log.info(
            "dns server listening addresses=%s port=%d transports=udp,tcp",
            ",".join(self.addresses),
            self.port,
        )

    async def _bind_all(self, port: int, early: EarlyResponder | None = None) -> None:
        """Bind (or adopt from `early`: kuma_dns/early.py binds with these same options) UDP and TCP on
        every address."""
        loop = asyncio.get_running_loop()
        host = self.addresses[0] if self.addresses else "?"
        try:
            for host in self.addresses:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                adopted = early.adopt(host, port, tcp=False) if early is not None and port else None
                if adopted is not None:
                    usock = adopted
                else:
                    usock = socket.socket(family, socket.SOCK_DGRAM)
                    try:
                        if family == socket.AF_INET6:
                            usock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                        with contextlib.suppress(OSError):
                            usock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                        usock.bind((host, port))
                    except OSError:
                        usock.close()
                        raise
                port = usock.getsockname()[1]
                usock.setblocking(False)
                reader = _UDPReader(self, usock)
                loop.add_reader(usock.fileno(), reader.on_readable)
                self._udp.append(reader)
                tsock = early.adopt(host, port, tcp=True) if early is not None else None
                if tsock is None:
                    tsock = socket.socket(family, socket.SOCK_STREAM)
                    try:
                        tsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        if family == socket.AF_INET6:
                            tsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                        tsock.bind((host, port))
                    except OSError:
                        tsock.close()
                        raise
                    tsock.listen(256)
                tsock.setblocking(False)
                self._tcp_listeners.append(_TCPListener(self, tsock, f"{host}:{port}"))
                self.bound.append((host, port))
        except OSError as exc:
            await self.close()
            self.bound.clear()
            if exc.errno == errno.EADDRINUSE:
                raise OSError(
                    exc.errno,
                    f"DNS port {port} on {host} is in use: pick another with --dns-proxy-port/--port",
                ) from exc
            raise
        self.port = port
        self._reserve.refill()
        if self.forwarder is not None:
            await self.forwarder.open_fallback()

    def _take_over(self, early: EarlyResponder) -> None:
        """After binding: count the early answers as ours, and answer its stash as if just received.

        A stashed query that came on an address we do not listen on (the plan changed) is dropped, as its
        socket is closed: its client retries against the new one. Stash overflow counts as dropped queries.
        """
        m = self.metrics
        for kind, n in enumerate(early.answered):
            m.queries[kind][0] += n
        m.rcodes["noerror"] += early.total_answered
        m.rcodes["servfail"] += early.expired  # kept past STASH_WAIT while the start took long
        readers = {socket_key(host, port): r for (host, port), r in zip(self.bound, self._udp, strict=True)}
        lost = early.dropped
        now = self._clock()
        for data, addr, key in early.stash:
            reader = readers.get(key)  # ours, on the address and port it was sent to
            if reader is None:
                lost += 1
                continue
            resp = reader.hot(data, now)
            if resp is None:
                reader.other(data, addr)
                continue
            with contextlib.suppress(OSError):
                reader.sock.sendto(resp, addr)
        m.pending_dropped += lost
        log.info(
            "dns: took over from the early responder answered=%d handed_over=%d servfail=%d dropped=%d",
            early.total_answered,
            len(early.stash),
            early.expired,
            lost,
        )
        early.stash.clear()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for r in self._udp:
            loop.remove_reader(r.sock.fileno())
            r.closed = True
        for lst in self._tcp_listeners:
            lst.close()
        self._tcp_listeners.clear()
        for t in list(self._pending):
            t.cancel()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        for r in self._udp:
            r.sock.close()
        self._udp.clear()
        for c in list(self._conns):  # only connections whose task never ran are left by now
            if c.writer is not None:
                c.writer.transport.abort()
            else:
                c.sock.close()
        self._conns.clear()
        self._per_source.clear()
        self._reserve.close()
        if self.forwarder is not None:
            self.forwarder.close()

    def spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _udp_slow(self, reader: _UDPReader, data: bytes, info: w.QueryInfo, addr: object) -> None:
        resp = await self.process_upstream(data, info)
        if resp is not None and not reader.closed:
            with contextlib.suppress(OSError):  # full buffer or client gone: UDP may drop
                reader.sock.sendto(resp, addr)

    # -- TCP connections ----------------------------------------------------------------------------------

    def admit(self, sock: socket.socket, source: str, reserved: bool) -> None:
        """A just-accepted connection: taken within the caps (closing the longest-idle one to make room), or
        refused when nothing is idle."""
        victim: _TCPConn | None = None
        over = self._per_source.get(source, 0) >= self.max_tcp_per_source
        if over:
            victim = self._longest_idle(source)
        elif len(self._conns) >= self.max_tcp_connections:
            over = True
            victim = self._longest_idle(None)
        if victim is not None:
            self._evict(victim)
        elif over:
            sock.close()
            self.metrics.tcp_refused += 1
            if reserved:
                self._reserve.refill()
            now = time.monotonic()
            if self._refused_warned_at is None or now - self._refused_warned_at >= LOG_EVERY:
                self._refused_warned_at = now
                log.warning(
                    "dns: refusing TCP connection from %s: %d connections busy (per source %d, total %d: "
                    "KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS_PER_SOURCE, KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS); "
                    "counted in kuma_dp_dns_tcp_refused_connections (at most one line a minute)",
                    source,
                    len(self._conns),
                    self.max_tcp_per_source,
                    self.max_tcp_connections,
                )
            return
        self._admitted += 1
        conn = _TCPConn(source, sock, self._clock(), reserved=reserved, seq=self._admitted)
        self._conns.add(conn)
        self._per_source[source] = self._per_source.get(source, 0) + 1
        self.spawn(self._tcp_client(conn))

    def pending_full(self) -> None:
        """A UDP query to forward while `max_pending` are outstanding: dropped (the client retries, as with
        dnsmasq's forward limit), counted, and one line a minute."""
        self.metrics.pending_dropped += 1
        now = time.monotonic()
        if self._dropped_warned_at is None or now - self._dropped_warned_at >= LOG_EVERY:
            self._dropped_warned_at = now
            log.warning(
                "dns: dropping a query to forward: %d upstream queries outstanding "
                "(KUMA_DNS_PROXY_UPSTREAM_MAX_PENDING_QUERIES); counted in "
                "kuma_dp_dns_upstream_dropped_queries (at most one line a minute)",
                self.max_pending,
            )

    def _longest_idle(self, source: str | None) -> _TCPConn | None:
        best: _TCPConn | None = None
        for c in self._conns:
            if c.busy or (source is not None and c.source != source):
                continue
            # Ties (a burst admitted within one clock tick) go to the earliest admitted: the set has no order.
            if best is None or (c.last_active, c.seq) < (best.last_active, best.seq):
                best = c
        return best

    def shed_idle(self, count: int) -> int:
        """Close up to `count` idle connections (accept() is out of descriptors); how many were closed."""
        n = 0
        while n < count:
            victim = self._longest_idle(None)
            if victim is None:
                break
            self._evict(victim)
            n += 1
        return n

    def _evict(self, c: _TCPConn) -> None:
        self._forget(c)
        self.metrics.tcp_evicted += 1
        if c.writer is not None:
            c.writer.transport.abort()  # its task sees the connection end and returns
        # else its task has not started yet: it finds itself forgotten and closes the socket

    def _forget(self, c: _TCPConn) -> None:
        if c in self._conns:
            self._conns.discard(c)
            left = self._per_source.get(c.source, 1) - 1
            if left > 0:
                self._per_source[c.source] = left
            else:
                self._per_source.pop(c.source, None)

    async def _tcp_client(self, c: _TCPConn) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            if c not in self._conns:
                return  # evicted before it started
            reader, writer = await asyncio.open_connection(sock=c.sock)
            c.writer = writer
            # Not activity: the client has been idle since it was admitted. Refreshing here would make a
            # connection whose task started late look newer than ones admitted after it.
            while c in self._conns:
                async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                    head = await reader.readexactly(2)
                    data = await reader.readexactly(struct.unpack("!H", head)[0])
                c.busy = True
                resp = await self.process(data, tcp=True)
                c.busy = False
                c.last_active = self._clock()
                if resp is None:
                    break
                writer.write(struct.pack("!H", len(resp)) + resp)
                async with asyncio.timeout(TCP_IDLE_TIMEOUT):  # a client that never reads is dropped
                    await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass  # the client left, stalled, or was evicted (ConnectionError is an OSError)
        finally:
            self._forget(c)
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            else:
                c.sock.close()
            if c.reserved:
                self._reserve.refill()


@dataclass(eq=False, slots=True)
class _TCPConn:
    """One TCP client: who, and whether it may be closed to make room (idle = not answering a query)."""

    source: str
    sock: socket.socket
    last_active: float
    busy: bool = False
    writer: asyncio.StreamWriter | None = None
    reserved: bool = False  # accepted on a reserve descriptor: refill the reserve when it ends
    seq: int = 0  # admission order, for ties in last_active


class _FdReserve:
    """A few descriptors on /dev/null, given up one at a time when accept() fails for want of one."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def refill(self) -> None:
        while len(self.fds) < FD_RESERVE:
            try:
                self.fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return  # still exhausted: the next connection end tries again

    def release(self) -> bool:
        if not self.fds:
            return False
        os.close(self.fds.pop())
        return True

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())


def _pending(fd: int) -> bool:
    """Whether a listening socket has a connection waiting (poll: no descriptor needed, unlike epoll)."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


class _TCPListener:
    """accept() driven by the loop's readiness callback, so its failures are ours to handle.

    asyncio's own accept loop logs a traceback per EMFILE and retries every second; here, when accept() fails
    for want of a descriptor, idle connections are closed (shed), a reserve descriptor is spent on the
    waiting client, and otherwise the listener pauses with exponential back-off (ACCEPT_BACKOFF). At most
    one warning a minute (with the count since the last one); every failure is counted in
    kuma_dp_dns_accept_errors.
    """

    def __init__(self, server: DNSServer, sock: socket.socket, name: str) -> None:
        self.server = server
        self.sock = sock
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.fd = sock.fileno()
        self.delay = 0.0
        self.failures = 0  # since the last warning
        self.warned_at: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.loop.add_reader(self.fd, self.on_readable)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        else:
            self.loop.remove_reader(self.fd)
        self.sock.close()

    def on_readable(self) -> None:
        server = self.server
        reserved = False
        for _ in range(64):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # the client gave up before we took it
                if exc.errno in FD_EXHAUSTED and not _pending(self.fd):
                    break  # Linux reserves the descriptor before looking at the queue: nobody is waiting
                server.metrics.accept_errors += 1
                self._failed(exc)
                if exc.errno in FD_EXHAUSTED:
                    if server.shed_idle(1):
                        self._pause(0.0)  # their descriptors are freed once the loop has closed them
                        break
                    if not reserved and server._reserve.release():
                        reserved = True
                        continue
                self._pause(min(ACCEPT_BACKOFF[1], max(ACCEPT_BACKOFF[0], self.delay * 2)))
                break
            self.delay = 0.0
            conn.setblocking(False)
            server.admit(conn, addr[0], reserved)
            reserved = False
        if reserved:
            server._reserve.refill()  # spent for nothing: take it back

    def _failed(self, exc: OSError) -> None:
        self.failures += 1
        now = time.monotonic()
        if self.warned_at is None or now - self.warned_at >= LOG_EVERY:
            log.warning(
                "dns: accept() on %s failed: %s (%d times since the last warning); closing idle connections "
                "and backing off up to %.0fs; raise the fd limit (LimitNOFILE=, ulimit -n) if this repeats",
                self.name,
                exc.strerror or exc,
                self.failures,
                ACCEPT_BACKOFF[1],
            )
            self.warned_at = now
            self.failures = 0

    def _pause(self, delay: float) -> None:
        self.delay = delay
        if self.timer is not None:
            self.timer.cancel()
        else:
            self.loop.remove_reader(self.fd)
        self.timer = self.loop.call_later(delay, self._resume)

    def _resume(self) -> None:
        self.timer = None
        self.loop.add_reader(self.fd, self.on_readable)


def build_nodata(qname: bytes, ttl: int) -> Answer:
    return build_answer(qname, w.RCODE_NOERROR, [], ttl, 2)


class _UDPReader:
    """UDP without the transport machinery: on readiness, drain up to BATCH datagrams, answer mesh names
    inline with a direct `sendto`, and hand the rest to the slow path as tasks.

    A datagram protocol costs a callback and a transport hop per packet; this loop is what gets the hot
    path to dnsmasq's rate in Python (bench/dns). A full socket buffer on send drops the reply, as UDP may.
    """

    BATCH = 64
    __slots__ = ("closed", "hot", "mmsg", "server", "sock")

    def __init__(self, server: DNSServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.hot = server._hot
        self.closed = False
        self.mmsg = _mmsg.MMsgSocket(sock) if server.use_mmsg and _mmsg.available() else None

    def on_readable(self) -> None:
        if self.mmsg is not None:
            self._on_readable_mmsg(self.mmsg)
            return
        recvfrom = self.sock.recvfrom
        sendto = self.sock.sendto
        hot = self.hot
        server = self.server
        start = time.perf_counter()
        now = server._clock()
        hits = 0
        seen = 0
        try:
            for _ in range(self.BATCH):
                try:
                    data, addr = recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    continue  # ICMP errors queued on the socket for earlier replies
                seen += 1
                resp = hot(data, now)
                if resp is not None:
                    hits += 1
                    try:
                        sendto(resp, addr)
                    except OSError:
                        pass  # full buffer or client gone: UDP may drop
                    continue
                self.other(data, addr)
        finally:
            if hits:
                # Hot-path answers cost microseconds: each is recorded at the batch's mean cost per packet
                # (an upper bound), which spares two clock reads per query on the hottest path.
                server.metrics.request_duration.observe_many((time.perf_counter() - start) / seen, hits)

    def _on_readable_mmsg(self, mm: _mmsg.MMsgSocket) -> None:
        server = self.server
        for _ in range(4):  # up to 4 x 64 datagrams per wake-up, then let the loop breathe
            start = time.perf_counter()
            try:
                seen, hits = mm.serve_batch(self.hot, server._clock(), self.other)
            except OSError:
                return
            if hits:
                server.metrics.request_duration.observe_many((time.perf_counter() - start) / seen, hits)
            if seen < _mmsg.BATCH:
                return

    def other(self, data: bytes, addr: object) -> None:
        """Everything the hot path did not answer: errors, NXDOMAIN, slow cache cases, upstream."""
        server = self.server
        got = server.process_sync(data)
        if got is None:
            return
        if isinstance(got, bytes):
            try:
                self.sock.sendto(got, addr)
            except OSError:
                pass
        elif len(server._pending) < server.max_pending:
            server.spawn(server._udp_slow(self, data, got, addr))
        else:
            server.pending_full()
