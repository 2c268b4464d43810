"""The observability factories inside the real agent (run_agent + real Envoy), as systemd would run it:
READY=1 only once /ready is 200, the merged page on the work-dir socket with start-up phases and readiness,
STOPPING=1 when SIGTERM starts the drain, Envoy's exit counted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kuma_dp._http import get
from kuma_dp.agent import AgentContext, run_agent
from kuma_dp.component import Component
from kuma_dp.config import RunConfig, load_config
from kuma_dp.metrics import agent_metrics
from kuma_dp.paths import proxy_socket_path as socket_path
from kuma_dp_dev.harness.poll import wait_until_async
from kuma_dp_dev.harness.ports import free_port
from kuma_dp_dev.harness.static_agent import agent_config

pytestmark = pytest.mark.integration


def make_cfg(work: Path, envoy_binary: str) -> tuple[RunConfig, Path]:
    """A static bootstrap (admin on loopback TCP, no listeners) and a config for an in-process agent."""
    bootstrap = work / "bootstrap.yaml"
    admin = {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": free_port()}}}
    bootstrap.write_text(json.dumps({"admin": admin, "node": {"id": "default.dp-1", "cluster": "backend"}}))
    return agent_config(work, envoy_binary, readiness_port=free_port(), drain_time=1.0), bootstrap


class Driver(Component):
    """Plays the operator: waits for READY=1, scrapes the hijacker socket, then sends SIGTERM."""

    name = "test-driver"

    def __init__(self, ctx: AgentContext, sd: socket.socket, seen: dict[str, object]) -> None:
        super().__init__()
        self.ctx, self.sd, self.seen = ctx, sd, seen

    async def run(self) -> None:
        self.ready.set()
        loop = asyncio.get_running_loop()
        messages: list[str] = []
        async with asyncio.timeout(60):
            while not any("READY=1" in m for m in messages):
                messages.append((await loop.sock_recv(self.sd, 4096)).decode())
        # READY=1 came; /ready must say 200 by now (it was the condition).
        from kuma_dp.readiness import evaluate

        self.seen["ready_answer"] = (await evaluate(self.ctx.readiness, self.ctx.admin)).status
        self.seen["before_term"] = messages
        sock = socket_path(self.ctx.work_dir, "kuma-mh", "dp-1", "default")

        async def page_with_a_phase() -> str | None:
            page = (await get(target="/metrics", unix_path=sock)).body.decode()
            return page if 'phase="first_config"' in page or 'phase="envoy_live"' in page else None

        self.seen["page"] = await wait_until_async(page_with_a_phase, 30, "a start-up phase on the page")
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.Future()


def test_agent_with_observability_factories(short_tmp: Path, envoy_binary: str) -> None:
    cfg, bootstrap = make_cfg(short_tmp, envoy_binary)
    cfg.dataplane.name, cfg.dataplane.mesh = "dp-1", "default"
    sd_path = str(short_tmp / "notify.sock")
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sd.bind(sd_path)
    sd.setblocking(False)
    load_config(cfg, {"NOTIFY_SOCKET": sd_path, "WATCHDOG_USEC": "200000"})  # as systemd sets them
    metrics = agent_metrics()  # process-wide: other in-process agents may have counted exits before
    exits_before = metrics.envoy_exits.labels(code="0")._value.get()
    seen: dict[str, object] = {}
    try:
        code = asyncio.run(
            run_agent(
                cfg,
                bootstrap,
                # The agent's own wiring (AFTER_ENVOY) brings the observer, hijacker and notifier.
                extra_components=[lambda ctx: Driver(ctx, sd, seen)],
            )
        )
        after: list[str] = []
        while True:
            try:
                after.append(sd.recv(4096).decode())
            except BlockingIOError:
                break
    finally:
        sd.close()
    assert code == 0, seen
    assert seen["ready_answer"] == 200
    assert any(m == "WATCHDOG=1" for m in after + seen["before_term"])  # type: ignore[operator]
    stopping = [m for m in after if "STOPPING=1" in m]
    assert len(stopping) == 1
    families = {f.name: f for f in text_string_to_metric_families(seen["page"])}  # type: ignore[arg-type]
    # Envoy's own page is merged in (admin over TCP here), and the agent's series are on it.
    assert "envoy_server_live" in families
    phases = {s.labels["phase"] for s in families["kuma_dp_startup_phase_duration_seconds"].samples}
    assert "envoy_live" in phases
    state = {
        s.labels["kuma_dp_readiness_state"]: s.value for s in families["kuma_dp_readiness_state"].samples
    }
    assert state["READY"] == 1
    exits = metrics.envoy_exits.labels(code="0")._value.get()
    assert exits - exits_before == 1  # the hook saw Envoy's clean exit after SIGTERM
    assert not Path(socket_path(short_tmp, "kuma-mh", "dp-1", "default")).exists()
