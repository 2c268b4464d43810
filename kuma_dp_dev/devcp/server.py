"""The whole dev CP in one object: /bootstrap and ADS behind one port, as kuma-cp's DP server (port 5678).

kuma-cp serves HTTP/1 `/bootstrap` and gRPC on one (TLS) port, and `kuma-dp run --bootstrap-source=local`
renders `ads_cluster` on the port of `--cp-address`, so the dev CP must do the same. The HTTP server
(`bootstrap_server`) and the grpc.aio ADS server each bind an internal loopback port; a small front end
on the public port terminates TLS when configured and routes each connection by its first bytes: the
HTTP/2 client preface goes to gRPC, anything else to /bootstrap. Each of the three is a component
(`kuma_dp.component`), and `DevControlPlane` is one too, running them in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from kuma_dp._http import AcceptGuard, Connection
from kuma_dp.component import Component, run_components

from .ads import AdsServer, AdsServerComponent
from .state import Store
from .tls import TLSFiles, load_server_tls

if TYPE_CHECKING:
    from .bootstrap_server import BootstrapServerComponent

log = logging.getLogger(__name__)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: The public port carries gRPC (h2) and HTTP/1 /bootstrap, as kuma-cp's DP server.
FRONT_ALPN = ("h2", "http/1.1")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


#: At most this many client connections at once on the public port (each costs two descriptors here and one
#: behind); over it, connections that have not sent a byte yet are shed first (kuma_dp._http.AcceptGuard).
MAX_CONNECTIONS = 256
#: A client must send its first bytes (HTTP request line or HTTP/2 preface) within this many seconds.
FIRST_BYTES_TIMEOUT = 10.0


class _FrontEnd(Component):
    """The public port: TLS when configured; each connection is piped to the internal port `target(first
    bytes)` names (closed when it names none). `on_bound(port)` hears the bound port before the first
    connection is served.

    The accept loop is kuma_dp._http.AcceptGuard: a connection cap, idle connections (no first bytes yet)
    shed first, a first-bytes timeout, and a back-off with one log line when descriptors run out, so idle
    or half-open clients cannot keep /bootstrap and ADS from serving the others.
    """

    name = "devcp-front"

    def __init__(
        self,
        host: str,
        port: int,
        ssl_ctx: ssl.SSLContext | None,
        target: Callable[[bytes], int | None],
        on_bound: Callable[[int], None],
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.ssl_ctx = ssl_ctx
        self.target = target
        self.on_bound = on_bound
        self.guard = AcceptGuard("dev control plane", max_connections=max_connections)

    async def run(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(512)
            sock.setblocking(False)
            self.port = int(sock.getsockname()[1])
            self.on_bound(self.port)
            self.ready.set()
            await self.guard.serve(sock, self._route, limit=65536, ssl=self.ssl_ctx)
        finally:
            sock.close()

    async def _route(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection
    ) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            buf = b""
            async with asyncio.timeout(FIRST_BYTES_TIMEOUT):
                while len(buf) < len(H2_PREFACE) and H2_PREFACE.startswith(buf):
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    buf += chunk
            target = self.target(buf) if buf else None
            if target is None:
                return
            conn.busy()
            up_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
            upstream_writer.write(buf)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(up_reader, writer))
        except (ConnectionError, OSError, ssl.SSLError, TimeoutError):
            pass
        finally:
            for w in (upstream_writer, writer):
                if w is not None:
                    w.close()


class DevControlPlane(Component):
    """The dev CP as one component: `run()` serves until cancelled and sets `ready` once `url` (what
    `kuma-dp run --cp-address` takes) answers.

    Inside, three components run in order: ADS on an internal loopback port, the public front end (its port
    goes into the bootstraps), /bootstrap on another internal port. The front end stops first.
    """

    name = "dev-cp"

    def __init__(
        self,
        store: Store,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        tls: TLSFiles | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.host = host
        self.port = port
        self.token = token
        self.tls = tls
        self.ads = AdsServer(store, token=token)
        self._ads = AdsServerComponent(self.ads, "127.0.0.1", 0)
        self._bootstrap: BootstrapServerComponent | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def ads_port(self) -> int:
        return self._ads.port

    async def run(self) -> None:
        from kuma_dp.bootstrap.render import RenderParams
        from kuma_dp.logs import quiet_loop_errors

        # One line, not a traceback per attempt, when a client floods us (grpc.aio and asyncio accept loops).
        quiet_loop_errors(asyncio.get_running_loop())

        from .bootstrap_server import BootstrapServerComponent, BootstrapService

        tls = load_server_tls(self.tls, alpn=FRONT_ALPN) if self.tls is not None else None
        ssl_ctx = tls.context if tls else None
        cert_pem = tls.cert_pem if tls else None
        ca_pem = tls.ca_pem if tls else None
        params = RenderParams(
            xds_host=self.host,
            xds_port=self.port,
            xds_tls=self.tls is not None,
            ca_cert_pem=ca_pem,
            # No HealthDiscoveryService here: without hdsConfig Envoy does not retry a stream nobody serves.
            hds_enabled=False,
        )
        # Listening on every address: like kuma-cp, tell each proxy the host it used to reach us (and, with
        # TLS, refuse one that is not in the certificate's SANs).
        wildcard = self.host in ("0.0.0.0", "::")
        service = BootstrapService(
            store=self.store,
            params=params,
            auth_enabled=self.token is not None,
            xds_host_from_request=wildcard,
            server_cert_pem=cert_pem if wildcard else None,
        )
        self._bootstrap = BootstrapServerComponent(service, "127.0.0.1", 0)

        def bound(port: int) -> None:
            # With --port 0 the bootstraps learn the xDS port only now, before any request can arrive.
            self.port = port
            service.params = dataclasses.replace(service.params, xds_port=port)

        def serving() -> None:
            meshes = self.store.meshes
            log.info("dev control plane listening url=%s (bootstrap and ADS) meshes=%s", self.url, meshes)
            self.ready.set()

        front = _FrontEnd(self.host, self.port, ssl_ctx, self._target, bound)

        def front_first(components: Sequence[Component]) -> list[Component]:
            # Stop taking connections before closing what they are routed to.
            return [front, *(c for c in reversed(components) if c is not front)]

        await run_components(
            [self._ads, front, self._bootstrap],
            name="dev control plane",
            on_ready=serving,
            signals=(),
            stop_order=front_first,
        )

    def _target(self, first_bytes: bytes) -> int | None:
        """The HTTP/2 client preface (gRPC) goes to ADS, anything else to /bootstrap (None while that is
        still starting)."""
        if first_bytes.startswith(H2_PREFACE):
            return self._ads.port
        if self._bootstrap is None or self._bootstrap.server is None:
            return None
        return int(self._bootstrap.server.port)
