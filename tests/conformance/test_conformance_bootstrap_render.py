"""The rendered Envoy bootstrap equals kuma-cp v2.14.3's, for every golden of Kuma's
`pkg/xds/bootstrap/testdata/` (copied to bootstrap/cp/ in the conformance directory).

Inputs are transcribed from Kuma's `pkg/xds/bootstrap/generator_test.go` (its common setup and case table)
and `server_test.go` (the HTTP cases); outputs are the goldens in cp/, compared as parsed YAML. The one
environment-dependent input, the CP certificate whose PEM becomes `trustedCa`/`rootCerts`, is upstream's
test/certs/server-cert.pem: it is read back from a golden (all goldens carry the same one) and passed in as
the CP's certificate, so nothing in the output is masked.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuma_dp.bootstrap.render import RenderParams, dump_yaml, render_bootstrap
from kuma_dp_dev.devcp.bootstrap_server import BootstrapService
from kuma_dp_dev.devcp.state import Store, parse_dataplane

pytestmark = pytest.mark.conformance

VERSION = {
    "kumaDp": {
        "version": "0.0.1",
        "gitTag": "v0.0.1",
        "gitCommit": "91ce236824a9d875601679aa80c63783fb0e8725",
        "buildDate": "2019-08-07T11:26:06Z",
    },
    "envoy": {"version": "1.15.0", "build": "hash/1.15.0/RELEASE"},
}

#: `defaultDataplane` of Kuma's generator_test.go, and the variants its cases use.
DEFAULT_NETWORKING: dict[str, Any] = {
    "address": "8.8.8.8",
    "inbound": [{"port": 443, "servicePort": 8443, "tags": {"kuma.io/service": "backend"}}],
    "admin": {},
}


def dataplane(mesh: str, name: str, admin_port: int = 0, metrics: bool = False) -> dict[str, Any]:
    networking = json.loads(json.dumps(DEFAULT_NETWORKING))
    if admin_port:
        networking["admin"] = {"port": admin_port}
    res: dict[str, Any] = {"type": "Dataplane", "mesh": mesh, "name": name, "networking": networking}
    if metrics:
        res["metrics"] = {
            "type": "prometheus",
            "conf": {"aggregate": [{"name": "app1", "port": 123, "path": "/stats"}]},
        }
    return res


def gateway_dataplane(mesh: str, name: str) -> dict[str, Any]:
    return {
        "type": "Dataplane",
        "mesh": mesh,
        "name": name,
        "networking": {
            "address": "8.8.8.8",
            "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "gateway"}},
            "admin": {},
        },
    }


#: The custom-config dataplaneResource, exactly as in Kuma's generator_test.go (leading newline, trailing
#: comma).
CUSTOM_RESOURCE = """
{
  "type": "Dataplane",
  "mesh": "mesh",
  "name": "name.namespace",
  "creationTime": "1970-01-01T00:00:00Z",
  "modificationTime": "1970-01-01T00:00:00Z",
  "networking": {
    "address": "127.0.0.1",
    "inbound": [
      {
        "port": 22022,
        "servicePort": 8443,
        "tags": {
          "kuma.io/protocol": "http2",
          "kuma.io/service": "backend"
        }
      },
    ],
    "admin": {
      "port": 1234
    }
  }
}"""

#: The generator test's server params: `DefaultBootstrapServerConfig()` (Kuma's
#: `pkg/config/xds/bootstrap/config.go`) with xdsHost localhost, xdsPort 5678: admin 127.0.0.1, /dev/null, 1s,
#: 4 MiB.
DEFAULT = {"xds_host": "localhost", "xds_port": 5678}
#: The custom-config-minimal-request rows' server params.
CUSTOM_MINIMAL = {
    "xds_host": "localhost",
    "xds_port": 15678,
    "admin_address": "192.168.0.1",
    "admin_access_log_path": "/var/log",
    "xds_connect_timeout_s": 2.0,
    "xds_grpc_max_receive_message_bytes": 16777216,
}
CUSTOM = {
    "xds_host": "localhost",
    "xds_port": 15678,
    "admin_address": "192.168.0.1",
    "admin_access_log_path": "/dev/null",
    "xds_connect_timeout_s": 2.0,
}

MESH, NAME = "mesh", "name.namespace"

# golden -> (server params, hds, useTokenPath, stored Dataplane, request extras, proxy-config overrides)
GENERATOR_CASES: dict[
    str, tuple[dict[str, Any], bool, bool, dict[str, Any], dict[str, Any], dict[str, Any]]
] = {
    "generator.default-config-minimal-request.golden.yaml": (
        DEFAULT,
        True,
        False,
        dataplane(MESH, NAME),
        {},
        {},
    ),
    "generator.default-config.golden.yaml": (
        DEFAULT,
        True,
        False,
        dataplane(MESH, NAME, 1234),
        {"dataplaneToken": "token", "dnsPort": 53001},
        {},
    ),
    "generator.custom-config-minimal-request.golden.yaml": (
        CUSTOM_MINIMAL,
        True,
        False,
        dataplane(MESH, NAME, 9902),
        {},
        {},
    ),
    "generator.custom-config-minimal-request-and-delta.golden.yaml": (
        CUSTOM_MINIMAL,
        True,
        False,
        dataplane(MESH, NAME, 9902),
        {"features": ["feature-delta-grpc"]},
        {},
    ),
    "generator.custom-config-minimal-request-with-unified-resource-naming-feature-flag.golden.yaml": (
        DEFAULT,
        False,
        False,
        dataplane(MESH, NAME, 9902),
        {"features": ["feature-unified-resource-naming"]},
        {},
    ),
    "generator.custom-config.golden.yaml": (
        CUSTOM,
        True,
        False,
        dataplane(MESH, NAME),
        {
            "dataplaneToken": "token",
            "dynamicMetadata": {"test": "value"},
            "dataplaneResource": CUSTOM_RESOURCE,
        },
        {},
    ),
    "generator.default-config.kubernetes.golden.yaml": (
        DEFAULT,
        False,
        False,
        dataplane(MESH, NAME, 1234),
        {"dataplaneToken": "token"},
        {},
    ),
    "generator.default-config.kubernetes.ipv6.golden.yaml": (
        {**DEFAULT, "xds_host": "fd00:a123::1"},
        False,
        False,
        dataplane(MESH, NAME, 1234),
        {"dataplaneToken": "token"},
        {},
    ),
    "generator.metrics-config.kubernetes.golden.yaml": (
        DEFAULT,
        False,
        False,
        dataplane(MESH, NAME, 1234, metrics=True),
        {"dataplaneToken": "token"},
        {},
    ),
    "generator.system-cert-config.kubernetes.golden.yaml": (
        DEFAULT,
        False,
        False,
        dataplane(MESH, NAME, 1234, metrics=True),
        {"dataplaneToken": "token", "systemCaPath": "/etc/certs/cert.pem"},
        {},
    ),
    "generator.default-config-token-path.golden.yaml": (
        DEFAULT,
        True,
        True,
        dataplane(MESH, NAME, 1234),
        {
            "dataplaneToken": "token",
            "dnsPort": 53001,
            "dataplaneTokenPath": "/path/to/file",
            "metricsResources": {"certPath": "/path/cert/pem", "keyPath": "/path/key/pem"},
        },
        {},
    ),
    "generator.gateway.golden.yaml": (
        DEFAULT,
        True,
        True,
        gateway_dataplane(MESH, NAME),
        {"dataplaneToken": "token", "dnsPort": 53001, "dataplaneTokenPath": "/path/to/file"},
        {"gateway_max_connections": 35678},
    ),
    "generator.probes.kubernetes.golden.yaml": (
        DEFAULT,
        False,
        False,
        dataplane(MESH, NAME, 1234),
        {"dataplaneToken": "token", "readinessPort": 15000, "appProbeProxyDisabled": True},
        {},
    ),
}


def _cp_dir(conformance_dir: Path) -> Path:
    return conformance_dir / "bootstrap" / "cp"


@pytest.fixture(scope="module")
def cp_cert_pem(conformance_dir: Path) -> str:
    """Upstream's test/certs/server-cert.pem, the CP certificate every golden was generated with."""
    pems = set()
    for path in sorted(_cp_dir(conformance_dir).glob("*.golden.yaml")):
        golden = yaml.safe_load(path.read_text())
        for secret in golden["staticResources"].get("secrets", []):
            pems.add(secret["validationContext"]["trustedCa"]["inlineBytes"])
    assert len(pems) == 1, "the goldens disagree on the CP certificate"
    return base64.b64decode(pems.pop()).decode()


