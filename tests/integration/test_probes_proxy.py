"""The application probe proxy over real sockets, as the kubelet drives it: Kuma v2.14.3's
`app/kuma-dp/pkg/dataplane/probes/probes_test.go` case by case (HTTP, HTTPS, TCP and gRPC against mock
applications), then what that file does not check: the source address 127.0.0.6 the application sees,
the headers it receives, redirects, bodies, bad requests, keep-alive and the bounds under a flood.

The proxy runs in a thread's event loop bound to 127.0.0.1 on a free port, probing the "pod" 127.0.0.1
(Kuma's test rewrites its source address to 127.0.0.1; ours keeps 127.0.0.6, which loopback accepts). A
slow application is one that waits on an event the test sets once it has the proxy's answer, so no test
depends on how long anything takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kuma_dp import __version__
from kuma_dp.probes.proxy import ProbeProxy
from kuma_dp_dev.harness.poll import wait_until
from kuma_dp_dev.harness.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

POD = "127.0.0.1"
KUBELET = {"User-Agent": "kube-probe/1.31", "Accept": "*/*", "Connection": "close"}


# -- the proxy -----------------------------------------------------------------------------------------------


@contextmanager
def running_proxy(pod: str = POD, **kwargs: Any) -> Iterator[ProbeProxy]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def make() -> ProbeProxy:
        return ProbeProxy(0, pod, version=__version__, bind_host="127.0.0.1", **kwargs)

    proxy = asyncio.run_coroutine_threadsafe(make(), loop).result(5)

    async def start() -> asyncio.Task[None]:
        task = asyncio.create_task(proxy.run())
        await asyncio.wait({task, asyncio.ensure_future(proxy.ready.wait())}, return_when="FIRST_COMPLETED")
        return task

    async def stop(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    task = asyncio.run_coroutine_threadsafe(start(), loop).result(5)
    try:
        assert proxy.ready.is_set(), task
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(stop(task), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@dataclass
class Answer:
    status: int
    body: str
    headers: dict[str, str]


def kubelet_get(proxy: ProbeProxy, path: str, headers: dict[str, str] | None = None) -> Answer:
    """One probe as the kubelet sends it: GET on its own connection, its headers plus the probe's."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.bound_port, timeout=30)
    try:
        # The kubelet's Go client sends no Accept-Encoding (compression off), so neither do we.
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in {**KUBELET, **(headers or {})}.items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return Answer(resp.status, resp.read().decode(), dict(resp.getheaders()))
    finally:
        conn.close()


# -- mock applications ---------------------------------------------------------------------------------------


