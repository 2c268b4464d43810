"""The pure parts of the probe proxy: Kuma's path and header rules (`component.go`: getPort, getTimeout,
getUpstreamHTTPPath, the answers) and the Go `net/http` behaviour the kubelet and the application see
(canonical keys, status lines, path cleaning and escaping, the answers to requests Go cannot read), and the
two gRPC health messages."""

from __future__ import annotations

import pytest

from kuma_dp.probes.grpc_health import decode_response, decode_status, encode_request, grpc_timeout
from kuma_dp.probes.proxy import (
    _HTTP_PATH,
    _TCP_GRPC_PATH,
    Answer,
    go_atoi,
    mux_redirect,
    probe_answer,
    probe_port,
    probe_timeout,
    render,
    upstream_http_path,
)
from kuma_dp.probes.upstream import (
    ProbeError,
    _redirect_headers,
    _request_bytes,
    is_ipv6,
    join_host_port,
)
from kuma_dp.probes.wire import (
    BadRequest,
    Headers,
    canonical_key,
    escape_path,
    go_clean_path,
    parse_request_head,
    status_line,
)

pytestmark = pytest.mark.unit


def _req(target: str, *headers: str, version: str = "HTTP/1.1", method: str = "GET"):  # type: ignore[no-untyped-def]
    lines = [f"{method} {target} {version}", "Host: 10.0.0.1:9000", *headers]
    return parse_request_head("\r\n".join(lines).encode())


# -- component.go ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "pattern", "expected"),
    [
        ("/8080/healthz", _HTTP_PATH, 8080),
        ("/8080", _HTTP_PATH, 8080),
        ("/0/x", _HTTP_PATH, 0),
        ("/65535/x", _HTTP_PATH, 65535),
        ("/65536/x", _HTTP_PATH, "invalid port value 65536"),
        ("/99999999999999999999/x", _HTTP_PATH, "invalid port 99999999999999999999"),
        ("/abc/healthz", _HTTP_PATH, "port is required"),
        ("/", _HTTP_PATH, "port is required"),
        ("/8080x/a", _HTTP_PATH, "port is required"),
        ("/8080/a\nb", _HTTP_PATH, "port is required"),  # Go's `.` stops at a newline too
        ("/tcp/6379", _TCP_GRPC_PATH, 6379),
        ("/tcp/6379/anything", _TCP_GRPC_PATH, 6379),
        ("/grpc/5656", _TCP_GRPC_PATH, 5656),
        ("/tcp/", _TCP_GRPC_PATH, "port is required"),
        ("/tcp/x", _TCP_GRPC_PATH, "port is required"),
        ("/grpc/70000", _TCP_GRPC_PATH, "invalid port value 70000"),
    ],
)
def test_get_port(path: str, pattern, expected: int | str) -> None:  # type: ignore[no-untyped-def]
    assert probe_port(path, pattern) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/8080/healthz", "/healthz"), ("/8080/a/b/", "/a/b/"), ("/8080", ""), ("/8080/", "/"), ("/x", "/")],
)
def test_upstream_http_path(path: str, expected: str) -> None:
    assert upstream_http_path(path) == expected


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, 1.0), ("5", 5.0), ("15", 15.0), ("abc", 1.0), ("1.5", 1.0), ("", 1.0), ("+3", 3.0), ("-2", -2.0)],
)
def test_get_timeout(header: str | None, seconds: float) -> None:
    extra = [] if header is None else [f"X-Kuma-Probes-Timeout: {header}"]
    assert probe_timeout(_req("/8080/h", *extra)) == seconds


def test_go_atoi() -> None:
    assert go_atoi("42") == 42 and go_atoi("-1") == -1
    assert go_atoi(" 1") is None and go_atoi("1 ") is None and go_atoi("9223372036854775808") is None


