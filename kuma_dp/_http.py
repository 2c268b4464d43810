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
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

# The wire format (types, limits, the response parser) is kuma_dp._httpwire's, which imports no asyncio so
# that `kuma-dp run` can fetch its bootstrap before loading the event loop; re-exported here.
from kuma_dp._httpwire import (
    _READ_CHUNK as _READ_CHUNK,
)
from kuma_dp._httpwire import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    MAX_REQUEST_BODY_BYTES,
    SERVER_IDLE_TIMEOUT,
    HttpError,
    Request,
    Response,
    _parse_headers,
    _read_body,
    _read_head,
    encode_request,
    read_response,
)
from kuma_dp._httpwire import (
    BodyTooLarge as BodyTooLarge,
)
from kuma_dp._httpwire import (
    _Buffer as _Buffer,
)
from kuma_dp._httpwire import (
    _Reader as _Reader,
)
from kuma_dp._httpwire import (
    _run_sync as _run_sync,
)
from kuma_dp._httpwire import (
    host_header as host_header,
)
from kuma_dp._httpwire import (
    parse_response as parse_response,
)

if TYPE_CHECKING:
    import ssl as _ssl

log = logging.getLogger(__name__)


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
    data, peer = encode_request(
        method, target, host=host, port=port, unix_path=unix_path, headers=headers, body=body
    )

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
