"""The agent runtime of `kuma-dp run`: one asyncio program that composes the components and shuts down
in one ordered path.

Public API (`kuma_dp.commands.run` ends with it)::

    exit_code = asyncio.run(run_agent(cfg, bootstrap_path))   # or run_agent_sync(cfg, bootstrap_path)

    async def run_agent(
        cfg: RunConfig,                      # loaded + validated; dataplane_runtime.work_dir is the real dir
        bootstrap: str | os.PathLike[str],   # <workdir>/bootstrap.yaml, written; its admin address is used
        *,
        before_envoy: Iterable[ComponentSpec] = (),      # e.g. the DNS proxy
        extra_components: Iterable[ComponentSpec] = (),  # after Envoy, before the readiness reporter
        envoy_binary: str | None = None,     # resolved Envoy (else found from dataplane_runtime.binary_path)
        sidecar_config: dict | None = None,  # the CP's kumaSidecarConfiguration (metrics.aggregate, ...)
    ) -> int

A `ComponentSpec` is a `kuma_dp.component.Component` or a factory `(AgentContext) -> Component | None`
(None: the configuration disables it). Wiring a component in permanently is one line in BEFORE_ENVOY /
AFTER_ENVOY below ("module:factory", imported only when a run starts, so `kuma-dp run` pays nothing for
what it does not use).

Order (as Kuma's `app/kuma-dp/cmd/run.go` adds them): [token checked by `run`] → DNS → Envoy → config
fetcher → access logs → metrics → readiness reporter. Each non-resilient component's `ready` is awaited
before the next starts. The readiness socket is bound before anything starts, so a taken port fails fast
(kumahq/kuma#11769).

Exit (Kuma's `run.go` and `pkg/core/runtime/component/`): any Envoy exit stops the agent (exit 1 if Envoy
failed, 0 if it exited 0); so does a failing non-resilient component (exit 1). Resilient ones restart with
exponential backoff (base KUMA_DATAPLANE_RESILIENT_COMPONENT_BASE_BACKOFF 5 s, cap _MAX_BACKOFF 1 min,
±20 % jitter). Envoy is never restarted. The generic part (ordered start, exit codes, restarts, timed stop)
is `kuma_dp.component.ComponentManager`; `Agent` adds the Envoy policy: the stop order, Envoy's longer stop
timeout, and the signal handling with the drain below.

Signals (Kuma's `run.go`, since 1.7: kumahq/kuma#4229): 1st SIGTERM/SIGINT → readiness TERMINATING, POST
/healthcheck/fail, wait the drain time (a 2nd signal ends the wait, a 3rd exits 1 at once) → stop Envoy
(SIGTERM, SIGKILL after 5 s) → stop the rest in reverse order, the readiness reporter last → exit 0.
SIGUSR2 → POST /drain_listeners?inboundonly&graceful&skip_exit; a later SIGTERM skips the drain wait
("already drained").
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kuma_dp import starttrace
from kuma_dp.component import Component, ComponentManager, with_restarts
from kuma_dp.envoy import AdminClient, EnvoyComponent, load_bootstrap
from kuma_dp.launch import Launched, plan_envoy
from kuma_dp.readiness import ReadinessPortError, ReadinessReporter, ReadinessState

if TYPE_CHECKING:
    from kuma_dp.config import RunConfig

log = logging.getLogger(__name__)

#: Components started before Envoy, as "module:factory"; factory(ctx) -> Component | None. The DNS proxy (as
#: Kuma), and the access-log FIFO, which must exist before Envoy opens its path or Envoy creates a regular
#: file there and the logs go nowhere.
BEFORE_ENVOY: list[str] = [
    "kuma_dns.component:from_agent",
    "kuma_dp.accesslog:streamer_component",
]
#: Components started after Envoy, before the readiness reporter, in Kuma's order (config fetcher, metrics
#: hijacker, MeshMetric manager, OpenTelemetry receivers), then ours (start-up phase observer, systemd
#: notifier). Same form as BEFORE_ENVOY.
AFTER_ENVOY: list[str] = [
    "kuma_dp.dynconf:from_agent",
    "kuma_dp.metrics._wiring:hijacker_component",
    "kuma_dp.metrics._wiring:meshmetric_component",
    "kuma_dp.metrics._wiring:otel_pipe_component",
    "kuma_dp.metrics:startup_observer_component",
    "kuma_dp.sdnotify:notifier_component",
    # Kuma adds it last; it does not hold up the start (wait_ready False) and is None when the port is 0.
    "kuma_dp.probes:from_agent",
]


@dataclass
class AgentContext:
    """What component factories get: the configuration and the agent's shared state."""

    cfg: RunConfig
    bootstrap_path: Path
    work_dir: Path
    admin: AdminClient
    readiness: ReadinessState
    envoy: EnvoyComponent | None = None
    #: Called with every Envoy exit code (agent metrics).
    envoy_exit_hooks: list[Callable[[int], None]] = field(default_factory=list)
    #: The control plane's `kumaSidecarConfiguration` (metrics.aggregate for the hijacker); {} when local.
    sidecar_config: dict[str, Any] = field(default_factory=dict)
    #: Dynamic-config path -> handler (or (handler, not_modified)), filled by components started before the
    #: config fetcher (the DNS proxy puts "/dns" here) and registered by it.
    dynconf_handlers: dict[str, Any] = field(default_factory=dict)
    #: Components by name, for a factory that needs one resolved before it (MeshMetric feeds the hijacker).
    components: dict[str, Any] = field(default_factory=dict)
    #: time.monotonic() when Envoy was spawned (its component turned ready), for the start-up phases.
    envoy_spawned_at: float | None = None
    #: What `kuma-dp run` made before the agent (Envoy running, readiness socket, access-log FIFO); None when
    #: the agent spawns Envoy itself.
    launched: Launched | None = None

    def enable_dns_gate(self) -> asyncio.Event:
        """For the DNS component's factory: `/ready` says NOT_READY until the returned event is set
        (at most 15 s).

        Not in Kuma 2.14's CoreDNS mode (`cfg.dns.coredns_compat`): there Kuma's readiness reporter gets no
        DNS ConfigReady channel (app/kuma-dp/cmd/run.go), so the event returned is one nobody waits on.
        """
        if self.cfg.dns.coredns_compat:
            return asyncio.Event()
        self.readiness.dns_gate = True
        return self.readiness.dns_ready


