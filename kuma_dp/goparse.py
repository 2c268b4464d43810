"""Go-compatible parsing of the scalar values Kuma's flags, `KUMA_*` variables and config files carry.

Kuma is written in Go: its booleans go through `strconv.ParseBool`, its durations through
`time.ParseDuration`, its unsigned numbers through `strconv.ParseUint`. Operators copy values from Kuma's
docs and Helm charts, so the agent and the transparent-proxy installer accept exactly those grammars, and
the error texts keep Go's wording (callers prefix them with the setting's name). Every module that parses
such a value uses this one, so `--drain-time`, `KUMA_CONTROL_PLANE_RETRY_BACKOFF` and the installer's
`sleepBetweenRetries` can never disagree about what `1m30s` means.

It also reproduces the error texts of the Go library calls whose failures Kuma prints to the operator:
`strconv.Quote` (`%q`), `url.Parse` (the CP URL check of pkg/config/app/kuma-dp/config.go), `*fs.PathError`,
`base64.RawURLEncoding` and `encoding/json`'s syntax errors (the dataplane token check of
app/kuma-dp/pkg/config/validate.go, through golang-jwt).
"""

from __future__ import annotations

import re

_TRUE = frozenset(("1", "t", "T", "TRUE", "true", "True"))
_FALSE = frozenset(("0", "f", "F", "FALSE", "false", "False"))


def parse_bool(text: str) -> bool:
    """Go's `strconv.ParseBool`: exactly `1 t T TRUE true True` and `0 f F FALSE false False`."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f'strconv.ParseBool: parsing "{text}": invalid syntax')


def parse_uint(text: str) -> int:
    """Go's `strconv.ParseUint(text, 10, 64)` (surrounding blanks tolerated, as env files often have them)."""
    s = text.strip()
    if not s.isdigit():
        raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    return int(s, 10)


_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_NUMBER = re.compile(r"(\d+(?:\.\d*)?|\.\d+)$")


def parse_duration(text: str) -> float:
    """Seconds in a Go `time.Duration` string (`3s`, `1m30s`, `500ms`, `-1.5h`, `0`).

    ValueError with Go's wording (`time: invalid duration "x"`, `time: missing unit in duration "5"`).
    """
    s = text.strip()
    orig = s
    sign = 1.0
    if s[:1] in ("-", "+"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f'time: invalid duration "{orig}"')
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            if _NUMBER.match(s[pos:]):
                raise ValueError(f'time: missing unit in duration "{orig}"')
            raise ValueError(f'time: invalid duration "{orig}"')
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """A Go-style rendering (`30s`, `5m0s`, `500ms`) for logs and the effective-config dump."""
    if seconds == 0:
        return "0s"
    neg = seconds < 0
    s = abs(seconds)
    if s < 1:
        out = f"{s * 1000:g}ms"
    else:
        h, rem = divmod(s, 3600)
        m, sec = divmod(rem, 60)
        out = ""
        if h:
            out += f"{int(h)}h"
        if h or m:
            out += f"{int(m)}m"
        out += f"{sec:g}s"
    return ("-" if neg else "") + out


# --- Go's strconv.Quote ---------------------------------------------------------------------------------


