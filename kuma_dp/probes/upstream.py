"""The probe proxy's side towards the application: the dialer, the TCP probe and the HTTP(S) probe, as
kumahq/kuma v2.14.3 `app/kuma-dp/pkg/dataplane/probes/probe_dialer_others.go`, `tcp.go` and `http.go`.

Every connection to the application leaves from 127.0.0.6 (`::6` for an IPv6 pod), the source address the
transparent proxy's rules let through (`-s 127.0.0.6/32 -o lo -j RETURN`), so the probe reaches the
application itself instead of being redirected into Envoy. `SO_LINGER` {on, 1 s} keeps probe sockets from
piling up in TIME-WAIT (kubernetes/kubernetes#89898).

The HTTP probe reproduces what Kuma's Go `http.Client` puts on the wire and how it decides: `GET` with the
kubelet's headers minus `X-Kuma-Probes-*`, `User-Agent: kuma-probe/<version>` when the kubelet sent none,
`Accept-Encoding: gzip` and `Connection: close` added as Go's transport adds them, up to 10 redirects
followed, at most 10 KiB of the body read (gzip decoded), the whole exchange under the probe's timeout.
One deliberate difference: the probe's Host override (`X-Kuma-Probes-Host`, from the probe's `Host` header)
is sent as the request's Host, as the kubelet sends it without a mesh. Kuma sets it as a header field, which
Go's client never writes (it takes Host from the URL: kubernetes/kubernetes#24288), so under Kuma an
application that routes on Host fails its probes only once meshed (kumahq/kuma#7632). Redirects use the
target URL's host, as Go's client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from kuma_dp.probes.wire import Headers, canonical_key, escape_path, parse_version

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)

#: Source addresses of probe connections (Kuma's `LocalAddrIPv4` / `LocalAddrIPv6`).
LOCAL_ADDR_V4 = "127.0.0.6"
LOCAL_ADDR_V6 = "::6"
#: Kuma's `maxRespBodyLength`: the most of an application's answer that is read.
MAX_BODY = 10 * 1024
#: Go's client follows at most 10 redirects (`defaultCheckRedirect`).
MAX_REDIRECTS = 10
#: Bound on an application's response head (Go allows 10 MiB; a probe answer needs a few hundred bytes).
MAX_RESPONSE_HEAD = 64 * 1024
#: Headers Go's client writes itself or never copies from `Request.Header` (`reqWriteExcludeHeader`).
_EXCLUDED = {"Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer"}
#: Dropped when a redirect leaves the original domain (Go's `shouldCopyHeaderOnRedirect`).
_SENSITIVE = {"Authorization", "Www-Authenticate", "Cookie", "Cookie2", "Proxy-Authorization"}
KUMA_PROBE_HEADER_PREFIX = "X-Kuma-Probes-"
#: The injector's copy of the probe's Host header (`pkg/plugins/runtime/k8s/probes/probe_converter.go`).
HOST_OVERRIDE = "X-Kuma-Probes-Host"


class ProbeError(Exception):
    """The application could not be probed (connect, TLS, protocol, timeout): the probe is UNHEALTHY."""


def is_ipv6(address: str) -> bool:
    """Kuma's `NewProber`: the pod is IPv6 when its address parses as an IPv6 (not IPv4-mapped) address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.version == 6 and ip.ipv4_mapped is None


