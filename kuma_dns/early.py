"""The early responder: answers mesh names from the last run's table within milliseconds of `kuma-dp run`.

The DNS component (kuma_dns/component.py) starts only once the configuration is loaded, the bootstrap
fetched and Envoy spawned: hundreds of milliseconds during which an application starting beside the agent
gets no answer for `backend.mesh`. Kuma's own proxy has nothing to answer with then either (it starts empty);
ours keeps the last table in the work dir, so it can do better. `start_early(argv, environ)`, called by
`kuma_dp.cli.main` before the configuration module is even imported, guesses the work dir from the command
line and the environment exactly by the settings table's names, reads the *hot snapshot* `TableStore.persist`
writes (the table's wire answers, nothing to decode or encode) and the *listen plan* the last server wrote
when it bound (its addresses and port), binds the same UDP and TCP sockets with the same options as
`DNSServer._bind_all`, and answers, from a daemon thread, exactly the queries `DNSServer._hot` answers from
the table, with the same bytes. Everything else (other names, other shapes) waits in a bounded stash with its
source address; TCP clients wait in the listen backlog.

Handover: the DNS component takes the responder (`take()`); `DNSServer.start` stops its thread (a self-pipe),
closes the sockets its own plan does not have, adopts the others, answers the stash as if just received and
adds the early answers to its metrics. Nothing is lost: a datagram arriving meanwhile waits in the socket
buffer for the asyncio reader, and no port is ever unbound, so no client sees ICMP port-unreachable.

Cheap on purpose: only os, struct, select and the C modules `_socket` and `_thread` (`socket` and
`threading` would cost milliseconds more). No logging: what happened is recorded here (`refused`, the
counters) and logged by the component. Anything unexpected (no snapshot, an untrusted file, a plan that does
not match the command line, a port in use) means no early responder at all; the full component then starts
as it always has.
"""

from __future__ import annotations

import _socket
import _thread
import os
import select
import struct

from ._files import FileRefused, read_checked

#: `typing` costs ~10 ms to import and nothing on the start-up path needs it at run time; type checkers
#: read any constant named TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Iterable, Mapping, Sequence

#: The hot snapshot and the listen plan, next to `kuma-dns-table.json` in the work dir.
HOT_NAME = "kuma-dns-hot.bin"
PLAN_NAME = "kuma-dns-listen.bin"
HOT_MAGIC = b"KDNSHOT\x01"
PLAN_MAGIC = b"KDNSLSN\x01"
#: The persisted table's cap and clock-skew bound (kuma_dns/table.py MAX_TABLE_BYTES, FUTURE_SKEW).
MAX_FILE_BYTES = 64 << 20
FUTURE_SKEW = 60.0
#: Queries kept for the real server (anything but a table hit); past it they are dropped (the client
#: retries) and counted in kuma_dp_dns_upstream_dropped_queries, like a query past the forwarding cap.
STASH_MAX = 1024
#: How long a kept query waits for the server. The handover normally comes within a few hundred ms of the
#: exec; when the start takes longer (the control plane unreachable, bootstrap retries for minutes) a client
#: gets SERVFAIL after this long, a fast failure it can retry or take to its next nameserver, rather than its
#: resolver's whole timeout (5 s per try in glibc) for every name outside the table.
STASH_WAIT = 2.0
#: Datagrams read per wake-up before polling again (the stop pipe is seen at least this often).
BATCH = 64
_OPT_HEAD = b"\x00\x00\x29"
_QUESTION_ONLY = b"\x00\x01\x00\x00\x00\x00"

#: One table answer, as `DNSServer._hot` reads it from a `kuma_dns.table.Answer`:
#: (counts, tail or None, counts_edns, fast_edns or None, local_kind).
HotAnswer = tuple[bytes, "bytes | None", bytes, "bytes | None", int]
SocketKey = tuple[int, bytes, int]

_HEAD = struct.Struct("!8sdH")  # magic, fetched-at (Unix time), length of the OPT-with-DO record
_U32 = struct.Struct("!I")
_ENTRY = struct.Struct("!HBB8s8s")  # key length, local kind, has tail (1) / has fast_edns (2), counts x2
_U16 = struct.Struct("!H")

