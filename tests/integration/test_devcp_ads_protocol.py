"""The ADS protocol rules, checked with a plain gRPC client (no Envoy): SotW versions/nonces, ACK, NACK,
stale nonces, pushes on change; Delta subscribe/unsubscribe and removals; node metadata -> proxy."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2

from kuma_dp_dev.devcp import xds
from kuma_dp_dev.devcp.ads import AdsServer, proxy_from_node
from kuma_dp_dev.devcp.state import Store, parse_dataplane
from kuma_dp_dev.harness.poll import wait_until_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _resource(name: str, service: str, port: int, outbound: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "type": "Dataplane", "mesh": "default", "name": name,
        "networking": {"address": "127.0.0.1",
                       "inbound": [{"port": port, "tags": {"kuma.io/service": service}}]},
    }  # fmt: skip
    if outbound:
        res["networking"]["outbound"] = [{"port": port + 1, "tags": {"kuma.io/service": outbound}}]
    return res


def _node(resource: dict[str, Any], **extra: Any) -> base_pb2.Node:
    md = struct_pb2.Struct()
    md.update({"dataplane.resource": json.dumps(resource), "workdir": "/w", **extra})
    return base_pb2.Node(id=f"default.{resource['name']}", metadata=md)


class Client:
    """One ADS stream: `send(request)`, `recv()` with a timeout; a reader task drains the call (cancelling a
    grpc.aio read would cancel the whole RPC)."""

    def __init__(self, channel: grpc.aio.Channel, delta: bool = False, token: str | None = None) -> None:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        metadata = (("authorization", token),) if token else None
        self.call = method(self._requests(), metadata=metadata)
        self.reader = asyncio.ensure_future(self._read())

    async def _requests(self) -> Any:
        while (item := await self.queue.get()) is not None:
            yield item

    async def _read(self) -> None:
        try:
            async for response in self.call:
                await self.responses.put(response)
        except grpc.aio.AioRpcError as exc:
            await self.responses.put(exc)
        except asyncio.CancelledError:
            pass

    async def send(self, request: Any) -> None:
        await self.queue.put(request)

    async def recv(self, timeout: float = 5) -> Any:
        item = await asyncio.wait_for(self.responses.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def nothing(self, wait: float = 0.3) -> bool:
        try:
            await asyncio.wait_for(self.responses.get(), wait)
        except TimeoutError:
            return True
        return False

    async def close(self) -> None:
        await self.queue.put(None)
        self.call.cancel()
        self.reader.cancel()


async def _with_server(store: Store, body: Any, token: str | None = None) -> None:
    server = AdsServer(store, token=token)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await body(server, channel)
    finally:
        await server.stop(0)


async def _delta_web(channel: grpc.aio.Channel) -> tuple[Client, Any]:
    """web-1 (an outbound to backend) subscribing to listeners over Delta xDS, and the first response."""
    web = Client(channel, delta=True)
    node = _node(_resource("web-1", "web", 20000, outbound="backend"))
    await web.send(discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=xds.LISTENER_TYPE))
    return web, await web.recv()


def test_sotw_ack_nack_stale_and_push(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "kuma_dp_dev.devcp.ads")
    store = Store()

    async def body(server: AdsServer, channel: grpc.aio.Channel) -> None:
        web = Client(channel)
        node = _node(_resource("web-1", "web", 20000, outbound="backend"))
        await web.send(discovery_pb2.DiscoveryRequest(node=node, type_url=xds.CLUSTER_TYPE))
        first = await web.recv()
        assert first.type_url == xds.CLUSTER_TYPE and first.nonce
        assert store.get_dataplane("default", "web-1") is not None
        names = sorted(c.Unpack(xds._MESSAGES[xds.CLUSTER_TYPE]()) and _name(c) for c in first.resources)
        assert names == ["backend", "localhost:20000"]
        # ACK: nothing new to send.
        ack = discovery_pb2.DiscoveryRequest(
            type_url=xds.CLUSTER_TYPE, version_info=first.version_info, response_nonce=first.nonce
        )
        await web.send(ack)
        assert await web.nothing()
        # EDS for backend: empty until a backend registers, then pushed.
        await web.send(discovery_pb2.DiscoveryRequest(type_url=xds.ENDPOINT_TYPE, resource_names=["backend"]))
        eds = await web.recv()
        cla = eds.resources[0].Unpack(xds._MESSAGES[xds.ENDPOINT_TYPE]()) or None
        assert len(eds.resources) == 1
        store.register(parse_dataplane(_resource("backend-1", "backend", 30000)))
        pushed = await web.recv()
        assert pushed.type_url == xds.ENDPOINT_TYPE and pushed.version_info != eds.version_info
        del cla
        # A stale nonce (answers the superseded EDS response) is ignored.
        await web.send(discovery_pb2.DiscoveryRequest(
            type_url=xds.ENDPOINT_TYPE, resource_names=["backend"], response_nonce=eds.nonce))  # fmt: skip
        assert await web.nothing()
        # NACK: logged with its message, nothing re-sent.
        nack = discovery_pb2.DiscoveryRequest(
            type_url=xds.ENDPOINT_TYPE, resource_names=["backend"], response_nonce=pushed.nonce,
            version_info=eds.version_info,
        )  # fmt: skip
        nack.error_detail.message = "endpoint rejected for the test"
        await web.send(nack)
        assert await web.nothing()
        assert any("xds NACK node=default.web-1" in r.getMessage() and "endpoint rejected for the test"
                   in r.getMessage() for r in caplog.records)  # fmt: skip
        await web.close()
        await wait_until_async(
            lambda: store.get_dataplane("default", "web-1") is None, 10, "web-1 to be deregistered"
        )
        assert store.get_dataplane("default", "web-1") is None

    asyncio.run(_with_server(store, body))


def _name(packed: Any) -> str:
    msg = xds._MESSAGES[packed.type_url]()
    packed.Unpack(msg)
    return msg.cluster_name if packed.type_url == xds.ENDPOINT_TYPE else msg.name


def test_delta_subscriptions_and_removals() -> None:
    store = Store()

    async def body(server: AdsServer, channel: grpc.aio.Channel) -> None:
        web, lds = await _delta_web(channel)
        assert sorted(r.name for r in lds.resources) == [
            "_kuma:dynamicconfig", "inbound:127.0.0.1:20000", "outbound:127.0.0.1:20001"]  # fmt: skip
        await web.send(
            discovery_pb2.DeltaDiscoveryRequest(type_url=xds.LISTENER_TYPE, response_nonce=lds.nonce)
        )
        await web.send(discovery_pb2.DeltaDiscoveryRequest(
            type_url=xds.ENDPOINT_TYPE, resource_names_subscribe=["backend"]))  # fmt: skip
        eds = await web.recv()
        assert [r.name for r in eds.resources] == ["backend"]
        # A change to one listener sends only that listener (the /dns payload), not the whole set.
        store.register(parse_dataplane(_resource("backend-1", "backend", 30000)))
        seen: dict[str, Any] = {}
        for _ in range(2):
            msg = await web.recv()
            seen[msg.type_url] = msg
        assert [r.name for r in seen[xds.LISTENER_TYPE].resources] == ["_kuma:dynamicconfig"]
        assert [r.name for r in seen[xds.ENDPOINT_TYPE].resources] == ["backend"]
        # Unsubscribe: no more EDS pushes for it.
        await web.send(discovery_pb2.DeltaDiscoveryRequest(
            type_url=xds.ENDPOINT_TYPE, resource_names_unsubscribe=["backend"]))  # fmt: skip
        assert await web.nothing()  # (and lets the server see the unsubscribe before the change below)
        store.unregister(("default", "backend-1"))
        msg = await web.recv()
        assert msg.type_url == xds.LISTENER_TYPE
        assert await web.nothing()
        await web.close()

    asyncio.run(_with_server(store, body))


def test_bad_token_and_unknown_dataplane_are_refused() -> None:
    store = Store()

    async def body(server: AdsServer, channel: grpc.aio.Channel) -> None:
        for token, code in (
            ("nope", grpc.StatusCode.UNAUTHENTICATED),
            (None, grpc.StatusCode.UNAUTHENTICATED),
        ):
            client = Client(channel, token=token)
            await client.send(discovery_pb2.DiscoveryRequest(node=_node(_resource("a", "a", 1)),
                                                             type_url=xds.CLUSTER_TYPE))  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.recv()
            assert err.value.code() == code
        client = Client(channel, token="sesame")
        await client.send(discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id="default.ghost"), type_url=xds.CLUSTER_TYPE))  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.recv()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "ghost" in (err.value.details() or "")

    asyncio.run(_with_server(store, body, token="sesame"))


TP_FEATURE = ["feature-transparent-proxy-in-dataplane-metadata"]
REDIRECT = {"outbound": {"enabled": True, "port": 15001}, "inbound": {"enabled": True, "port": 15006}}


@pytest.mark.parametrize(
    ("extra", "transparent", "dual"),
    [
        ({}, False, False),
        # Without the feature kuma-cp ignores the metadata and reads the resource (no transparentProxying).
        ({"features": [], "transparentProxy": {"redirect": REDIRECT}}, False, False),
        (
            {"features": TP_FEATURE, "transparentProxy": {"ipFamilyMode": "ipv4", "redirect": REDIRECT}},
            True,
            False,
        ),
        (
            {"features": TP_FEATURE, "transparentProxy": {"ipFamilyMode": "dualstack", "redirect": REDIRECT}},
            True,
            True,
        ),
    ],
)
def test_proxy_from_node_metadata(extra: dict[str, Any], transparent: bool, dual: bool) -> None:
    proxy = proxy_from_node(_node(_resource("a", "a", 1), **extra), Store())
    assert proxy.workdir == "/w" and proxy.transparent is transparent and proxy.dual_stack is dual


def test_delta_nack_then_change_resends_what_was_refused() -> None:
    store = Store()

    async def body(server: AdsServer, channel: grpc.aio.Channel) -> None:
        web, lds = await _delta_web(channel)
        assert len(lds.resources) == 3
        nack = discovery_pb2.DeltaDiscoveryRequest(type_url=xds.LISTENER_TYPE, response_nonce=lds.nonce)
        nack.error_detail.message = "refused for the test"
        await web.send(nack)
        assert await web.nothing()  # a NACK alone re-sends nothing
        store.register(parse_dataplane(_resource("backend-1", "backend", 30000)))
        again = await web.recv()
        # Envoy holds none of the refused listeners, so the next push carries all of them, not just the diff.
        assert sorted(r.name for r in again.resources) == sorted(r.name for r in lds.resources)
        await web.send(
            discovery_pb2.DeltaDiscoveryRequest(type_url=xds.LISTENER_TYPE, response_nonce=again.nonce)
        )
        store.unregister(("default", "backend-1"))
        diff = await web.recv()
        assert [r.name for r in diff.resources] == ["_kuma:dynamicconfig"]  # after an ACK: only the change
        await web.close()

    asyncio.run(_with_server(store, body))
