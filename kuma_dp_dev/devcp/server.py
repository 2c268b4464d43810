"""The whole dev CP in one object: /bootstrap and ADS behind one port, as kuma-cp's DP server (port 5678).

kuma-cp serves HTTP/1 `/bootstrap` and gRPC on one (TLS) port, and `kuma-dp run --bootstrap-source=local`
renders `ads_cluster` on the port of `--cp-address`, so the dev CP must do the same. The HTTP server (C's
`bootstrap_server`) and the grpc.aio ADS server each bind an internal loopback port; a small front end
on the public port terminates TLS when configured and routes each connection by its first bytes: the
HTTP/2 client preface goes to gRPC, anything else to /bootstrap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from .ads import AdsServer
from .state import Store

log = logging.getLogger("kuma_dp_dev.devcp")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass(frozen=True)
class TlsConfig:
    cert_file: str
    key_file: str
    #: The CA put in bootstraps whose request has no `caCert` (kuma-cp: its DP-server certificate); default:
    #: the certificate itself, right for a self-signed one.
    ca_file: str = ""


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class DevControlPlane:
    """Start with `await start()`, stop with `await stop()`; `url` is what `kuma-dp run --cp-address`
    takes."""

    def __init__(
        self,
        store: Store,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        tls: TlsConfig | None = None,
    ) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.token = token
        self.tls = tls
        self.ads = AdsServer(store, token=token)
        self.ads_port = 0
        self._bootstrap = None
        self._front: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def start(self) -> DevControlPlane:
        from kuma_dp.bootstrap.render import RenderParams

        from .bootstrap_server import BootstrapService, start_bootstrap_server

        self.ads_port = await self.ads.start("127.0.0.1", 0)
        ssl_ctx = None
        if self.tls is not None:
            ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ssl_ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
            ssl_ctx.set_alpn_protocols(["h2", "http/1.1"])
        self._front = await asyncio.start_server(self._route, self.host, self.port, ssl=ssl_ctx)
        self.port = int(self._front.sockets[0].getsockname()[1])
        cert_pem = Path(self.tls.cert_file).read_text() if self.tls else None
        ca_pem = Path(self.tls.ca_file).read_text() if self.tls and self.tls.ca_file else cert_pem
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
        self._bootstrap = await asyncio.to_thread(start_bootstrap_server, service, "127.0.0.1", 0)
        log.info(
            "dev control plane listening url=%s (bootstrap and ADS) meshes=%s", self.url, self.store.meshes
        )
        return self

    async def _route(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            buf = b""
            while len(buf) < len(H2_PREFACE) and H2_PREFACE.startswith(buf):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buf += chunk
            if not buf:
                return
            target = self.ads_port if buf.startswith(H2_PREFACE) else self._bootstrap.port
            up_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
            upstream_writer.write(buf)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(up_reader, writer))
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            for w in (upstream_writer, writer):
                if w is not None:
                    w.close()
            self._conns.discard(task)

    async def stop(self) -> None:
        if self._front is not None:
            self._front.close()
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.ads.stop(0.5)
        if self._bootstrap is not None:
            await asyncio.to_thread(self._bootstrap.close)
            self._bootstrap = None
        if self._front is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._front.wait_closed(), 2)
            self._front = None
