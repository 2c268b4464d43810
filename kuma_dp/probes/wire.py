"""HTTP/1.x details the probe proxy must reproduce byte for byte from Go's `net/http`, because Kuma's
application probe proxy (kumahq/kuma v2.14.3 `app/kuma-dp/pkg/dataplane/probes/`) is a Go `http.Server`
in front of a Go `http.Client`: what the kubelet reads back and what the application receives are shaped by
Go's canonical header keys, its status texts, its request-target rules and its escaping of the path.

Everything here is pure (no I/O), so the unit tests drive it case by case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

#: Go's `net/http.StatusText` (status.go); a code missing here is written as "NNN status code NNN".
STATUS_TEXT: dict[int, str] = {
    100: "Continue", 101: "Switching Protocols", 102: "Processing", 103: "Early Hints",
    200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information", 204: "No Content",
    205: "Reset Content", 206: "Partial Content", 207: "Multi-Status", 208: "Already Reported",
    226: "IM Used",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    305: "Use Proxy", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 409: "Conflict", 410: "Gone", 411: "Length Required", 412: "Precondition Failed",
    413: "Request Entity Too Large", 414: "Request URI Too Long", 415: "Unsupported Media Type",
    416: "Requested Range Not Satisfiable", 417: "Expectation Failed", 418: "I'm a teapot",
    421: "Misdirected Request", 422: "Unprocessable Entity", 423: "Locked", 424: "Failed Dependency",
    425: "Too Early", 426: "Upgrade Required", 428: "Precondition Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 451: "Unavailable For Legal Reasons",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported", 506: "Variant Also Negotiates",
    507: "Insufficient Storage", 508: "Loop Detected", 510: "Not Extended",
    511: "Network Authentication Required",
}  # fmt: skip


def status_line(code: int, http11: bool = True) -> str:
    """Go's `writeStatusLine` (server.go)."""
    proto = "HTTP/1.1" if http11 else "HTTP/1.0"
    text = STATUS_TEXT.get(code)
    if text:
        return f"{proto} {code} {text}"
    return f"{proto} {code:03d} status code {code}"


#: RFC 7230 token characters: Go's `httpguts.IsTokenRune`, which decides header names and methods.
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def is_token(s: str) -> bool:
    return bool(s) and all(ord(c) < 128 and ord(c) in _TOKEN for c in s)


def canonical_key(key: str) -> str:
    """Go's `textproto.CanonicalMIMEHeaderKey`: "x-kuma-probes-host" -> "X-Kuma-Probes-Host"; a key with a
    byte that is not a token character is left as it is (Go does the same).
    """
    if not is_token(key):
        return key
    out = []
    upper = True
    for c in key:
        out.append(c.upper() if upper else c.lower())
        upper = c == "-"
    return "".join(out)


def valid_field_value(value: str) -> bool:
    """Go's `httpguts.ValidHeaderFieldValue`: no control bytes other than horizontal tab."""
    return not any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value)


def valid_host(host: str) -> bool:
    """Go's `httpguts.ValidHostHeader`: only the bytes a URL authority may hold."""
    return all(c in _HOST_CHARS for c in host)


_HOST_CHARS = frozenset("!$&'()*+,-.0123456789:;=@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]_abcdefghijklmnopqrstuvwxyz~%")


class Headers:
    """A multi-valued header map keyed by Go's canonical keys, keeping each key's values in order (Go's
    `http.Header`).
    """

    def __init__(self) -> None:
        self._d: dict[str, list[str]] = {}

    def add(self, key: str, value: str) -> None:
        self._d.setdefault(canonical_key(key), []).append(value)

    def set(self, key: str, value: str) -> None:
        self._d[canonical_key(key)] = [value]

    def get(self, key: str) -> str:
        """The first value, or "" (Go's `Header.Get`)."""
        values = self._d.get(canonical_key(key))
        return values[0] if values else ""

    def values(self, key: str) -> list[str]:
        return list(self._d.get(canonical_key(key), []))

    def has(self, key: str) -> bool:
        return canonical_key(key) in self._d

    def delete(self, key: str) -> None:
        self._d.pop(canonical_key(key), None)

    def items(self) -> list[tuple[str, list[str]]]:
        return [(k, list(v)) for k, v in self._d.items()]

    def __len__(self) -> int:
        return len(self._d)


class BadRequest(Exception):
    """A request Go's server refuses before any handler runs; `answer` is the exact bytes it writes."""

    def __init__(self, answer: bytes, reason: str) -> None:
        super().__init__(reason)
        self.answer = answer


_ERROR_HEADERS = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"


def go_error_answer(code: int, text: str = "") -> bytes:
    """What Go's `conn.serve` writes for a request it cannot read (server.go): "400 Bad Request", or with a
    reason, "400 Bad Request: missing required Host header" in both the status line and the body.
    """
    public = f"{code} {STATUS_TEXT[code]}" + (f": {text}" if text else "")
    return f"HTTP/1.1 {public}{_ERROR_HEADERS}{public}".encode("latin-1")


BAD_REQUEST = go_error_answer(400)
TOO_LARGE = go_error_answer(431)
UNSUPPORTED_TE = f"HTTP/1.1 501 Not Implemented{_ERROR_HEADERS}Unsupported transfer encoding".encode()