ComponentFactory = Callable[[AgentContext], Component | None]
ComponentSpec = Component | ComponentFactory


def _resolve(spec: ComponentSpec | str, ctx: AgentContext) -> Component | None:
    if isinstance(spec, str):
        module_name, _, attr = spec.partition(":")
        spec = getattr(importlib.import_module(module_name), attr)
    if isinstance(spec, Component):
        return spec
    return spec(ctx)  # type: ignore[operator]


class Agent:
    """The Envoy policy around a `ComponentManager`; `run()` returns the exit code.

    The manager runs the components; the agent gives it the stop order (Envoy first: it holds the traffic;
    then the rest in reverse order; the readiness reporter last, so `/ready` answers TERMINATING until the
    end), Envoy's stop timeout (its own SIGTERM-to-SIGKILL grace plus 5 s), and the shutdown path: signals
    interrupt the run and the drain happens before the manager stops anything. Envoy's exit ends the run like
    any component's: returning (exit code 0) gives 0, raising `EnvoyExitedError` gives 1.
    """

    def __init__(
        self,
        ctx: AgentContext,
        components: list[Component],
        envoy: EnvoyComponent,
        reporter: ReadinessReporter,
    ) -> None:
        self.ctx = ctx
        self.envoy = envoy
        self.reporter = reporter
        dp = ctx.cfg.dataplane
        self.drain_time = dp.drain_time
        restarting = with_restarts(
            components, dp.resilient_component_base_backoff, dp.resilient_component_max_backoff
        )
        self.manager = ComponentManager(
            restarting,
            name="agent",
            stop_order=self._stop_order,
            stop_timeouts={envoy: envoy.stop_timeout + 5.0},
        )
        self._term = asyncio.Event()
        self._cut_short = asyncio.Event()
        self._signals = 0
        self._drained = False
        self._background: set[asyncio.Task[Any]] = set()

    def _stop_order(self, components: Sequence[Component]) -> list[Component]:
        """Envoy first, then the rest in reverse start order, the readiness reporter last."""
        rest = [c for c in reversed(components) if c is not self.envoy and c is not self.reporter]
        return [self.envoy, *rest, self.reporter]

    # -- signals
    # -------------------------------------------------------------------------------------------------
    def _on_term(self, signame: str) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("received signal=%s: draining, then stopping", signame)
            self.ctx.readiness.terminating = True
            self._term.set()
        elif self._signals == 2:
            log.info("received signal=%s again: ending the drain wait", signame)
            self._cut_short.set()
        else:
            log.warning("received signal=%s a third time: exiting now", signame)
            self.envoy.kill_now()
            logging.shutdown()
            os._exit(1)

    def _on_usr2(self) -> None:
        log.info("received signal=SIGUSR2: draining inbound listeners")
        task = asyncio.create_task(self._drain_inbound())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _drain_inbound(self) -> None:
        try:
            resp = await self.ctx.admin.drain_inbound()
        except Exception as exc:
            log.error("inbound drain failed error=%r", str(exc))
            return
        if resp.status == 200:
            self._drained = True
            log.info("inbound listeners draining; a SIGTERM now exits without waiting")
        else:
            log.error("inbound drain refused status=%d body=%r", resp.status, resp.text.strip())

    async def _note_envoy_spawn(self) -> None:
        """Envoy's spawn time, taken when its component turns ready (right after the exec), for the start-up
        phases (envoy_live counts from it) and the timeline."""
        if self.ctx.launched is not None:
            return  # spawned by kuma_dp.launch, which took the time and marked it
        await self.envoy.ready.wait()
        self.ctx.envoy_spawned_at = time.monotonic()
        starttrace.mark("envoy_spawned", at=self.ctx.envoy_spawned_at)

    # -- the one shutdown path
    # -----------------------------------------------------------------------------------
    async def _drain(self) -> None:
        if self._drained:
            log.info("already drained (SIGUSR2); stopping without waiting")
            return
        try:
            resp = await self.ctx.admin.healthcheck_fail()
            ok = resp.status == 200
        except Exception as exc:
            log.warning("POST /healthcheck/fail failed, not waiting for the drain error=%r", str(exc))
            return
        if not ok:
            log.warning("POST /healthcheck/fail answered status=%d, not waiting for the drain", resp.status)
            return
        log.info("Envoy fails health checks; waiting drain_time=%gs (signal again to skip)", self.drain_time)
        stopped = self.manager.stopped  # a component failing meanwhile ends the wait: stop at once
        waiters = {asyncio.create_task(self._cut_short.wait()), asyncio.create_task(stopped.wait())}
        try:
            await asyncio.wait(waiters, timeout=self.drain_time, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # asyncio's accept loops (DNS over TCP, the hijacker) log a traceback per EMFILE: one line instead.
        from kuma_dp.logs import quiet_loop_errors

        quiet_loop_errors(loop)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
        loop.add_signal_handler(signal.SIGTERM, self._on_term, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_term, "SIGINT")
        loop.add_signal_handler(signal.SIGUSR2, self._on_usr2)
        # A signal that arrived while the agent was being built is only dispatched on the loop's next turns:
        # let it reach _on_term now, so the manager does not start Envoy for a run already asked to end.
        # One that came before the loop existed (Envoy launched by `kuma-dp run`) was kept for us.
        if self.ctx.launched is not None:
            for sig in list(self.ctx.launched.signals):
                self._on_term(signal.Signals(sig).name)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        spawn_watch = asyncio.create_task(self._note_envoy_spawn())
        self._background.add(spawn_watch)
        try:
            # The first SIGTERM/SIGINT sets `_term`: the manager stops starting and awaits the drain, then
            # stops the components in `_stop_order`.
            code = await self.manager.run(interrupt=self._term, before_stop=self._drain)
        finally:
            for task in self._background:
                task.cancel()
            for sig in handled:
                loop.remove_signal_handler(sig)
        log.info("agent stopped exit_code=%d", code)
        return code


def _build(
    cfg: RunConfig,
    bootstrap: Path,
    *,
    before_envoy: Iterable[ComponentSpec],
    extra_components: Iterable[ComponentSpec],
    envoy_binary: str | None,
    sidecar_config: dict[str, Any] | None = None,
    launched: Launched | None = None,
) -> Agent:
    rt = cfg.dataplane_runtime
    sidecar = sidecar_config or {}
    if launched is not None:
        plan = launched.plan
    else:
        plan = plan_envoy(
            cfg, bootstrap, load_bootstrap(bootstrap), envoy_binary=envoy_binary, sidecar_config=sidecar
        )
    sock = plan.readiness_socket
    ctx = AgentContext(
        cfg=cfg,
        bootstrap_path=bootstrap,
        work_dir=Path(rt.work_dir) if rt.work_dir else bootstrap.parent,
        admin=AdminClient(plan.admin),
        readiness=ReadinessState(),
        sidecar_config=sidecar,
        launched=launched,
    )
    try:

        def _envoy_exited(code: int) -> None:
            for hook in ctx.envoy_exit_hooks:
                hook(code)

        envoy = EnvoyComponent(
            plan.argv,
            on_exit=_envoy_exited,
            redact_output=plan.redact_output,
            process=launched.envoy if launched is not None else None,
        )
        ctx.envoy = envoy
        if launched is not None:
            ctx.envoy_spawned_at = launched.spawned_at
        # Resolved in order: a factory may rely on what an earlier one put in ctx (the DNS proxy's "/dns"
        # handler before the config fetcher), and Envoy's own place is between the two lists.
        before = [_resolve(spec, ctx) for spec in [*BEFORE_ENVOY, *before_envoy]]
        after = [_resolve(spec, ctx) for spec in [*AFTER_ENVOY, *extra_components]]
        reporter = ReadinessReporter(
            sock, ctx.readiness, ctx.admin, max_connections=cfg.dataplane.readiness_max_connections
        )
        components = [c for c in (*before, envoy, *after, reporter) if c is not None]
    except BaseException:
        sock.close()
        raise
    return Agent(ctx, components, envoy, reporter)


async def run_agent(
    cfg: RunConfig,
    bootstrap: str | os.PathLike[str],
    *,
    before_envoy: Iterable[ComponentSpec] = (),
    extra_components: Iterable[ComponentSpec] = (),
    envoy_binary: str | None = None,
    sidecar_config: dict[str, Any] | None = None,
    launched: Launched | None = None,
) -> int:
    """Run Envoy and the side components until Envoy exits or a signal ends the run; returns the exit code.

    `launched`: an Envoy already started by `kuma_dp.launch.launch_envoy` (what `kuma-dp run` does), adopted
    rather than spawned; it is killed if the agent cannot be built.

    Errors that prevent the start (readiness port taken, Envoy missing, bootstrap without admin address) are
    logged as one line and give exit code 1.
    """
    from kuma_dp.envoy import AdminError, EnvoyNotFoundError

    try:
        agent = _build(
            cfg,
            Path(bootstrap),
            before_envoy=before_envoy,
            extra_components=extra_components,
            envoy_binary=envoy_binary,
            sidecar_config=sidecar_config,
            launched=launched,
        )
    except BaseException as exc:
        if launched is not None:
            launched.abort()
        if isinstance(exc, ReadinessPortError | EnvoyNotFoundError | AdminError | OSError):
            log.error("%s", exc)
            return 1
        raise
    starttrace.mark("agent_built")
    return await agent.run()


def run_agent_sync(cfg: RunConfig, bootstrap: str | os.PathLike[str], **kwargs: Any) -> int:
    """`asyncio.run(run_agent(...))` for click commands."""
    return asyncio.run(run_agent(cfg, bootstrap, **kwargs))