def test_probe_answers_are_kumas() -> None:
    ok, bad, unknown = probe_answer("HEALTHY"), probe_answer("UNHEALTHY"), probe_answer("UNKNOWN")
    assert (ok.status, ok.body) == (200, b"HEALTHY\n")
    assert (bad.status, bad.body) == (503, b"UNHEALTHY\n")
    assert (unknown.status, unknown.body) == (503, b"UNKNOWN\n")
    assert probe_answer("UNHEALTHY", 404).status == 404
    assert ok.headers == [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("X-Content-Type-Options", "nosniff"),
    ]


def test_rendered_answer_as_go_writes_it() -> None:
    text = render(_req("/8080/h", "Connection: close"), probe_answer("HEALTHY"), keep_alive=False).decode()
    lines = text.split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    assert lines[1:3] == ["Content-Type: text/plain; charset=utf-8", "X-Content-Type-Options: nosniff"]
    assert lines[3].startswith("Date: ") and lines[3].endswith(" GMT")
    assert lines[4:] == ["Content-Length: 8", "Connection: close", "", "HEALTHY\n"]
    head = render(_req("/8080/h", method="HEAD"), probe_answer("UNHEALTHY", 500), keep_alive=True).decode()
    assert head.startswith("HTTP/1.1 500 Internal Server Error\r\n")
    assert "Content-Length: 10\r\n" in head and head.endswith("\r\n\r\n")  # no body for HEAD
    http10 = render(_req("/8080/h", version="HTTP/1.0"), Answer(503), keep_alive=False).decode()
    assert http10.startswith("HTTP/1.0 503 Service Unavailable\r\n") and "Connection" not in http10


# -- Go net/http ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "canonical"),
    [
        ("x-kuma-probes-host", "X-Kuma-Probes-Host"),
        ("X-Kuma-Probes-GRPC-Service", "X-Kuma-Probes-Grpc-Service"),
        ("user-agent", "User-Agent"),
        ("bad key", "bad key"),
    ],
)
def test_canonical_key(key: str, canonical: str) -> None:
    assert canonical_key(key) == canonical


def test_headers_keep_values_in_order_under_canonical_keys() -> None:
    h = Headers()
    h.add("x-a", "1")
    h.add("X-A", "2")
    assert h.values("X-a") == ["1", "2"] and h.get("x-a") == "1" and h.get("missing") == ""


@pytest.mark.parametrize(
    ("code", "http11", "line"),
    [
        (200, True, "HTTP/1.1 200 OK"),
        (503, True, "HTTP/1.1 503 Service Unavailable"),
        (413, True, "HTTP/1.1 413 Request Entity Too Large"),
        (599, True, "HTTP/1.1 599 status code 599"),
        (404, False, "HTTP/1.0 404 Not Found"),
    ],
)
def test_status_line(code: int, http11: bool, line: str) -> None:
    assert status_line(code, http11) == line


@pytest.mark.parametrize(
    ("path", "clean"),
    [
        ("/8080/healthz", "/8080/healthz"),
        ("/8080//healthz", "/8080/healthz"),
        ("//8080/healthz", "/8080/healthz"),
        ("/8080/a/../b", "/8080/b"),
        ("/8080/./b/", "/8080/b/"),
        ("/8080/healthz/", "/8080/healthz/"),
        ("/..", "/"),
        ("", "/"),
    ],
)
def test_go_clean_path(path: str, clean: str) -> None:
    assert go_clean_path(path) == clean


@pytest.mark.parametrize(
    ("path", "escaped"),
    [
        ("/healthz", "/healthz"),
        ("/a b", "/a%20b"),
        ("/a?b", "/a%3Fb"),
        ("/$&+,/:;=@-_.~", "/$&+,/:;=@-_.~"),
        ("/!*'()", "/%21%2A%27%28%29"),
        ("/\xc3\xa9", "/%C3%A9"),  # the UTF-8 bytes of "é", held as latin-1 characters
    ],
)
def test_escape_path_is_gos_url_string(path: str, escaped: str) -> None:
    assert escape_path(path) == escaped


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/8080/healthz", None),
        ("/8080//healthz", "/8080/healthz"),
        ("/8080//healthz?a=1", "/8080/healthz?a=1"),
        ("/tcp", "/tcp/"),
        ("/grpc?x", "/grpc/?x"),
        ("/tcp/", None),
        ("/8080/a%20b/../c", "/8080/c"),
        ("/8080//a%20b", "/8080/a%2520b"),  # Go escapes the cleaned, already escaped path once more
    ],
)
def test_mux_redirects(target: str, location: str | None) -> None:
    assert mux_redirect(_req(target)) == location


