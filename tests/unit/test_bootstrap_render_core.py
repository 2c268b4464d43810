"""The renderer beyond the goldens: plaintext dev CP, admin on a socket, ingress, errors, YAML safety."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kuma_dp.bootstrap.render import (
    RenderError,
    RenderParams,
    dump_yaml,
    identifying_service,
    proto_duration,
    render_bootstrap,
    template_fragment,
)
from kuma_dp.paths import access_log_socket_path

pytestmark = pytest.mark.unit

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def resource(**networking: Any) -> dict[str, Any]:
    net = {
        "address": "127.0.0.1",
        "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
        **networking,
    }
    return {"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": net}


def request(**extra: Any) -> dict[str, Any]:
    return {
        "mesh": "default",
        "name": "web-1",
        "workdir": "/tmp/w",
        "dataplaneResource": json.dumps(resource()),
        **extra,
    }


def clusters(bootstrap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in bootstrap["staticResources"]["clusters"]}


def test_plaintext_dev_cp_has_no_tls_anywhere() -> None:
    out = render_bootstrap(request(), RenderParams(xds_tls=False, xds_port=15678))
    ads = clusters(out)["ads_cluster"]
    assert "transportSocket" not in ads
    assert "secrets" not in out["staticResources"]
    assert ads["type"] == "STATIC"
    assert ads["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"] == {
        "socketAddress": {"address": "127.0.0.1", "portValue": 15678}
    }


def test_tls_requires_a_ca_and_prefers_the_requests() -> None:
    with pytest.raises(RenderError, match="caCert: no CA"):
        render_bootstrap(request(), RenderParams())
    out = render_bootstrap(request(caCert=PEM), RenderParams(ca_cert_pem="other"))
    inline = out["staticResources"]["secrets"][0]["validationContext"]["trustedCa"]["inlineBytes"]
    assert base64.b64decode(inline).decode() == PEM


def test_node_identity_and_metadata_for_the_ads_server() -> None:
    req = request(dataplaneToken="tok", dnsPort=15054, readinessPort=9902, features=["feature-embedded-dns"])
    out = render_bootstrap(req, RenderParams(xds_tls=False))
    assert out["node"]["id"] == "default.web-1"
    assert out["node"]["cluster"] == "web"
    md = out["node"]["metadata"]
    # The ADS server registers the dataplane from this exact text.
    assert json.loads(md["dataplane.resource"]) == resource()
    assert md["dataplane.dns.port"] == "15054"
    assert md["dataplane.readinessReporter.port"] == "9902"
    assert md["features"] == ["feature-embedded-dns"]
    assert md["workdir"] == "/tmp/w"
    # The token travels as gRPC initial metadata, never in node metadata.
    assert "tok" not in json.dumps(md)
    grpc = out["dynamicResources"]["adsConfig"]["grpcServices"][0]
    assert grpc["initialMetadata"] == [{"key": "authorization", "value": "tok"}]


def test_admin_port_from_resource_then_default_then_none() -> None:
    res = resource(admin={"port": 9911})
    out = render_bootstrap(request(dataplaneResource=json.dumps(res)), RenderParams(xds_tls=False))
    assert out["admin"]["address"]["socketAddress"]["portValue"] == 9911
    out = render_bootstrap(request(), RenderParams(xds_tls=False, default_admin_port=9901))
    assert out["admin"]["address"]["socketAddress"]["portValue"] == 9901
    assert out["node"]["metadata"]["dataplane.admin.port"] == "9901"
    out = render_bootstrap(request(), RenderParams(xds_tls=False, default_admin_port=0))
    assert "admin" not in out
    assert "dataplane.admin.port" not in out["node"]["metadata"]


def test_admin_on_unix_socket() -> None:
    out = render_bootstrap(request(), RenderParams(xds_tls=False, admin_unix_socket=True))
    assert out["admin"]["address"] == {"pipe": {"path": "/tmp/w/kuma-envoy-admin.sock", "mode": 0o600}}
    assert out["node"]["metadata"]["dataplane.admin.socketPath"] == "/tmp/w/kuma-envoy-admin.sock"


def test_stored_dataplane_used_without_resource_in_request() -> None:
    stored = resource()
    stored["networking"]["inbound"] = [
        {"port": 1, "tags": {"kuma.io/service": "zeta"}},
        {"port": 2, "tags": {"kuma.io/service": "alpha"}},
    ]
    req = request()
    del req["dataplaneResource"]
    out = render_bootstrap(req, RenderParams(xds_tls=False, dataplane=stored))
    assert out["node"]["cluster"] == "alpha"  # kuma-cp: sorted-first service, not the first inbound
    assert "dataplane.resource" not in out["node"]["metadata"]
    assert identifying_service(None) == "unknown"


def test_ingress_has_no_hds_and_fixed_cluster() -> None:
    req = request(proxyType="ingress")
    del req["dataplaneResource"]
    out = render_bootstrap(req, RenderParams(xds_tls=False))
    assert out["node"]["cluster"] == "ingress"
    assert "hdsConfig" not in out
    assert out["node"]["metadata"]["dataplane.proxyType"] == "ingress"


def test_delta_from_feature_unless_resource_says_grpc() -> None:
    out = render_bootstrap(request(features=["feature-delta-grpc"]), RenderParams(xds_tls=False))
    assert out["dynamicResources"]["adsConfig"]["apiType"] == "DELTA_GRPC"
    assert out["hdsConfig"]["apiType"] == "GRPC"
    res = resource()
    res["envoy"] = {"xdsTransportProtocolVariant": "GRPC"}
    req = request(features=["feature-delta-grpc"], dataplaneResource=json.dumps(res))
    assert (
        render_bootstrap(req, RenderParams(xds_tls=False))["dynamicResources"]["adsConfig"]["apiType"]
        == "GRPC"
    )


def test_host_name_dns_family_and_ipv6_target_uri() -> None:
    out = render_bootstrap(
        request(), RenderParams(xds_tls=False, xds_host="cp.example", xds_dns_lookup_family="V4_ONLY")
    )
    ads = clusters(out)["ads_cluster"]
    assert (ads["type"], ads["dnsLookupFamily"]) == ("STRICT_DNS", "V4_ONLY")
    req = request(dataplaneTokenPath="/t/token")
    out = render_bootstrap(req, RenderParams(xds_tls=False, xds_host="::1", reloadable_tokens=True))
    google = out["dynamicResources"]["adsConfig"]["grpcServices"][0]["googleGrpc"]
    assert google["targetUri"] == "[::1]:5678"
    assert "channelCredentials" not in google  # plaintext: insecure channel
    assert "ads_cluster" not in clusters(out)


def test_access_log_socket_path_is_cut_to_98_characters() -> None:
    path = access_log_socket_path("/" + "w" * 80, "name", "mesh")
    assert len(path) == 98 + len(".sock")
    assert path.endswith(".sock")
    assert access_log_socket_path("/tmp", "dp-1", "default") == "/tmp/kuma-al-dp-1-default.sock"


def test_optional_metadata_transparent_proxy_and_otel() -> None:
    tp = {"ipFamilyMode": "ipv4", "redirect": {"vnet": {}}}
    out = render_bootstrap(
        request(dataplaneConfig=tp, otelEnv={"pipeEnabled": True}, dynamicMetadata={"HOST_IP": "1.2.3.4"}),
        RenderParams(xds_tls=False),
    )
    md = out["node"]["metadata"]
    assert md["transparentProxy"] == tp
    assert md["otelEnvInventory"] == {"pipeEnabled": True}
    assert md["dynamicMetadata"] == {"HOST_IP": "1.2.3.4"}


def test_values_are_data_not_text_so_yaml_metacharacters_are_safe() -> None:
    token = "x\n  evil: [1, 2]\n# {{ ${node_id}"
    out = render_bootstrap(request(dataplaneToken=token, workdir="/tmp/a: b"), RenderParams(xds_tls=False))
    back = yaml.safe_load(dump_yaml(out))
    assert back == out
    assert back["dynamicResources"]["adsConfig"]["grpcServices"][0]["initialMetadata"][0]["value"] == token


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"proxyType": "sidecar"}, "proxyType: unknown proxy type"),
        ({"dataplaneResource": "[1, 2"}, "dataplaneResource: not valid"),
        ({"dataplaneResource": "[1, 2]"}, "dataplaneResource: must be a JSON object"),
        ({"dnsPort": -1}, "dnsPort: must be a non-negative integer"),
        ({"features": "feature-delta-grpc"}, "features: must be a list"),
        ({"mesh": 3}, "mesh: must be a string"),
    ],
)
def test_bad_requests_name_the_field(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render_bootstrap(request(**bad), RenderParams(xds_tls=False))


def test_proto_duration() -> None:
    assert [proto_duration(s) for s in (0, 1, 2.0, 0.25, 2e-6, 1.5e-6, 1e-9)] == [
        "0s",
        "1s",
        "2s",
        "0.250s",
        "0.000002s",
        "0.000001500s",
        "0.000000001s",
    ]


def test_missing_template_parameter_is_a_template_bug() -> None:
    with pytest.raises(RuntimeError, match=r"needs \$\{admin_port\}"):
        template_fragment("admin_tcp", admin_address="127.0.0.1")


@settings(max_examples=60, deadline=None)
@given(
    token=st.text(min_size=1),
    workdir=st.text(),
    mesh=st.text(),
    name=st.text(),
    metadata=st.dictionaries(st.text(), st.text(), max_size=3),
)
def test_any_strings_round_trip_through_the_yaml(
    token: str, workdir: str, mesh: str, name: str, metadata: dict[str, str]
) -> None:
    req = {
        "mesh": mesh,
        "name": name,
        "workdir": workdir,
        "dataplaneToken": token,
        "dynamicMetadata": metadata,
    }
    out = render_bootstrap(req, RenderParams(xds_tls=False))
    assert yaml.safe_load(dump_yaml(out)) == out
