"""End to end on loopback: the dev CP's ADS server driving real Envoys in front of real HTTP apps.

client -> web's Envoy (outbound) -> backend's Envoy (inbound) -> backend app; a third dataplane joins (over
Delta xDS) and is routed to, then leaves and is removed; /dns on each Envoy's dynconf socket follows with
its ETag; a bad resource is NACKed, logged by the CP, and the Envoys keep serving their last good config.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kuma_dp_dev.demoapp import serve_in_thread
from kuma_dp_dev.devcp import xds
from kuma_dp_dev.devcp.state import Store, parse_dataplane
from kuma_dp_dev.harness.localmesh import (
    EnvoyProcess,
    ThreadedControlPlane,
    ads_bootstrap,
    dynconf_get,
)
from kuma_dp_dev.harness.poll import wait_until
from kuma_dp_dev.harness.ports import free_port
from tests.helpers.resources import dataplane as dataplane_resource

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def has(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))


class Mesh:
    """A CP plus the apps and Envoys a test starts; everything is stopped in `close()`."""

    def __init__(self, tmp: Path, envoy: str, token: str | None = None) -> None:
        self.tmp = tmp
        self.envoy = envoy
        self.store = Store()
        self.cp = ThreadedControlPlane(self.store, token=token)
        self.envoys: dict[str, EnvoyProcess] = {}
        self.apps: list[Any] = []

    def app(self, service: str, instance: str) -> int:
        server, port = serve_in_thread(service, instance)
        self.apps.append(server)
        return port

    def dataplane(
        self,
        name: str,
        service: str,
        app_port: int,
        outbounds: dict[str, int] | None = None,
        **bootstrap: Any,
    ) -> EnvoyProcess:
        resource = dataplane_resource(
            name, service, free_port(), service_port=app_port, protocol="http", outbounds=outbounds or {}
        )
        workdir = self.tmp / name
        workdir.mkdir()
        config = ads_bootstrap(
            resource=resource, ads_port=self.cp.port, admin_port=free_port(), workdir=workdir, **bootstrap
        )
        proc = EnvoyProcess(config, workdir, self.envoy).start()
        self.envoys[name] = proc
        return proc

    def close(self) -> None:
        for proc in self.envoys.values():
            proc.stop()
        for server in self.apps:
            server.shutdown()
            server.server_close()
        self.cp.stop()


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    handler = LogCapture()
    logger = logging.getLogger("kuma_dp_dev.devcp.ads")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5)


def _fails(url: str) -> bool:
    try:
        return _get(url).status_code == 503
    except httpx.HTTPError:
        return True


def _ok_from(url: str, instance: str) -> httpx.Response | None:
    resp = _get(url)
    return resp if resp.status_code == 200 and resp.json()["instance"] == instance else None


def test_two_dataplanes_then_a_third_joins_and_leaves(
    short_tmp: Path, envoy_binary: str, logs: LogCapture
) -> None:
    mesh = Mesh(short_tmp, envoy_binary)
    try:
        backend_out, extra_out = free_port(), free_port()
        backend = mesh.dataplane("backend-1", "backend", mesh.app("backend", "backend-1"))
        web = mesh.dataplane(
            "web-1", "web", mesh.app("web", "web-1"), outbounds={"backend": backend_out, "extra": extra_out}
        )

        # 1. client -> web's Envoy -> backend's Envoy -> backend app.
        resp = wait_until(
            lambda: _ok_from(f"http://127.0.0.1:{backend_out}/", "backend-1"),
            30,
            what="web -> backend through both Envoys",
        )
        assert resp.headers["server"] == "envoy"
        assert "x-envoy-upstream-service-time" in resp.headers
        seen = resp.json()["request_headers"]
        assert "x-request-id" in {k.lower() for k in seen}  # added by web's Envoy, kept by backend's
        stats = _get(f"{backend.admin}/stats?filter=inbound").text
        assert "http.inbound:127.0.0.1:" in stats and ".downstream_rq_2xx: " in stats
        assert mesh.store.get_dataplane("default", "web-1") and mesh.store.get_dataplane(
            "default", "backend-1"
        )

        # 2. /dns on web's dynconf socket: 200 + ETag (sha256 of the body), 304 on If-None-Match.
        first = wait_until(lambda: dynconf_get(web.dynconf_socket), 10, what="dynconf socket")
        assert first.status_code == 200
        tag = first.headers["etag"]
        assert tag == xds.etag(first.content)
        names = {r["name"]: r["ips"] for r in first.json()["records"]}
        # Which Envoy registered first decides (VIPs stay put once given); both come from 240.0.0.0/4's start.
        assert sorted(names) == ["backend.mesh", "web.mesh"]
        assert sorted(ip for ips in names.values() for ip in ips) == ["240.0.0.0", "240.0.0.1"]
        assert first.json()["ttl"] == 30
        assert dynconf_get(web.dynconf_socket, etag=tag).status_code == 304

        # 3. A third dataplane (Delta xDS) joins: web routes to it, and /dns gets a new record and ETag.
        assert _fails(f"http://127.0.0.1:{extra_out}/")  # unknown service: a TCP outbound with no endpoint
        extra = mesh.dataplane("extra-1", "extra", mesh.app("extra", "extra-1"), delta=True)
        wait_until(lambda: mesh.store.get_dataplane("default", "extra-1"), 30, what="registration of extra-1")
        # Required: once the new dataplane registered, the others route to it within 2 s (the push to web and
        # extra's own inbound config; measured around 50 ms).
        wait_until(lambda: _ok_from(f"http://127.0.0.1:{extra_out}/", "extra-1"), 2, what="web -> extra")
        joined = wait_until(
            lambda: (r := dynconf_get(web.dynconf_socket, etag=tag)).status_code == 200 and r,
            10,
            what="a new /dns after the join",
        )
        assert joined.headers["etag"] != tag
        records = {r["name"]: r["ips"] for r in joined.json()["records"]}
        # VIPs are stable: backend and web keep theirs, the new service takes the next free one.
        assert records == {**names, "extra.mesh": ["240.0.0.2"]}
        assert logs.has("dataplane registered node=default.extra-1 mode=delta")

        # 4. It leaves: removed from the store, from web's endpoints and from /dns.
        extra.stop()
        wait_until(lambda: mesh.store.get_dataplane("default", "extra-1") is None, 30, what="deregistration")
        wait_until(lambda: _fails(f"http://127.0.0.1:{extra_out}/"), 30, what="extra removed")
        left = wait_until(
            lambda: (
                "extra.mesh" not in dynconf_get(web.dynconf_socket).text and dynconf_get(web.dynconf_socket)
            ),
            10,
            what="/dns without extra",
        )
        assert left.headers["etag"] != joined.headers["etag"]
        assert _ok_from(f"http://127.0.0.1:{backend_out}/", "backend-1")

        # 5. A resource Envoy rejects: NACKed, logged by the CP, last good config kept.
        bad = {"name": "bad-cluster", "type": "STATIC", "connectTimeout": "0s"}  # Envoy: must be > 0s
        mesh.cp.call(mesh.cp.server.add_extra_resource, xds.CLUSTER_TYPE, bad)
        wait_until(
            lambda: logs.has("xds NACK node=default.web-1 type=Cluster"), 20, what="the NACK in the log"
        )
        nack = next(line for line in logs.lines if "xds NACK node=default.web-1" in line)
        assert "bad-cluster" in nack or "connect_timeout" in nack.lower() or "ConnectTimeout" in nack
        assert _ok_from(f"http://127.0.0.1:{backend_out}/", "backend-1")
        clusters = _get(f"{web.admin}/clusters").text
        assert "bad-cluster" not in clusters and "backend::" in clusters
        assert web.alive() and backend.alive()
    finally:
        mesh.close()


def test_bad_token_is_refused_on_the_stream(short_tmp: Path, envoy_binary: str, logs: LogCapture) -> None:
    mesh = Mesh(short_tmp, envoy_binary, token="right-token")
    try:
        port = mesh.app("backend", "b")
        mesh.dataplane("intruder", "backend", port, token="wrong-token")
        wait_until(lambda: logs.has("xds stream refused"), 20, what="the refusal in the CP log")
        assert mesh.store.get_dataplane("default", "intruder") is None
        assert not any("right-token" in line or "wrong-token" in line for line in logs.lines)  # never logged
        mesh.dataplane("member", "backend", port, token="right-token")
        wait_until(
            lambda: mesh.store.get_dataplane("default", "member"), 20, what="registration with the token"
        )
        assert mesh.store.get_dataplane("default", "intruder") is None
    finally:
        mesh.close()


def test_dataplane_from_the_store_without_resource_metadata(short_tmp: Path, envoy_binary: str) -> None:
    """A Dataplane described in the state file; its Envoy sends only the node id (kuma-dp without a
    template)."""
    mesh = Mesh(short_tmp, envoy_binary)
    try:
        port = mesh.app("backend", "b")
        listen = free_port()
        dp = parse_dataplane(
            {
                "mesh": "default",
                "name": "static-1",
                "networking": {
                    "address": "127.0.0.1",
                    "inbound": [
                        {
                            "port": listen,
                            "servicePort": port,
                            "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"},
                        }
                    ],
                },
            }
        )
        mesh.store.put_static(dp)
        resource: dict[str, Any] = {"mesh": "default", "name": "static-1", "networking": {}}
        workdir = short_tmp / "static-1"
        workdir.mkdir()
        config = ads_bootstrap(
            resource=resource, ads_port=mesh.cp.port, admin_port=free_port(), workdir=workdir
        )
        del config["node"]["metadata"]["dataplane.resource"]
        proc = EnvoyProcess(config, workdir, envoy_binary).start()
        mesh.envoys["static-1"] = proc
        resp = wait_until(
            lambda: _ok_from(f"http://127.0.0.1:{listen}/", "b"), 30, what="inbound via the store"
        )
        assert resp.headers["server"] == "envoy"
    finally:
        mesh.close()
