"""The readiness reporter: `GET /ready` on KUMA_READINESS_PORT (9902), as Kuma's
`app/kuma-dp/pkg/dataplane/readiness/component.go`.

Answers, in order: 503 `TERMINATING` once shutdown began; 503 `NOT_READY` while the DNS gate is closed (the
DNS proxy has no first record set yet, at most 15 s); then Envoy's own `/ready`. With admin on a unix socket
Kuma proxies Envoy's answer (status and body), which we do too. With admin on TCP Kuma answers `READY` without
asking Envoy; we ask Envoy there as well, because a 200 before Envoy is LIVE (first LDS/CDS not yet applied)
would send traffic to a proxy that cannot route it: 200 `READY` when Envoy says 200, else 503 `envoy not
ready`.

The socket is bound before Envoy starts (`bind_readiness_socket`), so a second kuma-dp on the host fails fast
with a one-line error naming the port and the fix (kumahq/kuma#11769), and port 0 picks a free port that we
log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kuma_dp._http import AcceptGuard, Connection
from kuma_dp.component import Component
from kuma_dp.envoy import AdminClient, AdminError
from kuma_dp.launch import ReadinessPortError as ReadinessPortError
from kuma_dp.launch import bind_readiness_socket as bind_readiness_socket
from kuma_dp.launch import readiness_bind_host as readiness_bind_host

if TYPE_CHECKING:
    from kuma_dp.metrics import AgentMetrics

log = logging.getLogger(__name__)

#: Kuma skips the DNS gate when the DNS proxy has no records after this long (a mesh without services).
DNS_GATE_TIMEOUT = 15.0
HEADERS = {"content-type": "text/plain", "cache-control": "no-cache, max-age=0", "x-powered-by": "kuma-dp"}
#: Kuma answers a failed admin request with Go's http.Error, which ends the text with a newline.
ENVOY_NOT_READY = "envoy not ready\n"
#: Probes are one short request each: a few connections at a time are plenty, the rest are shed
#: (KUMA_READINESS_MAX_CONNECTIONS, `dataplane.readiness_max_connections`).
MAX_CONNECTIONS = 64
#: A probe sends its request at once; a connection silent for this long is dropped.
HEAD_TIMEOUT = 5.0
HEAD_LIMIT = 8 * 1024


@dataclass
class ReadinessState:
    """Shared between the agent (sets `terminating`), the DNS component (sets `dns_ready`) and the reporter.

    `dns_gate` is False unless a DNS component is part of the run (its factory turns it on).
    """

    dns_gate: bool = False
    dns_ready: asyncio.Event = field(default_factory=asyncio.Event)
    dns_gate_timeout: float = DNS_GATE_TIMEOUT
    started_at: float = field(default_factory=time.monotonic)
    terminating: bool = False

    def dns_gate_open(self, now: float | None = None) -> bool:
        if not self.dns_gate or self.dns_ready.is_set():
            return True
        return ((time.monotonic() if now is None else now) - self.started_at) >= self.dns_gate_timeout


@dataclass(frozen=True)
class Answer:
    status: int
    body: str


def decide(
    *, terminating: bool, dns_gate_open: bool, envoy_status: int | None, envoy_body: str, admin_unix: bool
) -> Answer:
    """The pure decision of `/ready`; `envoy_status` None means the admin API could not be reached."""
    if terminating:
        return Answer(503, "TERMINATING")
    if not dns_gate_open:
        return Answer(503, "NOT_READY")
    if envoy_status is None:
        return Answer(503, ENVOY_NOT_READY)
    if admin_unix:
        return Answer(envoy_status, envoy_body)  # Envoy's status and body, byte for byte (`LIVE\n`)
    if envoy_status == 200:
        return Answer(200, "READY")
    return Answer(503, ENVOY_NOT_READY)


async def evaluate(state: ReadinessState, admin: AdminClient) -> Answer:
    """What `/ready` answers now; also what sd_notify uses to decide when to send READY=1."""
    if state.terminating or not state.dns_gate_open():
        return decide(
            terminating=state.terminating,
            dns_gate_open=state.dns_gate_open(),
            envoy_status=None,
            envoy_body="",
            admin_unix=admin.address.is_unix,
        )
    try:
        resp = await admin.ready()
        status, body = resp.status, resp.text  # unchanged: Kuma copies Envoy's body as it came
    except AdminError as exc:
        log.debug("envoy admin /ready failed: %s", exc)
        status, body = None, ""
    return decide(
        terminating=state.terminating,
        dns_gate_open=True,
        envoy_status=status,
        envoy_body=body,
        admin_unix=admin.address.is_unix,
    )


def _response(status: int, body: str, *, head_only: bool = False) -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}.get(
        status, "Status"
    )
    payload = body.encode()
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in HEADERS.items()]
    lines += [f"content-length: {len(payload)}", "connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head_only else payload)


class ReadinessReporter(Component):
    """Serves `/ready` on a socket bound beforehand by `bind_readiness_socket`."""

    name = "readiness"

    def __init__(
        self,
        sock: socket.socket,
        state: ReadinessState,
        admin: AdminClient,
        *,
        max_connections: int = MAX_CONNECTIONS,
        metrics: AgentMetrics | None = None,
    ) -> None:
        super().__init__()
        self.sock = sock
        self.state = state
        self.admin = admin
        if metrics is None:
            # The process-wide registry the hijacker serves: every shed or refused connection is counted.
            from kuma_dp.metrics import agent_metrics

            metrics = agent_metrics()
        counted = metrics

        def rejected(reason: str) -> None:
            counted.connection_rejected("readiness", reason)

        self.guard = AcceptGuard("readiness reporter", max_connections=max_connections, on_reject=rejected)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            conn.busy()
            method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = target.split("?", 1)[0]
            if path != "/ready":
                out = _response(404, "404 page not found\n")
            elif method not in ("GET", "HEAD"):
                out = _response(405, "method not allowed\n")
            else:
                answer = await evaluate(self.state, self.admin)
                out = _response(answer.status, answer.body, head_only=method == "HEAD")
            writer.write(out)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def run(self) -> None:
        host, port = self.sock.getsockname()[:2]
        log.info("readiness reporter listening address=%s port=%d", host, port)
        self.ready.set()
        # Our own accept loop (kuma_dp._http.AcceptGuard): capped connections, idle ones shed first, and a
        # back-off instead of a traceback per attempt when the process runs out of descriptors, so idle
        # peers cannot keep the kubelet's probe from being answered.
        await self.guard.serve(self.sock, self._handle, limit=HEAD_LIMIT)
