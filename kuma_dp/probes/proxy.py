"""The application probe proxy component of `kuma-dp run`, as kumahq/kuma v2.14.3
`app/kuma-dp/pkg/dataplane/probes/component.go`.

On Kubernetes, kuma-cp's injector rewrites every application probe to go through this proxy on
KUMA_APPLICATION_PROBE_PROXY_PORT (`pkg/plugins/runtime/k8s/probes/probe_converter.go`, mirrored in
`kuma_dp.probes.convert`), and excludes that port from the inbound redirect, so the kubelet reaches it
directly on the pod IP:

    /<port>/<path?query>   HTTP(S) GET of <path?query> on the application's <port>
    /tcp/<port>            a TCP connect
    /grpc/<port>           a grpc.health.v1 Check (service from X-Kuma-Probes-GRPC-Service)

with `X-Kuma-Probes-Timeout` (seconds, default 1), `X-Kuma-Probes-Scheme: HTTPS` and
`X-Kuma-Probes-Host` set by the injector. The application is dialled at the Dataplane's address (the
control plane's `kumaSidecarConfiguration.networking.address`, the pod IP) from 127.0.0.6 / ::6, so the
transparent proxy lets the probe through (`kuma_dp.probes.upstream`).

Answers (what the kubelet judges, 200-399 = success): 200 `HEALTHY`; 503 `UNHEALTHY` when the application
cannot be reached or says no; for an HTTP probe the application's own status (>= 400) with `UNHEALTHY`;
503 `UNKNOWN` for a path without a valid port. The listener is Go's `http.Server` on `:<port>` (all
addresses, both families): a request Go cannot read gets Go's own answer (`wire.BadRequest`), and Go's
`ServeMux` redirects (301) paths it would clean ("/8080//x") and "/tcp", "/grpc" to their slash forms.

Bounded where Kuma is not: at most MAX_CONNECTIONS client connections accepted at a time (the rest wait in
the kernel's accept queue), MAX_IN_FLIGHT probes of the application at a time (the rest wait their turn
within their timeout), request heads of at most MAX_HEAD bytes (Go's 431 answer beyond), and idle keep-alive
connections closed after IDLE_TIMEOUT. A probe whose client disconnects is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from kuma_dp.component import Component
from kuma_dp.probes import upstream
from kuma_dp.probes.wire import (
    STATUS_TEXT,
    TOO_LARGE,
    BadRequest,
    Request,
    escape_path,
    go_clean_path,
    html_escape,
    parse_request_head,
    status_line,
)

log = logging.getLogger(__name__)

HEALTHY = "HEALTHY"
UNHEALTHY = "UNHEALTHY"
UNKNOWN = "UNKNOWN"

HEADER_TIMEOUT = "X-Kuma-Probes-Timeout"
HEADER_HOST = upstream.HOST_OVERRIDE
HEADER_SCHEME = "X-Kuma-Probes-Scheme"
HEADER_GRPC_SERVICE = "X-Kuma-Probes-GRPC-Service"

#: Kuma's `ReadHeaderTimeout: time.Second`.
READ_HEADER_TIMEOUT = 1.0
#: Ours (Go keeps idle keep-alive connections forever): the kubelet opens one connection per probe.
IDLE_TIMEOUT = 60.0
MAX_HEAD = 64 * 1024
MAX_CONNECTIONS = 256
MAX_IN_FLIGHT = 64
#: Go's server reads at most this much of an unread request body before it closes the connection.
MAX_DISCARD = 256 * 1024

_TCP_GRPC_PATH = re.compile(r"/(tcp|grpc)/(?P<port>[0-9]+)(/.*)?\Z")
_HTTP_PATH = re.compile(r"/(?P<port>[0-9]+)(?P<path>/.*)?\Z")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_ATOI = re.compile(r"[+-]?[0-9]+\Z")


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    #: Close after writing (Go's `closeAfterReply`); `abort`: no answer at all (a Go handler panic).
    close: bool = False
    abort: bool = False


def probe_answer(result: str, status: int | None = None) -> Answer:
    """Kuma's `writeProbeResult` / `writeHTTPProbeResult`."""
    if status is None:
        status = 200 if result == HEALTHY else 503
    return Answer(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")],
        (result + "\n").encode(),
    )


def go_atoi(s: str) -> int | None:
    """Go's `strconv.Atoi` (int64): None where Go returns an error."""
    if not _ATOI.match(s):
        return None
    n = int(s)
    return n if -(2**63) <= n < 2**63 else None


