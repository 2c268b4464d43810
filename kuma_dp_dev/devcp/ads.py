"""The dev CP's Aggregated Discovery Service: what kuma-cp's xDS server does for each connected Envoy.

A stream opens -> the token in `authorization` is checked, the Dataplane from node metadata
(`dataplane.resource`, else the store's by node id `<mesh>.<name>`) is registered; the stream then gets its
resources in SotW or Delta form and a push on every store change; when the stream ends the Dataplane is
removed and every other stream gets the change. Per type: a content-hash version, a fresh nonce per
response, requests with a stale nonce ignored, a NACK (`error_detail`) logged and nothing re-sent, so Envoy
keeps its last good config.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, json_format

from kuma_dp.bootstrap.features import FEATURE_TRANSPARENT_PROXY_IN_DATAPLANE_METADATA
from kuma_dp.component import Component

from . import vip as vips_mod
from . import xds
from .state import StateError, Store, parse_dataplane

log = logging.getLogger(__name__)

_CHANGED = object()
_EOF = object()


class AdsRefused(Exception):
    """The stream cannot be served (bad token, unknown dataplane); carries the gRPC status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _struct_to_dict(node: base_pb2.Node) -> dict[str, Any]:
    return json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}


def proxy_from_node(node: base_pb2.Node, store: Store) -> xds.Proxy:
    """What kuma-cp learns from the first request's node: the Dataplane, workdir, features and transparent
    proxy."""
    md = _struct_to_dict(node)
    mesh, _, name = node.id.partition(".")
    resource = md.get("dataplane.resource")
    try:
        if resource:
            dp = parse_dataplane(resource, mesh=mesh, name=name)
        else:
            found = store.get_dataplane(mesh, name)
            if found is None:
                raise AdsRefused(
                    grpc.StatusCode.NOT_FOUND,
                    f"dataplane {name!r} of mesh {mesh!r} not found: send it in node metadata "
                    "`dataplane.resource` or describe it in the --state file",
                )
            dp = found
    except StateError as exc:
        raise AdsRefused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid dataplane.resource: {exc}") from None
    if not store.mesh_exists(dp.mesh):
        raise AdsRefused(grpc.StatusCode.NOT_FOUND, f'mesh: mesh "{dp.mesh}" does not exist')
    features = frozenset(str(f) for f in md.get("features") or [])
    tp = md.get("transparentProxy")
    if isinstance(tp, str):
        try:
            tp = json.loads(tp)
        except ValueError:
            tp = None
    if isinstance(tp, Mapping) and FEATURE_TRANSPARENT_PROXY_IN_DATAPLANE_METADATA in features:
        redirect = tp.get("redirect") or {}
        outbound = redirect.get("outbound") or {}
        inbound = redirect.get("inbound") or {}
        transparent = bool(outbound.get("enabled"))
        dual = str(tp.get("ipFamilyMode") or "dualstack").lower() != "ipv4"
        out_port, in_port = int(outbound.get("port") or 15001), int(inbound.get("port") or 15006)
    else:
        tproxy = dp.transparent_proxying
        transparent = dp.transparent
        dual = tproxy is not None and tproxy.ip_family_mode.lower() != "ipv4"
        out_port = tproxy.redirect_port_outbound if tproxy else 15001
        in_port = tproxy.redirect_port_inbound if tproxy else 15006
    ipv6 = md.get("ipv6Enabled")
    try:
        dns_port = int(md.get("dataplane.dns.port") or 0)
    except (TypeError, ValueError):
        dns_port = 0
    try:
        readiness_port = int(md.get("dataplane.readinessReporter.port") or 0)
    except (TypeError, ValueError):
        readiness_port = 0
    return xds.Proxy(
        dataplane=dp,
        workdir=str(md.get("workdir") or ""),
        features=features,
        transparent=transparent,
        dual_stack=dual,
        ipv6_enabled=ipv6 is True or str(ipv6).lower() == "true",
        outbound_port=out_port,
        inbound_port=in_port,
        dns_port=dns_port,
        readiness_port=readiness_port,
        metadata=md,
    )


