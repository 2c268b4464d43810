"""Just enough HTTP/1.1 for the agent's own plumbing: one client and one keep-alive server.

The client serves Envoy's admin API (`kuma_dp.envoy.AdminClient`, `kuma-dp wait`), the dynamic-config
poller and the metrics hijacker's scrapes; the server is the hijacker's unix socket. The agent already runs
one asyncio loop, and an HTTP library (httpx: ~75 ms of imports and several MiB of RSS, bench/startup.py)
would cost that in every sidecar for a few small requests a second.

The client opens a fresh connection per request and sends `Connection: close` (no pooling: nothing here is
hot enough to need it); bodies are read whole (Content-Length, chunked, or to EOF) within MAX_BODY_BYTES.
`parse_response` runs the same parser over a response held in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import ssl as _ssl

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024


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


async def _read_body(reader: _Reader, headers: Mapping[str, str], until_eof: bool) -> bytes:
    """The message body after the head: chunked, Content-Length, else (responses only) up to EOF."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields, up to the empty line
                return bytes(out)
            if len(out) + size > MAX_BODY_BYTES:
                raise HttpError("body too large")
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_BODY_BYTES:
            raise HttpError("body too large")
        return await reader.readexactly(length)
    if not until_eof:
        return b""
    body = await reader.read(-1)  # Connection: close and no length: the body ends at EOF
    if len(body) > MAX_BODY_BYTES:
        raise HttpError("body too large")
    return body


async def read_response(reader: _Reader, *, head_only: bool = False) -> Response:
    """Read one response; `head_only` for answers that carry no body (to HEAD; 1xx, 204, 304 always)."""
    try:
        head = await _read_head(reader)
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP response: {head[0][:80]!r}")
        status = int(parts[1])
        headers = _parse_headers(head[1:])
        no_body = head_only or status < 200 or status in (204, 304)
        body = b"" if no_body else await _read_body(reader, headers, until_eof=True)
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
) -> Response:
    """One request on a fresh connection to `host`:`port` (from `source_address` if set) or `unix_path`.

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

    async def exchange() -> Response:
        reader, writer = await _open(host, port, unix_path, source_address, ssl)
        try:
            writer.write(data)
            await writer.drain()
            return await read_response(reader, head_only=method == "HEAD")
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
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
) -> None:
    """Serve GET/HEAD requests on one connection until the peer closes or asks to close."""
    try:
        while True:
            try:
                head = await _read_head(reader)
            except (asyncio.IncompleteReadError, HttpError, ConnectionError):
                return
            parts = head[0].split(" ")
            headers = _parse_headers(head[1:])
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                status, resp_headers, body = 400, {"content-type": "text/plain"}, b"bad request\n"
                keep_alive = False
                body_out = body
            else:
                request = Request(parts[0].upper(), parts[1], headers)
                try:
                    await _read_body(reader, headers, until_eof=False)
                except (HttpError, ValueError):
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
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()
        with contextlib.suppress(OSError, RuntimeError):
            await writer.wait_closed()