#: The running responder, for the DNS component to take over (None before start_early, or once taken).
_handle: EarlyResponder | None = None
#: Why the last `start_early` did not start (a refused file), for the component's log; None otherwise.
refused: str | None = None


class SnapshotError(ValueError):
    """A hot snapshot or listen plan that is not well-formed (the message says what is wrong)."""


# -- the files ----------------------------------------------------------------------------------------------


def encode_snapshot(answers: Mapping[bytes, object], fetched_at: float, opt_do: bytes) -> bytes:
    """The hot snapshot of a table's `answers` (key -> kuma_dns.table.Answer): only what `_hot` serves."""
    out = [_HEAD.pack(HOT_MAGIC, fetched_at, len(opt_do)), opt_do, b""]
    n = 0
    for key, ans in answers.items():
        tail: bytes | None = ans.tail  # type: ignore[attr-defined]
        fast: bytes | None = ans.fast_edns  # type: ignore[attr-defined]
        if tail is None and fast is None:
            continue  # too big for 512-byte UDP either way: `_hot` never answers it
        has = (1 if tail is not None else 0) | (2 if fast is not None else 0)
        out.append(_ENTRY.pack(len(key), ans.local_kind, has, ans.counts, ans.counts_edns))  # type: ignore[attr-defined]
        out.append(key)
        for part in (tail, fast):
            if part is not None:
                out.append(_U16.pack(len(part)))
                out.append(part)
        n += 1
    out[2] = _U32.pack(n)
    return b"".join(out)


def decode_snapshot(data: bytes) -> tuple[dict[bytes, HotAnswer], float, bytes]:
    """(answers, fetched_at, OPT-with-DO record) of a hot snapshot; SnapshotError if it is not exactly one."""
    n = len(data)
    if n < _HEAD.size + 4:
        raise SnapshotError("it is shorter than a snapshot header")
    magic, fetched_at, opt_len = _HEAD.unpack_from(data, 0)
    if magic != HOT_MAGIC:
        raise SnapshotError("it is not a hot snapshot of this version")
    i = _HEAD.size
    if not 11 <= opt_len <= 64 or i + opt_len + 4 > n:
        raise SnapshotError("its OPT record is cut short or malformed")
    opt_do = data[i : i + opt_len]
    i += opt_len
    (count,) = _U32.unpack_from(data, i)
    i += 4
    if count > (n - i) // (_ENTRY.size + 5):
        raise SnapshotError(f"it claims {count} answers, more than its size can hold")
    answers: dict[bytes, HotAnswer] = {}
    esize = _ENTRY.size
    unpack_entry = _ENTRY.unpack_from
    for _ in range(count):
        if i + esize > n:
            raise SnapshotError("it is cut short inside an answer")
        klen, kind, has, counts, counts_edns = unpack_entry(data, i)
        i += esize
        if not 5 <= klen <= 260 or kind > 2 or not 1 <= has <= 3 or i + klen > n:
            raise SnapshotError("it holds a malformed answer")
        key = data[i : i + klen]
        i += klen
        parts: list[bytes | None] = [None, None]
        for bit, slot in ((1, 0), (2, 1)):
            if has & bit:
                if i + 2 > n:
                    raise SnapshotError("it is cut short inside an answer")
                plen = (data[i] << 8) | data[i + 1]
                i += 2
                if i + plen > n or plen > 512:
                    raise SnapshotError("it holds a malformed answer")
                parts[slot] = data[i : i + plen]
                i += plen
        fast = parts[1]
        if fast is not None and len(fast) < opt_len:
            raise SnapshotError("it holds an EDNS answer without its OPT record")
        answers[key] = (counts, parts[0], counts_edns, fast, kind)
    if i != n:
        raise SnapshotError("it has bytes after its last answer")
    if fetched_at != fetched_at or fetched_at <= 0:  # NaN or not a time
        raise SnapshotError("its fetch time is not a time")
    return answers, fetched_at, opt_do


def encode_plan(addresses: Sequence[str], port: int) -> bytes:
    """The listen plan: the addresses a server bound (UDP and TCP on each) and its port."""
    out = [PLAN_MAGIC, _U16.pack(port), bytes((len(addresses),))]
    for host in addresses:
        raw = host.encode("ascii")
        out.append(bytes((len(raw),)))
        out.append(raw)
    return b"".join(out)


