"""A stand-in for the control plane's `POST /bootstrap` (DP server, port 5678) for tests.

Real sockets, real HTTP(S): kuma-dp under test talks to it exactly as to kuma-cp. Configure the replies as a
sequence (the last one repeats), serve plain HTTP or TLS with a trustme CA, start it late (on a port chosen in
advance) to play "CP down at start", and read back every request it received.

    ca = trustme.CA()
    with FakeCP([Reply.status(503), Reply.bootstrap(minimal_bootstrap_yaml(9901))], tls_ca=ca) as cp:
        ... kuma-dp run --cp-address cp.url --ca-cert-file <ca pem> ...
        assert cp.requests[-1].json["name"] == "dp-1"
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Reply:
    """One HTTP answer."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"

    @classmethod
    def status_only(cls, status: int, body: str | bytes = b"") -> Reply:
        return cls(status=status, body=body.encode() if isinstance(body, str) else body)

    @classmethod
    def bootstrap(
        cls,
        bootstrap_yaml: str | bytes,
        sidecar: dict[str, Any] | None = None,
    ) -> Reply:
        """The JSON reply kuma-cp sends to `accept: application/json` (base64 YAML + sidecar config)."""
        raw = bootstrap_yaml.encode() if isinstance(bootstrap_yaml, str) else bootstrap_yaml
        doc = {
            "bootstrap": base64.b64encode(raw).decode(),
            "kumaSidecarConfiguration": sidecar
            if sidecar is not None
            else {"networking": {"corefileTemplate": None, "address": ""}, "metrics": {"aggregate": None}},
        }
        return cls(status=200, body=json.dumps(doc).encode(), content_type="application/json")

    @classmethod
    def legacy_yaml(cls, bootstrap_yaml: str | bytes) -> Reply:
        """The pre-1.7 reply: raw YAML, `content-type: text/x-yaml`."""
        raw = bootstrap_yaml.encode() if isinstance(bootstrap_yaml, str) else bootstrap_yaml
        return cls(status=200, body=raw, content_type="text/x-yaml")


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = field(default=None)


def minimal_bootstrap_yaml(admin_port: int, node_id: str = "default.dp-1", cluster: str = "backend") -> str:
    """A valid Envoy v3 bootstrap (camelCase, as kuma-cp sends) with only an admin listener on loopback."""
    return (
        "admin:\n"
        "  accessLogPath: /dev/null\n"
        "  address:\n"
        "    socketAddress:\n"
        "      address: 127.0.0.1\n"
        f"      portValue: {admin_port}\n"
        "node:\n"
        f"  cluster: {cluster}\n"
        f"  id: {node_id}\n"
        "staticResources: {}\n"
    )


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        fake = self.server.fake
        rec = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            json=parsed,
        )
        reply = fake._next_reply(rec)
        self.send_response(reply.status)
        self.send_header("content-type", reply.content_type)
        self.send_header("content-length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_POST = _handle
    do_GET = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeCP


class FakeCP:
    """Threaded HTTP(S) server answering every request from `replies` in order (the last one repeats)."""

    def __init__(
        self,
        replies: list[Reply] | None = None,
        *,
        tls_ca: Any = None,
        host: str = "127.0.0.1",
        port: int = 0,
        hostnames: tuple[str, ...] = ("localhost", "127.0.0.1"),
    ) -> None:
        self.replies = list(replies or [Reply.bootstrap(minimal_bootstrap_yaml(9901))])
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Condition()
        self._tls_ca = tls_ca
        self._hostnames = hostnames
        self._server = _Server((host, port), _Handler, bind_and_activate=True)
        self._server.fake = self
        if tls_ca is not None:
            cert = tls_ca.issue_cert(*hostnames)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            cert.configure_cert(ctx)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self._tls_ca is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def write_ca_pem(self, path: str | Path) -> Path:
        """Write the CA that signed the server certificate (for --ca-cert-file)."""
        if self._tls_ca is None:
            raise RuntimeError("FakeCP was started without tls_ca")
        p = Path(path)
        self._tls_ca.cert_pem.write_to_path(str(p))
        return p

    def _next_reply(self, rec: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(rec)
            self._lock.notify_all()
            idx = min(len(self.requests) - 1, len(self.replies) - 1)
            return self.replies[idx]

    def wait_requests(self, count: int = 1, timeout: float = 30) -> bool:
        """Whether `count` requests arrived within `timeout` seconds (woken by each one, no polling)."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self.requests) >= count, timeout)

    def start(self) -> FakeCP:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-cp", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_token(claims: dict[str, Any] | None = None, alg: str = "RS256") -> str:
    """A structurally valid JWT (kuma-dp does not check the signature; the CP does, on the xDS stream)."""

    def seg(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    body = claims if claims is not None else {"Name": "dp-1", "Mesh": "default", "Tags": {}}
    return f"{seg({'alg': alg, 'typ': 'JWT'})}.{seg(body)}.c2lnbmF0dXJl"
