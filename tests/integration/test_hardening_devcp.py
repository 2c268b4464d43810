"""Adversarial: `kuma-dp dev-cp` against hostile HTTP clients (issue: bounded bodies, idle connections, fd
exhaustion, deep nesting, an exposed address without auth).

Each test drives the real `kuma-dp dev-cp` process over real sockets and checks what a client sees (status,
an answer to a well-behaved request while the attack goes on) and what the operator sees (one line per kind
of event, no traceback). The bounds checked (RSS grew less than 200 MB while 1 GB streamed) are orders of
magnitude away from normal, not performance claims; bench/hardening.py measures.
"""

from __future__ import annotations

import json
import resource
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers.agent_proc import KUMA_DP, AgentProcess, Agents
from tests.helpers.resources import dataplane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

NOFILE = 256


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def start_cp(agents: Agents, tmp: Path, *args: str, low_nofile: bool = False) -> tuple[AgentProcess, int]:
    ready = tmp / "dev-cp.ready.json"
    argv = [*KUMA_DP, "dev-cp", "--port", "0", "--ready-file", str(ready), *args]
    extra = {"preexec_fn": _low_nofile} if low_nofile else {}
    cp = agents.add(AgentProcess(argv, tmp / "dev-cp.log", **extra)).start()
    info = cp.wait_for(lambda: ready.exists() and json.loads(ready.read_text()), 30, "its ready file")
    return cp, int(info["port"])


def bootstrap_body(name: str = "probe") -> bytes:
    resource_json = json.dumps(dataplane(name, "svc", 18080, service_port=18081, admin_port=19901))
    return json.dumps({"mesh": "default", "name": name, "dataplaneResource": resource_json}).encode()


def rss(proc: AgentProcess) -> int:
    return int(psutil.Process(proc.proc.pid).memory_info().rss)


def raw_exchange(port: int, head: bytes, body_chunks: Iterable[bytes] = (), timeout: float = 30) -> bytes:
    """Send `head` and `body_chunks` from a thread while reading the answer, as curl does; return the answer
    once the server closed (the sending stops where the server stopped taking bytes)."""
    import threading

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:

        def send() -> None:
            try:
                s.sendall(head)
                for chunk in body_chunks:
                    s.sendall(chunk)
            except OSError:
                pass  # the server closed while we were still sending: what we want

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        data = b""
        try:
            while part := s.recv(65536):
                data += part
        except OSError:
            pass
        s.shutdown(socket.SHUT_RDWR)
        sender.join(timeout)
        return data


def test_huge_body_is_refused_while_streaming(agents: Agents, tmp_path: Path) -> None:
    cp, port = start_cp(agents, tmp_path)
    before = rss(cp)
    # 3 GiB announced: refused from the header, nothing read.
    head = (f"POST /bootstrap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {3 * 1024**3}\r\n\r\n").encode()  # fmt: skip
    answer = raw_exchange(port, head, iter([b"{" * 65536] * 16))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # Chunked, no length: 1 GB offered in 1 MiB chunks; refused once over the limit, while it streams.
    chunk = b"100000\r\n" + b" " * 0x100000 + b"\r\n"
    head = b"POST /bootstrap HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = raw_exchange(port, head, iter([chunk] * 1024))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert rss(cp) - before < 200 * 1024 * 1024
    # Still serving.
    resp = httpx.post(f"http://127.0.0.1:{port}/bootstrap", content=bootstrap_body(), timeout=10)
    assert resp.status_code == 200, resp.text
    assert "Traceback" not in cp.output()


def test_deep_nesting_is_a_400_not_a_traceback(agents: Agents, tmp_path: Path) -> None:
    cp, port = start_cp(agents, tmp_path)
    for body in (b"[" * 200_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        resp = httpx.post(f"http://127.0.0.1:{port}/bootstrap", content=body, timeout=10)
        assert resp.status_code == 400
    nested = '{"n":' * 50_000 + '"x"' + "}" * 50_000
    inner = '{"type": "Dataplane", "mesh": "default", "name": "deep", "networking": ' + nested + "}"
    body = json.dumps({"mesh": "default", "name": "deep", "dataplaneResource": inner}).encode()
    resp = httpx.post(f"http://127.0.0.1:{port}/bootstrap", content=body, timeout=10)
    assert resp.status_code in (400, 422), resp.text
    resp = httpx.post(f"http://127.0.0.1:{port}/bootstrap", content=bootstrap_body(), timeout=10)
    assert resp.status_code == 200
    assert "Traceback" not in cp.output()


@contextmanager
def idle_connections(port: int, n: int) -> Iterator[list[socket.socket]]:
    """`n` connections that never send a byte (or as many as the server lets us open)."""
    with ExitStack() as stack:
        socks = []
        for _ in range(n):
            try:
                s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
            socks.append(s)
        yield socks


def test_idle_connections_under_a_low_fd_limit_do_not_stop_bootstrap(agents: Agents, tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * NOFILE:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * NOFILE), hard))
    cp, port = start_cp(agents, tmp_path, low_nofile=True)
    with idle_connections(port, 3 * NOFILE):
        # A well-behaved client gets its bootstrap while the idle ones hold (or try to hold) every fd.
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            try:
                status = httpx.post(
                    f"http://127.0.0.1:{port}/bootstrap", content=bootstrap_body(), timeout=5
                ).status_code
            except httpx.TransportError:
                status = None
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, cp.output()[-3000:]
        time.sleep(2)  # let a spinning accept loop show itself in the log
    out = cp.output()
    assert "Traceback" not in out
    assert len(out.splitlines()) < 60, out[-3000:]
    assert cp.running


def test_exposed_address_without_token_or_tls_is_warned(agents: Agents, tmp_path: Path) -> None:
    cp, _ = start_cp(agents, tmp_path, "--address", "0.0.0.0")
    cp.wait_log("WARNING", 10)
    line = next(li for li in cp.output().splitlines() if "WARNING" in li)
    assert "0.0.0.0" in line and "--auth-token-file" in line and "--tls-cert-file" in line


def test_token_without_tls_is_warned_and_loopback_is_not(agents: Agents, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("a-token-of-some-length\n")
    token.chmod(0o600)
    cp, _ = start_cp(agents, tmp_path, "--address", "0.0.0.0", "--auth-token-file", str(token))
    cp.wait_log("WARNING", 10)
    line = next(li for li in cp.output().splitlines() if "WARNING" in li)
    assert "--tls-cert-file" in line and "without --auth-token-file" not in line
    lo = tmp_path / "lo"
    lo.mkdir()
    cp2, port = start_cp(agents, lo)
    httpx.post(f"http://127.0.0.1:{port}/bootstrap", content=bootstrap_body(), timeout=10)
    assert "WARNING" not in cp2.output()


if sys.platform != "linux":  # pragma: no cover
    pytest.skip("Linux only", allow_module_level=True)