@dataclass
class _TypeState:
    """Per stream and type: what was sent, under which nonce, and what the client asked for."""

    names: set[str] | None = None  # None: wildcard
    requested: bool = False
    version: str | None = None  # SotW: version of the last response
    nonce: str = ""
    sent: dict[str, str] = field(default_factory=dict)  # Delta: name -> version the client should hold
    acked: dict[str, str] = field(default_factory=dict)  # Delta: what the client confirmed holding


class _Stream:
    def __init__(self, server: AdsServer, peer: str, delta: bool) -> None:
        self.server = server
        self.peer = peer
        self.delta = delta
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.proxy: xds.Proxy | None = None
        self.snapshot = xds.Snapshot()
        self.types: dict[str, _TypeState] = {}
        self.change_pending = False

    @property
    def node_id(self) -> str:
        return f"{self.proxy.dataplane.mesh}.{self.proxy.dataplane.name}" if self.proxy else self.peer

    def notify(self) -> None:
        if not self.change_pending:
            self.change_pending = True
            self.queue.put_nowait(_CHANGED)

    def regenerate(self) -> None:
        assert self.proxy is not None
        self.snapshot = self.server.generate(self.proxy)

    def _current(self, type_url: str, st: _TypeState) -> dict[str, dict[str, Any]]:
        resources = self.snapshot.resources.get(type_url, {})
        if st.names is None:
            return resources
        return {n: r for n, r in resources.items() if n in st.names}

    def sotw_response(self, type_url: str, force: bool = False) -> discovery_pb2.DiscoveryResponse | None:
        st = self.types[type_url]
        current = self._current(type_url, st)
        versions = sorted((n, xds.resource_version(r)) for n, r in current.items())
        version = hashlib.sha256(json.dumps(versions).encode()).hexdigest()[:16]
        if version == st.version and not force:
            return None
        st.version = version
        st.nonce = self.server.next_nonce()
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            nonce=st.nonce,
            resources=[self.server.pack(type_url, current[n]) for n, _ in versions],
        )

    def delta_response(
        self, type_url: str, force: bool = False
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        st = self.types[type_url]
        current = self._current(type_url, st)
        changed = []
        for name, res in sorted(current.items()):
            version = xds.resource_version(res)
            if st.sent.get(name) != version:
                changed.append((name, version, res))
        removed = sorted(n for n in st.sent if n not in current)
        if not changed and not removed and not force:
            return None
        for name in removed:
            del st.sent[name]
        for name, version, _ in changed:
            st.sent[name] = version
        st.nonce = self.server.next_nonce()
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=str(self.server.store.version),
            type_url=type_url,
            nonce=st.nonce,
            removed_resources=removed,
            resources=[
                discovery_pb2.Resource(name=n, version=v, resource=self.server.pack(type_url, r))
                for n, v, r in changed
            ],
        )


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """grpc.aio servicer for envoy.service.discovery.v3.AggregatedDiscoveryService, backed by a Store."""

    def __init__(self, store: Store, *, token: str | None = None, cidr: str = vips_mod.DEFAULT_CIDR) -> None:
        self.store = store
        self._token = token
        self._cidr = cidr
        self._vips: dict[str, dict[str, str]] = {}
        self._vips_version = -1
        self._streams: set[_Stream] = set()
        self._nonces = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe = store.subscribe(self._on_store_change)
        #: Raw resources added to every proxy's snapshot (like Kuma's ProxyTemplate): for experiments and for
        #: testing how a rejected resource is handled.
        self.extra_resources: dict[str, dict[str, dict[str, Any]]] = {}
        self._server: grpc.aio.Server | None = None

    # -- what a proxy gets -
    def vips(self, mesh: str) -> dict[str, str]:
        """VIPs of the mesh's services, kept stable across changes while a service exists."""
        if self._vips_version != self.store.version:
            self._vips = {
                m: vips_mod.allocate(self.store.services(m), self._vips.get(m), self._cidr)
                for m in self.store.meshes
            }
            self._vips_version = self.store.version
        return self._vips.get(mesh, {})

    def generate(self, proxy: xds.Proxy) -> xds.Snapshot:
        snap = xds.generate(
            proxy,
            self.store.services(proxy.dataplane.mesh),
            self.vips(proxy.dataplane.mesh),
            self.store.policies,
        )
        for type_url, resources in self.extra_resources.items():
            snap.resources.setdefault(type_url, {}).update(resources)
        return snap

    def add_extra_resource(self, type_url: str, resource: dict[str, Any]) -> None:
        """Add a raw resource to every proxy's config and push it (a ProxyTemplate-like escape hatch)."""
        name = resource["clusterName"] if type_url == xds.ENDPOINT_TYPE else resource["name"]
        self.extra_resources.setdefault(type_url, {})[name] = resource
        self._on_store_change()

    def next_nonce(self) -> str:
        return str(next(self._nonces))

    def pack(self, type_url: str, resource: Mapping[str, Any]) -> any_pb2.Any:
        packed = any_pb2.Any()
        packed.Pack(xds.to_message(type_url, resource))
        return packed

    # -- change propagation -
    def _on_store_change(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._notify_all()
        else:
            loop.call_soon_threadsafe(self._notify_all)

    def _notify_all(self) -> None:
        for stream in list(self._streams):
            stream.notify()

    @property
    def connected(self) -> list[str]:
        """Node ids of the streams that registered a proxy (for logs, the demo and tests)."""
        return sorted(s.node_id for s in self._streams if s.proxy is not None)

    # -- the gRPC methods -
    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        async for response in self._serve(request_iterator, context, delta=False):
            yield response

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        async for response in self._serve(request_iterator, context, delta=True):
            yield response

    def _check_token(self, context: grpc.aio.ServicerContext) -> None:
        if self._token is None:
            return
        metadata = dict(context.invocation_metadata() or ())
        sent = metadata.get("authorization", "")
        if isinstance(sent, bytes):
            sent = sent.decode(errors="replace")
        sent = sent.removeprefix("Bearer ").strip()
        if not sent:
            raise AdsRefused(
                grpc.StatusCode.UNAUTHENTICATED, "authentication failed: dataplane token is missing"
            )
        if sent != self._token:
            raise AdsRefused(
                grpc.StatusCode.UNAUTHENTICATED, "authentication failed: invalid dataplane token"
            )

    async def _serve(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, delta: bool
    ) -> Any:
        self._loop = asyncio.get_running_loop()
        stream = _Stream(self, context.peer(), delta)
        try:
            self._check_token(context)
        except AdsRefused as exc:
            log.warning("xds stream refused peer=%s reason=%r", stream.peer, str(exc))
            await context.abort(exc.code, str(exc))

        async def reader() -> None:
            try:
                async for request in requests:
                    stream.queue.put_nowait(request)
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                pass
            except Exception as exc:  # a broken stream ends it; it must not leave a dangling registration
                log.debug("xds stream read failed peer=%s error=%r", stream.peer, exc)
            finally:
                stream.queue.put_nowait(_EOF)

        read_task = asyncio.create_task(reader())
        self._streams.add(stream)
        registered: tuple[str, str] | None = None
        try:
            while True:
                item = await stream.queue.get()
                if item is _EOF:
                    break
                if item is _CHANGED:
                    stream.change_pending = False
                    if stream.proxy is None:
                        continue
                    stream.regenerate()
                    for type_url in xds.PUSH_ORDER:
                        st = stream.types.get(type_url)
                        if st is None or not st.requested:
                            continue
                        response = (
                            stream.delta_response(type_url) if delta else stream.sotw_response(type_url)
                        )
                        if response is not None:
                            self._log_send(stream, response)
                            yield response
                    continue
                if stream.proxy is None:
                    try:
                        stream.proxy = proxy_from_node(item.node, self.store)
                    except AdsRefused as exc:
                        log.warning("xds stream refused node=%s reason=%r", item.node.id, str(exc))
                        await context.abort(exc.code, str(exc))
                    registered = stream.proxy.dataplane.key
                    self.store.register(stream.proxy.dataplane)
                    log.info(
                        "dataplane registered node=%s mode=%s transparent=%s",
                        stream.node_id,
                        "delta" if delta else "sotw",
                        stream.proxy.transparent,
                    )
                    stream.change_pending = False  # register()'s own notification: served by this request
                    stream.regenerate()
                response = self._handle(stream, item, delta)
                if response is not None:
                    self._log_send(stream, response)
                    yield response
        finally:
            self._streams.discard(stream)
            read_task.cancel()
            if registered is not None:
                self.store.unregister(registered)
                log.info("dataplane disconnected node=%s", stream.node_id)

    def _handle(self, stream: _Stream, request: Any, delta: bool) -> Any:
        type_url = request.type_url
        if type_url not in xds.PUSH_ORDER:
            log.debug("xds request for an unserved type node=%s type=%s", stream.node_id, type_url)
            return None
        st = stream.types.setdefault(type_url, _TypeState())
        first = not st.requested
        if request.response_nonce and request.response_nonce != st.nonce and not delta:
            return None  # stale: answers a response that has since been superseded
        if request.HasField("error_detail"):
            log.warning(
                "xds NACK node=%s type=%s nonce=%s error=%r; the proxy keeps its last good config",
                stream.node_id,
                type_url.rsplit(".", 1)[-1],
                request.response_nonce,
                request.error_detail.message,
            )
            if delta and request.response_nonce == st.nonce:
                # Envoy kept what it had: diff the next push against that, not against what it refused.
                st.sent = dict(st.acked)
            self._apply_names(st, request, delta, first)
            st.requested = True
            return None
        if request.response_nonce:
            log.debug("xds ACK node=%s type=%s nonce=%s", stream.node_id, type_url, request.response_nonce)
            if delta and request.response_nonce == st.nonce:
                st.acked = dict(st.sent)
        self._apply_names(st, request, delta, first)
        st.requested = True
        if delta:
            return stream.delta_response(type_url, force=first)
        return stream.sotw_response(type_url, force=first)

    @staticmethod
    def _apply_names(st: _TypeState, request: Any, delta: bool, first: bool) -> None:
        if not delta:
            names = set(request.resource_names)
            st.names = None if not names or names == {"*"} else names - {"*"}
            return
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = set(request.resource_names_unsubscribe)
        if first:
            st.sent.update(request.initial_resource_versions)
            st.acked.update(request.initial_resource_versions)
            st.names = None if not subscribe or "*" in subscribe else set()
        elif "*" in subscribe:
            st.names = None
        if "*" in unsubscribe and st.names is None:
            st.names = set()
        if st.names is not None:
            st.names = (st.names | subscribe) - unsubscribe - {"*"}
        for name in unsubscribe:
            st.sent.pop(name, None)
            st.acked.pop(name, None)

    @staticmethod
    def _log_send(stream: _Stream, response: Any) -> None:
        log.debug(
            "xds push node=%s type=%s nonce=%s resources=%d",
            stream.node_id,
            response.type_url.rsplit(".", 1)[-1],
            response.nonce,
            len(response.resources),
        )

    # -- server lifecycle -
    async def start(
        self, host: str = "127.0.0.1", port: int = 0, credentials: grpc.ServerCredentials | None = None
    ) -> int:
        """Listen (loopback and an ephemeral port by default); returns the bound port."""
        self._loop = asyncio.get_running_loop()
        server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        bound = (
            server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        )
        if not bound:
            raise OSError(f"cannot listen for ADS on {address}")
        await server.start()
        self._server = server
        return bound

    async def stop(self, grace: float | None = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        self._unsubscribe()


class AdsServerComponent(Component):
    """An `AdsServer` as a component: `start()` on `host:port`, `ready` with the bound port in `port`, serves
    until cancelled, then `stop(grace)` (which also ends the server's store subscription)."""

    name = "devcp-ads"

    def __init__(
        self,
        server: AdsServer,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: grpc.ServerCredentials | None = None,
        grace: float | None = 0.5,
    ) -> None:
        super().__init__()
        self.server = server
        self.host = host
        self.port = port
        self.credentials = credentials
        self.grace = grace

    async def run(self) -> None:
        try:
            self.port = await self.server.start(self.host, self.port, self.credentials)
            self.ready.set()
            await asyncio.Future()  # until cancelled
        finally:
            await self.server.stop(self.grace)