def decode_plan(data: bytes) -> tuple[list[str], int]:
    """(addresses, port) of a listen plan; SnapshotError unless it is exactly one, with literal IPs."""
    if len(data) < 11 or data[:8] != PLAN_MAGIC:
        raise SnapshotError("it is not a listen plan of this version")
    (port,) = _U16.unpack_from(data, 8)
    count = data[10]
    i = 11
    hosts = []
    for _ in range(count):
        if i >= len(data) or i + 1 + data[i] > len(data):
            raise SnapshotError("it is cut short")
        raw = data[i + 1 : i + 1 + data[i]]
        i += 1 + data[i]
        try:
            host = raw.decode("ascii")
            _socket.inet_pton(_socket.AF_INET6 if ":" in host else _socket.AF_INET, host)
        except (UnicodeDecodeError, OSError, ValueError):
            raise SnapshotError(f"it names {raw!r}, not an IP address") from None
        hosts.append(host)
    if i != len(data) or port == 0 or not hosts:
        raise SnapshotError("it is malformed (trailing bytes, port 0 or no address)")
    return hosts, port


def write_files(workdir: str | os.PathLike[str], name: str, data: bytes) -> None:
    """Write one of the two files (temp + rename, 0600) the way every agent file is written."""
    from kuma_dp.fsutil import atomic_write  # tempfile: only the writer (the running component) pays for it

    atomic_write(os.path.join(workdir, name), data)


# -- which work dir -----------------------------------------------------------------------------------------


def _flag(args: Sequence[str], name: str, is_bool: bool = False) -> str | None:
    """The last value of `--name value` / `--name=value` (`--name` alone for a boolean), or None."""
    got = None
    for i, arg in enumerate(args):
        if arg == name:
            if is_bool:
                got = "true"
            elif i + 1 < len(args):
                got = args[i + 1]
        elif arg.startswith(name + "="):
            got = arg[len(name) + 1 :]
    return got


def _setting(
    args: Sequence[str],
    environ: Mapping[str, str],
    flag: str,
    env: str,
    keep_empty: bool,
    is_bool: bool = False,
) -> str | None:
    """A setting as kuma_dp.config resolves it: the variable wins over the flag when set (a set-but-empty one
    counts only for strings, kuma_dp/config/_env.py); None when neither is given."""
    if env in environ and (keep_empty or environ[env] != ""):
        return environ[env]
    return _flag(args, flag, is_bool)