def test_every_cp_golden_has_a_case(conformance_dir: Path) -> None:
    goldens = {p.name for p in _cp_dir(conformance_dir).glob("*.golden.yaml")}
    assert goldens == set(GENERATOR_CASES) | set(HTTP_CASES)


@pytest.mark.parametrize("golden_name", sorted(GENERATOR_CASES))
def test_generator_golden(golden_name: str, conformance_dir: Path, cp_cert_pem: str) -> None:
    server, hds, use_token_path, stored, extras, proxy_config = GENERATOR_CASES[golden_name]
    params = RenderParams(
        **server,
        **proxy_config,
        ca_cert_pem=cp_cert_pem,
        default_admin_port=0,
        hds_enabled=hds,
        reloadable_tokens=use_token_path,
        mesh_services_exclusive=True,
        dataplane=stored,
    )
    request = {"mesh": MESH, "name": NAME, "version": VERSION, "workdir": "/tmp", **extras}
    rendered = render_bootstrap(request, params)
    expected = yaml.safe_load((_cp_dir(conformance_dir) / golden_name).read_text())
    assert rendered == expected
    # What Envoy gets is the YAML text: it must parse back to the same data.
    assert yaml.safe_load(dump_yaml(rendered)) == expected


# golden -> (stored Dataplane name, its resource, request extras)
HTTP_CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "bootstrap.universal.golden.yaml": ("dp-1", dataplane("default", "dp-1"), {}),
    "bootstrap.k8s.golden.yaml": ("dp-1.default", dataplane("default", "dp-1.default"), {}),
    "bootstrap.overridden.golden.yaml": ("dp-1.default", dataplane("default", "dp-1.default", 1234), {}),
    "bootstrap.gateway.golden.yaml": (
        "gateway-1.default",
        gateway_dataplane("default", "gateway-1.default"),
        {"resources": {"maxHeapSizeBytes": 2000000}},
    ),
}


