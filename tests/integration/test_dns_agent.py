"""The DNS proxy inside `run_agent` with the real Envoy: the agent's own wiring (kuma_dns.component:from_agent
before Envoy, kuma_dp.dynconf:from_agent after it) takes the `/dns` body Envoy serves on the work dir's
dynconf socket, opens the readiness DNS gate, answers a DNS client and persists the table.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import dns.asyncquery
import dns.message
import pytest

from kuma_dp.agent import AgentContext, run_agent
from kuma_dp.component import Component
from kuma_dp.envoy import AdminAddress, http_request
from kuma_dp_dev.harness.dnsmasq import free_udp_tcp_port
from kuma_dp_dev.harness.poll import wait_until_async
from kuma_dp_dev.harness.ports import free_port
from kuma_dp_dev.harness.static_agent import agent_config, static_bootstrap

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

BODY = json.dumps(
    {
        "records": [{"name": "backend.mesh", "ips": ["240.0.0.1", "::ffff:f000:1"]}],
        "ttl": 30,
        "extraLabels": {"mesh": "default"},
    },
    separators=(",", ":"),
).encode()


def bootstrap(work: Path) -> Path:
    from kuma_dp_dev.devcp.xds import dynconf_listener

    boot = static_bootstrap(admin_port=free_port())
    resources = boot.get("static_resources") or boot["staticResources"]
    resources["listeners"].append(dynconf_listener(str(work), {"/dns": BODY}))
    path = work / "bootstrap.yaml"
    path.write_text(json.dumps(boot))
    return path


class Client(Component):
    """Waits for /ready 200, then asks the agent's DNS proxy; ending returns the agent with exit code 0."""

    name = "dns-client"

    def __init__(self, ctx: AgentContext, out: dict[str, object]) -> None:
        super().__init__()
        self.ctx, self.out = ctx, out

    async def run(self) -> None:
        self.ready.set()
        cfg = self.ctx.cfg
        readiness = AdminAddress("127.0.0.1", cfg.dataplane.readiness_port)
        statuses = []

        async def ready_200() -> bool:
            resp = await http_request(readiness, "GET", "/ready")
            statuses.append(f"{resp.status} {resp.text.strip()}")
            return resp.status == 200

        await wait_until_async(ready_200, 30, "/ready to answer 200")
        self.out["ready"] = statuses[-1]
        self.out["gate"] = self.ctx.readiness.dns_ready.is_set()
        q = dns.message.make_query("backend.mesh", "A")
        r = await dns.asyncquery.udp(q, "127.0.0.1", port=cfg.dns.proxy_port, timeout=5)
        self.out["answer"] = r.answer[0][0].to_text()
        # The table is written off the event loop after the swap: wait for the file, not for a moment.
        table_file = self.ctx.work_dir / "kuma-dns-table.json"
        self.out["persisted"] = bool(await wait_until_async(table_file.exists, 10, "the persisted table"))


def test_agent_runs_dns_from_envoy_dynconf(short_tmp: Path, envoy_binary: str) -> None:
    cfg = agent_config(short_tmp, envoy_binary, readiness_port=free_port(), drain_time=0.5)
    cfg.dns.enabled = True
    cfg.dns.proxy_port = free_udp_tcp_port()
    boot = bootstrap(short_tmp)
    out: dict[str, object] = {}
    code = asyncio.run(run_agent(cfg, boot, extra_components=[lambda ctx: Client(ctx, out)]))
    assert code == 0
    assert out == {"ready": "200 READY", "gate": True, "answer": "240.0.0.1", "persisted": True}
