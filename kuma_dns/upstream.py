"""Forwarding of non-mesh names: every resolv.conf nameserver, a TTL cache, and no hangs.

What kuma-dp does (Kuma's `app/kuma-dp/pkg/dataplane/dnsproxy/component.go`: the first resolv.conf nameserver
only, UDP only, no cache, no truncation) is what users of DNS proxies complain about: no cache overloads the
upstream (istio/istio#38269, hashicorp/consul#14703), only the first server is tried (hashicorp/consul#3640),
large answers fail (istio/istio#61371, #12312). Here:

* all nameservers, in order (or in parallel), failing over on timeouts, network errors, SERVFAIL and REFUSED;
* the client's transport; over UDP we advertise EDNS0 (1232) upstream and retry over TCP when TC is set;
* a cache keyed by (name, type, class, DO) honouring TTLs (counted down on every hit), negative caching from
  the SOA (RFC 2308), serve-stale when every upstream fails (RFC 8767), identical in-flight queries merged;
* every exchange bounded by a deadline: upstream failure gives SERVFAIL, never a hang;
* a reply that does not parse completely (`_wire.valid_response`) counts as that server failing: it is
  neither relayed nor cached.

The time budget: `deadline` (4.5 s, under glibc's 5 s) bounds the whole question; `timeout` (2 s) is only how
long one attempt waits before the next one *starts*. Earlier attempts are not abandoned: their sockets keep
listening until the deadline, so a single slow upstream that answers at 2.5 s is answered (as dnsmasq
does), and with one upstream the next attempt is a retransmission to it. A server that fails outright
(ICMP unreachable, SERVFAIL, REFUSED, a malformed reply) is not asked again for this question.

File descriptors: each exchange opens its own socket (a fresh source port per query). When the process is
out of descriptors (EMFILE/ENFILE), UDP exchanges fall back to a socket opened at start (`open_fallback`),
matched by server address and a random ID, so forwarding keeps working while something else holds every fd.

Loops: under the transparent proxy the agent runs as the excluded uid (5678), so these sockets are not
redirected back to us; we bind no special source address. The server also drops its own listen addresses
from the upstream list (a resolv.conf that points at ourselves would otherwise loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import secrets
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import _wire as w
from .metrics import DNSMetrics

log = logging.getLogger(__name__)

Address = tuple[str, int]
#: Last byte of a cache key: bit 0 = DO, bit 1 = CD.
FLAG_BYTES = (b"\x00", b"\x01", b"\x02", b"\x03")


@dataclass(frozen=True, slots=True)
class ResolvConf:
    nameservers: tuple[Address, ...]
    search: tuple[str, ...]


def parse_resolv_conf(text: str) -> ResolvConf:
    """The parts of resolv.conf(5) we use: `nameserver` lines (all) and the last `search`/`domain` line."""
    servers: list[Address] = []
    search: tuple[str, ...] = ()
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2:
            continue
        if fields[0] == "nameserver":
            host = fields[1].split("%", 1)[0]  # drop an IPv6 zone id
            servers.append((host, 53))
        elif fields[0] in ("search", "domain"):
            search = tuple(d.strip(".") for d in fields[1:] if d.strip("."))
    return ResolvConf(tuple(servers), search)


def read_resolv_conf(path: str | Path = "/etc/resolv.conf") -> ResolvConf:
    try:
        return parse_resolv_conf(Path(path).read_text())
    except OSError as exc:
        log.warning("dns: cannot read %s: %s; no upstream nameservers and no search domains", path, exc)
        return ResolvConf((), ())


def parse_hostport(value: str, default_port: int = 53) -> Address:
    """`HOST:PORT`, `HOST`, `[V6]:PORT` or a bare IPv6 address."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, default_port


class UpstreamError(Exception):
    """No upstream gave a usable answer."""


class _UDPExchange(asyncio.DatagramProtocol):
    def __init__(self, fut: asyncio.Future[bytes], qid: bytes) -> None:
        self.fut = fut
        self.qid = qid

    def datagram_received(self, data: bytes, addr: object) -> None:
        # Connected socket: only the server's address reaches us; still check the ID and QR (spoofing).
        if len(data) >= 12 and data[0:2] == self.qid and data[2] & 0x80 and not self.fut.done():
            self.fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc or ConnectionError("closed"))


