"""Factories that plug observability into `kuma_dp.agent` (its AFTER_ENVOY "module:factory" list).

Each takes the agent's `AgentContext` and returns a component (or None), so the agent wires each part with
one line of its list; nothing here is needed to use the components directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY

from kuma_dp.component import Component
from kuma_dp.metrics._agent import AgentMetrics, agent_metrics
from kuma_dp.metrics._hijacker import MetricsHijacker
from kuma_dp.paths import metrics_hijacker_socket_path

if TYPE_CHECKING:
    from kuma_dp.agent import AgentContext

log = logging.getLogger(__name__)

__all__ = [
    "StartupObserver",
    "hijacker_component",
    "meshmetric_component",
    "otel_pipe_component",
    "startup_observer_component",
]


def _uses_transparent_proxy(ctx: AgentContext) -> bool:
    rt = ctx.cfg.dataplane_runtime
    return bool(rt.transparent_proxy or rt.transparent_proxy_config)


def hijacker_component(
    ctx: AgentContext,
    aggregate: Sequence[Mapping[str, Any]] | None = None,
    *,
    metrics: AgentMetrics | None = None,
) -> MetricsHijacker:
    """The hijacker on `<workdir>/kuma-mh-<name>-<mesh>.sock`; `aggregate` defaults to the control plane's
    `kumaSidecarConfiguration.metrics.aggregate` (from the agent context). Serves prometheus_client's default
    REGISTRY under /meshmetric, where kuma_dns and `agent_metrics()` register."""
    from kuma_dp.readiness import evaluate

    metrics = metrics or agent_metrics()
    if aggregate is None:
        aggregate = (ctx.sidecar_config.get("metrics") or {}).get("aggregate") or ()

    async def readiness_state() -> str:
        if ctx.readiness.terminating:
            return "TERMINATING"
        answer = await evaluate(ctx.readiness, ctx.admin)
        return "READY" if answer.status == 200 else "NOT_READY"

    hijacker = MetricsHijacker(
        metrics_hijacker_socket_path(ctx.work_dir, ctx.cfg.dataplane.name, ctx.cfg.dataplane.mesh),
        ctx.admin.address,
        aggregate,
        transparent_proxy=_uses_transparent_proxy(ctx),
        registry=REGISTRY if metrics.registry is REGISTRY else metrics.registry,
        metrics=metrics,
        readiness_state=readiness_state,
    )
    ctx.components["metrics-hijacker"] = hijacker
    return hijacker


def meshmetric_component(ctx: AgentContext, *, metrics: AgentMetrics | None = None) -> Component:
    """The MeshMetric manager (always, as Kuma's run.go): polls `/meshmetric`, and feeds the hijacker's
    `/meshmetric` page and the OTLP pushes."""
    from prometheus_client import generate_latest

    from kuma_dp.meshmetric import MESHMETRIC_PATH, MeshMetricManager
    from kuma_dp.versions import __version__

    metrics = metrics or agent_metrics()
    registry = metrics.registry
    manager = MeshMetricManager(
        ctx.admin.address,
        default_address=str((ctx.sidecar_config.get("networking") or {}).get("address") or "127.0.0.1"),
        transparent_proxy=_uses_transparent_proxy(ctx),
        kuma_version=__version__,
        metrics=metrics,
        own_registry_text=lambda: generate_latest(registry),
        drain_time=ctx.cfg.dataplane.drain_time,
    )
    ctx.dynconf_handlers[MESHMETRIC_PATH] = manager.on_change
    hijacker = ctx.components.get("metrics-hijacker")
    if hijacker is not None:
        hijacker.meshmetric_source = manager.prometheus_page
    ctx.components["meshmetric"] = manager
    return manager


def otel_pipe_component(ctx: AgentContext, *, metrics: AgentMetrics | None = None) -> Component | None:
    """The OpenTelemetry pipe's receivers (`/otel`), only with `otel_pipe_enabled`: without it the agent
    neither announces `feature-otel-via-kuma-dp` nor listens for OTLP."""
    if not ctx.cfg.dataplane_runtime.otel_pipe_enabled:
        return None
    from kuma_dp.goparse import parse_duration
    from kuma_dp.meshmetric import ExportTarget
    from kuma_dp.otel import OTEL_PATH, OtelPipeManager, discover

    meshmetric = ctx.components.get("meshmetric")

    def on_reconcile(running: list[tuple[dict[str, Any], Any]]) -> None:
        # run.go metricsTargetsForBackends: usable metrics runtimes, refresh from the plan (default 1 min)
        targets = []
        for backend, runtime in running:
            plan = backend.get("metrics")
            if not runtime.metrics.usable or not isinstance(plan, Mapping):
                continue
            try:
                interval = parse_duration(str(plan.get("refreshInterval") or "")) or 60.0
            except ValueError:
                interval = 60.0
            targets.append(ExportTarget(str(backend.get("name") or ""), str(backend["socketPath"]), interval))
        if meshmetric is not None:
            meshmetric.on_pipe_targets(targets)

    manager = OtelPipeManager(
        discover(True), metrics or agent_metrics(), on_reconcile=on_reconcile, host_ip=ctx.cfg.host_ip or None
    )
    ctx.dynconf_handlers[OTEL_PATH] = manager.on_change
    ctx.components["otel-receiver"] = manager
    return manager


class StartupObserver(Component):
    """Records start-up phases from the outside: Envoy spawn → LIVE, first config (first LDS update), first
    DNS table. Started after Envoy; Envoy's spawn time comes from `spawned_at` or `spawn_time()` (the agent's
    `envoy_spawned_at`), else this component's start.

    Polls the admin API until every phase is known, then idles. A phase is recorded at most one poll late,
    so for the first `FAST_FOR` seconds (when Envoy normally gets there) the polls are `FAST_POLL` apart, to
    keep the start-up metrics and the start-up timeline truthful to 20 ms (the old 100/250 ms polls were
    that much late); then they back off (1.5 times longer each) to `poll_interval`. Not faster: each poll
    costs this process and Envoy's main thread CPU while Envoy initializes (bench/e2e_mesh.py showed 10 ms
    polls slowing Envoy's way to LIVE on two cores)."""

    FAST_POLL = 0.02
    FAST_FOR = 2.0

    name = "startup-observer"

    def __init__(
        self,
        admin: Any,
        metrics: AgentMetrics,
        *,
        dns_ready: asyncio.Event | None = None,
        spawned_at: float | None = None,
        poll_interval: float = 0.1,
        spawn_time: Callable[[], float | None] | None = None,
    ) -> None:
        super().__init__()
        self.admin = admin
        self.metrics = metrics
        self.dns_ready = dns_ready
        #: Envoy's spawn time; default: when run() starts, which the agent does right after Envoy's spawn.
        self.spawned_at = spawned_at
        self.poll_interval = poll_interval
        self.spawn_time = spawn_time

    def _pauses(self, cap: float) -> Iterator[float]:
        fast_until = time.monotonic() + self.FAST_FOR
        pause = min(self.FAST_POLL, cap)
        while True:
            yield pause
            if time.monotonic() >= fast_until:
                pause = min(pause * 1.5, cap)

    async def _wait_live(self) -> None:
        for pause in self._pauses(self.poll_interval):
            with contextlib.suppress(Exception):
                resp = await self.admin.get("/ready")
                if resp.status == 200:
                    secs = self.metrics.phase_done("envoy_live", since=self.spawned_at)
                    log.info("envoy is LIVE", extra={"seconds": round(secs, 3)})
                    return
            await asyncio.sleep(pause)

    async def _wait_first_config(self) -> None:
        # Fast at first (start-up is when this matters), then slow: a static or LDS-less bootstrap never
        # gets an LDS update, and polling it at 4 Hz for the life of the agent would be waste.
        started = time.monotonic()
        for pause in self._pauses(max(self.poll_interval, 0.25)):
            with contextlib.suppress(Exception):
                resp = await self.admin.get("/stats?filter=^listener_manager.lds.update_success$")
                for line in resp.body.decode().splitlines():
                    key, _, value = line.partition(":")
                    if key.strip() == "listener_manager.lds.update_success" and int(value) > 0:
                        secs = self.metrics.phase_done("first_config")
                        log.info("first configuration received", extra={"seconds": round(secs, 3)})
                        return
            slow = time.monotonic() - started > 60
            await asyncio.sleep(5.0 if slow else pause)

    async def _wait_dns(self) -> None:
        assert self.dns_ready is not None
        await self.dns_ready.wait()
        secs = self.metrics.phase_done("first_dns_table")
        log.info("first DNS table loaded", extra={"seconds": round(secs, 3)})

    async def run(self) -> None:
        if self.spawned_at is None and self.spawn_time is not None:
            self.spawned_at = self.spawn_time()
        if self.spawned_at is None:
            self.spawned_at = time.monotonic()
        self.metrics.envoy_started()
        self.ready.set()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._wait_live())
            tg.create_task(self._wait_first_config())
            if self.dns_ready is not None:
                tg.create_task(self._wait_dns())
        await asyncio.Future()


def startup_observer_component(ctx: AgentContext, *, metrics: AgentMetrics | None = None) -> StartupObserver:
    """Also hooks Envoy exits into `kuma_dp_envoy_exits_total`."""
    metrics = metrics or agent_metrics()
    ctx.envoy_exit_hooks.append(metrics.envoy_exited)
    dns_ready = ctx.readiness.dns_ready if ctx.readiness.dns_gate else None
    return StartupObserver(ctx.admin, metrics, dns_ready=dns_ready, spawn_time=lambda: ctx.envoy_spawned_at)
