"""Just enough HTTP/1.1 for the hijacker: a GET client (TCP or unix socket, chosen source address) and a
keep-alive server over a unix socket.

The agent already runs one asyncio loop; an HTTP library per side component would cost start-up time and
memory in every sidecar for a handful of GETs. Bodies are read fully (metrics pages are small, and the server
answers with Content-Length so Envoy's cluster can reuse the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger("kuma-dp.http")

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024


class HttpError(RuntimeError):
    """Connect, read or protocol failure talking to an endpoint (`errno` set for socket errors)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


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


async def _read_head(reader: asyncio.StreamReader) -> list[str]:
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


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str], until_eof: bool) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # the empty trailer section
                return bytes(out)
            if len(out) + size > MAX_BODY_BYTES:
                raise HttpError("response body too large")
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_BODY_BYTES:
            raise HttpError("response body too large")
        return await reader.readexactly(length)
    if not until_eof:
        return b""
    body = await reader.read(-1)  # Connection: close and no length: the body ends at EOF
    if len(body) > MAX_BODY_BYTES:
        raise HttpError("response body too large")
    return body


async def get(
    *,
    target: str,
    host: str | None = None,
    port: int | None = None,
    unix_path: str | None = None,
    headers: Mapping[str, str] | None = None,
    source_address: str | None = None,
) -> Response:
    """One GET on a fresh connection (no pooling: a scrape every few seconds does not need it).

    Callers bound the time with asyncio.timeout(); cancellation closes the socket.
    """
    try:
        if unix_path is not None:
            reader, writer = await asyncio.open_unix_connection(unix_path, limit=MAX_HEADER_BYTES)
            host_header = "localhost"
        else:
            assert host is not None and port is not None
            local = (source_address, 0) if source_address else None
            reader, writer = await asyncio.open_connection(
                host, port, local_addr=local, limit=MAX_HEADER_BYTES
            )
            host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    except OSError as exc:
        raise HttpError(f"connect: {exc.strerror or exc}", exc.errno) from exc
    try:
        lines = [f"GET {target} HTTP/1.1", f"Host: {host_header}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        head = await _read_head(reader)
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP response: {head[0][:80]!r}")
        resp_headers = _parse_headers(head[1:])
        body = await _read_body(reader, resp_headers, until_eof=True)
        return Response(int(parts[1]), resp_headers, body)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        raise HttpError(f"read: {exc}") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError, RuntimeError):
            await writer.wait_closed()


Handler = Callable[[Request], Awaitable[tuple[int, dict[str, str], bytes]]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Error"}


async def serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
) -> None:
    """Serve requests on one connection until the peer closes or asks to close."""
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