def go_quote(text: str, *, ascii_only: bool = False) -> str:
    """Go's `strconv.Quote` (what `%q` prints): printable runes kept, the rest as Go escapes; `ascii_only` is
    `strconv.QuoteToASCII` (`%+q`), which escapes every non-ASCII rune too.

    Error messages that embed an operator's input (`parse ":333": missing protocol scheme`) quote it this way.
    """
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif (ch.isprintable() or ch == " ") and (code < 0x80 or not ascii_only):
            out.append(ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:  # a lone surrogate is no valid rune: Go prints U+FFFD's escape
            out.append("\\ufffd")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_path_error(op: str, path: str, exc: OSError) -> str:
    """Go's *fs.PathError text for a failed file operation: `open /x: no such file or directory` (the op, the
    path, then the errno text in lower case, as Go's syscall.Errno prints it)."""
    return f"{op} {path}: {(exc.strerror or type(exc).__name__).lower()}"


# --- Go's net/url.Parse (errors only) -----------------------------------------------------------------------


def _should_escape_host(c: str) -> bool:
    """net/url shouldEscape(c, encodeHost) for an ASCII character."""
    if c.isascii() and c.isalnum():
        return False
    return c not in "!$&'()*+,;=:[]<>\"-_.~"


def _unescape_error(s: str, *, host: bool) -> str | None:
    """net/url unescape's checks in path/fragment mode, or host mode (`host`); None when `s` is fine."""
    i = 0
    while i < len(s):
        c = s[i]
        if c == "%":
            seq = s[i : i + 3]
            if len(seq) < 3 or seq[1] not in _HEX or seq[2] not in _HEX:
                return f"invalid URL escape {go_quote(seq)}"
            if host and int(seq[1], 16) < 8 and seq != "%25":
                return f"invalid URL escape {go_quote(seq)}"
            i += 3
            continue
        if host and c.isascii() and _should_escape_host(c):
            return f"invalid character {go_quote(c)} in host name"
        i += 1
    return None


_HEX = frozenset("0123456789abcdefABCDEF")


def _valid_optional_port(port: str) -> bool:
    return port == "" or (port[0] == ":" and all("0" <= c <= "9" for c in port[1:]))


def _ip_literal_error(inner: str) -> str | None:
    """Go 1.26 accepts only an IPv6 address (optionally with a zone) inside brackets (netip.ParseAddr)."""
    import ipaddress

    for c in inner:
        if c == ".":
            try:
                ipaddress.IPv4Address(inner)
            except ValueError:
                return f"invalid host: ParseAddr({go_quote(inner)}): unable to parse IP"
            return "invalid IP-literal"
        if c == ":":
            try:
                ipaddress.IPv6Address(inner)
            except ValueError:
                return f"invalid host: ParseAddr({go_quote(inner)}): unable to parse IP"
            return None
        if c == "%":
            return f"invalid host: ParseAddr({go_quote(inner)}): missing IPv6 address"
    return f"invalid host: ParseAddr({go_quote(inner)}): unable to parse IP"


def _host_error(host: str, scheme: str) -> str | None:
    """net/url parseHost (Go 1.26, `urlstrictcolons=1`, the default of a `go 1.26` module)."""
    if host.rfind("[") > 0:
        return "invalid IP-literal"
    if host.startswith("["):
        close = host.rfind("]")
        if close < 0:
            return "missing ']' in host"
        colon_port = host[close + 1 :]
        if not _valid_optional_port(colon_port):
            return f"invalid port {go_quote(colon_port)} after host"
        hostname = host[1:close]
        zone = hostname.find("%25")
        host_part = hostname if zone < 0 else hostname[:zone]
        err = _unescape_error(host_part, host=True)
        if err is None and zone >= 0:
            err = _unescape_error(hostname[zone:], host=False)
        if err is not None:
            return err
        inner = host_part if zone < 0 else host_part + "%" + hostname[zone + 3 :]
        return _ip_literal_error(inner)
    first = host.find(":")
    if first >= 0:
        last = host.rfind(":")
        # RFC 3986 allows no colon in a host; Go tolerates lists of hosts except for http and https.
        at = first if scheme in ("http", "https") else last
        colon_port = host[at:]
        if not _valid_optional_port(colon_port):
            return f"invalid port {go_quote(colon_port)} after host"
    return _unescape_error(host, host=True)


_USERINFO_OK = frozenset("-._:~!$&'()*+,;=%@")


def _parse_error(raw: str) -> str | None:
    """net/url parse(raw, viaRequest=false): the reason of its error, or None."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        return "net/url: invalid control character in URL"
    if raw == "*":
        return None
    scheme, rest = "", raw
    for i, c in enumerate(raw):
        if c.isascii() and c.isalpha():
            continue
        if c.isascii() and (c.isdigit() or c in "+-."):
            if i == 0:
                break
            continue
        if c == ":":
            if i == 0:
                return "missing protocol scheme"
            scheme, rest = raw[:i].lower(), raw[i + 1 :]
        break
    rest = rest[:-1] if rest.endswith("?") and rest.count("?") == 1 else rest.split("?", 1)[0]
    if not rest.startswith("/"):
        if scheme:
            return None  # opaque
        if ":" in rest.split("/", 1)[0]:
            return "first path segment in URL cannot contain colon"
    if (scheme or not rest.startswith("///")) and rest.startswith("//"):
        authority, _, path = rest[2:].partition("/")
        rest = "/" + path if _ else ""
        at = authority.rfind("@")
        err = _host_error(authority[at + 1 :], scheme)
        if err is not None:
            return err
        if at >= 0:
            userinfo = authority[:at]
            if not all((c.isascii() and c.isalnum()) or c in _USERINFO_OK for c in userinfo):
                return "net/url: invalid userinfo"
            for part in userinfo.split(":", 1):
                err = _unescape_error(part, host=False)
                if err is not None:
                    return err
    return _unescape_error(rest, host=False)


def url_parse_error(raw: str) -> str | None:
    """The text of the error Go's `url.Parse(raw)` returns (`parse "<raw>": <reason>`), or None if it parses.

    Kuma validates `--cp-address` with url.Parse alone (pkg/config/app/kuma-dp/config.go), so a scheme or a
    missing host is left for the bootstrap request to report, as Kuma does.
    """
    before, sep, frag = raw.partition("#")
    reason = _parse_error(before)
    if reason is not None:
        return f"parse {go_quote(before)}: {reason}"
    if sep and frag:
        reason = _unescape_error(frag, host=False)
        if reason is not None:
            return f"parse {go_quote(raw)}: {reason}"
    return None


# --- Go's encoding/base64 RawURLEncoding and encoding/json syntax errors ------------------------------------

_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def raw_url_b64decode(segment: bytes) -> bytes:
    """Go's `base64.RawURLEncoding.DecodeString` (no padding, non-strict): ValueError in Go's words
    (`illegal base64 data at input byte N`). CR and LF are skipped, as Go does."""
    data = bytearray()
    for i, b in enumerate(segment):
        if b in (0x0A, 0x0D):
            continue
        if b not in _B64URL:
            raise ValueError(f"illegal base64 data at input byte {i}")
        data.append(b)
    if len(data) % 4 == 1:
        raise ValueError(f"illegal base64 data at input byte {len(segment) - 1}")
    import base64

    return base64.urlsafe_b64decode(bytes(data) + b"=" * (-len(data) % 4))


def _quote_char(c: int) -> str:
    """encoding/json's quoteChar: the byte shown as Go shows the rune of the same number."""
    if c == 0x27:
        return "'\\''"
    if c == 0x22:
        return "'\"'"
    return "'" + go_quote(chr(c))[1:-1] + "'"


_JSON_SPACE = frozenset(b" \t\r\n")
_LITERALS = {ord("t"): b"true", ord("f"): b"false", ord("n"): b"null"}


def json_syntax_error(data: bytes) -> str | None:
    """encoding/json's checkValid: the message of Go's SyntaxError for `data`, or None when it is valid JSON.

    Follows the state machine of `encoding/json/scanner.go`, so the message names the same byte and the same
    context (`invalid character 'È' looking for beginning of value`, `unexpected end of JSON input`).
    """
    n = len(data)
    pos = 0
    stack: list[str] = []  # "key" | "value" (object) | "array"

    def err(i: int, context: str) -> str:
        return f"invalid character {_quote_char(data[i])} {context}"

    def at_eof(context: str) -> str:
        # Go's scanner.eof() feeds the state one space; a state that refuses it reports that space.
        return f"invalid character ' ' {context}"

    def skip(i: int) -> int:
        while i < n and data[i] in _JSON_SPACE:
            i += 1
        return i

    def value(i: int) -> tuple[int, str | None]:
        """Scan one value starting at a non-space byte; (next index, error)."""
        c = data[i]
        if c == 0x22:
            i += 1
            while i < n:
                c = data[i]
                if c == 0x22:
                    return i + 1, None
                if c == 0x5C:
                    i += 1
                    if i >= n:
                        return i, at_eof("in string escape code")
                    if data[i] in b'bfnrt\\/"':
                        i += 1
                        continue
                    if data[i] != ord("u"):
                        return i, err(i, "in string escape code")
                    for _ in range(4):
                        i += 1
                        if i >= n:
                            return i, at_eof("in \\u hexadecimal character escape")
                        if data[i] not in b"0123456789abcdefABCDEF":
                            return i, err(i, "in \\u hexadecimal character escape")
                    i += 1
                    continue
                if c < 0x20:
                    return i, err(i, "in string literal")
                i += 1
            return i, ""
        if c == ord("-") or 0x30 <= c <= 0x39:
            if c == ord("-"):
                i += 1
                if i >= n:
                    return i, at_eof("in numeric literal")
                if not 0x30 <= data[i] <= 0x39:
                    return i, err(i, "in numeric literal")
            if data[i] == 0x30:
                i += 1
            else:
                while i < n and 0x30 <= data[i] <= 0x39:
                    i += 1
            if i < n and data[i] == ord("."):
                i += 1
                if i >= n:
                    return i, at_eof("after decimal point in numeric literal")
                if not 0x30 <= data[i] <= 0x39:
                    return i, err(i, "after decimal point in numeric literal")
                while i < n and 0x30 <= data[i] <= 0x39:
                    i += 1
            if i < n and data[i] in b"eE":
                i += 1
                if i < n and data[i] in b"+-":
                    i += 1
                if i >= n:
                    return i, at_eof("in exponent of numeric literal")
                if not 0x30 <= data[i] <= 0x39:
                    return i, err(i, "in exponent of numeric literal")
                while i < n and 0x30 <= data[i] <= 0x39:
                    i += 1
            return i, None
        literal = _LITERALS.get(c)
        if literal is not None:
            word = literal.decode()
            for k in range(1, len(literal)):
                if i + k >= n:
                    return i + k, at_eof(f"in literal {word} (expecting {_quote_char(literal[k])})")
                if data[i + k] != literal[k]:
                    return i + k, err(i + k, f"in literal {word} (expecting {_quote_char(literal[k])})")
            return i + len(literal), None
        return i, err(i, "looking for beginning of value")

    eof = "unexpected end of JSON input"
    pos = skip(pos)
    while True:
        if pos >= n:
            return eof
        c = data[pos]
        if c == ord("{"):
            stack.append("key")
            pos = skip(pos + 1)
            if pos >= n:
                return eof
            if data[pos] == ord("}"):
                stack.pop()
                pos += 1
            elif data[pos] != 0x22:
                return err(pos, "looking for beginning of object key string")
            else:
                continue
        elif c == ord("["):
            stack.append("array")
            pos = skip(pos + 1)
            if pos >= n:
                return eof
            if data[pos] == ord("]"):
                stack.pop()
                pos += 1
            else:
                continue
        else:
            pos, problem = value(pos)
            if problem is not None:
                return problem or eof
        # After a complete value: close containers, or move on to the next element.
        while True:
            if not stack:
                pos = skip(pos)
                if pos < n:
                    return err(pos, "after top-level value")
                return None
            pos = skip(pos)
            if pos >= n:
                return eof
            c = data[pos]
            top = stack[-1]
            if top == "key":
                if c != ord(":"):
                    return err(pos, "after object key")
                stack[-1] = "value"
                pos = skip(pos + 1)
                break
            if top == "value":
                if c == ord(","):
                    stack[-1] = "key"
                    pos = skip(pos + 1)
                    if pos >= n:
                        return eof
                    if data[pos] != 0x22:
                        return err(pos, "looking for beginning of object key string")
                    break
                if c == ord("}"):
                    stack.pop()
                    pos += 1
                    continue
                return err(pos, "after object key:value pair")
            if c == ord(","):
                pos = skip(pos + 1)
                break
            if c == ord("]"):
                stack.pop()
                pos += 1
                continue
            return err(pos, "after array element")


__all__ = [
    "format_duration",
    "go_path_error",
    "go_quote",
    "json_syntax_error",
    "parse_bool",
    "parse_duration",
    "parse_uint",
    "raw_url_b64decode",
    "url_parse_error",
]
