"""The component manager with the real Envoy: order, failure, resilient restarts, ordered stop.

These run `run_agent` in-process with small components of our own next to the real Envoy, because what is
checked is the manager's contract with components (kuma_dp/component.py), the one DNS, metrics and the
config fetcher rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from kuma_dp.agent import AgentContext, run_agent
from kuma_dp.component import Component
from kuma_dp.config import RunConfig
from kuma_dp.envoy import AdminAddress, http_request
from kuma_dp_dev.harness.poll import wait_until_async
from kuma_dp_dev.harness.ports import free_port
from kuma_dp_dev.harness.static_agent import agent_config, static_bootstrap

pytestmark = pytest.mark.integration


def make_cfg(work: Path, envoy_binary: str) -> tuple[RunConfig, Path]:
    bootstrap = work / "bootstrap.yaml"
    bootstrap.write_text(json.dumps(static_bootstrap(admin_port=free_port())))
    cfg = agent_config(work, envoy_binary, readiness_port=free_port(), drain_time=1.0)
    cfg.dataplane.resilient_component_base_backoff = 0.05
    cfg.dataplane.resilient_component_max_backoff = 0.2
    return cfg, bootstrap


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []


class Flaky(Component):
    """Resilient: fails on its first runs, then stays up."""

    name = "flaky"
    resilient = True

    def __init__(self, rec: Recorder, failures: int) -> None:
        super().__init__()
        self.rec, self.failures, self.runs = rec, failures, 0

    async def run(self) -> None:
        self.runs += 1
        self.rec.events.append(f"flaky run {self.runs}")
        if self.runs <= self.failures:
            raise RuntimeError(f"boom {self.runs}")
        self.ready.set()
        await asyncio.Future()


class Finisher(Component):
    """Non-resilient: ends the run (normally) once `until` is ready."""

    name = "finisher"

    def __init__(self, rec: Recorder, until: Component, ctx: AgentContext) -> None:
        super().__init__()
        self.rec, self.until, self.ctx = rec, until, ctx

    async def run(self) -> None:
        self.ready.set()
        await self.until.ready.wait()
        self.rec.events.append("finisher done")


class Watcher(Component):
    """Records, when stopped, whether Envoy was already stopped (it must be: Envoy goes first)."""

    name = "watcher"

    def __init__(self, rec: Recorder, ctx: AgentContext) -> None:
        super().__init__()
        self.rec, self.ctx = rec, ctx

    async def run(self) -> None:
        self.ready.set()
        try:
            await asyncio.Future()
        finally:
            assert self.ctx.envoy is not None and self.ctx.envoy.process is not None
            envoy_done = self.ctx.envoy.process.returncode is not None
            self.rec.events.append(f"watcher stopped envoy_done={envoy_done}")


class Broken(Component):
    name = "broken-dns"

    def __init__(self, rec: Recorder) -> None:
        super().__init__()
        self.rec = rec

    async def run(self) -> None:
        self.rec.events.append("broken run")
        raise OSError("cannot bind 127.0.0.1:15053")


def test_resilient_component_restarts_with_backoff_and_stop_is_ordered(
    short_tmp: Path, envoy_binary: str
) -> None:
    cfg, bootstrap = make_cfg(short_tmp, envoy_binary)
    rec = Recorder()
    flaky = Flaky(rec, failures=3)
    envoy_exits: list[int] = []

    def watcher(ctx: AgentContext) -> Component:
        ctx.envoy_exit_hooks.append(envoy_exits.append)
        return Watcher(rec, ctx)

    def finisher(ctx: AgentContext) -> Component:
        return Finisher(rec, flaky, ctx)

    code = asyncio.run(run_agent(cfg, bootstrap, extra_components=[watcher, flaky, finisher]))
    assert code == 0  # a component that returns ends the run normally
    assert rec.events[:4] == ["flaky run 1", "flaky run 2", "flaky run 3", "flaky run 4"]
    assert rec.events[4:] == ["finisher done", "watcher stopped envoy_done=True"]
    assert envoy_exits == [0]  # Envoy got SIGTERM and exited cleanly


def test_failing_component_before_envoy_stops_the_start(short_tmp: Path, envoy_binary: str) -> None:
    cfg, bootstrap = make_cfg(short_tmp, envoy_binary)
    rec = Recorder()
    seen: list[AgentContext] = []

    def broken(ctx: AgentContext) -> Component:
        seen.append(ctx)
        return Broken(rec)

    code = asyncio.run(run_agent(cfg, bootstrap, before_envoy=[broken]))
    assert code == 1
    assert rec.events == ["broken run"]
    assert seen[0].envoy is not None and seen[0].envoy.process is None  # Envoy was never spawned


def test_disabled_component_factory_returning_none_is_skipped(short_tmp: Path, envoy_binary: str) -> None:
    cfg, bootstrap = make_cfg(short_tmp, envoy_binary)
    rec = Recorder()
    flaky = Flaky(rec, failures=0)

    def finisher(ctx: AgentContext) -> Component:
        return Finisher(rec, flaky, ctx)

    code = asyncio.run(run_agent(cfg, bootstrap, extra_components=[lambda ctx: None, flaky, finisher]))
    assert code == 0
    assert rec.events == ["flaky run 1", "finisher done"]


class DnsStandIn(Component):
    """Opens the DNS gate when told to, like the DNS proxy on its first table; records what /ready said."""

    name = "dns-stand-in"

    def __init__(self, ctx: AgentContext, rec: Recorder) -> None:
        super().__init__()
        self.has_records = ctx.enable_dns_gate()
        self.rec, self.port, self.admin = rec, ctx.cfg.dataplane.readiness_port, ctx.admin

    async def ready_answer(self) -> str:
        resp = await http_request(AdminAddress("127.0.0.1", self.port), "GET", "/ready", timeout=2)
        return f"{resp.status} {resp.text}"

    async def run(self) -> None:
        self.ready.set()
        await asyncio.Future()


class Prober(Component):
    """Asks /ready before and once Envoy is LIVE behind it, then opens the gate: /ready must turn 200."""

    name = "prober"

    def __init__(self, dns: DnsStandIn, rec: Recorder) -> None:
        super().__init__()
        self.dns, self.rec = dns, rec

    async def run(self) -> None:
        self.ready.set()
        answer = await self.dns.ready_answer()
        self.rec.events.append(answer)

        async def envoy_live() -> bool:
            return (await self.dns.admin.ready()).status == 200

        await wait_until_async(envoy_live, 30, "Envoy's own /ready to answer 200")
        self.rec.events.append(await self.dns.ready_answer())  # Envoy is LIVE; the gate still says NOT_READY
        self.dns.has_records.set()
        answers: list[str] = []

        async def ready_200() -> bool:
            answers.append(await self.dns.ready_answer())
            return answers[-1].startswith("200")

        with contextlib.suppress(TimeoutError):  # the last answer is what the test checks
            await wait_until_async(ready_200, 10, "/ready to answer 200")
        self.rec.events.append(answers[-1])


def test_dns_gate_holds_ready_until_the_dns_component_has_records(short_tmp: Path, envoy_binary: str) -> None:
    cfg, bootstrap = make_cfg(short_tmp, envoy_binary)
    rec = Recorder()
    made: list[DnsStandIn] = []

    def dns(ctx: AgentContext) -> Component:
        made.append(DnsStandIn(ctx, rec))
        return made[0]

    def prober(ctx: AgentContext) -> Component:
        return Prober(made[0], rec)

    # The prober runs before the reporter's task starts serving; its socket is bound (and queues the
    # connection) before any component starts, so the first probe simply waits for the answer.
    code = asyncio.run(run_agent(cfg, bootstrap, before_envoy=[dns], extra_components=[prober]))
    assert code == 0
    assert rec.events[0] == "503 NOT_READY"
    assert rec.events[1] == "503 NOT_READY"
    assert rec.events[2] == "200 READY"
