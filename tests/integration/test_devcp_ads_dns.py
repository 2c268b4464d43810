"""CP -> Envoy -> agent DNS, with every part real: the dev CP's /dns payload, served by Envoy on its dynconf
socket, polled by the agent's config fetcher (kuma_dp.dynconf), loaded by the agent's DNS server (kuma_dns),
answers a real DNS client; a service that joins the mesh starts resolving without anything restarted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from kuma_dp_dev.devcp.state import Store, parse_dataplane
from kuma_dp_dev.harness.localmesh import (
    EnvoyProcess,
    ThreadedControlPlane,
    ads_bootstrap,
    dynconf_get,
)
from kuma_dp_dev.harness.poll import wait_until, wait_until_async
from kuma_dp_dev.harness.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

kuma_dns_component = pytest.importorskip("kuma_dns.component")
dynconf = pytest.importorskip("kuma_dp.dynconf")


def _a(port: int, name: str) -> list[str]:
    reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=1)
    return [rr.address for rrset in reply.answer for rr in rrset if rrset.rdtype == dns.rdatatype.A]


def test_mesh_names_resolve_through_the_agent_dns(short_tmp: Path, envoy_binary: str) -> None:
    store = Store()
    cp = ThreadedControlPlane(store)
    envoy: EnvoyProcess | None = None
    try:
        store.put_static(
            parse_dataplane(
                {
                    "mesh": "default",
                    "name": "backend-1",
                    "networking": {
                        "address": "127.0.0.1",
                        "inbound": [{"port": free_port(), "tags": {"kuma.io/service": "backend"}}],
                    },
                }
            )
        )
        resource = {
            "type": "Dataplane",
            "mesh": "default",
            "name": "web-1",
            "networking": {
                "address": "127.0.0.1",
                "inbound": [{"port": free_port(), "tags": {"kuma.io/service": "web"}}],
            },
        }
        workdir = short_tmp / "web"
        workdir.mkdir()
        config = ads_bootstrap(
            resource=resource,
            ads_port=cp.port,
            admin_port=free_port(),
            workdir=workdir,
            features=["feature-embedded-dns"],
        )
        envoy = EnvoyProcess(config, workdir, envoy_binary).start()
        sock = envoy.dynconf_socket
        wait_until(lambda: dynconf_get(sock).status_code == 200, 20, what="Envoy's dynconf listener")
        resolv = short_tmp / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\n")

        async def scenario() -> None:
            comp = kuma_dns_component.DNSComponent(
                port=0, addresses=["127.0.0.1"], resolv_conf=str(resolv), register_metrics=False
            )
            fetcher = dynconf.ConfigFetcher(sock, interval=0.1)
            fetcher.register("/dns", comp.update, comp.not_modified)
            tasks = [asyncio.create_task(comp.run()), asyncio.create_task(fetcher.run())]
            try:
                await asyncio.wait_for(comp.has_records.wait(), 15)
                port = comp.port
                assert await asyncio.to_thread(_a, port, "backend.mesh") in (["240.0.0.0"], ["240.0.0.1"])
                # A new service joins: its VIP and name reach the DNS server through Envoy, live.
                store.put_static(
                    parse_dataplane(
                        {
                            "mesh": "default",
                            "name": "db-1",
                            "networking": {
                                "address": "127.0.0.1",
                                "inbound": [{"port": 1, "tags": {"kuma.io/service": "db_x_svc"}}],
                            },
                        }
                    )
                )
                found = await wait_until_async(
                    lambda: asyncio.to_thread(_a, port, "db.x.svc.mesh"), 15, "the dotted alias db.x.svc.mesh"
                )
                assert found == ["240.0.0.2"]
                assert await asyncio.to_thread(_a, port, "db_x_svc.mesh") == ["240.0.0.2"]
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(scenario())
    finally:
        if envoy is not None:
            envoy.stop()
        cp.stop()