@dataclass
class Request:
    """A parsed downstream request: `path` is the decoded path (Go's `URL.Path`, bytes as latin-1
    characters), `escaped_path` the path as sent, `raw_query` the query as sent.
    """

    method: str
    target: str
    http11: bool
    path: str
    escaped_path: str
    raw_query: str
    headers: Headers = field(default_factory=Headers)
    host: str = ""
    content_length: int = 0
    chunked: bool = False

    @property
    def keep_alive(self) -> bool:
        """Go's `shouldClose` for the request: HTTP/1.1 unless "Connection: close", HTTP/1.0 only with
        "Connection: keep-alive".
        """
        tokens = {t.strip().lower() for v in self.headers.values("Connection") for t in v.split(",")}
        if self.http11:
            return "close" not in tokens
        return "keep-alive" in tokens


_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])\Z")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def parse_version(proto: str) -> tuple[int, int] | None:
    """Go's `http.ParseHTTPVersion` (one digit each side)."""
    m = _VERSION.match(proto)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_request_head(head: bytes) -> Request:
    """Parse a request head (request line and header lines, without the blank line) as Go's `readRequest`
    and the checks of `conn.readRequest` do; raises `BadRequest` with Go's answer.
    """
    text = head.decode("latin-1")
    lines = text.split("\n")
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    method, sp1, rest = lines[0].partition(" ")
    target, sp2, proto = rest.partition(" ")
    if not sp1 or not sp2:
        raise BadRequest(BAD_REQUEST, "malformed HTTP request")
    version = parse_version(proto)
    if version is None:
        raise BadRequest(BAD_REQUEST, "malformed HTTP version")
    if not is_token(method):
        raise BadRequest(BAD_REQUEST, "invalid method")
    if version[0] != 1:
        raise BadRequest(go_error_answer(505, "unsupported protocol version"), "unsupported protocol version")
    path, raw_query = _parse_target(target)
    req = Request(
        method=method,
        target=target,
        http11=version >= (1, 1),
        path=path,
        escaped_path=target.partition("?")[0] if target.startswith("/") else _escaped_of(target),
        raw_query=raw_query,
    )
    hosts: list[str] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            raise BadRequest(BAD_REQUEST, "malformed MIME header line")  # obsolete line folding
        key, colon, value = line.partition(":")
        if not colon or not is_token(key):
            raise BadRequest(BAD_REQUEST, "malformed MIME header line")
        value = value.strip(" \t")
        if canonical_key(key) == "Host":
            hosts.append(value)
            continue
        if not valid_field_value(value):
            raise BadRequest(go_error_answer(400, "invalid header value"), "invalid header value")
        req.headers.add(key, value)
    if req.http11 and not hosts and req.method != "CONNECT":
        raise BadRequest(go_error_answer(400, "missing required Host header"), "missing Host header")
    if len(hosts) > 1:
        raise BadRequest(go_error_answer(400, "too many Host headers"), "too many Host headers")
    if hosts and not valid_host(hosts[0]):
        raise BadRequest(go_error_answer(400, "malformed Host header"), "malformed Host header")
    req.host = hosts[0] if hosts else ""
    _framing(req)
    return req


def _escaped_of(target: str) -> str:
    """The path of an absolute-form target ("http://host/8080/x" -> "/8080/x")."""
    after = target.split("://", 1)[1]
    slash = after.find("/")
    return after[slash:].partition("?")[0] if slash >= 0 else "/"


def _parse_target(target: str) -> tuple[str, str]:
    """Go's `url.ParseRequestURI`: "*", an absolute path or an absolute URL; returns (decoded path as
    latin-1 characters, raw query).
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        raise BadRequest(BAD_REQUEST, "invalid control character in URL")
    if target == "*":
        return "*", ""
    if target.startswith("/"):
        escaped, _, query = target.partition("?")
    elif re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", target):
        escaped, query = _escaped_of(target), target.partition("?")[2]
    else:
        raise BadRequest(BAD_REQUEST, "invalid URI for request")
    if _BAD_ESCAPE.search(escaped):
        raise BadRequest(BAD_REQUEST, "invalid URL escape")
    return unquote_to_bytes(escaped).decode("latin-1"), query


def _framing(req: Request) -> None:
    """Body framing checks of Go's `readTransfer`: only "chunked" is a known transfer coding, and a
    Content-Length must be one non-negative number.
    """
    te = req.headers.values("Transfer-Encoding")
    if te:
        req.headers.delete("Transfer-Encoding")
        if not req.http11:
            return
        if len(te) != 1 or te[0].strip().lower() != "chunked":
            raise BadRequest(UNSUPPORTED_TE, "unsupported transfer encoding")
        req.chunked = True
        return
    cl = req.headers.values("Content-Length")
    if cl:
        first = cl[0].strip()
        if any(v.strip() != first for v in cl) or not first.isdigit() or not first.isascii():
            raise BadRequest(BAD_REQUEST, "bad Content-Length")
        req.content_length = int(first)


def go_clean_path(p: str) -> str:
    """Go's `net/http.cleanPath`: `path.Clean` keeping a trailing slash."""
    if not p:
        return "/"
    if p[0] != "/":
        p = "/" + p
    parts: list[str] = []
    for seg in p.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts:
                parts.pop()
            continue
        parts.append(seg)
    np = "/" + "/".join(parts)
    if p.endswith("/") and np != "/":
        np += "/"
    return np


def escape_path(path: str) -> str:
    """Go's `url.escape(path, encodePath)`: what `URL.String()` writes for a path without a RawPath. Keeps
    unreserved bytes and `$&+,/:;=@`; escapes the rest (`?` too) as upper-case %XX. `path` holds bytes as
    latin-1 characters (see `Request.path`).
    """
    return quote(path.encode("latin-1"), safe="$&+,/:;=@")


def html_escape(s: str) -> str:
    """Go's `htmlEscape` in `http.Redirect`."""
    return (
        s.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&#34;")
        .replace("'", "&#39;")
    )