@dataclass
class Seen:
    peer: str
    path: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A probe given up on (timeout) leaves a broken pipe behind: expected here."""


@dataclass
class MockHTTP:
    """Kuma's mockHTTPServerConfig (Path, ReturnStatusCode, FailWhenHeader) plus our own routes."""

    path: str = "/healthz"
    status: int = 200
    fail_when_header: str = "x-custom-header-triggers-failure"
    tls: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    active: int = 0
    most_active: int = 0
    port: int = 0
    extra: dict[str, Callable[[BaseHTTPRequestHandler], None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        mock = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    mock.seen.append(Seen(self.client_address[0], self.path, list(self.headers.items())))
                    mock.active += 1
                    mock.most_active = max(mock.most_active, mock.active)
                try:
                    route = mock.extra.get(self.path.partition("?")[0])
                    if route is not None:
                        route(self)
                    elif mock.path and self.path != mock.path:
                        self._send(404)
                    elif mock.fail_when_header and self.headers.get(mock.fail_when_header):
                        self._send(400)
                    else:
                        self._send(mock.status, b"mock HTTP server response")
                finally:
                    with lock:
                        mock.active -= 1

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.handler = Handler
        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app() -> Iterator[MockHTTP]:
    mock = MockHTTP()
    yield mock
    mock.close()


@pytest.fixture
def proxy() -> Iterator[ProbeProxy]:
    with running_proxy() as p:
        yield p


def closed_port() -> int:
    """A port nothing listens on (Kuma's test uses fixed ones: 8081, 6000, 5656)."""
    return free_port()


# -- probes_test.go: "Application probe proxy listener" ----------------------------------------------------


def test_starts_and_stops_the_listener() -> None:
    with running_proxy() as p:
        port = p.bound_port
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_taken_port_fails_with_kumas_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def run() -> str:
            try:
                await ProbeProxy(port, POD, version=__version__, bind_host="127.0.0.1").run()
            except OSError as exc:
                return str(exc)
            return ""

        message = asyncio.run(run())
    assert message == (
        f"unable to listen for the Application Probe Proxy server: listen tcp :{port}: Address already in use"
    )


# -- probes_test.go: "HTTP Probes" ---------------------------------------------------------------------------


def test_http_upstream_healthy(proxy: ProbeProxy, app: MockHTTP) -> None:
    ans = kubelet_get(proxy, f"/{app.port}/healthz", {"X-Kuma-Probes-Timeout": "5"})
    assert (ans.status, ans.body) == (200, "HEALTHY\n")
    assert ans.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert ans.headers["X-Content-Type-Options"] == "nosniff"


def test_http_upstream_port_not_listening(proxy: ProbeProxy) -> None:
    ans = kubelet_get(proxy, f"/{closed_port()}/healthz")
    assert (ans.status, ans.body) == (503, "UNHEALTHY\n")


def test_http_upstream_failure_returns_the_application_status(proxy: ProbeProxy, app: MockHTTP) -> None:
    headers = {"x-custom-header-triggers-failure": "present", "X-Kuma-Probes-Timeout": "5"}
    ans = kubelet_get(proxy, f"/{app.port}/healthz", headers)
    assert (ans.status, ans.body) == (400, "UNHEALTHY\n")


def test_http_upstream_path_does_not_match(proxy: ProbeProxy, app: MockHTTP) -> None:
    ans = kubelet_get(proxy, f"/{app.port}/bad-path", {"X-Kuma-Probes-Timeout": "5"})
    assert (ans.status, ans.body) == (404, "UNHEALTHY\n")


def test_http_short_timeout_fails(proxy: ProbeProxy, app: MockHTTP) -> None:
    app.extra["/slow"] = lambda h: (app.release.wait(30), h._send(200))  # type: ignore[attr-defined, func-returns-value]
    ans = kubelet_get(proxy, f"/{app.port}/slow", {"X-Kuma-Probes-Timeout": "1"})
    app.release.set()
    assert (ans.status, ans.body) == (503, "UNHEALTHY\n")


# -- probes_test.go: "HTTPS Probes" --------------------------------------------------------------------------


@pytest.fixture
def tls_app() -> Iterator[MockHTTP]:
    import trustme

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    trustme.CA().issue_cert("mock-application").configure_cert(ctx)
    mock = MockHTTP(path="/healthz?scheme=https", tls=ctx)
    yield mock
    mock.close()


def test_https_without_verifying_certificates_keeps_the_query(proxy: ProbeProxy, tls_app: MockHTTP) -> None:
    ans = kubelet_get(proxy, f"/{tls_app.port}/healthz?scheme=https", {"X-Kuma-Probes-Scheme": "HTTPS"})
    assert (ans.status, ans.body) == (200, "HEALTHY\n")
    assert tls_app.seen[-1].path == "/healthz?scheme=https"
    assert tls_app.seen[-1].peer == "127.0.0.6"


def test_https_app_probed_as_http_fails(proxy: ProbeProxy, tls_app: MockHTTP) -> None:
    """Ours: without X-Kuma-Probes-Scheme the probe speaks plain HTTP, which a TLS server refuses."""
    ans = kubelet_get(proxy, f"/{tls_app.port}/healthz?scheme=https")
    assert ans.status == 503


def test_http_probe_redirected_to_https_verifies_the_certificate(
    proxy: ProbeProxy, app: MockHTTP, tls_app: MockHTTP
) -> None:
    """Only an HTTPS probe's own transport skips verification: a redirect from an HTTP probe to a
    self-signed HTTPS application goes through Go's default, verifying client and fails."""
    target = f"https://127.0.0.1:{tls_app.port}/healthz?scheme=https"
    app.extra["/to-https"] = lambda h: h._send(302, headers={"Location": target})  # type: ignore[attr-defined]
    ans = kubelet_get(proxy, f"/{app.port}/to-https")
    assert ans.status == 503
    assert tls_app.seen == []  # the handshake failed: no request reached it


# -- probes_test.go: "TCP Probes" ----------------------------------------------------------------------------


@contextmanager
def tcp_app() -> Iterator[tuple[int, list[str]]]:
    """Kuma's mock TCP server: writes a line to each connection and closes it; records the peers."""
    peers: list[str] = []
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
            except OSError:
                return
            peers.append(addr[0])
            with conn:
                conn.sendall(b"connection to mock TCP server has successfully established")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield srv.getsockname()[1], peers
    finally:
        stop.set()
        srv.close()


def test_tcp_healthy(proxy: ProbeProxy) -> None:
    with tcp_app() as (port, peers):
        ans = kubelet_get(proxy, f"/tcp/{port}")
    assert (ans.status, ans.body) == (200, "HEALTHY\n")
    assert peers == ["127.0.0.6"]


def test_tcp_port_not_listening(proxy: ProbeProxy) -> None:
    ans = kubelet_get(proxy, f"/tcp/{closed_port()}", {"X-Kuma-Probes-Timeout": "3"})
    assert (ans.status, ans.body) == (503, "UNHEALTHY\n")


# -- probes_test.go: "GRPC Probes" ---------------------------------------------------------------------------


@dataclass
class MockGRPC:
    """Kuma's mockGRPCServerConfig: service "liveness" is SERVING (after waiting for `release` when
    `slow`), any other service NOT_SERVING; records peers and user agents."""

    health: bool = True
    slow: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    peers: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        import grpc

        def check(request: bytes, context: Any) -> bytes:
            self.peers.append(context.peer())
            self.agents += [v for k, v in context.invocation_metadata() if k == "user-agent"]
            service = request[2 : 2 + request[1]].decode() if request[:1] == b"\x0a" else ""
            if service == "liveness":
                if self.slow:
                    self.release.wait(30)
                return b"\x08\x01"
            return b"\x08\x02"

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        if self.health:
            handler = grpc.method_handlers_generic_handler(
                "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)}
            )
            self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.release.set()
        self.server.stop(0)


@pytest.fixture
def grpc_app() -> Iterator[MockGRPC]:
    mock = MockGRPC()
    yield mock
    mock.close()


def test_grpc_healthy(proxy: ProbeProxy, grpc_app: MockGRPC) -> None:
    headers = {"X-Kuma-Probes-GRPC-Service": "liveness", "X-Kuma-Probes-Timeout": "5"}
    ans = kubelet_get(proxy, f"/grpc/{grpc_app.port}", headers)
    assert (ans.status, ans.body) == (200, "HEALTHY\n")
    assert grpc_app.peers[-1].startswith("ipv4:127.0.0.6:")
    assert grpc_app.agents[-1].startswith(f"kube-probe/{__version__}")


def test_grpc_short_timeout_fails(proxy: ProbeProxy) -> None:
    mock = MockGRPC(slow=True)
    try:
        headers = {"X-Kuma-Probes-GRPC-Service": "liveness", "X-Kuma-Probes-Timeout": "1"}
        ans = kubelet_get(proxy, f"/grpc/{mock.port}", headers)
    finally:
        mock.close()
    assert (ans.status, ans.body) == (503, "UNHEALTHY\n")


def test_grpc_port_not_listening(proxy: ProbeProxy) -> None:
    ans = kubelet_get(proxy, f"/grpc/{closed_port()}")
    assert (ans.status, ans.body) == (503, "UNHEALTHY\n")


def test_grpc_application_reports_a_failure(proxy: ProbeProxy, grpc_app: MockGRPC) -> None:
    ans = kubelet_get(proxy, f"/grpc/{grpc_app.port}", {"X-Kuma-Probes-GRPC-Service": "readiness"})
    assert (ans.status, ans.body) == (503, "UNHEALTHY\n")


def test_grpc_without_the_health_service_fails(proxy: ProbeProxy) -> None:
    """Ours: UNIMPLEMENTED (no grpc.health.v1 on the server) is UNHEALTHY, as grpc.go logs it."""
    mock = MockGRPC(health=False)
    try:
        ans = kubelet_get(proxy, f"/grpc/{mock.port}")
    finally:
        mock.close()
    assert ans.status == 503


def test_grpc_on_an_http_port_fails(proxy: ProbeProxy, app: MockHTTP) -> None:
    assert kubelet_get(proxy, f"/grpc/{app.port}").status == 503


# -- ours: what the application receives ---------------------------------------------------------------------


def test_the_application_sees_127_0_0_6_and_the_forwarded_headers(proxy: ProbeProxy, app: MockHTTP) -> None:
    headers = {
        "X-Kuma-Probes-Host": "example.com",
        "X-Kuma-Probes-Timeout": "5",
        "x-custom": "custom-value",
        "Authorization": "Bearer t",
    }
    assert kubelet_get(proxy, f"/{app.port}/healthz", headers).status == 200
    seen = app.seen[-1]
    assert seen.peer == "127.0.0.6"
    assert seen.path == "/healthz"
    assert seen.header("User-Agent") == ["kube-probe/1.31"]  # the kubelet's own is kept
    assert seen.header("Accept") == ["*/*"]
    assert seen.header("X-Custom") == ["custom-value"]
    assert seen.header("Authorization") == ["Bearer t"]
    assert seen.header("Accept-Encoding") == ["gzip"]
    assert seen.header("Connection") == ["close"]
    assert not [k for k, _ in seen.headers if k.lower().startswith("x-kuma-probes-")]
    # Deliberate difference from Kuma 2.14.3 (whose Go client drops the override): the application sees the
    # probe's Host, as the kubelet sends it without a mesh.
    assert seen.header("Host") == ["example.com"]


def test_without_a_host_override_the_application_sees_the_dialled_address(
    proxy: ProbeProxy, app: MockHTTP
) -> None:
    assert kubelet_get(proxy, f"/{app.port}/healthz").status == 200
    assert app.seen[-1].header("Host") == [f"127.0.0.1:{app.port}"]


def test_user_agent_is_kuma_probe_when_the_caller_sends_none(proxy: ProbeProxy, app: MockHTTP) -> None:
    with socket.create_connection(("127.0.0.1", proxy.bound_port), timeout=10) as s:
        s.sendall(f"GET /{app.port}/healthz HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert app.seen[-1].header("User-Agent") == [f"kuma-probe/{__version__}"]


def test_query_and_escaped_path_reach_the_application(proxy: ProbeProxy, app: MockHTTP) -> None:
    app.extra["/a%20b/c"] = lambda h: h._send(204)  # type: ignore[attr-defined]
    assert kubelet_get(proxy, f"/{app.port}/a%20b/c?x=1&y=%20").status == 200
    assert app.seen[-1].path == "/a%20b/c?x=1&y=%20"
    assert kubelet_get(proxy, f"/{app.port}").status == 404  # "/": not the mock's /healthz
    assert app.seen[-1].path == "/"


# -- ours: answers the kubelet judges ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, 200), (204, 200), (302, 200), (399, 200), (400, 400), (500, 500), (503, 503)],
)
def test_application_status_mapping(proxy: ProbeProxy, app: MockHTTP, status: int, expected: int) -> None:
    app.status = status
    assert kubelet_get(proxy, f"/{app.port}/healthz").status == expected


def test_redirects_are_followed_like_gos_client(proxy: ProbeProxy, app: MockHTTP) -> None:
    app.extra["/to-ok"] = lambda h: h._send(302, headers={"Location": "/healthz"})  # type: ignore[attr-defined]
    app.extra["/to-missing"] = lambda h: h._send(301, headers={"Location": "/nowhere"})  # type: ignore[attr-defined]
    app.extra["/loop"] = lambda h: h._send(307, headers={"Location": "/loop"})  # type: ignore[attr-defined]
    assert kubelet_get(proxy, f"/{app.port}/to-ok").status == 200
    assert app.seen[-1].header("Referer") == [f"http://127.0.0.1:{app.port}/to-ok"]
    assert kubelet_get(proxy, f"/{app.port}/to-missing").status == 404
    before = len(app.seen)
    assert kubelet_get(proxy, f"/{app.port}/loop").status == 503  # stopped after 10 redirects
    assert len(app.seen) - before == 11


def test_body_is_read_at_most_10kib_and_a_broken_one_fails(proxy: ProbeProxy, app: MockHTTP) -> None:
    big = b"x" * (4 * 1024 * 1024)
    app.extra["/big"] = lambda h: h._send(200, big)  # type: ignore[attr-defined]
    app.extra["/gzip-ok"] = lambda h: h._send(  # type: ignore[attr-defined]
        200, gzip.compress(b"ok"), {"Content-Encoding": "gzip"}
    )
    app.extra["/gzip-bad"] = lambda h: h._send(200, b"not gzip at all", {"Content-Encoding": "gzip"})  # type: ignore[attr-defined]

    def short(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100")
        h.end_headers()
        h.wfile.write(b"only ten..")
        h.close_connection = True

    app.extra["/short"] = short
    assert kubelet_get(proxy, f"/{app.port}/big").status == 200
    assert kubelet_get(proxy, f"/{app.port}/gzip-ok").status == 200
    assert kubelet_get(proxy, f"/{app.port}/gzip-bad").status == 503
    assert kubelet_get(proxy, f"/{app.port}/short").status == 503


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/abc/healthz", 503, "UNKNOWN\n"),
        ("/99999/healthz", 503, "UNKNOWN\n"),
        ("/tcp/x", 503, "UNKNOWN\n"),
        ("/grpc/", 503, "UNKNOWN\n"),
        ("/", 503, "UNKNOWN\n"),
    ],
)
def test_paths_without_a_port_are_unknown(proxy: ProbeProxy, path: str, status: int, body: str) -> None:
    ans = kubelet_get(proxy, path)
    assert (ans.status, ans.body) == (status, body)


def test_go_mux_redirects(proxy: ProbeProxy, app: MockHTTP) -> None:
    ans = kubelet_get(proxy, "/tcp")
    assert (ans.status, ans.headers["Location"]) == (301, "/tcp/")
    assert ans.body == '<a href="/tcp/">Moved Permanently</a>.\n\n'
    ans = kubelet_get(proxy, f"/{app.port}//healthz?a=1")
    assert (ans.status, ans.headers["Location"]) == (301, f"/{app.port}/healthz?a=1")


def raw_exchange(proxy: ProbeProxy, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.bound_port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_bad_requests_get_gos_answers(proxy: ProbeProxy) -> None:
    err = b"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
    assert raw_exchange(proxy, b"nonsense\r\n\r\n") == b"HTTP/1.1 400 Bad Request" + err + b"400 Bad Request"
    assert raw_exchange(proxy, b"GET /8080/h HTTP/1.1\r\n\r\n") == (
        b"HTTP/1.1 400 Bad Request: missing required Host header" + err
        + b"400 Bad Request: missing required Host header"
    )  # fmt: skip
    huge = b"GET /8080/h HTTP/1.1\r\nHost: a\r\nX: " + b"a" * (128 * 1024) + b"\r\n\r\n"
    assert raw_exchange(proxy, huge) == (
        b"HTTP/1.1 431 Request Header Fields Too Large" + err + b"431 Request Header Fields Too Large"
    )
    # A client that never finishes its head is dropped without an answer (Go's ReadHeaderTimeout).
    assert raw_exchange(proxy, b"GET /8080/h HTTP/1.1\r\n") == b""


def test_keep_alive_serves_several_probes_on_one_connection(proxy: ProbeProxy, app: MockHTTP) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.bound_port, timeout=10)
    try:
        for path, status in ((f"/{app.port}/healthz", 200), (f"/{app.port}/nope", 404), ("/tcp/x", 503)):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == status
            assert resp.getheader("Connection") is None
    finally:
        conn.close()


# -- ours: bounds ------------------------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_flood_of_connections_is_bounded_and_probes_work_after(app: MockHTTP) -> None:
    with running_proxy(max_connections=16) as p:
        before = _open_fds()
        flood = [socket.create_connection(("127.0.0.1", p.bound_port), timeout=10) for _ in range(100)]
        try:
            for s in flood:
                s.sendall(b"GET /8080/h HTTP/1.1\r\n")  # a head that never ends
            # Our 100 client sockets plus at most the 16 the proxy accepted: the rest wait in the kernel.
            during = _open_fds()
            assert during - before <= 100 + 16, (before, during)
        finally:
            for s in flood:
                s.close()
        ans = kubelet_get(p, f"/{app.port}/healthz")
        assert ans.status == 200


def test_probes_of_the_application_are_limited_in_flight(app: MockHTTP) -> None:
    app.extra["/slow"] = lambda h: (app.release.wait(30), h._send(200))  # type: ignore[attr-defined, func-returns-value]
    with running_proxy(max_in_flight=2) as p, futures.ThreadPoolExecutor(8) as pool:
        pending = [
            pool.submit(kubelet_get, p, f"/{app.port}/slow", {"X-Kuma-Probes-Timeout": "30"})
            for _ in range(8)
        ]
        # Once two are in the application, let everything through.
        wait_until(lambda: app.active >= 2, 20, "two probes in the application")
        app.release.set()
        statuses = [f.result(30).status for f in pending]
    assert statuses == [200] * 8
    assert app.most_active == 2


# -- ours: application answers as Go's client reads them --------------------------------------------


@contextmanager
def raw_app(answer: bytes) -> Iterator[int]:
    """An application that reads a request head and writes `answer` verbatim, then closes."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(4096)):
                    data += chunk
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", 200, id="bare LF line ends"),
        pytest.param(b"HTTP/1.0 503 Service Unavailable\r\n\r\nbody to EOF", 503, id="body until EOF"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 200,
                     id="chunked"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 503,
                     id="broken chunked"),
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 200, id="1xx skipped"),
        pytest.param(b"garbage\r\n\r\n", 503, id="not HTTP"),
        pytest.param(b"HTTP/1.1 2000 OK\r\n\r\n", 503, id="malformed status code"),
        pytest.param(b"", 503, id="closed without an answer"),
        pytest.param(b"HTTP/1.1 599 Whatever\r\nContent-Length: 0\r\n\r\n", 599, id="unknown status kept"),
    ],
)  # fmt: skip
def test_application_answers_read_as_gos_client_does(proxy: ProbeProxy, answer: bytes, status: int) -> None:
    with raw_app(answer) as port:
        ans = kubelet_get(proxy, f"/{port}/healthz")
    assert ans.status == status
    assert ans.body == ("HEALTHY\n" if status == 200 else "UNHEALTHY\n")


def test_status_below_100_closes_the_connection_as_gos_panicking_handler(proxy: ProbeProxy) -> None:
    with raw_app(b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n") as port:
        out = raw_exchange(proxy, f"GET /{port}/h HTTP/1.1\r\nHost: pod\r\n\r\n".encode())
    assert out == b""


def test_a_client_that_goes_away_cancels_its_probe(app: MockHTTP) -> None:
    """With one probe allowed in flight, a second probe is served only because the first one's client
    disconnected and its probe of the still-blocked application was cancelled."""
    app.extra["/slow"] = lambda h: (app.release.wait(30), h._send(200))  # type: ignore[attr-defined, func-returns-value]
    with running_proxy(max_in_flight=1) as p:
        gone = socket.create_connection(("127.0.0.1", p.bound_port), timeout=10)
        gone.sendall(
            f"GET /{app.port}/slow HTTP/1.1\r\nHost: pod\r\nX-Kuma-Probes-Timeout: 30\r\n\r\n".encode()
        )
        wait_until(lambda: app.active == 1, 20, "the slow probe in the application")
        gone.close()
        assert kubelet_get(p, f"/{app.port}/healthz").status == 200
        assert app.active == 1, "the application still holds the abandoned request"


def test_timeouts_of_zero_or_less_follow_go(proxy: ProbeProxy, app: MockHTTP, grpc_app: MockGRPC) -> None:
    """http.Client: <= 0 is no timeout; net.Dialer: 0 is none, negative has expired; grpc-go: <= 0 has
    expired."""
    with tcp_app() as (port, _):
        assert kubelet_get(proxy, f"/tcp/{port}", {"X-Kuma-Probes-Timeout": "0"}).status == 200
        assert kubelet_get(proxy, f"/tcp/{port}", {"X-Kuma-Probes-Timeout": "-1"}).status == 503
    assert kubelet_get(proxy, f"/{app.port}/healthz", {"X-Kuma-Probes-Timeout": "-1"}).status == 200
    assert kubelet_get(proxy, f"/{app.port}/healthz", {"X-Kuma-Probes-Timeout": "0"}).status == 200
    service = {"X-Kuma-Probes-GRPC-Service": "liveness"}
    assert (
        kubelet_get(proxy, f"/grpc/{grpc_app.port}", {**service, "X-Kuma-Probes-Timeout": "0"}).status == 503
    )
    assert kubelet_get(proxy, f"/grpc/{grpc_app.port}", service).status == 200


def test_an_oversized_application_head_is_unhealthy(proxy: ProbeProxy) -> None:
    huge = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (128 * 1024) + b"\r\nContent-Length: 0\r\n\r\n"
    with raw_app(huge) as port:
        assert kubelet_get(proxy, f"/{port}/healthz").status == 503


def test_request_bodies_are_dropped_and_chunked_ones_close_the_connection(
    proxy: ProbeProxy, app: MockHTTP
) -> None:
    sized = f"POST /{app.port}/healthz HTTP/1.1\r\nHost: pod\r\nContent-Length: 5\r\n\r\nhello"
    chunked = (
        f"POST /{app.port}/healthz HTTP/1.1\r\nHost: pod\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    with socket.create_connection(("127.0.0.1", proxy.bound_port), timeout=10) as s:
        s.sendall(sized.encode())
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" not in first
        s.sendall(chunked.encode())
        second = b""
        while chunk := s.recv(65536):
            second += chunk
    assert second.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in second