#: errnos that mean "no descriptor left", for which the shared fallback socket exists.
FD_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def _norm(host: str) -> str:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).compressed
    except ValueError:
        return host


class SharedUDP(asyncio.DatagramProtocol):
    """One unconnected UDP socket per family, opened at start, for exchanges made while fds are exhausted.

    Replies are matched on (server address, ID) with an ID chosen at random among those not in flight to that
    server; the caller still checks the question, as for a connected socket.
    """

    def __init__(self) -> None:
        self.transports: dict[int, asyncio.DatagramTransport] = {}
        self.waiting: dict[tuple[str, int, int], asyncio.Future[bytes]] = {}
        #: Called with the OSError each time an exchange falls back here (the forwarder logs it).
        self.on_fallback: Callable[[OSError], None] = lambda exc: None

    async def open(self, families: set[int]) -> None:
        loop = asyncio.get_running_loop()
        for fam in families - set(self.transports):
            host = "::" if fam == socket.AF_INET6 else "0.0.0.0"
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: self, local_addr=(host, 0), family=fam
                )
            except OSError as exc:
                log.warning("dns: no fallback upstream socket for %s: %s", host, exc)
                continue
            self.transports[fam] = transport  # type: ignore[assignment]

    def close(self) -> None:
        for t in self.transports.values():
            t.close()
        self.transports.clear()
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("closed"))
        self.waiting.clear()

    def datagram_received(self, data: bytes, addr: tuple[str, int] | tuple[str, int, int, int]) -> None:  # type: ignore[override]
        if len(data) < 12 or not data[2] & 0x80:
            return
        fut = self.waiting.get((_norm(addr[0]), addr[1], w.U16.unpack_from(data, 0)[0]))
        if fut is not None and not fut.done():
            fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for one server must not fail the others' exchanges; they time out

    async def exchange(self, server: Address, query: bytes, timeout: float) -> bytes:
        fam = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        transport = self.transports.get(fam)
        if transport is None:
            raise OSError(errno.EMFILE, "out of file descriptors and no fallback socket")
        host = _norm(server[0])
        for _ in range(16):
            qid = secrets.randbelow(65536)
            if (host, server[1], qid) not in self.waiting:
                break
        else:
            raise OSError(errno.EBUSY, "no free query ID on the fallback socket")
        key = (host, server[1], qid)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[key] = fut
        try:
            transport.sendto(w.U16.pack(qid) + query[2:], server)
            async with asyncio.timeout(timeout):
                reply = await fut
        finally:
            self.waiting.pop(key, None)
        return query[0:2] + reply[2:]


