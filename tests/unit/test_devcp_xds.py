"""Pure parts of the dev CP: VIP allocation and naming, xDS generation per proxy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuma_dp_dev.devcp import vip, xds
from kuma_dp_dev.devcp.state import Endpoint, Service, parse_dataplane

pytestmark = pytest.mark.unit


def test_vips_start_at_network_address_in_sorted_order() -> None:
    assert vip.allocate(["web", "backend", "db"]) == {
        "backend": "240.0.0.0",
        "db": "240.0.0.1",
        "web": "240.0.0.2",
    }


def test_vips_are_stable_while_the_service_exists_and_reused_after() -> None:
    first = vip.allocate(["b", "c"])
    second = vip.allocate(["a", "b", "c"], first)  # "a" sorts first but b and c keep theirs
    assert second == {"a": "240.0.0.2", "b": "240.0.0.0", "c": "240.0.0.1"}
    third = vip.allocate(["a", "c", "d"], second)  # b left: its address is free for d
    assert third == {"a": "240.0.0.2", "c": "240.0.0.1", "d": "240.0.0.0"}


def test_vip_exhaustion_names_the_fix() -> None:
    with pytest.raises(vip.VipExhausted, match="widen the CIDR"):
        vip.allocate(["a", "b", "c"], cidr="10.0.0.0/31")


@given(st.lists(st.text("abc_", min_size=1, max_size=4), max_size=20), st.lists(st.text("abc", min_size=1)))
def test_vips_unique_and_kept(first: list[str], more: list[str]) -> None:
    a = vip.allocate(first)
    b = vip.allocate(first + more, a)
    assert len(set(b.values())) == len(b)
    assert all(b[n] == ip for n, ip in a.items())


def test_hostnames_and_mapped_ipv6() -> None:
    assert vip.hostnames("backend_kuma-demo_svc_8080") == [
        "backend_kuma-demo_svc_8080.mesh",
        "backend.kuma-demo.svc.8080.mesh",
    ]
    assert vip.hostnames("web") == ["web.mesh"]
    assert vip.ipv4_mapped("240.0.0.0") == "::ffff:f000:0"
    assert vip.ipv4_mapped("240.1.2.3") == "::ffff:f001:203"


WEB = parse_dataplane(
    {
        "mesh": "default",
        "name": "web-1",
        "networking": {
            "address": "127.0.0.1",
            "inbound": [
                {
                    "port": 20001,
                    "servicePort": 8080,
                    "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"},
                }
            ],
            "outbound": [{"port": 33033, "tags": {"kuma.io/service": "backend"}}],
        },
    }
)
SERVICES = {
    "backend": Service("default", "backend", "http", (Endpoint("127.0.0.2", 20002, ("default", "b-1")),)),
    "web": Service("default", "web", "http", (Endpoint("127.0.0.1", 20001, ("default", "web-1")),)),
}


def test_generate_declared_outbounds() -> None:
    snap = xds.generate(xds.Proxy(WEB, workdir="/w"), SERVICES, vip.allocate(SERVICES))
    listeners = snap.resources[xds.LISTENER_TYPE]
    assert sorted(listeners) == ["_kuma:dynamicconfig", "inbound:127.0.0.1:20001", "outbound:127.0.0.1:33033"]
    assert sorted(snap.resources[xds.CLUSTER_TYPE]) == ["backend", "localhost:8080"]
    cla = snap.resources[xds.ENDPOINT_TYPE]["backend"]
    assert cla["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"] == {
        "address": "127.0.0.2",
        "portValue": 20002,
    }
    assert listeners["_kuma:dynamicconfig"]["address"]["pipe"]["path"] == "/w/kuma-mesh-metric-config.sock"
    for type_url, resources in snap.resources.items():  # every resource is a valid Envoy proto
        for resource in resources.values():
            xds.to_message(type_url, resource)


def test_generate_transparent_proxy_uses_vips_and_passthrough() -> None:
    dp = parse_dataplane(
        {
            "mesh": "default",
            "name": "web-1",
            "networking": {
                "address": "127.0.0.1",
                "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
                "transparentProxying": {"redirectPortOutbound": 15001, "redirectPortInbound": 15006},
            },
        }
    )
    vips = vip.allocate(SERVICES)
    snap = xds.generate(xds.Proxy(dp, transparent=True, dual_stack=True), SERVICES, vips)
    listeners = snap.resources[xds.LISTENER_TYPE]
    assert listeners["outbound:240.0.0.0:80"]["bindToPort"] is False
    assert "outbound:240.0.0.1:80" not in listeners  # its own service
    assert listeners["outbound:passthrough:ipv4"]["useOriginalDst"] is True
    assert snap.resources[xds.CLUSTER_TYPE]["outbound:passthrough:ipv4"]["type"] == "ORIGINAL_DST"
    body = listeners["_kuma:dynamicconfig"]["filterChains"][0]["filters"][0]["typedConfig"]["routeConfig"]
    payload = body["virtualHosts"][0]["routes"][1]["directResponse"]["body"]["inlineString"]
    assert payload == (
        '{"records":[{"name":"backend.mesh","ips":["240.0.0.0","::ffff:f000:0"]}],'
        '"ttl":30,"extraLabels":{"mesh":"default"}}'
    )
    assert body["maxDirectResponseBodySizeBytes"] == len(payload.encode())