def probe_timeout(req: Request) -> float:
    """Kuma's `getTimeout`: whole seconds from X-Kuma-Probes-Timeout, 1 when absent or not a number."""
    n = go_atoi(req.headers.get(HEADER_TIMEOUT) or "1")
    return float(1 if n is None else n)


def probe_port(path: str, pattern: re.Pattern[str]) -> int | str:
    """Kuma's `getPort`: the port from the path, or the error text (an UNKNOWN answer)."""
    m = pattern.match(path)
    if m is None:
        return "port is required"
    text = m.group("port")
    port = go_atoi(text)
    if port is None:
        return f"invalid port {text}"
    if port < 0 or port > 65535:
        return f"invalid port value {text}"
    return port


def upstream_http_path(path: str) -> str:
    """Kuma's `getUpstreamHTTPPath`: what follows /<port>, "" when nothing (sent as "/")."""
    m = _HTTP_PATH.match(path)
    if m is None:
        return "/"
    return m.group("path") or ""


def mux_redirect(req: Request) -> str | None:
    """Where Go's ServeMux redirects this request (301), or None: the cleaned path when cleaning changes
    it, "/tcp/" and "/grpc/" for "/tcp" and "/grpc" (patterns registered with a trailing slash).
    """
    if req.method == "CONNECT" or req.path == "*":
        return None
    clean = go_clean_path(req.escaped_path)
    if clean in ("/tcp", "/grpc"):
        clean += "/"
    elif clean == req.escaped_path:
        return None
    # Go prints the cleaned (already escaped) path through URL.String(), escaping it once more.
    location = escape_path(clean)
    return location + ("?" + req.raw_query if req.raw_query else "")


