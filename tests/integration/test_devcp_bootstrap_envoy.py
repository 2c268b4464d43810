"""The real Envoy accepts what we render, and a bootstrap fetched from the dev CP brings Envoy to LIVE.

`envoy --mode validate` checks every variant the renderer has (TLS/plaintext, admin TCP/unix socket, gateway
overload manager, reloadable-token Google gRPC, delta, IPv6 and host-name ADS addresses). The live tests run
the whole path a user runs: POST /bootstrap to the dev CP's server (httpx, as kuma-dp), write the YAML, start
Envoy on it, and watch Envoy open the ADS stream (gRPC, with the token as `authorization` metadata and the
node metadata the ADS server registers from), take an empty CDS/LDS answer and report /ready LIVE.
"""

from __future__ import annotations

import base64
import json
import queue
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trustme
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from kuma_dp.bootstrap.render import RenderParams, dump_yaml, render_bootstrap
from kuma_dp.fsutil import atomic_write
from kuma_dp_dev.devcp.bootstrap_server import BootstrapService, start_bootstrap_server
from kuma_dp_dev.devcp.state import Store
from kuma_dp_dev.harness.poll import wait_until
from kuma_dp_dev.harness.ports import free_port
from kuma_dp_dev.harness.procs import stop

pytestmark = pytest.mark.integration

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def resource(admin_port: int = 0, gateway: bool = False) -> dict[str, Any]:
    networking: dict[str, Any] = {"address": "127.0.0.1"}
    if gateway:
        networking["gateway"] = {"type": "BUILTIN", "tags": {"kuma.io/service": "edge"}}
    else:
        networking["inbound"] = [{"port": 18080, "servicePort": 8080, "tags": {"kuma.io/service": "web"}}]
    if admin_port:
        networking["admin"] = {"port": admin_port}
    return {"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": networking}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name -> (request extras, RenderParams overrides); "ca" in overrides is replaced by the test CA
    "tls-tcp-admin": ({"dataplaneToken": "t"}, {"ca": True}),
    "plaintext": ({"dataplaneToken": "t"}, {"xds_tls": False}),
    "admin-unix-socket": ({}, {"ca": True, "admin_unix_socket": True}),
    "gateway-overload-fixed-heap": (
        {
            "dataplaneResource": json.dumps(resource(gateway=True)),
            "resources": {"maxHeapSizeBytes": 200000000},
        },
        {"ca": True},
    ),
    "reloadable-token-google-grpc": (
        {"dataplaneToken": "t", "dataplaneTokenPath": "TOKEN"},
        {"ca": True, "reloadable_tokens": True},
    ),
    "delta": ({"features": ["feature-delta-grpc"]}, {"xds_tls": False}),
    "ipv6-static": ({}, {"ca": True, "xds_host": "::1"}),
    "hostname-strict-dns-v4": ({}, {"ca": True, "xds_host": "localhost", "xds_dns_lookup_family": "V4_ONLY"}),
    "unified-naming-no-hds": (
        {"features": ["feature-unified-resource-naming"]},
        {"ca": True, "mesh_services_exclusive": True, "hds_enabled": False},
    ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_envoy_validates(variant: str, envoy_binary: str, ca: trustme.CA, short_tmp: Path) -> None:
    extras, overrides = VARIANTS[variant]
    overrides = dict(overrides)
    if overrides.pop("ca", False):
        overrides["ca_cert_pem"] = ca.cert_pem.bytes().decode()
    token_file = short_tmp / "token"
    token_file.write_text("t")
    request = {
        "mesh": "default",
        "name": "web-1",
        "workdir": str(short_tmp),
        "dataplaneResource": json.dumps(resource(admin_port=free_port())),
        "dnsPort": 15054,
        "readinessPort": 9902,
        **extras,
    }
    if request.get("dataplaneTokenPath") == "TOKEN":
        request["dataplaneTokenPath"] = str(token_file)
    path = short_tmp / "bootstrap.yaml"
    atomic_write(path, dump_yaml(render_bootstrap(request, RenderParams(**overrides))))
    proc = subprocess.run(
        [envoy_binary, "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout + proc.stderr


class FakeAds:
    """Just enough ADS for Envoy to go LIVE: an empty answer to each type's first request; records streams."""

    def __init__(self) -> None:
        self.streams: queue.Queue[tuple[dict[str, str], discovery_pb2.DiscoveryRequest]] = queue.Queue()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((self,))

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != ADS_METHOD:
            return None  # HDS and the rest: UNIMPLEMENTED, which Envoy tolerates
        return grpc.stream_stream_rpc_method_handler(
            self._stream,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
        )

    def _stream(
        self, requests: Iterator[discovery_pb2.DiscoveryRequest], context: grpc.ServicerContext
    ) -> Any:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        for n, req in enumerate(requests):
            if n == 0:
                self.streams.put((metadata, req))
            if not req.response_nonce:
                yield discovery_pb2.DiscoveryResponse(version_info="1", type_url=req.type_url, nonce=f"n{n}")


@pytest.fixture
def fake_ads() -> Iterator[FakeAds]:
    ads = FakeAds()
    yield ads
    ads.server.stop(grace=0)


def _start_envoy(envoy_binary: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                envoy_binary,
                "--config-path",
                str(config),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext-tcp-admin", "tls-unix-admin"])
def test_envoy_goes_live_on_a_devcp_bootstrap(
    tls: bool, envoy_binary: str, ca: trustme.CA, short_tmp: Path, fake_ads: FakeAds
) -> None:
    ads = fake_ads
    if tls:
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        creds = grpc.ssl_server_credentials([(leaf.private_key_pem.bytes(), leaf.cert_chain_pems[0].bytes())])
        ads_port = ads.server.add_secure_port("127.0.0.1:0", creds)
    else:
        ads_port = ads.server.add_insecure_port("127.0.0.1:0")
    ads.server.start()

    admin_port = 0 if tls else free_port()
    params = RenderParams(
        xds_host="127.0.0.1",
        xds_port=ads_port,
        xds_tls=tls,
        ca_cert_pem=ca.cert_pem.bytes().decode() if tls else None,
        admin_unix_socket=tls,
        default_admin_port=0,
    )
    service = BootstrapService(Store(), params, auth_enabled=True)
    dp_resource = json.dumps(resource(admin_port=admin_port))
    request = {
        "mesh": "default",
        "name": "web-1",
        "proxyType": "dataplane",
        "dataplaneToken": "the-token",
        "dataplaneResource": dp_resource,
        "workdir": str(short_tmp),
        "features": ["feature-tcp-accesslog-via-named-pipe"],
    }
    with start_bootstrap_server(service) as server:
        reply = httpx.post(
            f"{server.url}/bootstrap",
            json=request,
            headers={"accept": "application/json", "content-type": "application/json"},
        )
    assert reply.status_code == 200, reply.text
    config = short_tmp / "bootstrap.yaml"
    atomic_write(config, base64.b64decode(reply.json()["bootstrap"]))

    proc = _start_envoy(envoy_binary, config, short_tmp / "envoy.log")
    try:
        try:
            metadata, first = ads.streams.get(timeout=30)
        except queue.Empty:
            pytest.fail("Envoy never opened the ADS stream:\n" + (short_tmp / "envoy.log").read_text())
        assert metadata["authorization"] == "the-token"
        assert first.node.id == "default.web-1"
        assert first.node.cluster == "web"
        node_md = json_format.MessageToDict(first.node.metadata)
        assert node_md["dataplane.resource"] == dp_resource
        assert node_md["features"] == ["feature-tcp-accesslog-via-named-pipe"]
        # Types survive Envoy's YAML parser: quoted numbers stay strings, booleans stay booleans.
        assert node_md["ipv6Enabled"] is False
        if tls:
            assert node_md["dataplane.admin.socketPath"] == str(short_tmp / "kuma-envoy-admin.sock")
        else:
            assert node_md["dataplane.admin.port"] == str(admin_port)

        if tls:
            admin = httpx.Client(transport=httpx.HTTPTransport(uds=str(short_tmp / "kuma-envoy-admin.sock")))
            base = "http://envoy-admin"
        else:
            admin = httpx.Client()
            base = f"http://127.0.0.1:{admin_port}"
        with admin:

            def alive() -> None:
                assert proc.poll() is None, (short_tmp / "envoy.log").read_text()

            def state_once_ready() -> str | None:
                ready = admin.get(f"{base}/ready", timeout=2)
                return ready.text.strip() if ready.status_code == 200 else None

            state = wait_until(state_once_ready, 30, "Envoy's /ready to answer 200", before=alive)
            assert state == "LIVE", (short_tmp / "envoy.log").read_text()
    finally:
        stop(proc)
