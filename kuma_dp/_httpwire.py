"""HTTP/1.1 on the wire, without asyncio: the types, the limits, the response parser and one blocking request.

kuma_dp._http (the agent's asyncio client and server) builds on this. It stands apart so that `kuma-dp run`
can POST its bootstrap request and parse the answer before the event loop is even imported: asyncio costs
tens of milliseconds of imports that are better spent after Envoy's exec, beside Envoy's own start
(kuma_dp/launch.py). The parser is written against three reader calls (`readuntil`, `readexactly`, `read`)
that asyncio's StreamReader, the in-memory `_Buffer` and the blocking `_SocketReader` all provide; the two
latter never suspend, so `_run_sync` drives the same coroutine to its end without a loop. Every body is
checked against its limit while it streams in, whichever reader feeds it.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import ssl as _ssl

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
    """The three asyncio.StreamReader calls the parser needs (also met by `_Buffer` and `_SocketReader`).

    Their end-of-data error is an EOFError (asyncio's IncompleteReadError is one); a `readuntil` that finds
    no separator within the reader's limit raises HeadTooLarge (asyncio's StreamReader: LimitOverrunError).
    """

    async def readuntil(self, separator: bytes = ...) -> bytes: ...

    async def readexactly(self, n: int) -> bytes: ...

    async def read(self, n: int = ...) -> bytes: ...


# ------------------------------------------------------------------------------------------------ parsing


class HeadTooLarge(Exception):
    """No `readuntil` separator within the reader's limit (the blocking reader's LimitOverrunError)."""


class IncompleteRead(EOFError):
    """The data ended before the separator or the byte count asked for (asyncio's IncompleteReadError)."""

    def __init__(self, partial: bytes, expected: int | None) -> None:
        wanted = "more" if expected is None else str(expected)
        super().__init__(f"{len(partial)} bytes read, {wanted} expected")
        self.partial = partial
        self.expected = expected


class _NeverRaised(Exception):
    pass


def _limit_errors() -> tuple[type[BaseException], ...]:
    """What a reader raises for a head over its limit: ours, and asyncio's when asyncio is loaded (a
    StreamReader cannot exist otherwise, so looking it up in sys.modules is exact and imports nothing)."""
    asyncio = sys.modules.get("asyncio")
    return (HeadTooLarge, asyncio.LimitOverrunError if asyncio is not None else _NeverRaised)


async def _read_head(reader: _Reader) -> list[str]:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except _limit_errors() as exc:
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
    except EOFError as exc:  # IncompleteRead, or asyncio's IncompleteReadError
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
            raise IncompleteRead(self._take(len(self._data)), None)
        return self._take(end + len(separator))

    async def readexactly(self, n: int) -> bytes:
        out = self._take(self._pos + n)
        if len(out) < n:
            raise IncompleteRead(out, n)
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


def encode_request(
    method: str,
    target: str,
    *,
    host: str | None,
    port: int | None,
    unix_path: str | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> tuple[bytes, str]:
    """The request bytes (`Connection: close`) and the peer's name for messages.

    `Host` defaults to `host:port` (`localhost` on a unix socket); a `Host` in `headers` replaces it.
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
    return data, peer


class _SocketReader:
    """The reader calls over a blocking socket, all within one deadline (time.monotonic()).

    Buffered like a StreamReader with the same head limit; every wait is bounded by what is left of the
    deadline (TimeoutError when it passes), so a peer that trickles bytes cannot hold us past it.
    """

    def __init__(self, sock: socket.socket, deadline: float, limit: int = MAX_HEADER_BYTES) -> None:
        self._sock = sock
        self._deadline = deadline
        self._limit = limit
        self._buf = bytearray()
        self._eof = False

    def _fill(self) -> bool:
        """Read more into the buffer; False at EOF."""
        if self._eof:
            return False
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(left)
        try:
            chunk = self._sock.recv(_READ_CHUNK)
        except TimeoutError:
            raise TimeoutError("deadline passed") from None
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        start = 0
        while True:
            at = self._buf.find(separator, start)
            if at >= 0:
                return self._take(at + len(separator))
            if len(self._buf) > self._limit:
                raise HeadTooLarge(f"separator not found within {self._limit} bytes")
            start = max(0, len(self._buf) - len(separator) + 1)
            if not self._fill():
                raise IncompleteRead(self._take(len(self._buf)), None)

    async def readexactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._fill():
                raise IncompleteRead(self._take(len(self._buf)), n)
        return self._take(n)

    async def read(self, n: int = -1) -> bytes:
        if not self._buf:
            self._fill()
        return self._take(len(self._buf) if n < 0 else n)


def _blocking_exchange(
    data: bytes, peer: str, host: str, port: int, ssl: _ssl.SSLContext | None, deadline: float, max_body: int
) -> Response:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    try:
        raw = socket.create_connection((host, port), timeout=left)
    except ConnectionRefusedError as exc:
        raise HttpError("connection refused", exc.errno) from exc
    except TimeoutError:
        raise TimeoutError("deadline passed") from None
    except OSError as exc:
        raise HttpError(exc.strerror or str(exc), exc.errno) from exc
    sock: socket.socket = raw
    try:
        if ssl is not None:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock = ssl.wrap_socket(raw, server_hostname=host)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(data)
        reader = _SocketReader(sock, deadline)
        return _run_sync(read_response(reader, limit=max_body, peer=peer))
    except TimeoutError:
        raise TimeoutError("deadline passed") from None
    finally:
        sock.close()


def blocking_request(
    method: str,
    target: str,
    *,
    host: str,
    port: int,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    timeout: float,
    ssl: _ssl.SSLContext | None = None,
    max_body: int = MAX_BODY_BYTES,
) -> Response:
    """One request on a fresh TCP (or TLS) connection, blocking, everything within `timeout` seconds.

    The same request bytes, parser and limits as `kuma_dp._http.request`, and the same errors: HttpError
    naming the cause (BodyTooLarge for a body over `max_body`), or "no answer within <timeout>s". The TLS
    and socket errors keep their own exception as the HttpError's cause, as the asyncio client's do.
    """
    data, peer = encode_request(method, target, host=host, port=port, headers=headers, body=body)
    try:
        return _blocking_exchange(data, peer, host, port, ssl, time.monotonic() + timeout, max_body)
    except TimeoutError as exc:
        raise HttpError(f"no answer within {timeout:g}s") from exc
    except HttpError:
        raise
    except OSError as exc:  # TLS handshake failures (ssl.SSLError), resets during the exchange
        raise HttpError(exc.strerror or str(exc), exc.errno) from exc