def redirect_answer(req: Request, location: str) -> Answer:
    """Go's `http.Redirect(w, r, url, 301)`."""
    headers = [("Location", location)]
    body = b""
    if req.method in ("GET", "HEAD"):
        headers.insert(0, ("Content-Type", "text/html; charset=utf-8"))
    if req.method == "GET":
        body = f'<a href="{html_escape(location)}">{STATUS_TEXT[301]}</a>.\n\n'.encode()
    return Answer(301, headers, body)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(now: float | None = None) -> str:
    t = time.gmtime(now)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def render(req: Request | None, ans: Answer, keep_alive: bool) -> bytes:
    """Go's response writer: handler headers, then Date, Content-Length and Connection."""
    http11 = req.http11 if req is not None else True
    lines = [status_line(ans.status, http11), *(f"{k}: {v}" for k, v in ans.headers)]
    lines.append(f"Date: {http_date()}")
    body = ans.body
    if 100 <= ans.status <= 199 or ans.status in (204, 304):
        body = b""
    else:
        lines.append(f"Content-Length: {len(body)}")
    if not keep_alive and http11:
        lines.append("Connection: close")
    elif keep_alive and not http11:
        lines.append("Connection: keep-alive")
    if req is not None and req.method == "HEAD":
        body = b""
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def bind_listener(port: int, host: str | None = None) -> socket.socket:
    """Kuma listens on ":<port>": every address of both families (IPv4 only where IPv6 is off). `host`
    narrows it (tests). Raises OSError with Kuma's wording.
    """
    try:
        if host is None:
            try:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            except OSError as exc:
                if exc.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
                    raise
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                bind_addr: tuple[str, int] = ("0.0.0.0", port)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                bind_addr = ("::", port)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            bind_addr = (host, port)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(bind_addr)
            sock.listen(512)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
    except (OSError, OverflowError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OSError(
            f"unable to listen for the Application Probe Proxy server: listen tcp :{port}: {reason}"
        ) from None
    return sock


class ProbeProxy(Component):
    """`Prober` in Kuma: serves the kubelet's probes on `port` and probes the application at
    `pod_address`. Does not delay the start of other components (`wait_ready` False); a port it cannot bind
    fails the run, as Kuma's component manager does.
    """

    name = "application-probe-proxy"
    wait_ready = False

    def __init__(
        self,
        port: int,
        pod_address: str,
        *,
        version: str,
        bind_host: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        super().__init__()
        self.port = port
        self.pod_address = pod_address
        self.ipv6 = upstream.is_ipv6(pod_address)
        self.version = version
        self.bind_host = bind_host
        self.max_connections = max_connections
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._conns: set[asyncio.Task[None]] = set()
        #: The port actually bound (differs from `port` when that is 0: tests).
        self.bound_port = 0

    async def run(self) -> None:
        sock = bind_listener(self.port, self.bind_host)
        self.bound_port = sock.getsockname()[1]
        log.info(
            "starting Application Probe Proxy server port=%d address=%s", self.bound_port, self.pod_address
        )
        self.ready.set()
        try:
            await self._accept_loop(sock)
        finally:
            log.info("stopping Application Probe Proxy server")
            sock.close()
            for task in list(self._conns):
                task.cancel()
            if self._conns:
                await asyncio.wait(list(self._conns), timeout=2.0)

    # -- connections ---------------------------------------------------------------------------------------

    async def _accept_loop(self, sock: socket.socket) -> None:
        """Accept only while fewer than `max_connections` are open: the rest wait in the kernel's accept
        queue (a flood costs no descriptors here) and are served as slots free up; a client that never
        finishes its request head holds its slot for READ_HEADER_TIMEOUT at most.
        """
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.max_connections)
        while True:
            await slots.acquire()
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                slots.release()
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("application probe proxy cannot accept: %s; retrying", exc.strerror)
                    await asyncio.sleep(0.1)
                continue
            except BaseException:
                slots.release()
                raise
            task = asyncio.create_task(self._connection(conn, slots))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _connection(self, conn: socket.socket, slots: asyncio.Semaphore) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_HEAD)
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            # A fault in serving one client must not reach the others or the agent: logged, connection closed.
            log.exception("application probe proxy failed serving a connection")
        finally:
            slots.release()
            if writer is None:
                conn.close()
            else:
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        first = True
        while True:
            head = await self._read_head(reader, buf, first)
            first = False
            if head is None:
                return
            if isinstance(head, bytes) and head == TOO_LARGE:
                writer.write(TOO_LARGE)
                await writer.drain()
                return
            try:
                req = parse_request_head(bytes(head))
            except BadRequest as exc:
                log.debug("bad probe request: %s", exc)
                writer.write(exc.answer)
                await writer.drain()
                return
            close = not await self._discard_body(req, reader, buf)
            ans = await self._handle(req, reader, buf)
            if ans.abort:
                writer.transport.abort()
                return
            keep_alive = req.keep_alive and not close and not ans.close
            writer.write(render(req, ans, keep_alive))
            await writer.drain()
            if not keep_alive:
                return

    async def _read_head(
        self, reader: asyncio.StreamReader, buf: bytearray, first: bool
    ) -> bytearray | bytes | None:
        """The next request head from `buf` + the connection; None to close without an answer (EOF, a
        timeout: Go's `isCommonNetReadError`); TOO_LARGE past MAX_HEAD.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_HEADER_TIMEOUT
        if not first and not buf:
            try:
                data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
            except TimeoutError:
                return None
            if not data:
                return None
            buf += data
            deadline = loop.time() + READ_HEADER_TIMEOUT
        while True:
            m = _HEAD_END.search(buf)
            if m is not None:
                head = buf[: m.start()]
                del buf[: m.end()]
                return head
            if len(buf) > MAX_HEAD:
                return TOO_LARGE
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                data = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                return None
            if not data:
                return None
            buf += data

    async def _discard_body(self, req: Request, reader: asyncio.StreamReader, buf: bytearray) -> bool:
        """Read and drop a request body (probes have none); False when the connection must close after the
        answer (a chunked or an over-large body, or one held back by `Expect: 100-continue`).
        """
        if req.chunked or req.content_length > MAX_DISCARD:
            return False
        if req.content_length and "100-continue" in req.headers.get("Expect").lower():
            return False
        left = req.content_length
        take = min(left, len(buf))
        del buf[:take]
        left -= take
        while left > 0:
            data = await asyncio.wait_for(reader.read(min(left, 65536)), IDLE_TIMEOUT)
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
        return True

    # -- routing (Kuma's mux: /tcp/, /grpc/, /) ------------------------------------------------------------

    async def _handle(self, req: Request, reader: asyncio.StreamReader, buf: bytearray) -> Answer:
        if req.path == "*":
            return Answer(400, close=True)  # Go's ServeMux for "OPTIONS *"
        location = mux_redirect(req)
        if location is not None:
            return redirect_answer(req, location)
        if req.path.startswith("/tcp/"):
            kind, pattern = "tcp", _TCP_GRPC_PATH
        elif req.path.startswith("/grpc/"):
            kind, pattern = "grpc", _TCP_GRPC_PATH
        else:
            kind, pattern = "http", _HTTP_PATH
        port = probe_port(req.path, pattern)
        if isinstance(port, str):
            log.debug("invalid probe path=%r: %s", req.path, port)
            return probe_answer(UNKNOWN)
        timeout = probe_timeout(req)
        return await self._watching(self._probe(kind, req, port, timeout), reader, buf)

    async def _watching(
        self, work: Coroutine[Any, Any, Answer], reader: asyncio.StreamReader, buf: bytearray
    ) -> Answer:
        """Run the probe while watching the client: bytes that arrive are kept for the next request; an EOF
        cancels the probe (Go cancels the request's context), which then answers UNHEALTHY.
        """
        probe = asyncio.ensure_future(work)
        watch: asyncio.Future[bytes] | None = asyncio.ensure_future(reader.read(65536))
        try:
            while True:
                waiting = {probe} if watch is None else {probe, watch}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if probe in done:
                    return probe.result()
                assert watch is not None
                data = watch.result()
                if not data:
                    probe.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await probe
                    return probe_answer(UNHEALTHY)
                buf += data
                watch = asyncio.ensure_future(reader.read(65536)) if len(buf) <= MAX_HEAD else None
        finally:
            if watch is not None:
                if watch.done() and not watch.cancelled() and watch.exception() is None:
                    buf += watch.result()  # a pipelined request that arrived with the answer
                watch.cancel()
            if not probe.done():
                probe.cancel()

    async def _probe(self, kind: str, req: Request, port: int, timeout: float) -> Answer:
        loop = asyncio.get_running_loop()
        # No deadline where Go has none: http.Client.Timeout <= 0, net.Dialer.Timeout == 0. A negative
        # dialer timeout and any gRPC timeout <= 0 are deadlines already passed.
        unbounded = (kind == "http" and timeout <= 0) or (kind == "tcp" and timeout == 0)
        deadline = None if unbounded else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                async with self._in_flight:
                    if kind == "tcp":
                        return await self._tcp(port)
                    if kind == "grpc":
                        return await self._grpc(req, port, timeout)
                    return await self._http(req, port)
        except TimeoutError:
            log.debug("probe %s %s timed out after %gs", kind, req.path, timeout)
            return probe_answer(UNHEALTHY)

    async def _tcp(self, port: int) -> Answer:
        try:
            await upstream.probe_tcp(self.pod_address, port, self.ipv6)
        except upstream.ProbeError as exc:
            log.debug("unable to establish TCP connection to %s: %s", self._hp(port), exc)
            return probe_answer(UNHEALTHY)
        return probe_answer(HEALTHY)

    async def _grpc(self, req: Request, port: int, timeout: float) -> Answer:
        from kuma_dp.probes.grpc_health import SERVING, probe_grpc

        if timeout <= 0:
            return probe_answer(UNHEALTHY)
        service = req.headers.get(HEADER_GRPC_SERVICE)
        try:
            status = await probe_grpc(self.pod_address, port, self.ipv6, service, timeout, self.version)
        except (upstream.ProbeError, OSError, asyncio.IncompleteReadError) as exc:
            log.debug("the upstream gRPC check of %s failed: %s", self._hp(port), exc)
            return probe_answer(UNHEALTHY)
        if status != SERVING:
            log.debug("the upstream gRPC server %s returned as not serving status=%d", self._hp(port), status)
            return probe_answer(UNHEALTHY)
        return probe_answer(HEALTHY)

    async def _http(self, req: Request, port: int) -> Answer:
        scheme = "https" if req.headers.get(HEADER_SCHEME) == "HTTPS" else "http"
        try:
            outcome = await upstream.probe_http(
                scheme=scheme,
                address=self.pod_address,
                port=port,
                path=upstream_http_path(req.path),
                raw_query=req.raw_query,
                headers=req.headers,
                ipv6=self.ipv6,
                user_agent=f"kuma-probe/{self.version}",
            )
        except upstream.ProbeError as exc:
            log.debug("unable to request upstream server %s: %s", self._hp(port), exc)
            return probe_answer(UNHEALTHY)
        if 200 <= outcome.status < 400:
            return probe_answer(HEALTHY)
        log.debug("probe failed path=%s status=%d", req.path, outcome.status)
        if outcome.status < 100:
            return Answer(0, abort=True)  # Go's WriteHeader panics on it: the connection just closes
        # Kuma re-uses the application's status code "so that it's easier to debug".
        return probe_answer(UNHEALTHY, outcome.status)

    def _hp(self, port: int) -> str:
        return upstream.join_host_port(self.pod_address, port)