def join_host_port(host: str, port: int) -> str:
    """Go's `net.JoinHostPort`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def dial(host: str, port: int, ipv6: bool) -> socket.socket:
    """Connect from 127.0.0.6 / ::6 (`createProbeDialer`). `host` may be a name (a redirect's Location):
    like Go's dialer with a local address, only addresses of the local address's family are tried, in order.
    """
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    loop = asyncio.get_running_loop()
    if not host:
        # Go dials the local system for an empty host (":8080").
        host = "::" if ipv6 else "0.0.0.0"
    try:
        infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ProbeError(f"dial tcp: lookup {host}: {exc.strerror}") from None
    last: OSError | None = None
    for _family, _type, _proto, _canon, addr in infos:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 1))
            sock.bind((LOCAL_ADDR_V6 if ipv6 else LOCAL_ADDR_V4, 0))
            await loop.sock_connect(sock, addr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    raise ProbeError(f"dial tcp {join_host_port(host, port)}: {last}")


async def probe_tcp(address: str, port: int, ipv6: bool) -> None:
    """`tcp.go`: healthy when a connection opens; raises ProbeError otherwise. The caller bounds the time."""
    sock = await dial(address, port, ipv6)
    sock.close()


# -- HTTP ----------------------------------------------------------------------------------------------


@dataclass
class HttpOutcome:
    status: int
    body: bytes


async def probe_http(
    *,
    scheme: str,
    address: str,
    port: int,
    path: str,
    raw_query: str,
    headers: Headers,
    ipv6: bool,
    user_agent: str,
) -> HttpOutcome:
    """`http.go`'s `buildUpstreamReq` + `client.Do` + `readAtMost`: the final status and at most MAX_BODY
    bytes of the body. Raises ProbeError for anything Go's client reports as an error. No time bound here:
    the caller runs it under the probe's timeout (Go's `http.Client.Timeout` covers redirects and the body).
    """
    out = Headers()
    for key, values in headers.items():
        if not key.startswith(KUMA_PROBE_HEADER_PREFIX):
            for v in values:
                out.add(key, v)
    if not headers.has("User-Agent"):
        # Kuma: "explicitly set User-Agent so it's not set to default Go value. K8s use kube-probe."
        out.set("User-Agent", user_agent)
    # Go builds the URL from the decoded path and prints it escaped (`URL.String()`).
    request_uri = escape_path(path) or "/"
    if raw_query:
        request_uri += "?" + raw_query
    url = f"{scheme}://{join_host_port(address, port)}{request_uri}"
    insecure = scheme == "https"  # only the transport of an HTTPS probe skips verification
    first_host = urlsplit(url).hostname or ""
    previous: str | None = None
    for hop in range(MAX_REDIRECTS + 1):
        hop_headers = out
        if previous is not None:
            hop_headers = _redirect_headers(out, first_host, urlsplit(url).hostname or "", previous, url)
        # The probe's Host override applies to the first request only; a redirect names its own host.
        host_override = headers.get(HOST_OVERRIDE) if previous is None else ""
        status, resp_headers, body = await _round_trip(url, hop_headers, ipv6, insecure, host_override)
        location = resp_headers.get("Location")
        if status not in (301, 302, 303, 307, 308) or not location:
            return HttpOutcome(status, body)
        if hop == MAX_REDIRECTS:
            break
        try:
            nxt = urljoin(url, location)
            parts = urlsplit(nxt)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(parts.scheme)
            _ = parts.port
        except ValueError:
            raise ProbeError(f"failed to parse Location header {location!r}") from None
        previous, url = url, nxt
    raise ProbeError(f"Get {url!r}: stopped after 10 redirects")


def _redirect_headers(base: Headers, first_host: str, host: str, previous: str, url: str) -> Headers:
    """Go's `copyHeaders` on a redirect: sensitive headers stay only on the same domain or a subdomain;
    `Referer` is the previous URL unless that was HTTPS and this one is not.
    """
    keep_sensitive = host == first_host or host.endswith("." + first_host)
    h = Headers()
    for key, values in base.items():
        if key in _SENSITIVE and not keep_sensitive:
            continue
        for v in values:
            h.add(key, v)
    if not h.has("Referer") and not (previous.startswith("https:") and url.startswith("http:")):
        h.set("Referer", previous)
    return h


async def _round_trip(
    url: str, headers: Headers, ipv6: bool, insecure: bool, host_override: str = ""
) -> tuple[int, Headers, bytes]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    sock = await dial(host, port, ipv6)
    try:
        ctx = _tls_context(insecure) if parts.scheme == "https" else None
        server_hostname = None
        if ctx is not None:
            server_hostname = "" if _is_ip(host) and not ctx.check_hostname else host
        try:
            reader, writer = await asyncio.open_connection(
                sock=sock, ssl=ctx, server_hostname=server_hostname, limit=MAX_RESPONSE_HEAD
            )
        except (OSError, ValueError) as exc:
            raise ProbeError(f"tls handshake with {host}: {exc}") from None
    except BaseException:
        sock.close()
        raise
    try:
        request_uri = parts.path or "/"
        if parts.query or url.endswith("?"):
            request_uri += "?" + parts.query
        writer.write(_request_bytes(request_uri, host_override or parts.netloc, headers))
        await writer.drain()
        return await _read_response(reader)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        raise ProbeError(f"Get {url!r}: {exc!r}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _tls_context(insecure: bool) -> ssl.SSLContext:
    """An HTTPS probe's transport skips certificate verification (Kuma's `InsecureSkipVerify`, as the
    kubelet does); an HTTP probe redirected to HTTPS gets Go's default client, which verifies.
    """
    import ssl

    if insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _request_bytes(request_uri: str, host: str, headers: Headers) -> bytes:
    """Go's `Request.write` + the transport's extra headers: Host and User-Agent first, the rest sorted by
    key, then `Accept-Encoding: gzip` and `Connection: close` unless the request has its own.
    """
    lines = [f"GET {request_uri} HTTP/1.1", f"Host: {host}"]
    ua = headers.get("User-Agent") if headers.has("User-Agent") else "Go-http-client/1.1"
    if ua:
        lines.append(f"User-Agent: {ua}")
    for key, values in sorted(headers.items()):
        if key in _EXCLUDED:
            continue
        lines += [f"{key}: {_one_line(v)}" for v in values]
    if not headers.get("Accept-Encoding") and not headers.get("Range"):
        lines.append("Accept-Encoding: gzip")
    conn = {t.strip().lower() for v in headers.values("Connection") for t in v.split(",")}
    if "close" not in conn and "upgrade" not in conn:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def _one_line(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ").strip(" \t")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, Headers, bytes]:
    """Go's `ReadResponse` for a GET: skips 1xx informational answers (at most 5), then reads the final
    status, the headers and at most MAX_BODY bytes of the (gzip-decoded) body; a broken body within that
    limit is an error, as `readAtMost` reports it.
    """
    for _ in range(6):
        status, headers = await _read_head(reader)
        if 100 <= status <= 199 and status != 101:
            continue
        break
    else:
        raise ProbeError("net/http: too many 1xx informational responses")
    if status == 101 or 100 <= status <= 199 or status in (204, 304):
        return status, headers, b""
    te = [t.strip().lower() for v in headers.values("Transfer-Encoding") for t in v.split(",")]
    gzip = headers.get("Content-Encoding").lower() == "gzip"
    if te and te != ["chunked"]:
        raise ProbeError(f"unsupported transfer encoding: {te!r}")
    if te:
        raw = _chunked(reader)
    else:
        lengths = {v.strip() for v in headers.values("Content-Length")}
        if len(lengths) > 1:
            raise ProbeError("http: message cannot contain multiple Content-Length headers")
        if lengths:
            (cl,) = lengths
            if not cl.isdigit():
                raise ProbeError(f"bad Content-Length {cl!r}")
            if int(cl) == 0:
                return status, headers, b""
            raw = _fixed(reader, int(cl))
        else:
            raw = _until_eof(reader)
    return status, headers, await _read_at_most(raw, gzip)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, Headers]:
    """Status line and header lines, each ended by LF or CRLF (Go's textproto), the head bounded by
    MAX_RESPONSE_HEAD.
    """
    lines: list[str] = []
    size = 0
    while True:
        raw = await reader.readuntil(b"\n")
        size += len(raw)
        if size > MAX_RESPONSE_HEAD:
            raise ProbeError("net/http: server response headers exceeded the limit")
        line = raw.rstrip(b"\n").removesuffix(b"\r").decode("latin-1")
        if not line:
            if not lines:
                raise ProbeError('malformed HTTP response ""')
            break
        lines.append(line)
    proto, _, rest = lines[0].partition(" ")
    code = rest.lstrip(" ").partition(" ")[0]
    if parse_version(proto) is None:
        raise ProbeError(f"malformed HTTP version {proto!r}")
    if len(code) != 3 or not code.isdigit():
        raise ProbeError(f"malformed HTTP status code {code!r}")
    headers = Headers()
    for line in lines[1:]:
        key, colon, value = line.partition(":")
        if not colon or not key or key[0] in " \t" or key != key.strip():
            raise ProbeError(f"malformed MIME header line: {line!r}")
        headers.add(canonical_key(key), value.strip(" \t"))
    return int(code), headers


async def _fixed(reader: asyncio.StreamReader, length: int):  # type: ignore[no-untyped-def]
    left = length
    while left > 0:
        chunk = await reader.read(min(left, 16384))
        if not chunk:
            raise ProbeError("unexpected EOF")
        left -= len(chunk)
        yield chunk


async def _until_eof(reader: asyncio.StreamReader):  # type: ignore[no-untyped-def]
    while chunk := await reader.read(16384):
        yield chunk


async def _chunked(reader: asyncio.StreamReader):  # type: ignore[no-untyped-def]
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line[:-2].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProbeError(f"invalid chunk length {size_text!r}") from None
        if size == 0:
            return
        async for chunk in _fixed(reader, size):
            yield chunk
        if await reader.readexactly(2) != b"\r\n":
            raise ProbeError("malformed chunked encoding")


async def _read_at_most(raw, gzip: bool) -> bytes:  # type: ignore[no-untyped-def]
    """Kuma's `readAtMost(res.Body, maxRespBodyLength)`: reaching the limit is fine (the rest is never
    read), an error before it fails the probe. With gzip, the limit counts decoded bytes, as Go's
    transparently decompressing body does.
    """
    out = bytearray()
    fed = False
    dec = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
    try:
        async for chunk in raw:
            fed = fed or bool(chunk)
            if dec is not None:
                try:
                    data = dec.decompress(chunk, MAX_BODY - len(out))
                except zlib.error as exc:
                    raise ProbeError(f"gzip: {exc}") from None
            else:
                data = chunk[: MAX_BODY - len(out)]
            out += data
            if len(out) >= MAX_BODY:
                return bytes(out)
            if dec is not None and dec.eof:
                break
        if dec is not None and fed and not dec.eof:
            raise ProbeError("gzip: unexpected EOF")
    finally:
        with contextlib.suppress(Exception):
            await raw.aclose()
    return bytes(out)