@pytest.mark.parametrize("host_header", ["localhost:5678", "localhost"])
@pytest.mark.parametrize("golden_name", sorted(HTTP_CASES))
def test_http_golden(golden_name: str, host_header: str, conformance_dir: Path, cp_cert_pem: str) -> None:
    """Kuma's server_test.go: the DP server answers a POST without `accept` with the raw YAML, content-type
    text/x-yaml."""
    name, stored, extras = HTTP_CASES[golden_name]
    store = Store(["default"])
    store.put_static(parse_dataplane(stored))
    service = BootstrapService(
        store,
        RenderParams(xds_host="localhost", xds_port=5678, ca_cert_pem=cp_cert_pem, default_admin_port=0),
        auth_enabled=True,
        server_cert_pem=cp_cert_pem,
    )
    version = {"kumaDp": VERSION["kumaDp"], "envoy": {"version": "1.15.0", "build": "hash/1.15.0/RELEASE"}}
    body = {"mesh": "default", "name": name, "dataplaneToken": "token", "workdir": "/tmp", **extras}
    body["version"] = version
    status, headers, payload = service.handle(
        "POST",
        "/bootstrap",
        {"Content-Type": "application/json", "Host": host_header},
        json.dumps(body).encode(),
    )
    assert status == 200, payload
    assert headers["content-type"] == "text/x-yaml"
    expected = yaml.safe_load((_cp_dir(conformance_dir) / golden_name).read_text())
    assert yaml.safe_load(payload) == expected
