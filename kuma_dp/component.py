"""Components and the generic manager that runs them.

Kuma's kuma-dp composes its parts (DNS, Envoy, config fetcher, access-log streamer, metrics hijacker,
readiness reporter) as components under one manager (`pkg/core/runtime/component/component.go` in
kumahq/kuma v2.14.3); we do the same in one asyncio program, and the DNS server and the development control
plane run the same way.

The contract: a component is an object with an async `run()` that works until it is cancelled (clean-up in
`finally`), sets `ready` once it serves, and raises to report a failure; returning means "done".

`ComponentManager` starts a list of components in order, waiting for each one's `ready` before the next
(unless its `wait_ready` is False), ends the run when one fails (exit code 1) or returns (exit code 0), and
stops them in a stop order (reverse start order unless told otherwise) with a timeout each. Restarting with
backoff is a wrapper, `Resilient` (Kuma's `pkg/core/runtime/component/resilient.go`), not a manager feature.
The manager knows nothing about any particular component: the agent's Envoy rules (Envoy stops first, the
readiness reporter last, a drain between the signal and the stop) are what `kuma_dp.agent` passes in.

`run_components(...)` runs components as a foreground program (until SIGINT/SIGTERM), for `kuma-dp dns` and
`kuma-dp dev-cp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import ClassVar

log = logging.getLogger(__name__)

#: How long a cancelled component may take to finish before the manager moves on to the next one.
DEFAULT_STOP_TIMEOUT = 5.0


class Component:
    """Base class: subclasses set `name`, maybe `resilient` or `wait_ready`, and implement `run`."""

    #: For logs and task names; a class attribute in subclasses, per instance in wrappers.
    name: str = "component"
    #: Restart with backoff instead of ending the run: `with_restarts()` wraps such a component in
    #: `Resilient` (the agent does so for the config fetcher and the access-log streamer).
    resilient: ClassVar[bool] = False
    #: Whether the manager waits for `ready` before it starts the next component.
    wait_ready: bool = True

    def __init__(self) -> None:
        self.ready = asyncio.Event()

    async def run(self) -> None:
        raise NotImplementedError


def backoff_delay(attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with ±20 % jitter, never above the cap (attempt 0 → about `base`)."""
    raw = min(cap, base * (2 ** min(attempt, 32)))
    return min(cap, raw * (0.8 + 0.4 * rand()))