def test_decoded_path_and_raw_query() -> None:
    req = _req("/8080/a%2Fb%20c?q=%20x&y")
    assert (req.path, req.escaped_path, req.raw_query) == ("/8080/a/b c", "/8080/a%2Fb%20c", "q=%20x&y")
    absolute = _req("http://10.0.0.1:9000/8080/h?x=1")
    assert (absolute.path, absolute.raw_query) == ("/8080/h", "x=1")


ERR = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
BAD = "HTTP/1.1 400 Bad Request" + ERR + "400 Bad Request"


def _go(public: str) -> str:
    """Go's answer with a reason: the same text in the status line and the body."""
    return f"HTTP/1.1 {public}{ERR}{public}"


@pytest.mark.parametrize(
    ("raw", "answer"),
    [
        (b"garbage", BAD),
        (b"GET /8080/h", BAD),
        (b"GET /8080/h HTTP/x", BAD),
        (b"G(T /8080/h HTTP/1.1\r\nHost: a", BAD),
        (b"GET 8080/h HTTP/1.1\r\nHost: a", BAD),
        (b"GET /8080/%zz HTTP/1.1\r\nHost: a", BAD),
        (b"GET /8080/h HTTP/1.1\r\nHost: a\r\nbad key: v", BAD),
        (b"GET /8080/h HTTP/1.1\r\nHost: a\r\n folded", BAD),
        (b"GET /8080/h HTTP/1.1",
         _go("400 Bad Request: missing required Host header")),
        (b"GET /8080/h HTTP/1.1\r\nHost: a\r\nHost: b",
         _go("400 Bad Request: too many Host headers")),
        (b"GET /8080/h HTTP/1.1\r\nHost: a b",
         _go("400 Bad Request: malformed Host header")),
        (b"GET /8080/h HTTP/1.1\r\nHost: a\r\nX: a\x01b",
         _go("400 Bad Request: invalid header value")),
        (b"GET /8080/h HTTP/2.0\r\nHost: a",
         _go("505 HTTP Version Not Supported: unsupported protocol version")),
        (b"GET /8080/h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip",
         "HTTP/1.1 501 Not Implemented" + ERR + "Unsupported transfer encoding"),
        (b"GET /8080/h HTTP/1.1\r\nHost: a\r\nContent-Length: x", BAD),
    ],
)  # fmt: skip
def test_requests_go_refuses_get_gos_answer(raw: bytes, answer: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request_head(raw)
    assert info.value.answer.decode() == answer


def test_http10_needs_no_host_and_keep_alive_rules() -> None:
    assert not _req("/8080/h", version="HTTP/1.0").keep_alive
    assert _req("/8080/h", "Connection: keep-alive", version="HTTP/1.0").keep_alive
    assert _req("/8080/h").keep_alive and not _req("/8080/h", "Connection: close").keep_alive
    assert parse_request_head(b"GET /8080/h HTTP/1.0").host == ""


# -- http.go: the request the application receives ------------------------------------------------------


def test_upstream_request_as_gos_client_writes_it() -> None:
    h = Headers()
    h.add("User-Agent", "kube-probe/1.31")
    h.add("Accept", "*/*")
    h.add("X-B", "2")
    h.add("X-A", "1")
    h.add("Content-Length", "3")
    raw = _request_bytes("/healthz?x=1", "10.0.0.1:8080", h).decode()
    assert raw.split("\r\n") == [
        "GET /healthz?x=1 HTTP/1.1", "Host: 10.0.0.1:8080", "User-Agent: kube-probe/1.31",
        "Accept: */*", "X-A: 1", "X-B: 2", "Accept-Encoding: gzip", "Connection: close", "", "",
    ]  # fmt: skip
    mine = Headers()
    mine.add("Accept-Encoding", "br")
    mine.add("Connection", "close")
    assert "Accept-Encoding: gzip" not in _request_bytes("/", "h:1", mine).decode()
    assert _request_bytes("/", "h:1", mine).decode().count("Connection: close") == 1


def test_redirect_headers_drop_credentials_off_domain_and_set_referer() -> None:
    h = Headers()
    h.add("Authorization", "secret")
    h.add("X-Custom", "v")
    same = _redirect_headers(h, "10.0.0.1", "10.0.0.1", "http://10.0.0.1:8080/a", "http://10.0.0.1:8080/b")
    assert same.get("Authorization") == "secret" and same.get("Referer") == "http://10.0.0.1:8080/a"
    other = _redirect_headers(h, "10.0.0.1", "example.com", "https://10.0.0.1/a", "http://example.com/b")
    assert not other.has("Authorization") and other.get("X-Custom") == "v" and not other.has("Referer")


@pytest.mark.parametrize(
    ("address", "v6"),
    [("10.0.0.1", False), ("fd00::1", True), ("::ffff:10.0.0.1", False), ("", False), ("pod.local", False)],
)
def test_ipv6_pods(address: str, v6: bool) -> None:
    assert is_ipv6(address) is v6


def test_join_host_port() -> None:
    assert join_host_port("fd00::1", 80) == "[fd00::1]:80" and join_host_port("10.0.0.1", 80) == "10.0.0.1:80"


# -- grpc.go: the health messages -----------------------------------------------------------------------


def test_grpc_timeout_header_fits_eight_digits() -> None:
    assert [grpc_timeout(s) for s in (1, 0.0001, 30, 99_999, 100_000, 10**9)] == [
        "1000m", "1m", "30000m", "99999000m", "100000S", "99999999S",
    ]  # fmt: skip


def test_health_check_request_encoding() -> None:
    assert encode_request("") == b"\x00\x00\x00\x00\x00"
    assert encode_request("liveness") == b"\x00\x00\x00\x00\x0a\x0a\x08liveness"


@pytest.mark.parametrize(
    ("message", "status"),
    [
        (b"", 0),  # UNKNOWN when absent
        (b"\x08\x01", 1),  # SERVING
        (b"\x08\x02", 2),  # NOT_SERVING
        (b"\x12\x03abc\x08\x01\x1d\x00\x00\x00\x00", 1),  # unknown fields skipped
    ],
)
def test_health_check_response_decoding(message: bytes, status: int) -> None:
    assert decode_status(message) == status
    assert decode_response(b"\x00" + len(message).to_bytes(4, "big") + message) == status


@pytest.mark.parametrize(
    "body", [b"", b"\x01\x00\x00\x00\x02\x08\x01", b"\x00\x00\x00\x00\x05\x08", b"\x00\x00"]
)
def test_malformed_health_responses_are_errors(body: bytes) -> None:
    with pytest.raises(ProbeError):
        decode_response(body)


# -- the agent's factory ------------------------------------------------------------------------------


def test_agent_factory_is_off_at_port_zero_and_probes_the_dataplane_address() -> None:
    from types import SimpleNamespace

    from kuma_dp.config import RunConfig
    from kuma_dp.probes import LazyProbeProxy, from_agent

    cfg = RunConfig()
    assert cfg.application_probe_proxy_port == 0
    assert from_agent(SimpleNamespace(cfg=cfg, sidecar_config={})) is None  # type: ignore[arg-type]
    cfg.application_probe_proxy_port = 9001
    sidecar = {"networking": {"address": "10.0.0.7", "corefileTemplate": None}}
    comp = from_agent(SimpleNamespace(cfg=cfg, sidecar_config=sidecar))  # type: ignore[arg-type]
    assert isinstance(comp, LazyProbeProxy)
    assert (comp.port, comp.address, comp.wait_ready) == (9001, "10.0.0.7", False)
