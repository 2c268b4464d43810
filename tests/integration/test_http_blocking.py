"""The blocking HTTP client (kuma_dp._httpwire.blocking_request, the first bootstrap request before any event
loop) against the asyncio client (kuma_dp._http.request): the same peer gives the same response or the same
error, body caps included; and the bootstrap fetch goes on from a failed blocking attempt as if it had made
that attempt itself.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme

from kuma_dp import _http, _httpwire
from kuma_dp.bootstrap.client import (
    DP_NOT_FOUND,
    BootstrapError,
    fetch_bootstrap,
    first_attempt_blocking,
    system_ca_bundle,
)
from kuma_dp.config import RunConfig
from tests.helpers.fake_cp import FakeCP, Reply, minimal_bootstrap_yaml

pytestmark = pytest.mark.integration

MB = 1024 * 1024


@contextmanager
def raw_peer(answer: Callable[[socket.socket], None], tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """A TCP server on loopback that reads the request head and runs `answer` on each connection."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                if tls is not None:
                    conn = tls.wrap_socket(conn, server_side=True)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                answer(conn)
            except OSError:
                pass
            finally:
                conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        srv.close()
        t.join(5)


def send(data: bytes) -> Callable[[socket.socket], None]:
    return lambda conn: conn.sendall(data)


def stream_forever(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
    block = b"x" * 65536
    for _ in range(400):  # 25 MiB at most, far over the cap used below
        conn.sendall(block)


def silent(conn: socket.socket) -> None:
    threading.Event().wait(3)


PEERS: dict[str, Callable[[socket.socket], None]] = {
    "content-length": send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: x/y\r\n\r\nhello"),
    "chunked": send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
    "to-eof": send(b"HTTP/1.1 404 Not Found\r\nconnection: close\r\n\r\nnot here"),
    "length-over-cap": send(b"HTTP/1.1 200 OK\r\ncontent-length: 99999999\r\n\r\n"),
    "streaming-over-cap": stream_forever,
    "truncated": send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"),
    "not-http": send(b"SSH-2.0-OpenSSH\r\n\r\n"),
    "head-too-large": send(b"HTTP/1.1 200 OK\r\n" + b"x-pad: " + b"a" * (70 * 1024) + b"\r\n\r\n"),
    "silent": silent,
}


def outcome(call: Callable[[], _httpwire.Response]) -> tuple[str, object]:
    try:
        resp = call()
    except _httpwire.HttpError as exc:
        return type(exc).__name__, str(exc)
    return "response", (resp.status, resp.headers, resp.body)


@pytest.mark.parametrize("peer", sorted(PEERS))
def test_blocking_and_asyncio_clients_agree(peer: str) -> None:
    with raw_peer(PEERS[peer]) as port:
        kw = {"host": "127.0.0.1", "port": port, "body": b"{}", "max_body": MB, "timeout": 1.0}
        blocking = outcome(lambda: _httpwire.blocking_request("POST", "/bootstrap", **kw))
        via_loop = outcome(lambda: asyncio.run(_http.request("POST", "/bootstrap", **kw)))
    assert blocking == via_loop
    if peer in ("length-over-cap", "streaming-over-cap"):
        assert blocking[0] == "BodyTooLarge"
    if peer == "silent":
        assert blocking == ("HttpError", "no answer within 1s")


def test_blocking_client_verifies_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    answer = send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    with raw_peer(answer, tls=server_ctx) as port:
        trusted = ssl.create_default_context()
        ca.configure_trust(trusted)
        resp = _httpwire.blocking_request("GET", "/", host="127.0.0.1", port=port, timeout=5, ssl=trusted)
        assert resp.body == b"ok"
        with pytest.raises(_httpwire.HttpError) as info:
            _httpwire.blocking_request(
                "GET", "/", host="127.0.0.1", port=port, timeout=5, ssl=ssl.create_default_context()
            )
        assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)


def _cfg(url: str) -> RunConfig:
    cfg = RunConfig()
    cfg.control_plane.url = url
    cfg.control_plane.retry.backoff = 0.01
    cfg.control_plane.retry.max_duration = 30.0
    return cfg


def test_the_retry_loop_goes_on_from_a_failed_blocking_attempt() -> None:
    """404 (Dataplane not yet there) on the blocking attempt, then 200: the loop makes the second attempt,
    and every attempt is reported once."""
    replies = [Reply.status_only(404), Reply.bootstrap(minimal_bootstrap_yaml(9901))]
    attempts: list[bool] = []
    with FakeCP(replies) as cp:
        cfg = _cfg(cp.url)
        first = first_attempt_blocking(cfg, {"name": "dp-1"}, on_attempt=lambda ok, _: attempts.append(ok))
        assert first.result is None and str(first.failure) == DP_NOT_FOUND
        result = asyncio.run(
            fetch_bootstrap(
                cfg,
                {"name": "dp-1"},
                on_attempt=lambda ok, _: attempts.append(ok),
                prior_failure=first.failure,
                started=first.started,
            )
        )
        assert len(cp.requests) == 2
    assert b"admin" in result.bootstrap_yaml and result.document is not None
    assert attempts == [False, True]


def test_a_spent_budget_ends_with_the_blocking_attempts_error() -> None:
    attempts: list[bool] = []
    with FakeCP([Reply.status_only(404)]) as cp:
        cfg = _cfg(cp.url)
        first = first_attempt_blocking(cfg, {"name": "dp-1"}, on_attempt=lambda ok, _: attempts.append(ok))
        cfg.control_plane.retry.max_duration = 0.0
        with pytest.raises(BootstrapError, match="Dataplane entity not found"):
            asyncio.run(fetch_bootstrap(cfg, {}, prior_failure=first.failure, started=first.started))
        assert len(cp.requests) == 1  # the budget counts from the blocking attempt: no second request
    assert attempts == [False]


def test_system_ca_path_follows_kumas_list_in_order(tmp_path: Path) -> None:
    first, second = tmp_path / "a.pem", tmp_path / "b.pem"
    second.write_text("x")
    assert system_ca_bundle((str(first), str(second))) == str(second)
    first.write_text("x")
    assert system_ca_bundle((str(first), str(second))) == str(first)
    assert system_ca_bundle((str(tmp_path / "none.pem"),)) == ""