class Resilient(Component):
    """Runs `component` again whenever it fails or returns, after `backoff_delay`, as Kuma's
    `pkg/core/runtime/component/resilient.go`: the component never ends the run.

    The backoff starts over after a run that lasted longer than the cap. `ready` is the wrapped component's
    own event (cleared before each restart), and the start does not wait for it: a resilient component may
    need several attempts (the config fetcher before Envoy opened its socket). `sleep`, `rand` and `clock`
    are there for tests.
    """

    wait_ready = False

    def __init__(
        self,
        component: Component,
        base_backoff: float,
        max_backoff: float,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.component = component
        self.name = component.name
        self.ready = component.ready
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._rand = rand
        self._clock = clock

    async def run(self) -> None:
        comp = self.component
        attempt = 0
        while True:
            started = self._clock()
            try:
                await comp.run()
                log.warning("resilient component returned component=%s", comp.name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("resilient component failed component=%s error=%r", comp.name, str(exc))
            if self._clock() - started > self.max_backoff:
                attempt = 0
            delay = backoff_delay(attempt, self.base_backoff, self.max_backoff, self._rand)
            attempt += 1
            comp.ready.clear()
            log.info("restarting component=%s in=%.1fs", comp.name, delay)
            await self._sleep(delay)


def with_restarts(
    components: Iterable[Component], base_backoff: float, max_backoff: float
) -> list[Component]:
    """The components, each one whose `resilient` flag is set wrapped in `Resilient`."""
    return [Resilient(c, base_backoff, max_backoff) if c.resilient else c for c in components]


#: Given the components in start order, the order to stop them in.
StopOrder = Callable[[Sequence[Component]], Sequence[Component]]


def reverse_order(components: Sequence[Component]) -> Sequence[Component]:
    """The default stop order: the last started stops first."""
    return components[::-1]


class ComponentManager:
    """Runs components as tasks: ordered start, one exit code, ordered stop.

    `run()` is the whole life (start, wait, stop). A caller with its own shutdown steps uses the hooks:
    `run(interrupt=event, before_stop=coro_fn)` ends the wait when `event` is set and awaits `before_stop()`
    before stopping (the agent drains Envoy there); `stopped` is set once the run is over (a component failed
    or returned, or `finish()` was called); `stop_all()` stops everything in the stop order.

    `quiet` is for callers that report the outcome themselves (a CLI prints a failure as its one error
    line): failures are not logged but kept in `error`, and the start/stop notes are debug lines.
    """

    def __init__(
        self,
        components: Sequence[Component],
        *,
        name: str = "components",
        stop_order: StopOrder = reverse_order,
        stop_timeouts: Mapping[Component, float] | None = None,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        on_started: Callable[[], None] | None = None,
        quiet: bool = False,
    ) -> None:
        self.components = list(components)
        self.name = name
        self.stop_order = stop_order
        self.stop_timeouts = dict(stop_timeouts or {})
        self.stop_timeout = stop_timeout
        self.on_started = on_started
        self.quiet = quiet
        #: Set once the run is over; `exit_code` and `reason` say why.
        self.stopped = asyncio.Event()
        #: Set once every component was started (and the awaited ones are ready).
        self.started = asyncio.Event()
        self.exit_code = 0
        self.reason = ""
        #: The exception of the component whose failure ended the run.
        self.error: BaseException | None = None
        self._tasks: dict[Component, asyncio.Task[None]] = {}
        self._note = logging.DEBUG if quiet else logging.INFO

    def finish(self, code: int, reason: str) -> None:
        """End the run with `code`; the first call wins."""
        if not self.stopped.is_set():
            log.log(self._note, "stopping the %s reason=%r", self.name, reason)
            self.exit_code = code
            self.reason = reason
            self.stopped.set()

    def _fail(self, reason: str, exc: BaseException) -> None:
        if not self.stopped.is_set():
            self.error = exc
        self.finish(1, reason)

    async def _supervise(self, comp: Component) -> None:
        try:
            await comp.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.quiet:
                log.error("component failed component=%s error=%r", comp.name, str(exc) or type(exc).__name__)
            self._fail(f"{comp.name} failed: {exc}", exc)
            return
        self.finish(0, f"{comp.name} exited")

    async def start_all(self, interrupt: asyncio.Event | None = None) -> None:
        """Start the components in order; stops starting once the run is over or `interrupt` is set."""
        for comp in self.components:
            if self.stopped.is_set() or (interrupt is not None and interrupt.is_set()):
                return
            log.debug("starting component=%s", comp.name)
            task = asyncio.create_task(self._supervise(comp), name=f"component:{comp.name}")
            self._tasks[comp] = task
            if not comp.wait_ready:
                continue
            ready = asyncio.create_task(comp.ready.wait())
            try:
                await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
            if task.done():
                return
        log.log(self._note, "all components started")
        self.started.set()
        if self.on_started is not None:
            self.on_started()

    async def _stop_component(self, comp: Component) -> None:
        task = self._tasks.pop(comp, None)
        if task is None:
            return
        timeout = self.stop_timeouts.get(comp, self.stop_timeout)
        task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except asyncio.CancelledError:
            if not task.done():
                raise
        except TimeoutError:
            log.warning("component did not stop in time component=%s", comp.name)
        except Exception as exc:
            log.debug("component stopped with error component=%s error=%r", comp.name, str(exc))

    async def stop_all(self) -> None:
        """Cancel each running component in the stop order and wait for it (up to its stop timeout); any the
        order left out follow in reverse start order."""
        for comp in self.stop_order(self.components):
            await self._stop_component(comp)
        for comp in reversed(self.components):
            await self._stop_component(comp)

    async def run(
        self,
        *,
        interrupt: asyncio.Event | None = None,
        before_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """Start everything, wait until the run is over or `interrupt` is set, then stop everything; returns
        the exit code. `before_stop()` is awaited between an interrupt and the stop (not when a component
        ended the run)."""
        starter = asyncio.create_task(self.start_all(interrupt), name=f"{self.name}:start")

        def _start_failed(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                assert exc is not None
                self._fail(f"start-up failed: {exc}", exc)

        starter.add_done_callback(_start_failed)
        waiters = {asyncio.create_task(self.stopped.wait())}
        if interrupt is not None:
            waiters.add(asyncio.create_task(interrupt.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not starter.done():
                starter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starter
            if before_stop is not None and not self.stopped.is_set():
                await before_stop()
        finally:
            for w in waiters:
                w.cancel()
            starter.cancel()
            await self.stop_all()
        return self.exit_code


async def run_components(
    components: Sequence[Component],
    *,
    name: str,
    on_ready: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
    signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
    before_stop: Callable[[], Awaitable[None]] | None = None,
    stop_order: StopOrder = reverse_order,
) -> None:
    """Run `components` as a foreground program: start them in order, call `on_ready()` once all serve, and
    stop them (in `stop_order`) on one of `signals` or when `stop` is set (after awaiting `before_stop()`),
    or when one returns.

    A component's failure is raised here, not logged, so the caller reports it as its one error line.
    `signals=()` for a loop outside the main thread (signal handlers need the main thread).
    """
    manager = ComponentManager(components, name=name, stop_order=stop_order, on_started=on_ready, quiet=True)
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await manager.run(interrupt=stop, before_stop=before_stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    if manager.error is not None:
        raise manager.error