def _go_bool(text: str) -> bool | None:
    """strconv.ParseBool, as kuma_dp.goparse.parse_bool; None when it would be refused."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def guess_plan(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[str, int, list[str] | None] | None:
    """(work dir, DNS port, KUMA_DNS_PROXY_ADDRESS list or None) as `kuma-dp run` will most likely resolve
    them, read from the settings table's flags and variables (kuma_dp/config/_model.py); None when the
    embedded DNS proxy will not run on its own port or the work dir is a fresh temporary one."""
    from kuma_dp.commands.pflag import run_command_at  # light: no configuration, no typing

    at = run_command_at(list(argv))
    if at is None:
        return None
    args = list(argv[at + 1 :])
    enabled = _setting(args, environ, "--dns-enabled", "KUMA_DNS_ENABLED", False, is_bool=True)
    if enabled is not None and _go_bool(enabled) is not True:
        return None
    # Kuma's CoreDNS mode (kuma_dp/config load_config): a port of its own and no DNS gate; not ours to guess.
    if "KUMA_DNS_CORE_DNS_PORT" in environ or any(
        a.startswith(("--dns-coredns-compat", "--dns-coredns-port")) for a in args
    ):
        return None
    port_text = _setting(args, environ, "--dns-proxy-port", "KUMA_DNS_PROXY_PORT", False)
    port_text = "15053" if port_text is None else port_text
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) <= 65535:
        return None
    work = _setting(args, environ, "--work-dir", "KUMA_DATAPLANE_RUNTIME_WORK_DIR", True) or ""
    if not work:  # the deprecated --config-dir is folded into the work dir (kuma_dp.config.post_process)
        work = _setting(args, environ, "--config-dir", "KUMA_DATAPLANE_RUNTIME_CONFIG_DIR", True) or ""
    if not work:
        return None  # a temporary dir made for this run: no table of a previous one
    addresses = None
    if "KUMA_DNS_PROXY_ADDRESS" in environ:
        addresses = [a.strip() for a in environ["KUMA_DNS_PROXY_ADDRESS"].split(",") if a.strip()]
    return work, int(port_text), addresses


# -- the responder ------------------------------------------------------------------------------------------


def socket_key(host: str, port: int) -> SocketKey:
    """(family, packed address, port): one listening address however its text is spelled."""
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    return family, _socket.inet_pton(family, host), port


def bind_plan(hosts: Iterable[str], port: int) -> tuple[list[_socket.socket], list[_socket.socket]]:
    """UDP and TCP listening sockets on each host, with `DNSServer._bind_all`'s options; OSError (all
    closed) if any cannot be bound."""
    udp: list[_socket.socket] = []
    tcp: list[_socket.socket] = []
    try:
        for host in hosts:
            family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
            usock = _socket.socket(family, _socket.SOCK_DGRAM)
            udp.append(usock)
            if family == _socket.AF_INET6:
                usock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
            try:
                usock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 4 << 20)
            except OSError:
                pass
            usock.bind((host, port))
            usock.setblocking(False)
            tsock = _socket.socket(family, _socket.SOCK_STREAM)
            tcp.append(tsock)
            tsock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            if family == _socket.AF_INET6:
                tsock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
            tsock.bind((host, port))
            tsock.listen(256)
            tsock.setblocking(False)
    except OSError:
        for s in udp + tcp:
            s.close()
        raise
    return udp, tcp


class EarlyResponder:
    """Table hits answered from a daemon thread on the plan's UDP sockets; the rest stashed for the server."""

    def __init__(
        self,
        workdir: str,
        answers: dict[bytes, HotAnswer],
        opt_do: bytes,
        hosts: Sequence[str],
        port: int,
        udp: list[_socket.socket],
        tcp: list[_socket.socket],
        fetched_at: float = 0.0,
    ) -> None:
        self.workdir = workdir
        self.answers = answers
        self.opt_do = opt_do
        self.hosts = list(hosts)
        self.port = port
        self.fetched_at = fetched_at
        self._udp = {socket_key(h, port): s for h, s in zip(hosts, udp, strict=True)}
        self._tcp = {socket_key(h, port): s for h, s in zip(hosts, tcp, strict=True)}
        #: (query, source address, `socket_key` of the socket it came on), in arrival order, for the server
        #: (a key, not a descriptor: a descriptor closed at the handover may be reused by the next socket).
        self.stash: list[tuple[bytes, object, SocketKey]] = []
        #: When each stash entry arrived (time.monotonic()), in the same order.
        self._stash_at: list[float] = []
        self.dropped = 0
        #: Kept queries answered SERVFAIL after STASH_WAIT (counted as SERVFAIL at the handover).
        self.expired = 0
        #: Table answers sent, per local kind (A, AAAA, other): kuma_dp_dns_requests_total{source=local}.
        self.answered = [0, 0, 0]
        self._rpipe, self._wpipe = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        #: Held while the thread runs: `stop()` waits on it (a `_thread` thread is never joined at exit,
        #: like a daemon thread: kuma-dp exiting before the handover closes the sockets with the process).
        self._running = _thread.allocate_lock()
        self._started = False
        self._stopped = False

    @classmethod
    def open(
        cls,
        workdir: str,
        port: int | None = None,
        addresses: Sequence[str] | None = None,
        now: float | None = None,
    ) -> EarlyResponder | None:
        """Read the trusted files in `workdir` and bind their plan (not serving yet). None when there is no
        snapshot, the plan is not the one asked for (`port`, `addresses`), or a socket cannot be bound.
        FileRefused or SnapshotError when a file exists but is not to be trusted."""
        hot_path = os.path.join(workdir, HOT_NAME)
        plan_path = os.path.join(workdir, PLAN_NAME)
        try:
            raw_plan = read_checked(plan_path, True, 4096)
            raw_hot = read_checked(hot_path, True, MAX_FILE_BYTES)
        except FileNotFoundError:
            return None
        hosts, plan_port = decode_plan(raw_plan)
        answers, fetched_at, opt_do = decode_snapshot(raw_hot)
        if fetched_at > (_now() if now is None else now) + FUTURE_SKEW:
            raise SnapshotError("its fetch time is in the future: not written by this host's clock")
        if port is not None and port != plan_port:
            return None
        if addresses is not None and sorted(set(addresses)) != sorted(set(hosts)):
            return None
        try:
            udp, tcp = bind_plan(hosts, plan_port)
        except OSError:
            return None  # in use or gone: the component reports it as it always has
        return cls(workdir, answers, opt_do, hosts, plan_port, udp, tcp, fetched_at)

    # -- serving (the thread) ---------------------------------------------------------------------------

    def answer(self, data: bytes) -> bytes | None:
        """`DNSServer._hot` for table hits, byte for byte (kuma_dns/server.py): the same accepted shapes,
        the same flags (QR, AA, RA; RD and CD copied), the answer's counts and tail, DO copied."""
        if len(data) < 17 or data[2] & 0xFE or data[4:10] != _QUESTION_ONLY:
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
        ans = self.answers.get(data[12:qend].lower())
        if ans is None:
            return None
        counts, tail, counts_edns, fast, kind = ans
        flags = bytes((0x84 | (data[2] & 0x01), 0x80 | (data[3] & 0x10)))
        if edns:
            if fast is None:
                return None
            if data[qend + 7] & 0x80:  # DO: RFC 3225 §3 has the response copy it
                fast = fast[: -len(self.opt_do)] + self.opt_do
            resp = b"".join((data[0:2], flags, counts_edns, data[12:qend], fast))
        else:
            if tail is None:
                return None
            resp = b"".join((data[0:2], flags, counts, data[12:qend], tail))
        self.answered[kind] += 1
        return resp

    def receive(self, data: bytes, addr: object, key: SocketKey, now: float = 0.0) -> bytes | None:
        """One datagram: the reply to send, or None once it is stashed (or dropped past STASH_MAX); `now`
        (time.monotonic()) is when it arrived."""
        resp = self.answer(data)
        if resp is None:
            if len(self.stash) < STASH_MAX:
                self.stash.append((data, addr, key))
                self._stash_at.append(now)
            else:
                self.dropped += 1
        return resp

    def expire(self, now: float) -> list[tuple[bytes, object, SocketKey]]:
        """Take the kept queries older than STASH_WAIT: (SERVFAIL reply, address, socket key) for each that
        is a well-formed query with one question; the others are dropped and counted."""
        n = 0
        while n < len(self._stash_at) and now - self._stash_at[n] >= STASH_WAIT:
            n += 1
        if not n:
            return []
        old = self.stash[:n]
        del self.stash[:n]
        del self._stash_at[:n]
        out = []
        for data, addr, key in old:
            reply = servfail(data)
            if reply is None:
                self.dropped += 1
            else:
                self.expired += 1
                out.append((reply, addr, key))
        return out

    def start(self) -> None:
        self._running.acquire()
        self._started = True
        try:
            _thread.start_new_thread(self._serve, ())
        except BaseException:
            self._running.release()
            raise

    def _serve(self) -> None:
        try:
            self._serve_until_stopped()
        finally:
            self._running.release()

    def _serve_until_stopped(self) -> None:
        poller = select.poll()
        socks = {s.fileno(): (s, k) for k, s in self._udp.items()}
        for fd in socks:
            poller.register(fd, select.POLLIN)
        poller.register(self._rpipe, select.POLLIN)
        while True:
            try:
                # While queries wait, wake up to fail the oldest after STASH_WAIT (see there).
                events = poller.poll(int(STASH_WAIT * 250) if self._stash_at else None)
            except InterruptedError:
                continue
            if self._stash_at:
                for reply, addr, key in self.expire(_monotonic()):
                    try:
                        self._udp[key].sendto(reply, addr)
                    except (KeyError, OSError):
                        pass
            for fd, _ in events:
                if fd == self._rpipe:
                    return  # what is still queued stays in the socket buffer for the server's reader
                sock, key = socks[fd]
                for _ in range(BATCH):
                    try:
                        data, addr = sock.recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        continue  # ICMP errors queued for earlier replies
                    resp = self.receive(data, addr, key, _monotonic())
                    if resp is not None:
                        try:
                            sock.sendto(resp, addr)
                        except OSError:
                            pass  # full buffer or client gone: UDP may drop

    # -- the handover ------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the thread (it finishes the datagram in hand); the sockets stay open for `adopt`."""
        if self._stopped:
            return
        self._stopped = True
        try:
            os.write(self._wpipe, b"x")
        except OSError:
            pass
        if self._started:
            self._running.acquire()  # the thread has returned
            self._running.release()
        os.close(self._rpipe)
        os.close(self._wpipe)

    def adopt(self, host: str, port: int, tcp: bool) -> socket.socket | None:
        """The early socket for (host, port, transport) as a `socket.socket`, now the caller's (same
        descriptor); None when there is none. Only after `stop()`: two readers on one socket would split
        its datagrams."""
        if not self._stopped:
            raise RuntimeError("adopt() before stop()")
        try:
            key = socket_key(host, port)
        except (OSError, ValueError):
            return None
        raw = (self._tcp if tcp else self._udp).pop(key, None)
        if raw is None:
            return None
        import socket  # the server has loaded it long since

        return socket.socket(raw.family, raw.type, raw.proto, fileno=raw.detach())

    def keep_only(self, hosts: Iterable[str], port: int) -> None:
        """Close the sockets the server's own plan (`hosts` on `port`) does not have, before it binds: one on
        127.0.0.1 would stand in the way of its 0.0.0.0 on the same port."""
        keep = set()
        for host in hosts:
            try:
                keep.add(socket_key(host, port))
            except (OSError, ValueError):
                continue
        for table in (self._udp, self._tcp):
            for key in [k for k in table if k not in keep]:
                table.pop(key).close()

    def close(self) -> None:
        """Stop, and close every socket nobody adopted (the server's plan differs from the last one)."""
        self.stop()
        for s in (*self._udp.values(), *self._tcp.values()):
            s.close()
        self._udp.clear()
        self._tcp.clear()

    @property
    def total_answered(self) -> int:
        return sum(self.answered)


