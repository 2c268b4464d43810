"""The DNS server as a `kuma-dp run` component (and the engine of `kuma-dp dns`).

Order of events in `run()`: load the persisted last-known-good table (answers mesh names at once), bind the
listeners, set `ready`; `has_records` is set by the first table from any source (it opens the readiness
reporter's DNS gate: `/ready` says NOT_READY until then, at most 15 s, as in Kuma's
`app/kuma-dp/pkg/dataplane/readiness/component.go`). New tables arrive through `update()` (the dynconf `/dns`
handler or an in-process push) or a watched records file.

Under `kuma-dp run` an early responder (kuma_dns/early.py) may already be answering from the last run's hot
snapshot: the server adopts its sockets and the queries it kept when it binds, so the port never goes
unanswered; once bound, the component records where it listens (the listen plan) for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.registry import REGISTRY, CollectorRegistry

from kuma_dp.component import Component

from . import early
from .metrics import DNSMetrics
from .server import MAX_PENDING, MAX_TCP_CLIENTS, MAX_TCP_PER_SOURCE, DNSServer
from .table import MeshTable, Payload, PayloadError, TableStore, dispose, read_table_file
from .upstream import Address, Forwarder, read_resolv_conf

if TYPE_CHECKING:
    from kuma_dp.agent import AgentContext

log = logging.getLogger(__name__)

DEFAULT_PORT = 15053


def bind_addresses(transparent_proxy: bool, vnet: bool = False, ip_family: str = "dualstack") -> list[str]:
    """Kuma's bind table (`dnsProxyAddresses` in `app/kuma-dp/cmd/run.go`): any address without tproxy,
    loopback with it, any with VNet; IPv4 and IPv6 bound separately, IPv6 unless the family is `ipv4`."""
    v6 = ip_family.lower() != "ipv4"
    if not transparent_proxy:
        return ["0.0.0.0"]
    if vnet:
        return ["0.0.0.0", "::"] if v6 else ["0.0.0.0"]
    return ["127.0.0.1", "::1"] if v6 else ["127.0.0.1"]


class DNSComponent(Component):
    """Local DNS for `*.mesh`: call `update(payload_bytes, etag)` with each `/dns` body."""

    name = "dns"

    def __init__(
        self,
        *,
        port: int = DEFAULT_PORT,
        addresses: Sequence[str] = ("127.0.0.1",),
        workdir: str | os.PathLike[str] | None = None,
        upstreams: Sequence[Address] | None = None,
        resolv_conf: str | os.PathLike[str] = "/etc/resolv.conf",
        parallel: bool = False,
        nxdomain_mesh: bool = True,
        stale_after: float = 300.0,
        records_file: str | os.PathLike[str] | None = None,
        registry: CollectorRegistry | None = None,
        register_metrics: bool = True,
        upstream_timeout: float = 2.0,
        has_records: asyncio.Event | None = None,
        mmsg: bool | None = None,
        max_tcp_connections: int = MAX_TCP_CLIENTS,
        max_tcp_per_source: int = MAX_TCP_PER_SOURCE,
        max_pending: int = MAX_PENDING,
    ) -> None:
        super().__init__()
        #: Set once listening with a table from any source (persisted, dynconf, file, push): the readiness
        #: DNS gate.
        self.has_records = has_records if has_records is not None else asyncio.Event()
        rc = read_resolv_conf(resolv_conf)
        self.search_domains = rc.search
        chosen = list(upstreams) if upstreams is not None else list(rc.nameservers)
        self.store = TableStore(
            workdir=Path(workdir) if workdir else None,
            search_domains=tuple(rc.search),
            nxdomain_mesh=nxdomain_mesh,
            stale_after=stale_after,
        )
        self.store.listeners.append(self._on_table)
        self.metrics = DNSMetrics()
        self.metrics.entries = lambda: len(self.store.current.names)
        self.metrics.table_age = self.store.age
        self.metrics.tables_rejected = lambda: self.store.rejected
        self._registry: CollectorRegistry | None = None
        if register_metrics:
            self._registry = registry if registry is not None else REGISTRY
            self.metrics.register(self._registry)
        self._port = port
        self._addresses = list(addresses)
        self._upstreams = chosen
        self._parallel = parallel
        self._timeout = upstream_timeout
        self._mmsg = mmsg
        #: The server's caps (the agent's KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS[_PER_SOURCE] and
        #: KUMA_DNS_PROXY_UPSTREAM_MAX_PENDING_QUERIES; kuma_dns.server's defaults otherwise).
        self._max_tcp = (max_tcp_connections, max_tcp_per_source)
        self._max_pending = max_pending
        self.records_file = Path(records_file) if records_file else None
        self.server: DNSServer | None = None
        #: One table build at a time (dynconf, records file, persisted): each reuses the previous encodings.
        self._build_lock = asyncio.Lock()

    # The API the config fetcher and in-process pushes use.
    @property
    def table(self) -> TableStore:
        return self.store

    def update(self, payload: bytes | str | Mapping[str, Any], etag: str | None = None) -> bool:
        """Load a `/dns` payload (raises PayloadError, keeping the old table, if it is not valid)."""
        return self.store.update(payload, etag=etag, source="dynconf" if etag else "push")

    async def update_async(self, payload: bytes | str | Mapping[str, Any], etag: str | None = None) -> bool:
        """`update` for the config fetcher: decoding, encoding and the fsync run in a worker thread, so a
        100k-name map never stalls the answers being served meanwhile; the swap itself happens on the loop.
        """
        return await self._install(
            lambda: self.store.prepare(payload), etag, "dynconf" if etag else "push", persist=True
        )

    async def _install(
        self,
        produce: Callable[[], tuple[Payload, MeshTable]],
        etag: str | None,
        source: str,
        persist: bool,
    ) -> bool:
        """Build off the loop, swap on it (one assignment), persist and free the loser off it again.

        The table that lost (the old one, or the new one when nothing changed) and the decoded payload are
        freed in a worker thread piece by piece (`table.dispose`): dropped here, freeing a 100k-name table
        would hold the loop for a tenth of a second or more.
        """
        async with self._build_lock:
            parsed, table = await asyncio.to_thread(produce)
            old = self.store.current
            changed = self.store.commit(parsed, table, etag, source, persist=False)
            if changed and persist and self.store.persist_path is not None:
                await asyncio.to_thread(self.store.persist, parsed, etag, self.store.clock())
            junk: list[Any] = [parsed, old if changed else table]
            del parsed, old, table
            await asyncio.to_thread(dispose, junk)
            return changed

    def not_modified(self) -> None:
        self.store.confirm()

    @property
    def port(self) -> int:
        return self.server.port if self.server else self._port

    def _on_table(self, table: MeshTable) -> None:
        # "Has records" means "answers mesh names": only once listening too (see run()).
        if table.loaded and self.ready.is_set():
            self.has_records.set()

    def _upstreams_without_self(self, port: int) -> list[Address]:
        """Drop upstreams that are our own listeners (resolv.conf pointing at us would loop)."""
        own = {(a, port) for a in self._addresses}
        any_v4 = "0.0.0.0" in self._addresses
        out = []
        for host, p in self._upstreams:
            if (host, p) in own or (any_v4 and p == port and host.startswith("127.")):
                log.warning("dns: ignoring upstream %s:%d: it is this server", host, p)
                continue
            out.append((host, p))
        return out

    async def run(self) -> None:
        """The component contract (`kuma_dp.component`): serve until cancelled; the listeners are closed and
        the metrics unregistered in `finally`, also when the start fails (records file, port in use)."""
        try:
            if self.records_file is not None:
                await self._load_file(self.records_file, initial=True)
            else:
                got = await asyncio.to_thread(self.store.read_persisted)
                if got is not None:
                    self.store.install_persisted(*got)
                del got
            if self.store.current.loaded:
                self.metrics.config_loaded(self.store.current.extra_labels)
            forwarder = Forwarder([], self.metrics, timeout=self._timeout, parallel=self._parallel)
            early_responder = early.take() if self.records_file is None else None
            if early.refused is not None:
                log.warning(
                    "dns: no early responder: the snapshot in %s (remove it; rewritten on the next table)",
                    early.refused,
                )
                early.refused = None
            self.server = DNSServer(
                self.store,
                forwarder,
                self.metrics,
                self._addresses,
                self._port,
                mmsg=self._mmsg,
                max_tcp_connections=self._max_tcp[0],
                max_tcp_per_source=self._max_tcp[1],
                max_pending=self._max_pending,
                early=early_responder,
            )
            del early_responder
            if self._port:
                # Known before binding: the queries the early responder kept, answered as the server starts,
                # and those queued in the sockets it hands over, are forwarded, not SERVFAILed.
                forwarder.upstreams = self._upstreams_without_self(self._port)
            await self.server.start()
            if not self._port:
                forwarder.upstreams = self._upstreams_without_self(self.server.port)
            await forwarder.open_fallback()  # the families of the upstreams just set (IPv6 ones too)
            if not forwarder.upstreams:
                log.warning("dns: no upstream nameservers: names outside the mesh get SERVFAIL")
            self.ready.set()
            if self.store.current.loaded:
                self.has_records.set()
            await asyncio.to_thread(self._write_plan, self.server)
            await self._housekeeping()
        finally:
            early.discard()  # a start that failed before the handover: the early responder stops with it
            if self.server is not None:
                await self.server.close()
            if self._registry is not None:
                with contextlib.suppress(KeyError):
                    self._registry.unregister(self.metrics)  # type: ignore[arg-type]
                self._registry = None

    def _write_plan(self, server: DNSServer) -> None:
        """Record where we listen (and the hot snapshot, if the table came from an older agent without one)
        for the next start's early responder (kuma_dns/early.py). Written here, once bound, and never by the
        table's persistence: the two files cannot race."""
        workdir = self.store.workdir
        if workdir is None or self.records_file is not None:
            return
        try:
            early.write_files(workdir, early.PLAN_NAME, early.encode_plan(server.addresses, server.port))
        except (OSError, UnicodeError) as exc:
            log.warning(
                "dns: cannot write %s in %s: %s (answers are unaffected)", early.PLAN_NAME, workdir, exc
            )
            return
        table = self.store.current
        if table.loaded and not os.path.lexists(workdir / early.HOT_NAME):
            self.store.persist_hot(table, self.store.confirmed_at or self.store.clock())

    async def _housekeeping(self) -> None:
        """Stale-table warnings, and the records-file watch of `kuma-dp dns --records`."""
        last = self._stat(self.records_file) if self.records_file else None
        while True:
            await asyncio.sleep(0.5 if self.records_file else 5.0)
            self.store.check_stale()
            if self.records_file is not None:
                now = self._stat(self.records_file)
                if now != last:
                    last = now
                    await self._load_file(self.records_file, initial=False)

    @staticmethod
    def _stat(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    async def _load_file(self, path: Path, initial: bool) -> None:
        """Read, decode and encode the records file in a worker thread; a FIFO, a device or a file over
        MAX_TABLE_BYTES is refused (it would block or exhaust the agent), with one line per change seen."""

        def produce() -> tuple[Payload, MeshTable]:
            return self.store.prepare(read_table_file(path, private=False))

        if not initial:
            log.info("dns: records file %s changed: loading it off the event loop", path)
        try:
            await self._install(produce, None, f"file:{path}", persist=True)
        except (OSError, PayloadError) as exc:
            self.store.rejected += 1
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            if initial:
                raise RecordsFileError(f"cannot load DNS records from {path}: {reason}") from exc
            log.error("dns: keeping the current table: cannot load %s: %s", path, reason)
        else:
            self.store.confirm()


class RecordsFileError(Exception):
    """`--records FILE` is missing or not a `/dns` payload."""


def from_agent(ctx: AgentContext) -> DNSComponent | None:
    """Agent factory (`kuma_dns.component:from_agent` in BEFORE_ENVOY): the embedded DNS proxy when enabled.

    It opens the readiness DNS gate and puts its `/dns` handler in `ctx.dynconf_handlers`, which
    `kuma_dp.dynconf:from_agent` (after Envoy) registers with the config fetcher.
    """
    cfg = ctx.cfg
    if not cfg.dns.enabled or cfg.dns.proxy_port == 0:
        early.discard()  # started on a guess the configuration says is wrong: nobody takes it over
        return None
    rt = cfg.dataplane_runtime
    tproxy = bool(rt.transparent_proxy or rt.transparent_proxy_config)
    if cfg.dns.proxy_address:
        addresses = list(cfg.dns.proxy_address)
    elif tproxy:
        addresses = bind_addresses(True, vnet=False, ip_family="dualstack" if rt.ipv6_enabled else "ipv4")
    else:
        # Deviation from Kuma (which binds 0.0.0.0 here): without the transparent proxy nothing redirects
        # to this server, so a wider bind would only add an open resolver on every interface. Loopback
        # unless the operator asks, e.g. KUMA_DNS_PROXY_ADDRESS=0.0.0.0 for Kuma's behaviour.
        addresses = ["127.0.0.1"]
    comp = DNSComponent(
        port=cfg.dns.proxy_port,
        addresses=addresses,
        workdir=ctx.work_dir,
        has_records=ctx.enable_dns_gate(),
        stale_after=cfg.dns.proxy_table_stale_after,
        parallel=cfg.dns.proxy_upstream_parallel,
        mmsg=cfg.dns.mmsg,
        max_tcp_connections=cfg.dns.proxy_tcp_max_connections,
        max_tcp_per_source=cfg.dns.proxy_tcp_max_connections_per_source,
        max_pending=cfg.dns.proxy_upstream_max_pending_queries,
    )
    ctx.dynconf_handlers["/dns"] = (comp.update_async, comp.not_modified)
    return comp
