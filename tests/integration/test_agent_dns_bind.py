"""Where the agent's DNS proxy listens: loopback by default (an open resolver on every interface helps no
one), the operator's choice with KUMA_DNS_PROXY_ADDRESS. Checked on the kernel's socket table and with a
real query."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import dns.asyncquery
import dns.message
import psutil
import pytest

from kuma_dns.component import from_agent
from kuma_dp.agent import AgentContext
from kuma_dp.config import RunConfig, load_config
from kuma_dp.envoy import AdminAddress, AdminClient
from kuma_dp.readiness import ReadinessState
from kuma_dp_dev.harness.ports import free_port

pytestmark = pytest.mark.integration

PAYLOAD = {"records": [{"name": "backend.mesh", "ips": ["240.0.0.3"]}], "ttl": 30}


def _bound(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections("inet") if c.laddr and c.laddr.port == port}


async def _serve_and_look(
    tmp: Path, tproxy: bool, environ: dict[str, str] | None = None
) -> tuple[set[str], str]:
    cfg = load_config(RunConfig(), environ or {})
    cfg.dns.proxy_port = free_port()
    cfg.dataplane_runtime.transparent_proxy = tproxy
    cfg.dataplane_runtime.ipv6_enabled = False
    ctx = AgentContext(cfg=cfg, bootstrap_path=tmp / "bootstrap.yaml", work_dir=tmp,
                       admin=AdminClient(AdminAddress()), readiness=ReadinessState())  # fmt: skip
    comp = from_agent(ctx)
    assert comp is not None and "/dns" in ctx.dynconf_handlers
    task = asyncio.ensure_future(comp.run())
    try:
        await asyncio.wait_for(comp.ready.wait(), 10)
        comp.update(json.dumps(PAYLOAD))
        query = dns.message.make_query("backend.mesh.", "A")
        answer = await dns.asyncquery.udp(query, "127.0.0.1", port=comp.port, timeout=5)
        return _bound(comp.port), answer.answer[0][0].to_text()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_dns_proxy_binds_loopback_by_default(tmp_path: Path) -> None:
    bound, ip = asyncio.run(_serve_and_look(tmp_path, tproxy=False))
    assert bound == {"127.0.0.1"}
    assert ip == "240.0.0.3"


def test_dns_proxy_binds_where_the_operator_asks(tmp_path: Path) -> None:
    environ = {"KUMA_DNS_PROXY_ADDRESS": "0.0.0.0"}
    bound, ip = asyncio.run(_serve_and_look(tmp_path, tproxy=False, environ=environ))
    assert bound == {"0.0.0.0"}
    assert ip == "240.0.0.3"
