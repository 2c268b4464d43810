"""The dev CP's /bootstrap over real sockets: httpx as kuma-dp would call it, plain HTTP and HTTPS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import yaml

from kuma_dp.bootstrap.render import RenderParams
from kuma_dp_dev.devcp.bootstrap_server import (
    PAGE_NOT_FOUND,
    TOKEN_REQUIRED,
    BootstrapServer,
    BootstrapService,
    start_bootstrap_server,
)
from kuma_dp_dev.devcp.state import Store
from kuma_dp_dev.devcp.tls import TLSFiles
from tests.helpers.resources import dataplane

pytestmark = pytest.mark.integration

RESOURCE = dataplane("web-1", "web", 8080)
REQUEST = {
    "mesh": "default",
    "name": "web-1",
    "proxyType": "dataplane",
    "dataplaneToken": "secret-token",
    "dataplaneResource": json.dumps(RESOURCE),
    "workdir": "/tmp",
}
KUMA_DP_HEADERS = {"accept": "application/json", "content-type": "application/json"}


@pytest.fixture
def plain_server() -> Iterator[BootstrapServer]:
    service = BootstrapService(Store(), RenderParams(xds_tls=False, xds_port=5679), auth_enabled=True)
    with start_bootstrap_server(service) as server:
        yield server


def test_json_exchange_as_kuma_dp_sends_it(plain_server: BootstrapServer) -> None:
    reply = httpx.post(f"{plain_server.url}/bootstrap", json=REQUEST, headers=KUMA_DP_HEADERS)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    bootstrap = yaml.safe_load(base64.b64decode(reply.json()["bootstrap"]))
    assert bootstrap["node"]["id"] == "default.web-1"
    grpc = bootstrap["dynamicResources"]["adsConfig"]["grpcServices"][0]
    assert grpc["initialMetadata"] == [{"key": "authorization", "value": "secret-token"}]
    assert reply.json()["kumaSidecarConfiguration"]["networking"]["address"] == "127.0.0.1"


def test_yaml_without_json_accept_and_keepalive(plain_server: BootstrapServer) -> None:
    with httpx.Client(base_url=plain_server.url) as client:
        for _ in range(2):  # same connection: HTTP/1.1 keep-alive with content-length
            reply = client.post("/bootstrap", content=json.dumps(REQUEST))
            assert reply.status_code == 200
            assert reply.headers["content-type"] == "text/x-yaml"
            assert yaml.safe_load(reply.text)["node"]["cluster"] == "web"


def test_chunked_request_body(plain_server: BootstrapServer) -> None:
    body = json.dumps(REQUEST).encode()

    def chunks() -> Iterator[bytes]:
        yield body[:10]
        yield body[10:]

    reply = httpx.post(f"{plain_server.url}/bootstrap", content=chunks(), headers=KUMA_DP_HEADERS)
    assert reply.status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "text"),
    [
        ("/bootstrap", b"{not json", 400, ""),
        ("/bootstrap", json.dumps({"mesh": "default", "name": "web-1"}).encode(), 422, TOKEN_REQUIRED),
        (
            "/bootstrap",
            json.dumps({"mesh": "default", "name": "nobody", "dataplaneToken": "t"}).encode(),
            404,
            "",
        ),
        ("/", b"{}", 404, PAGE_NOT_FOUND),
    ],
)
def test_error_statuses_on_the_wire(
    plain_server: BootstrapServer, path: str, body: bytes, status: int, text: str
) -> None:
    reply = httpx.post(f"{plain_server.url}{path}", content=body, headers=KUMA_DP_HEADERS)
    assert (reply.status_code, reply.text) == (status, text)


def test_truncated_body_is_500(plain_server: BootstrapServer) -> None:
    with socket.create_connection((plain_server.host, plain_server.port), timeout=5) as sock:
        sock.sendall(b'POST /bootstrap HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"mesh"')
        sock.shutdown(socket.SHUT_WR)
        data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 500")


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    d = tmp_path_factory.mktemp("tls")
    cert, key, ca_file = d / "cert.pem", d / "key.pem", d / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return {"cert": cert, "key": key, "ca": ca_file, "ca_pem": ca.cert_pem.bytes().decode()}


def test_https_with_verified_ca_and_sans(tls_material: dict[str, Any]) -> None:
    service = BootstrapService(
        Store(),
        RenderParams(xds_port=5678, ca_cert_pem=tls_material["ca_pem"]),
        xds_host_from_request=True,
        server_cert_pem=Path(tls_material["cert"]).read_text(),
    )
    tls = TLSFiles(str(tls_material["cert"]), str(tls_material["key"]))
    with start_bootstrap_server(service, tls=tls) as server:
        assert server.url.startswith("https://")
        verify = ssl.create_default_context(cafile=str(tls_material["ca"]))
        url = f"https://localhost:{server.port}/bootstrap"
        # A plaintext client cannot talk to it, and that does not disturb the server.
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"http://127.0.0.1:{server.port}/bootstrap", json=REQUEST, timeout=5)
        reply = httpx.post(url, json=REQUEST, headers=KUMA_DP_HEADERS, verify=verify)
        assert reply.status_code == 200
        bootstrap = yaml.safe_load(base64.b64decode(reply.json()["bootstrap"]))
        ads = next(c for c in bootstrap["staticResources"]["clusters"] if c["name"] == "ads_cluster")
        # xdsHost comes from the Host header the agent used, as in kuma-cp.
        assert ads["transportSocket"]["typedConfig"]["sni"] == "localhost"
        trusted = bootstrap["staticResources"]["secrets"][0]["validationContext"]["trustedCa"]["inlineBytes"]
        assert base64.b64decode(trusted).decode() == tls_material["ca_pem"]
        # An address outside the certificate: kuma-cp's 400 with the SAN list.
        other = httpx.post(
            f"https://127.0.0.1:{server.port}/bootstrap",
            json=REQUEST,
            headers={**KUMA_DP_HEADERS, "host": "cp.example:5678"},
            verify=verify,
        )
        assert other.status_code == 400
        assert '"cp.example" address' in other.text
        # TLS 1.2 is the floor.
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(cafile=str(tls_material["ca"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # that is the point: TLS 1.1 is old
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(httpx.HTTPError):
            httpx.post(url, json=REQUEST, verify=old, timeout=5)


def test_as_an_asyncio_component() -> None:
    """The component serves until cancelled, then the port is closed."""
    from kuma_dp_dev.devcp.bootstrap_server import BootstrapServerComponent

    service = BootstrapService(Store(), RenderParams(xds_tls=False), auth_enabled=True)

    async def scenario() -> int:
        component = BootstrapServerComponent(service)
        task = asyncio.create_task(component.run())
        await asyncio.wait_for(component.ready.wait(), 10)
        assert component.server is not None
        port = component.server.port
        async with httpx.AsyncClient() as client:
            reply = await client.post(
                f"http://127.0.0.1:{port}/bootstrap", json=REQUEST, headers=KUMA_DP_HEADERS
            )
        assert reply.status_code == 200
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return port

    port = asyncio.run(scenario())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
