"""The dev CP's VIPs, /dns payload and `_kuma:dynamicconfig` listener against kuma-cp's DNS generator
goldens."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from kuma_dp.bootstrap.features import FEATURE_EMBEDDED_DNS, FEATURE_UNIFIED_RESOURCE_NAMING
from kuma_dp.paths import dynconf_socket_path
from kuma_dp_dev.devcp import vip, xds
from kuma_dp_dev.devcp.state import Service, parse_dataplane

pytestmark = pytest.mark.conformance

LABELS = {"kuma.io/workload": "backend", "k8s.kuma.io/namespace": "test-ns", "kuma.io/zone": "zone-1"}


def _golden_listener(conformance_dir: Path, case: int) -> dict:
    golden = yaml.safe_load((conformance_dir / f"dns/generator/{case}-envoy-config.golden.yaml").read_text())
    (entry,) = golden["resources"]
    resource = dict(entry["resource"])
    assert resource.pop("@type") == xds.LISTENER_TYPE
    return resource


def test_vips_and_names_match_the_golden_context() -> None:
    # The VIPs of Kuma's dns_generator_test.go: backend_test-ns_svc_8080 sorts before httpbin, so it gets the
    # first VIP, 240.0.0.0.
    vips = vip.allocate(["httpbin", "backend_test-ns_svc_8080"])
    assert vips == {"backend_test-ns_svc_8080": "240.0.0.0", "httpbin": "240.0.0.1"}
    assert list(vip.domains(vips)) == [
        "backend.test-ns.svc.8080.mesh",
        "backend_test-ns_svc_8080.mesh",
        "httpbin.mesh",
    ]


def test_dns_payload_bytes_and_etag(conformance_dir: Path) -> None:
    expected = (conformance_dir / "dns/dns-payload.from-4-envoy-config.json").read_bytes()
    domains = vip.domains({"backend_test-ns_svc_8080": "240.0.0.0", "httpbin": "240.0.0.1"})
    domains["frontend.test-ns.svc.8080.mesh"] = "2001:db8::ff00:42:8329"  # no outbound: no record
    body = xds.dns_payload(domains, {"240.0.0.0", "240.0.0.1"}, True, "default", LABELS)
    assert body == expected
    assert xds.etag(body) == "3a7819834364a9832e4a7b58cf52f72bc5b33bb1766e86dfd5cfe5afab562693"


def test_generated_dynconf_listener_equals_case_4(conformance_dir: Path) -> None:
    """Case 4 through the generator: Dataplane input (tproxy, outbounds on the VIPs) -> the listener."""
    spec = yaml.safe_load((conformance_dir / "dns/generator/4-dataplane.input.yaml").read_text())
    spec["networking"]["address"] = "10.0.0.1"
    # kuma-cp's test feeds the outbounds in directly; a tproxy Dataplane may not declare them (422), and our
    # generator derives the same two (VIP:80 of every other service), so we check that too.
    declared = {(o["address"], o["port"]) for o in spec["networking"].pop("outbound")}
    dp = parse_dataplane({**spec, "mesh": "default", "name": "dp", "labels": LABELS})
    proxy = xds.Proxy(dataplane=dp, workdir="", transparent=True, dual_stack=True)
    services = {s: Service("default", s) for s in ("backend_test-ns_svc_8080", "httpbin")}
    snap = xds.generate(proxy, services, vip.allocate(services))
    outbound_listeners = {n for n in snap.resources[xds.LISTENER_TYPE] if n.startswith("outbound:2")}
    assert outbound_listeners == {f"outbound:{a}:{p}" for a, p in declared}
    generated = snap.resources[xds.LISTENER_TYPE][xds.DYNCONF_LISTENER]
    # Compare as Envoy sees them: both parsed into the Listener proto and rendered back to JSON.
    ours = json_format.MessageToDict(xds.to_message(xds.LISTENER_TYPE, generated))
    golden = _golden_listener(conformance_dir, 4)
    theirs = json_format.MessageToDict(xds.to_message(xds.LISTENER_TYPE, golden))
    assert ours == theirs


def test_socket_path_is_cut_to_98_characters() -> None:
    path = dynconf_socket_path("/" + "w" * 120)
    assert len(path) == 98 + len(".sock") and path.endswith(".sock")


def _case_snapshot(conformance_dir: Path, case: int, features: frozenset[str], unified: bool = False) -> dict:
    """Run the generator on case N's Dataplane (tproxy, outbounds to the VIPs) with the golden's proxy
    metadata: dnsPort 53001, empty workdir, the case's features."""
    spec = yaml.safe_load((conformance_dir / f"dns/generator/{case}-dataplane.input.yaml").read_text()) or {}
    net = spec.setdefault("networking", {})
    net.setdefault("address", "10.0.0.1")
    net.pop("outbound", None)  # derived by the generator from the VIPs (see case 4 above)
    dp = parse_dataplane(
        {**spec, "mesh": "default", "name": "dp", "labels": LABELS if case in (4, 5) else {}}
    )
    tp = dp.transparent_proxying
    proxy = xds.Proxy(
        dataplane=dp,
        workdir="",
        features=features,
        transparent=dp.transparent,
        dual_stack=tp is not None and tp.ip_family_mode.lower() != "ipv4",
        dns_port=53001,
        unified_naming=unified,
    )
    services = {s: Service("default", s) for s in ("backend_test-ns_svc_8080", "httpbin")}
    snap = xds.generate(proxy, services, vip.allocate(services))
    return snap.resources[xds.LISTENER_TYPE]


def _as_envoy(resource: dict) -> dict:
    return json_format.MessageToDict(xds.to_message(xds.LISTENER_TYPE, resource))


@pytest.mark.parametrize("case", [1, 3, 6])
def test_coredns_era_udp_dns_listener(conformance_dir: Path, case: int) -> None:
    """Cases 1/3/6: no feature-embedded-dns -> UDP `kuma:dns` with Envoy's DNS filter (dual stack or IPv4)."""
    listeners = _case_snapshot(conformance_dir, case, frozenset())
    golden = yaml.safe_load((conformance_dir / f"dns/generator/{case}-envoy-config.golden.yaml").read_text())
    (entry,) = golden["resources"]
    expected = dict(entry["resource"])
    expected.pop("@type")
    assert _as_envoy(listeners[entry["name"]]) == _as_envoy(expected)


def test_unified_naming_dynconf_listener_equals_case_5(conformance_dir: Path) -> None:
    features = frozenset({FEATURE_EMBEDDED_DNS, FEATURE_UNIFIED_RESOURCE_NAMING})
    listeners = _case_snapshot(conformance_dir, 5, features, unified=True)
    golden = yaml.safe_load((conformance_dir / "dns/generator/5-envoy-config.golden.yaml").read_text())
    (entry,) = golden["resources"]
    expected = dict(entry["resource"])
    expected.pop("@type")
    assert entry["name"] == "system_dynamicconfig"
    assert _as_envoy(listeners["system_dynamicconfig"]) == _as_envoy(expected)
    assert xds.DNS_LISTENER not in listeners


def test_no_transparent_proxy_no_dns_listener(conformance_dir: Path) -> None:
    """Case 2: without the transparent proxy kuma-cp generates nothing DNS-related: no `kuma:dns`, and (ours)
    the /dns payload carries every mesh name instead of only the outbound VIPs (documented deviation)."""
    listeners = _case_snapshot(conformance_dir, 2, frozenset())
    assert xds.DNS_LISTENER not in listeners