def _now() -> float:
    import time  # a builtin module: free

    return time.time()


def _monotonic() -> float:
    import time

    return time.monotonic()


def servfail(query: bytes) -> bytes | None:
    """SERVFAIL for a query with exactly one question (its ID, opcode, RD and CD kept, RA set, the question
    echoed, no EDNS), or None when it is not one: a response, a truncated or compressed question."""
    if len(query) < 17 or query[2] & 0x80 or query[4:6] != b"\x00\x01":
        return None
    i = 12
    while True:  # the question's name: labels up to the root, no compression in a query's question
        if i >= len(query):
            return None
        length = query[i]
        if length == 0:
            break
        if length & 0xC0:
            return None
        i += 1 + length
    qend = i + 5
    if qend > len(query):
        return None
    flags = bytes((0x80 | (query[2] & 0x79), 0x80 | (query[3] & 0x10) | 2))
    return query[0:2] + flags + b"\x00\x01\x00\x00\x00\x00\x00\x00" + query[12:qend]


def start_early(argv: Sequence[str], environ: Mapping[str, str]) -> EarlyResponder | None:
    """Start the early responder for a `kuma-dp run` command line, if its work dir holds a trusted snapshot
    and plan; the running responder is also kept for `take()`. Never raises: any failure means no early
    responder, and the start-up continues exactly as without one."""
    global _handle, refused
    try:
        guess = guess_plan(argv, environ)
        if guess is None:
            return None
        work, port, addresses = guess
        try:
            r = EarlyResponder.open(work, port, addresses)
        except (FileRefused, SnapshotError, OSError) as exc:
            refused = f"{work}: {exc}"
            return None
        if r is None:
            return None
        r.start()
    except Exception:  # an early optimisation must never stop the agent from starting
        return None
    _handle = r
    return r


def take() -> EarlyResponder | None:
    """The running responder, handed to exactly one caller (the DNS component), or None."""
    global _handle
    r, _handle = _handle, None
    return r


def discard() -> None:
    """No DNS component will take the responder over (disabled by the configuration): stop and close it."""
    r = take()
    if r is not None:
        r.close()
