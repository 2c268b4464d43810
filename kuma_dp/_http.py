"""Just enough HTTP/1.1 for the agent's own plumbing: one client and one keep-alive server.

The client serves Envoy's admin API (`kuma_dp.envoy.AdminClient`, `kuma-dp wait`), the dynamic-config
poller and the metrics hijacker's scrapes; the server is the hijacker's unix socket. The agent already runs
one asyncio loop, and an HTTP library (httpx: ~75 ms of imports and several MiB of RSS, bench/startup.py)
would cost that in every sidecar for a few small requests a second.

The client opens a fresh connection per request and sends `Connection: close` (no pooling: nothing here is
hot enough to need it); bodies are read whole (Content-Length, chunked, or to EOF) within MAX_BODY_BYTES
(or a request's `max_body`), checked while they stream, so no peer can grow our memory past it.
`parse_response` runs the same parser over a response held in memory.

`AcceptGuard` is the accept loop of the agent's own servers (`/ready`): a connection cap, idle connections
shed first, and a back-off with one log line when the process runs out of descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import ssl as _ssl

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
#: What the server side accepts as a request body: it serves GET/HEAD only, a body is never needed.
MAX_REQUEST_BODY_BYTES = 64 * 1024
#: The server closes a connection that sends no complete request head for this long (idle keep-alive
#: included), as Envoy's `idle_timeout`/`request_headers_timeout` do.
SERVER_IDLE_TIMEOUT = 60.0
_READ_CHUNK = 64 * 1024


class HttpError(RuntimeError):
    """Connect, read, timeout or protocol failure talking to an endpoint (`errno` set for socket errors)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


class _Reader(Protocol):
    """The three asyncio.StreamReader calls the parser needs (also met by the in-memory `_Buffer`)."""

    async def readuntil(self, separator: bytes = ...) -> bytes: ...

    async def readexactly(self, n: int) -> bytes: ...

    async def read(self, n: int = ...) -> bytes: ...


# ------------------------------------------------------------------------------------------------ parsing


async def _read_head(reader: _Reader) -> list[str]:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise HttpError("HTTP header section too large") from exc
    if len(raw) > MAX_HEADER_BYTES:
        raise HttpError("HTTP header section too large")
    return raw.decode("latin-1").rstrip("\r\n").split("\r\n")


def _parse_headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


class BodyTooLarge(HttpError):
    """A message body over the reader's limit, detected while it streams in (never after reading it all)."""


def _too_large(peer: str, limit: int, how: str) -> BodyTooLarge:
    return BodyTooLarge(
        f"the body from {peer or 'the peer'} exceeds the {_size(limit)} limit ({how}); refused it without "
        "reading further"
    )


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 and n % (1024 * 1024) == 0 else f"{n} bytes"


async def _read_body(
    reader: _Reader,
    headers: Mapping[str, str],
    until_eof: bool,
    *,
    limit: int = MAX_BODY_BYTES,
    peer: str = "",
) -> bytes:
    """The message body after the head: chunked, Content-Length, else (responses only) up to EOF.

    Every form is checked against `limit` before the bytes are read: a declared length or chunk size up
    front, a body that runs to EOF chunk by chunk, so a peer that streams without end costs at most `limit`
    bytes of memory (Envoy's `max_request_bytes` buffer filter bounds a body the same way).
    """
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields, up to the empty line
                return bytes(out)
            if len(out) + size > limit:
                raise _too_large(peer, limit, "chunked")
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length < 0:
            raise ValueError(f"negative Content-Length {length}")
        if length > limit:
            raise _too_large(peer, limit, f"Content-Length {length}")
        return await reader.readexactly(length)
    if not until_eof:
        return b""
    # Connection: close and no length: the body ends at EOF. Read in pieces and stop at the limit.
    chunks: list[bytes] = []
    total = 0
    while chunk := await reader.read(_READ_CHUNK):
        total += len(chunk)
        if total > limit:
            raise _too_large(peer, limit, "no Content-Length, still streaming")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_response(
    reader: _Reader, *, head_only: bool = False, limit: int = MAX_BODY_BYTES, peer: str = ""
) -> Response:
    """Read one response; `head_only` for answers that carry no body (to HEAD; 1xx, 204, 304 always).

    A body over `limit` bytes raises BodyTooLarge naming `peer` and the limit."""
    try:
        head = await _read_head(reader)
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP response: {head[0][:80]!r}")
        status = int(parts[1])
        headers = _parse_headers(head[1:])
        no_body = head_only or status < 200 or status in (204, 304)
        body = b"" if no_body else await _read_body(reader, headers, True, limit=limit, peer=peer)
    except asyncio.IncompleteReadError as exc:
        raise HttpError("incomplete HTTP response") from exc
    except ValueError as exc:  # a bad chunk size or Content-Length
        raise HttpError(f"malformed HTTP response: {exc}") from exc
    return Response(status, headers, body)


