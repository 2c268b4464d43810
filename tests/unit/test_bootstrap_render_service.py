"""The dev CP's /bootstrap service: kuma-cp's status codes and bodies (`pkg/xds/bootstrap/handler.go`), no
sockets."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import trustme
import yaml

from kuma_dp.bootstrap.render import RenderParams
from kuma_dp_dev.devcp.bootstrap_server import (
    NOT_CA,
    PAGE_NOT_FOUND,
    TOKEN_REQUIRED,
    BootstrapService,
    dns_lookup_family,
    resolve_ips,
    san_mismatch_message,
)
from kuma_dp_dev.devcp.state import Store, parse_dataplane

pytestmark = pytest.mark.unit


def dp(name: str = "web-1", mesh: str = "default", **networking: Any) -> dict[str, Any]:
    net = {"address": "127.0.0.2", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}
    net.update(networking)
    return {"type": "Dataplane", "mesh": mesh, "name": name, "networking": net}


@pytest.fixture
def store() -> Store:
    s = Store(["default"])
    s.put_static(parse_dataplane(dp("stored-1")))
    return s


def post(service: BootstrapService, body: Any, **headers: str) -> tuple[int, dict[str, str], bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return service.handle("POST", "/bootstrap", {"Host": "127.0.0.1:5678", **headers}, raw)


def plain(store: Store, **kw: Any) -> BootstrapService:
    return BootstrapService(store, RenderParams(xds_tls=False, default_admin_port=0), **kw)


def test_other_paths_are_page_not_found(store: Store) -> None:
    status, _, body = plain(store).handle("POST", "/api/bootstrap", {}, b"{}")
    assert (status, body.decode()) == (404, PAGE_NOT_FOUND)


def test_unreadable_body_is_500(store: Store) -> None:
    assert plain(store).handle("POST", "/bootstrap", {}, None)[0] == 500


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"mesh": 3}', b'{"dnsPort": "53"}', b'{"ipv6Enabled": 1}'])
def test_json_parse_error_is_400_empty(store: Store, body: bytes) -> None:
    assert post(plain(store), body)[0::2] == (400, b"")


def test_token_required_when_auth_is_on(store: Store) -> None:
    service = plain(store, auth_enabled=True)
    status, headers, body = post(service, {"mesh": "default", "name": "stored-1"})
    assert (status, body.decode()) == (422, TOKEN_REQUIRED)
    assert headers["content-type"].startswith("text/plain")
    # The token is not validated at bootstrap (only on the ADS stream): any token, or just a path, passes.
    assert post(service, {"mesh": "default", "name": "stored-1", "dataplaneTokenPath": "/t"})[0] == 200


def test_transparent_proxy_with_outbounds_is_422(store: Store) -> None:
    res = dp(
        transparentProxying={"redirectPortInbound": 15006, "redirectPortOutbound": 15001},
        outbound=[{"port": 10001, "tags": {"kuma.io/service": "backend"}}],
    )
    status, _, body = post(
        plain(store), {"mesh": "default", "name": "web-1", "dataplaneResource": json.dumps(res)}
    )
    assert (status, body.decode()) == (
        422,
        "outbound: should be empty since dataplane is in Transparent Proxying mode",
    )


def test_unknown_mesh_is_422(store: Store) -> None:
    res = dp(mesh="x")
    status, _, body = post(plain(store), {"mesh": "x", "name": "web-1", "dataplaneResource": json.dumps(res)})
    assert (status, body.decode()) == (422, 'mesh: mesh "x" does not exist')


def test_invalid_resource_is_422_with_the_field(store: Store) -> None:
    res = dp(inbound=[{"port": 8080, "tags": {"team": "a"}}])
    status, _, body = post(
        plain(store), {"mesh": "default", "name": "web-1", "dataplaneResource": json.dumps(res)}
    )
    assert status == 422
    assert body.decode().startswith("networking.inbound[0]")


def test_dataplane_not_in_store_is_404_empty(store: Store) -> None:
    assert post(plain(store), {"mesh": "default", "name": "nobody"})[0::2] == (404, b"")


def test_json_response_with_accept(store: Store) -> None:
    res = dp(address="10.0.0.7")
    res["metrics"] = {
        "type": "prometheus",
        "conf": {
            "aggregate": [
                {"name": "app", "port": 123, "path": "/stats"},
                {"name": "off", "port": 124, "path": "/x", "enabled": False},
                {"name": "other", "address": "1.2.3.4", "port": 125, "path": "/y"},
            ]
        },
    }
    req = {"mesh": "default", "name": "web-1", "dataplaneResource": json.dumps(res)}
    status, headers, body = post(plain(store), req, accept="application/json")
    assert status == 200
    assert headers["content-type"] == "application/json"
    payload = json.loads(body)
    bootstrap = yaml.safe_load(base64.b64decode(payload["bootstrap"]))
    assert bootstrap["node"]["id"] == "default.web-1"
    assert payload["kumaSidecarConfiguration"] == {
        "networking": {"corefileTemplate": None, "address": "10.0.0.7"},
        "metrics": {
            "aggregate": [
                {"name": "app", "address": "10.0.0.7", "port": 123, "path": "/stats"},
                {"name": "other", "address": "1.2.3.4", "port": 125, "path": "/y"},
            ]
        },
    }


def test_raw_yaml_without_json_accept(store: Store) -> None:
    status, headers, body = post(plain(store), {"mesh": "default", "name": "stored-1"}, accept="text/html")
    assert (status, headers["content-type"]) == (200, "text/x-yaml")
    out = yaml.safe_load(body)
    assert out["node"]["cluster"] == "web"
    assert out["node"]["metadata"]["dataplane.proxyType"] == "dataplane"


def test_corefile_template_is_base64(store: Store) -> None:
    service = plain(store, corefile_template=b". {\n  forward . 8.8.8.8\n}\n")
    _, _, body = post(service, {"mesh": "default", "name": "stored-1"}, accept="application/json")
    template = json.loads(body)["kumaSidecarConfiguration"]["networking"]["corefileTemplate"]
    assert base64.b64decode(template).startswith(b". {")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_host_not_in_certificate_sans_is_400(store: Store, ca: trustme.CA) -> None:
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    service = BootstrapService(
        store,
        RenderParams(ca_cert_pem=ca.cert_pem.bytes().decode()),
        xds_host_from_request=True,
        server_cert_pem=leaf.cert_chain_pems[0].bytes().decode(),
    )
    ok = post(service, {"mesh": "default", "name": "stored-1"}, Host="localhost:5678")
    assert ok[0] == 200
    assert yaml.safe_load(ok[2])["staticResources"]["clusters"][1]["transportSocket"]["typedConfig"][
        "sni"
    ] == ("localhost")
    status, _, body = post(service, {"mesh": "default", "name": "stored-1"}, Host="kuma.internal:5678")
    assert status == 400
    assert body.decode() == san_mismatch_message("kuma.internal", ["127.0.0.1", "localhost"])
    assert body.decode().startswith(
        'A data plane proxy is trying to connect to the control plane using "kuma.internal" address, but the '
        'certificate in the control plane has the following SANs ["127.0.0.1" "localhost"].'
    )


def test_configured_xds_host_must_be_in_the_certificate(store: Store, ca: trustme.CA) -> None:
    leaf = ca.issue_cert("localhost")
    with pytest.raises(ValueError, match="not available in the DP Server certificate"):
        BootstrapService(
            store, RenderParams(xds_host="10.9.9.9"), server_cert_pem=leaf.cert_chain_pems[0].bytes().decode()
        )


def test_ca_cert_that_is_not_a_ca_is_400(store: Store, ca: trustme.CA) -> None:
    leaf_pem = ca.issue_cert("localhost").cert_chain_pems[0].bytes().decode()
    service = BootstrapService(store, RenderParams(ca_cert_pem=ca.cert_pem.bytes().decode()))
    status, _, body = post(service, {"mesh": "default", "name": "stored-1", "caCert": leaf_pem})
    assert (status, body.decode()) == (400, NOT_CA)
    good = post(service, {"mesh": "default", "name": "stored-1", "caCert": ca.cert_pem.bytes().decode()})
    assert good[0] == 200


def test_dns_lookup_family_like_kuma_cp() -> None:
    table = {"v4.example": ["10.0.0.1"], "dual.example": ["10.0.0.1", "fd00::1"], "none.example": []}
    assert dns_lookup_family("v4.example", table.__getitem__) == "V4_ONLY"
    assert dns_lookup_family("dual.example", table.__getitem__) == "AUTO"
    assert dns_lookup_family("none.example", table.__getitem__) == "AUTO"
    # localhost and IP literals are never looked up.
    assert dns_lookup_family("localhost", table.__getitem__) == "AUTO"
    assert dns_lookup_family("10.1.1.1", table.__getitem__) == "AUTO"
    assert "127.0.0.1" in resolve_ips("localhost")
    assert resolve_ips("no-such-host.invalid") == []


def test_resolved_host_name_renders_v4_only(store: Store) -> None:
    service = BootstrapService(
        store,
        RenderParams(xds_tls=False),
        xds_host_from_request=True,
        resolver={"cp.example": ["192.0.2.1"]}.__getitem__,
    )
    _, _, body = post(service, {"mesh": "default", "name": "stored-1"}, Host="cp.example:5678")
    ads = next(c for c in yaml.safe_load(body)["staticResources"]["clusters"] if c["name"] == "ads_cluster")
    assert (ads["type"], ads["dnsLookupFamily"]) == ("STRICT_DNS", "V4_ONLY")