async def udp_exchange(
    server: Address,
    query: bytes,
    timeout: float,
    fallback: SharedUDP | None = None,
    resend_every: float | None = None,
) -> bytes:
    """One question over UDP, listening for `timeout` seconds; with `resend_every` the datagram is sent
    again on the same socket at that interval (a lost packet), and a reply to any copy is the answer."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bytes] = loop.create_future()
    try:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UDPExchange(fut, query[0:2]), remote_addr=server
        )
    except OSError as exc:
        if fallback is None or exc.errno not in FD_EXHAUSTED:
            raise
        fallback.on_fallback(exc)
        return await fallback.exchange(server, query, timeout)
    resend: asyncio.TimerHandle | None = None

    def again() -> None:
        nonlocal resend
        if not transport.is_closing():
            transport.sendto(query)
            assert resend_every is not None
            resend = loop.call_later(resend_every, again)

    try:
        transport.sendto(query)
        if resend_every is not None:
            resend = loop.call_later(resend_every, again)
        async with asyncio.timeout(timeout):
            return await fut
    finally:
        if resend is not None:
            resend.cancel()
        transport.close()


async def tcp_exchange(server: Address, query: bytes, timeout: float) -> bytes:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(server[0], server[1])
        try:
            writer.write(struct.pack("!H", len(query)) + query)
            await writer.drain()
            while True:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
                data = await reader.readexactly(n)
                if len(data) >= 12 and data[0:2] == query[0:2] and data[2] & 0x80:
                    return data
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@dataclass(slots=True)
class CacheEntry:
    response: bytes  # upstream's reply, ID and question as first asked
    qend: int
    ttl_offsets: list[int]
    stored: float
    ttl: int
    # Memo of the TTL-adjusted bytes for the current second (most hits land in the same second).
    memo_elapsed: int = -1
    memo: bytes = b""
    memo_noopt: bytes | None = None  # memo without OPT, for clients that sent no EDNS0


class Cache:
    """An LRU of upstream answers, with TTL countdown and a stale window."""

    def __init__(self, size: int, max_ttl: int, max_stale: float, clock: Callable[[], float]) -> None:
        self.size = size
        self.max_ttl = max_ttl
        self.max_stale = max_stale
        self.clock = clock
        self.entries: OrderedDict[bytes, CacheEntry] = OrderedDict()

    def put(self, key: bytes, response: bytes, qend: int) -> None:
        if self.size <= 0 or len(response) < 12 or response[2] & 0x02:  # TC answers are never cached
            return
        rcode = response[3] & 0x0F
        parsed = w.rr_ttl_offsets(response)
        if parsed is None:
            return
        offsets, min_ttl = parsed
        an = w.U16.unpack_from(response, 6)[0]
        if rcode == w.RCODE_NXDOMAIN or (rcode == w.RCODE_NOERROR and an == 0):
            neg = w.negative_ttl(response)
            if neg is None:
                return  # RFC 2308 §5: no SOA, no negative caching
            ttl = neg
        elif rcode == w.RCODE_NOERROR:
            ttl = min_ttl
        else:
            return
        ttl = min(ttl, self.max_ttl)
        if ttl <= 0:
            return
        self.entries[key] = CacheEntry(response, qend, offsets, self.clock(), ttl)
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def get(
        self, key: bytes, allow_stale: bool = False, stale_ttl: int = 30, edns: bool = True
    ) -> bytes | None:
        """The cached reply, TTLs counted down, OPT kept only for `edns` clients; expired entries only with
        `allow_stale` (TTL `stale_ttl`). Fresh replies are memoised per second: a hit is a dict lookup.
        """
        entry = self.entries.get(key)
        if entry is None:
            return None
        elapsed = int(self.clock() - entry.stored)
        if elapsed >= entry.ttl:
            if not allow_stale or elapsed > entry.ttl + self.max_stale:
                if elapsed > entry.ttl + self.max_stale:
                    del self.entries[key]
                return None
            stale = self._adjusted(entry, None, stale_ttl)
            return stale if edns else w.strip_additional_opt(stale)
        if entry.memo_elapsed != elapsed:
            entry.memo = self._adjusted(entry, elapsed, 0)
            entry.memo_noopt = None
            entry.memo_elapsed = elapsed
        if edns:
            return entry.memo
        if entry.memo_noopt is None:
            entry.memo_noopt = w.strip_additional_opt(entry.memo)
        return entry.memo_noopt

    @staticmethod
    def _adjusted(entry: CacheEntry, elapsed: int | None, fixed: int) -> bytes:
        buf = bytearray(entry.response)
        for off in entry.ttl_offsets:
            if elapsed is None:
                w.U32.pack_into(buf, off, fixed)
            else:
                ttl = w.U32.unpack_from(buf, off)[0]
                w.U32.pack_into(buf, off, max(0, ttl - elapsed))
        return bytes(buf)


class Forwarder:
    """Resolve a client query through the cache and the upstream nameservers."""

    def __init__(
        self,
        upstreams: Sequence[Address],
        metrics: DNSMetrics,
        *,
        timeout: float = 2.0,
        deadline: float = 4.5,
        parallel: bool = False,
        cache_size: int = 10000,
        max_ttl: int = 86400,
        max_stale: float = 86400.0,
        stale_ttl: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstreams = list(upstreams)
        self.metrics = metrics
        self.timeout = timeout
        self.deadline = deadline
        self.parallel = parallel
        self.stale_ttl = stale_ttl
        self.cache = Cache(cache_size, max_ttl, max_stale, clock)
        self._inflight: dict[bytes, asyncio.Future[bytes]] = {}
        self.fallback = SharedUDP()
        self.fallback.on_fallback = self._log_fd_exhausted
        self._fd_warned_at: float | None = None

    async def open_fallback(self) -> None:
        """Open the shared sockets used when the process runs out of descriptors (call while it has some)."""
        fams = {socket.AF_INET6 if ":" in h else socket.AF_INET for h, _ in self.upstreams}
        await self.fallback.open(fams or {socket.AF_INET})

    def close(self) -> None:
        self.fallback.close()

    @staticmethod
    def _key(query: bytes, info: w.QueryInfo) -> bytes:
        """Name (lower-case) + type + class + one byte of DO|CD (both change what a validator returns)."""
        return info.key[:-1] + FLAG_BYTES[(1 if info.do_bit else 0) | (2 if query[3] & 0x10 else 0)]

    def lookup_cache(self, query: bytes, info: w.QueryInfo) -> bytes | None:
        """A fresh cached reply for the client, or None (synchronous: the UDP loop calls it inline)."""
        cached = self.cache.get(self._key(query, info), edns=info.edns)
        if cached is None:
            return None
        self.metrics.cache_hits += 1
        return query[0:2] + cached[2:12] + query[12 : info.qend] + cached[info.qend :]

    async def resolve(self, query: bytes, info: w.QueryInfo, tcp: bool) -> bytes:
        """The reply for the client (its ID and question bytes, EDNS0 as it asked); SERVFAIL on failure."""
        hit = self.lookup_cache(query, info)
        return hit if hit is not None else await self.resolve_upstream(query, info, tcp)

    async def resolve_upstream(self, query: bytes, info: w.QueryInfo, tcp: bool) -> bytes:
        """After a cache miss: one upstream exchange per distinct question in flight, then the cache."""
        key = self._key(query, info)
        self.metrics.cache_misses += 1
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._fetch(key, query, info, tcp))
            self._inflight[key] = fut
            fut.add_done_callback(lambda _f, k=key: self._inflight.pop(k, None))
        try:
            upstream_reply = await asyncio.shield(fut)
        except UpstreamError:
            stale = self.cache.get(key, allow_stale=True, stale_ttl=self.stale_ttl, edns=info.edns)
            if stale is not None:
                self.metrics.stale_served += 1
                log.debug("dns: upstream failed, serving stale answer for %s", w.wire_to_text(info.key[:-5]))
                return query[0:2] + stale[2:12] + query[12 : info.qend] + stale[info.qend :]
            return w.error_response(query, w.RCODE_SERVFAIL, info.qend, info.edns, info.do_bit)
        return self._for_client(upstream_reply, query, info)

    def _for_client(self, reply: bytes, query: bytes, info: w.QueryInfo) -> bytes:
        out = query[0:2] + reply[2:12] + query[12 : info.qend] + reply[info.qend :]
        # Keep the client's RD/CD view; upstream's AA/RA/AD/rcode stay.
        if not info.edns:
            out = w.strip_additional_opt(out)
        return out

    async def _fetch(self, key: bytes, query: bytes, info: w.QueryInfo, tcp: bool) -> bytes:
        if not self.upstreams:
            raise UpstreamError("no upstream nameservers")
        upq = bytearray(query if info.edns else w.add_opt(query))
        upq[0:2] = secrets.token_bytes(2)
        upstream_query = bytes(upq)
        end = asyncio.get_running_loop().time() + self.deadline
        try:
            async with asyncio.timeout_at(end):
                if self.parallel and len(self.upstreams) > 1:
                    reply = await self._race(upstream_query, info, tcp, end)
                else:
                    reply = await self._in_order(upstream_query, info, tcp, end)
        except TimeoutError:
            raise UpstreamError("deadline") from None
        self.cache.put(key, reply, info.qend)
        return reply

    @staticmethod
    def _usable(reply: bytes | None) -> bool:
        return reply is not None and reply[3] & 0x0F not in (
            w.RCODE_SERVFAIL,
            w.RCODE_REFUSED,
            w.RCODE_NOTIMP,
        )

    async def _in_order(self, query: bytes, info: w.QueryInfo, tcp: bool, end: float) -> bytes:
        """Servers in order, a new attempt every `timeout` or as soon as one fails; every attempt listens
        until `end`. Over UDP, with a single server the next attempt is a retransmission to it (a datagram
        may be lost); over TCP each server gets one connection (a second would not be faster)."""
        loop = asyncio.get_running_loop()
        if len(self.upstreams) == 1:
            # The common case (one cluster resolver): one socket, retransmitting every `timeout`.
            reply = await self._one(
                self.upstreams[0], query, info, tcp, end - loop.time(), resend_every=self.timeout
            )
            if reply is None:
                raise UpstreamError("the upstream failed")
            return reply
        pending: dict[asyncio.Future[bytes | None], Address] = {}
        failed: set[Address] = set()
        last: bytes | None = None
        turn = 0
        try:
            while True:
                live = [s for s in self.upstreams if s not in failed and not (tcp and s in pending.values())]
                if live and loop.time() < end:
                    server = live[turn % len(live)]
                    turn += 1
                    attempt = asyncio.ensure_future(self._one(server, query, info, tcp, end - loop.time()))
                    pending[attempt] = server
                if not pending:
                    break
                done, _ = await asyncio.wait(
                    pending, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for fut in done:
                    server = pending.pop(fut)
                    reply = fut.result()
                    if self._usable(reply):
                        assert reply is not None
                        return reply
                    failed.add(server)  # answered badly: not asked again for this question
                    if reply is not None:
                        last = reply  # SERVFAIL/REFUSED/NOTIMP: passed through if nobody does better
        finally:
            for fut in pending:
                fut.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if last is not None:
            return last
        raise UpstreamError("all upstreams failed")

    async def _race(self, query: bytes, info: w.QueryInfo, tcp: bool, end: float) -> bytes:
        loop = asyncio.get_running_loop()
        tasks = [
            asyncio.ensure_future(self._one(s, query, info, tcp, end - loop.time())) for s in self.upstreams
        ]
        last: bytes | None = None
        try:
            for next_done in asyncio.as_completed(tasks):
                reply = await next_done
                if reply is None:
                    continue
                if not self._usable(reply):
                    last = reply
                    continue
                return reply
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if last is not None:
            return last
        raise UpstreamError("all upstreams failed")

    async def _one(
        self,
        server: Address,
        query: bytes,
        info: w.QueryInfo,
        tcp: bool,
        budget: float,
        resend_every: float | None = None,
    ) -> bytes | None:
        """One attempt at one server, listening for up to `budget` seconds: UDP (then TCP on TC) or TCP.

        None on any failure: network errors, a timeout, a reply for another question or one that does not
        parse (`valid_response`). A TCP client's question goes over UDP (shared socket) when no descriptor is
        left for a TCP connection.
        """
        start = time.perf_counter()
        try:
            if tcp:
                try:
                    reply = await tcp_exchange(server, query, budget)
                except OSError as exc:
                    if exc.errno not in FD_EXHAUSTED:
                        raise
                    self._log_fd_exhausted(exc)
                    reply = await self.fallback.exchange(server, query, budget)
            else:
                reply = await udp_exchange(server, query, budget, self.fallback, resend_every)
                if reply[2] & 0x02:
                    reply = await tcp_exchange(server, query, budget)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            self.metrics.upstream_failures += 1
            if isinstance(exc, OSError) and exc.errno in FD_EXHAUSTED:
                self._log_fd_exhausted(exc)
            log.debug("dns: upstream %s:%d failed: %r", server[0], server[1], exc)
            return None
        finally:
            self.metrics.upstream_duration.observe(time.perf_counter() - start)
        # The reply must be for our question (same name ignoring case, type, class), and parse completely.
        if (
            reply[12 : info.qend].lower() != query[12 : info.qend].lower()
            or w.U16.unpack_from(reply, 4)[0] != 1
        ):
            self.metrics.upstream_failures += 1
            log.debug("dns: upstream %s:%d answered another question", server[0], server[1])
            return None
        if not w.valid_response(reply):
            self.metrics.upstream_failures += 1
            self.metrics.malformed_replies += 1
            log.debug("dns: upstream %s:%d sent a malformed reply; not relayed", server[0], server[1])
            return None
        return reply

    def _log_fd_exhausted(self, exc: OSError) -> None:
        now = time.monotonic()
        if self._fd_warned_at is None or now - self._fd_warned_at >= 60.0:
            self._fd_warned_at = now
            log.warning(
                "dns: out of file descriptors for upstream sockets (%s): forwarding over the shared socket, "
                "raise the fd limit (LimitNOFILE=, ulimit -n) or find what holds them (once a minute)",
                exc.strerror or exc,
            )