class _Buffer:
    """A whole message in memory behind the `_Reader` calls; nothing in it ever waits."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, end: int) -> bytes:
        out = self._data[self._pos : end]
        self._pos += len(out)
        return out

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        end = self._data.find(separator, self._pos)
        if end < 0:
            raise asyncio.IncompleteReadError(self._take(len(self._data)), None)
        return self._take(end + len(separator))

    async def readexactly(self, n: int) -> bytes:
        out = self._take(self._pos + n)
        if len(out) < n:
            raise asyncio.IncompleteReadError(out, n)
        return out

    async def read(self, n: int = -1) -> bytes:
        return self._take(len(self._data) if n < 0 else self._pos + n)


def _run_sync(coro: Coroutine[Any, Any, Response]) -> Response:
    try:
        coro.send(None)
    except StopIteration as done:
        result: Response = done.value
        return result
    coro.close()
    raise RuntimeError("the in-memory reader waited")  # cannot happen: _Buffer never suspends


def parse_response(raw: bytes) -> Response:
    """Parse a complete response (head and body) held in memory; HttpError when it is not HTTP."""
    return _run_sync(read_response(_Buffer(raw)))


# ------------------------------------------------------------------------------------------------- client


def host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _open(
    host: str | None,
    port: int | None,
    unix_path: str | None,
    source_address: str | None,
    ssl: _ssl.SSLContext | None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        if unix_path is not None:
            return await asyncio.open_unix_connection(unix_path, limit=MAX_HEADER_BYTES)
        if host is None or port is None:
            raise ValueError("an HTTP request needs host and port, or unix_path")
        local = (source_address, 0) if source_address else None
        sni = host if ssl is not None else None
        return await asyncio.open_connection(
            host, port, local_addr=local, limit=MAX_HEADER_BYTES, ssl=ssl, server_hostname=sni
        )
    except ConnectionRefusedError as exc:
        raise HttpError("connection refused", exc.errno) from exc
    except OSError as exc:
        raise HttpError(exc.strerror or str(exc), exc.errno) from exc


async def request(
    method: str,
    target: str,
    *,
    host: str | None = None,
    port: int | None = None,
    unix_path: str | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    source_address: str | None = None,
    timeout: float | None = None,
    ssl: _ssl.SSLContext | None = None,
    max_body: int = MAX_BODY_BYTES,
) -> Response:
    """One request on a fresh connection to `host`:`port` (from `source_address` if set) or `unix_path`.

    A response body over `max_body` bytes is refused while it streams (BodyTooLarge, naming the peer and
    the limit), so a peer cannot grow the agent's memory beyond it.

    `Host` defaults to `host:port` (`localhost` on a unix socket); a `Host` in `headers` replaces it.
    Every failure, `timeout` (None: the caller bounds the time, cancellation closes the socket) included,
    is an HttpError whose message names the cause ("connection refused", "no answer within 1s", ...).
    """
    extra = dict(headers or {})
    host_value = next((extra.pop(k) for k in list(extra) if k.lower() == "host"), None)
    if host_value is None:
        host_value = "localhost" if unix_path is not None else host_header(host or "", port or 0)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_value}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    if body or method not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    peer = f"unix:{unix_path}" if unix_path is not None else host_header(host or "", port or 0)

    async def exchange() -> Response:
        reader, writer = await _open(host, port, unix_path, source_address, ssl)
        try:
            writer.write(data)
            await writer.drain()
            return await read_response(reader, head_only=method == "HEAD", limit=max_body, peer=peer)
        except OSError as exc:
            raise HttpError(exc.strerror or str(exc), exc.errno) from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError, RuntimeError):
                await writer.wait_closed()

    try:
        async with asyncio.timeout(timeout):
            return await exchange()
    except TimeoutError as exc:
        raise HttpError(f"no answer within {timeout:g}s") from exc


#: `request("GET", target=..., ...)`.
get = functools.partial(request, "GET")


# ------------------------------------------------------------------------------------------------- server

Handler = Callable[[Request], Awaitable[tuple[int, dict[str, str], bytes]]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Error"}


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Handler,
    conn: Connection | None = None,
    *,
    idle_timeout: float = SERVER_IDLE_TIMEOUT,
) -> None:
    """Serve GET/HEAD requests on one connection until the peer closes or asks to close.

    A peer that sends no complete request head for `idle_timeout` seconds is disconnected, and a request
    body is refused above MAX_REQUEST_BODY_BYTES: an idle or slow peer holds no descriptor and no memory for
    long. `conn` (from `AcceptGuard`) is marked busy while a request is served, so that the guard sheds
    only idle connections.
    """
    try:
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    head = await _read_head(reader)
            except (asyncio.IncompleteReadError, HttpError, ConnectionError, TimeoutError):
                return
            if conn is not None:
                conn.busy()
            parts = head[0].split(" ")
            headers = _parse_headers(head[1:])
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                status, resp_headers, body = 400, {"content-type": "text/plain"}, b"bad request\n"
                keep_alive = False
                body_out = body
            else:
                request = Request(parts[0].upper(), parts[1], headers)
                try:
                    async with asyncio.timeout(idle_timeout):
                        await _read_body(reader, headers, False, limit=MAX_REQUEST_BODY_BYTES)
                except (HttpError, ValueError, TimeoutError):
                    return
                keep_alive = parts[2] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                if request.method not in ("GET", "HEAD"):
                    status, resp_headers, body = 405, {"content-type": "text/plain"}, b"method not allowed\n"
                else:
                    try:
                        status, resp_headers, body = await handler(request)
                    except Exception:
                        log.exception("request handler failed", extra={"target": request.target})
                        status, resp_headers, body = 500, {"content-type": "text/plain"}, b"internal error\n"
                body_out = b"" if request.method == "HEAD" else body
            out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
            out += [f"{k}: {v}" for k, v in resp_headers.items()]
            out += [
                f"Content-Length: {len(body)}",
                "Connection: " + ("keep-alive" if keep_alive else "close"),
            ]
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body_out)
            await writer.drain()
            if not keep_alive:
                return
            if conn is not None:
                conn.idle()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()
        with contextlib.suppress(OSError, RuntimeError):
            await writer.wait_closed()


# ------------------------------------------------------------------------------------------- accept loop

#: accept() errors that mean "no descriptor or buffer for a new connection now": back off, shed idle
#: connections, never spin or log a traceback per attempt.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() errors about the one connection being accepted (already gone): skip it.
_TRANSIENT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN, errno.EPERM})
_BACKOFF_FIRST, _BACKOFF_MAX = 0.01, 1.0


class Connection:
    """One accepted connection as `AcceptGuard` sees it: idle (may be shed) until the handler calls
    `busy()`, and again after `idle()`."""

    __slots__ = ("is_idle", "since", "task")

    def __init__(self) -> None:
        self.is_idle = True
        self.since = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    def busy(self) -> None:
        self.is_idle = False

    def idle(self) -> None:
        self.is_idle = True
        self.since = time.monotonic()


ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Connection], Awaitable[None]]


class AcceptGuard:
    """An accept loop that holds under descriptor exhaustion and connection floods.

    asyncio's own accept loop logs a traceback and pauses 1 s on every EMFILE, and has no connection cap, so
    a local peer holding idle connections keeps `/ready` (or any server) from answering. Here, as nginx's
    `worker_connections` and Envoy's overload manager do: at most `max_connections` at once; a new one over
    the cap displaces the oldest idle one (a connection that has not sent its request yet), else it is
    closed at once; when accept() fails for lack of descriptors, idle connections are shed and accepting
    backs off (10 ms doubling to 1 s). Each kind of event is one log line, at most every `log_interval`
    seconds, with a count; `shed`, `refused` and `exhausted` count them for tests, and `on_reject(reason)`
    (`shed_idle`, `full`, `fd_exhausted`) hears each one, for the agent's `kuma_dp_connections_rejected`.
    """

    def __init__(
        self,
        name: str,
        *,
        max_connections: int = 128,
        log_interval: float = 30.0,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.on_reject = on_reject
        self.max_connections = max(1, max_connections)
        self.log_interval = log_interval
        self.connections: set[Connection] = set()
        self.shed = 0
        self.refused = 0
        self.exhausted = 0
        self._last_log: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self._ssl: _ssl.SSLContext | None = None
        self._handshake_timeout = 10.0
        self._tasks: set[asyncio.Task[None]] = set()

    def _report(self, kind: str, message: str) -> None:
        now = time.monotonic()
        last = self._last_log.get(kind)
        if last is not None and now - last < self.log_interval:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return
        more = self._unlogged.pop(kind, 0)
        self._last_log[kind] = now
        suffix = f" ({more} more since the last report)" if more else ""
        log.warning("%s: %s%s", self.name, message, suffix)

    def _shed_idle(self, n: int) -> int:
        idle = [c for c in self.connections if c.is_idle and c.task is not None]
        idle.sort(key=lambda c: c.since)
        for c in idle[:n]:
            assert c.task is not None
            c.task.cancel()  # its descriptor is closed as the task unwinds, on the loop's next turn
            self.connections.discard(c)  # no longer counts against the cap, never picked twice
        self.shed += min(n, len(idle))
        if self.on_reject is not None:
            for _ in range(min(n, len(idle))):
                self.on_reject("shed_idle")
        return min(n, len(idle))

    async def serve(
        self,
        sock: socket.socket,
        handler: ConnectionHandler,
        *,
        limit: int = MAX_HEADER_BYTES,
        ssl: _ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        """Accept on the listening (non-blocking) `sock` and run `handler(reader, writer, conn)` per
        connection until cancelled; then every connection is cancelled and awaited. With `ssl`, the TLS
        handshake (at most `handshake_timeout` s) happens in the connection's task, never in the loop."""
        self._ssl = ssl
        self._handshake_timeout = handshake_timeout
        loop = asyncio.get_running_loop()
        backoff = 0.0
        try:
            while True:
                try:
                    client, _ = await loop.sock_accept(sock)
                except OSError as exc:
                    if exc.errno in _TRANSIENT:
                        continue
                    if exc.errno not in _EXHAUSTED:
                        raise
                    self.exhausted += 1
                    if self.on_reject is not None:
                        self.on_reject("fd_exhausted")
                    shed = self._shed_idle(max(1, len(self.connections) // 4))
                    backoff = min(max(backoff * 2, _BACKOFF_FIRST), _BACKOFF_MAX)
                    self._report(
                        "exhausted",
                        f"cannot accept connections: {exc.strerror} (open-file limit reached); closed "
                        f"{shed} idle connection(s) and pausing accepts up to {_BACKOFF_MAX:g}s; raise "
                        "the limit (LimitNOFILE, ulimit -n) if this is not an attack",
                    )
                    await asyncio.sleep(backoff)
                    continue
                backoff = 0.0
                if len(self.connections) >= self.max_connections:
                    if self._shed_idle(1):
                        self._report(
                            "shed", f"{self.max_connections} connections open; closed the longest idle one"
                        )
                    else:
                        client.close()
                        self.refused += 1
                        if self.on_reject is not None:
                            self.on_reject("full")
                        self._report(
                            "full", f"{self.max_connections} connections are busy; closed a new one at once"
                        )
                        continue
                conn = Connection()
                self.connections.add(conn)
                conn.task = asyncio.create_task(self._run(client, conn, handler, limit))
                self._tasks.add(conn.task)
                conn.task.add_done_callback(self._tasks.discard)
                # sock_accept returns without suspending while the backlog is full: yield, so the new
                # connection's handler (and shed ones' cleanup) run between accepts.
                await asyncio.sleep(0)
        finally:
            tasks = [t for t in self._tasks if not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(
        self, client: socket.socket, conn: Connection, handler: ConnectionHandler, limit: int
    ) -> None:
        try:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=limit)
            protocol = asyncio.StreamReaderProtocol(reader)
            try:
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol,
                    sock=client,
                    ssl=self._ssl,
                    ssl_handshake_timeout=self._handshake_timeout if self._ssl is not None else None,
                )
            except BaseException:
                client.close()
                raise
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            await handler(reader, writer, conn)
        except (OSError, asyncio.CancelledError, TimeoutError):
            pass  # a shed, reset or failed-handshake connection (ssl.SSLError is an OSError)
        finally:
            self.connections.discard(conn)
