"""The generic component manager (kuma_dp/component.py) on its own, with small fake components: ordered start
with readiness waits, stop orders and timeouts, exit codes and reasons, restarts with backoff. No Envoy: the
agent's Envoy policy is tested with the real Envoy in tests/integration/test_agent_components.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import pytest

from kuma_dp.component import (
    Component,
    ComponentManager,
    Resilient,
    run_components,
    with_restarts,
)

pytestmark = pytest.mark.unit


class Server(Component):
    """Serves until cancelled; becomes ready once `gate` is set (at once without one)."""

    def __init__(self, name: str, events: list[str], gate: asyncio.Event | None = None) -> None:
        super().__init__()
        self.name = name
        self.events = events
        self.gate = gate

    async def run(self) -> None:
        self.events.append(f"start {self.name}")
        try:
            if self.gate is not None:
                await self.gate.wait()
            self.ready.set()
            self.events.append(f"ready {self.name}")
            await asyncio.Future()
        finally:
            self.events.append(f"stop {self.name}")


class Failing(Component):
    """Raises at once, or once ready and `trigger` is set."""

    def __init__(self, name: str, events: list[str], trigger: asyncio.Event | None = None) -> None:
        super().__init__()
        self.name = name
        self.events = events
        self.trigger = trigger

    async def run(self) -> None:
        self.events.append(f"start {self.name}")
        if self.trigger is not None:
            self.ready.set()
            await self.trigger.wait()
        raise RuntimeError("boom")


class Returning(Component):
    """Ready at once, returns once `trigger` is set."""

    def __init__(self, name: str, trigger: asyncio.Event) -> None:
        super().__init__()
        self.name = name
        self.trigger = trigger

    async def run(self) -> None:
        self.ready.set()
        await self.trigger.wait()


class Stubborn(Component):
    """Ignores its first cancellation and ends only once `release` is set."""

    name = "stubborn"

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events
        self.release = asyncio.Event()

    async def run(self) -> None:
        self.ready.set()
        try:
            await asyncio.Future()
        except asyncio.CancelledError:
            self.events.append("stubborn ignores the cancellation")
        await self.release.wait()
        self.events.append("stubborn released")


class Flaky(Component):
    """Fails its first `failures` runs (`resilient` selects the wrapper in `with_restarts`)."""

    name = "flaky"
    resilient = True

    def __init__(self, events: list[str], failures: int) -> None:
        super().__init__()
        self.events = events
        self.failures = failures
        self.runs = 0

    async def run(self) -> None:
        self.runs += 1
        self.events.append(f"flaky run {self.runs}")
        if self.runs <= self.failures:
            raise RuntimeError(f"boom {self.runs}")
        self.ready.set()
        await asyncio.Future()


def run(body: Callable[[], Awaitable[None]]) -> None:
    """`asyncio.run(body())` with a bound: a hang fails the test instead of waiting for the global timeout."""

    async def bounded() -> None:
        async with asyncio.timeout(10):
            await body()

    asyncio.run(bounded())


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition()` holds (event-driven fakes need only a few turns)."""
    while not condition():
        await asyncio.sleep(0)


def test_starts_in_order_waiting_for_each_ready_and_stops_in_reverse() -> None:
    async def body() -> None:
        events: list[str] = []
        gate = asyncio.Event()
        manager = ComponentManager([Server("a", events, gate), Server("b", events), Server("c", events)])
        task = asyncio.create_task(manager.run())
        await until(lambda: "start a" in events)
        for _ in range(5):
            await asyncio.sleep(0)
        assert events == ["start a"]  # b waits for a's ready
        gate.set()
        await manager.started.wait()
        assert events == ["start a", "ready a", "start b", "ready b", "start c", "ready c"]
        manager.finish(0, "test over")
        assert await task == 0
        assert manager.reason == "test over"
        assert events[6:] == ["stop c", "stop b", "stop a"]

    run(body)


def test_a_component_that_need_not_be_waited_for_does_not_hold_the_start() -> None:
    async def body() -> None:
        events: list[str] = []
        slow = Server("slow", events, asyncio.Event())  # never ready
        slow.wait_ready = False
        manager = ComponentManager([slow, Server("next", events)])
        task = asyncio.create_task(manager.run())
        await manager.started.wait()
        assert events == ["start slow", "start next", "ready next"]
        manager.finish(0, "test over")
        assert await task == 0

    run(body)


def test_interrupt_awaits_before_stop_then_stops_in_reverse() -> None:
    async def body() -> None:
        events: list[str] = []
        interrupt = asyncio.Event()

        async def drain() -> None:
            events.append("drain")

        manager = ComponentManager([Server("a", events), Server("b", events)])
        task = asyncio.create_task(manager.run(interrupt=interrupt, before_stop=drain))
        await manager.started.wait()
        interrupt.set()
        assert await task == 0
        assert events[4:] == ["drain", "stop b", "stop a"]
        assert not manager.stopped.is_set()  # an interrupt is not a component ending the run

    run(body)


def test_interrupt_during_the_start_starts_nothing_more() -> None:
    async def body() -> None:
        events: list[str] = []
        interrupt = asyncio.Event()
        manager = ComponentManager([Server("a", events, asyncio.Event()), Server("b", events)])
        task = asyncio.create_task(manager.run(interrupt=interrupt))
        await until(lambda: "start a" in events)
        interrupt.set()
        assert await task == 0
        assert events == ["start a", "stop a"]
        assert not manager.started.is_set()

    run(body)


def test_custom_stop_order_and_the_ones_it_leaves_out() -> None:
    def policy(components: Sequence[Component]) -> list[Component]:
        # "b first, then a", as the agent puts Envoy first; "c" is left out and follows in reverse order.
        by_name = {c.name: c for c in components}
        return [by_name["b"], by_name["a"]]

    async def body() -> None:
        events: list[str] = []
        comps = [Server(n, events) for n in ("a", "b", "c", "d")]
        manager = ComponentManager(comps, stop_order=policy)
        task = asyncio.create_task(manager.run())
        await manager.started.wait()
        manager.finish(0, "test over")
        assert await task == 0
        assert [e for e in events if e.startswith("stop")] == ["stop b", "stop a", "stop d", "stop c"]

    run(body)


def test_a_failing_component_stops_the_rest_with_exit_1_and_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        events: list[str] = []
        trigger = asyncio.Event()
        broken = Failing("broken", events, trigger)
        manager = ComponentManager([Server("a", events), broken, Server("c", events)], name="test run")
        task = asyncio.create_task(manager.run())
        await manager.started.wait()
        trigger.set()
        assert await task == 1
        assert manager.reason == "broken failed: boom"
        assert isinstance(manager.error, RuntimeError)
        assert events[-2:] == ["stop c", "stop a"]

    with caplog.at_level(logging.INFO, logger="kuma_dp.component"):
        run(body)
    messages = [r.getMessage() for r in caplog.records]
    assert "component failed component=broken error='boom'" in messages
    assert "stopping the test run reason='broken failed: boom'" in messages


def test_a_returning_component_ends_the_run_with_exit_0() -> None:
    async def body() -> None:
        events: list[str] = []
        trigger = asyncio.Event()
        manager = ComponentManager([Server("a", events), Returning("done", trigger)])
        task = asyncio.create_task(manager.run())
        await manager.started.wait()
        trigger.set()
        assert await task == 0
        assert manager.reason == "done exited"
        assert manager.error is None
        assert events[-1] == "stop a"

    run(body)


def test_a_failure_before_ready_aborts_the_start() -> None:
    async def body() -> None:
        events: list[str] = []
        drained: list[bool] = []

        async def drain() -> None:
            drained.append(True)

        manager = ComponentManager([Server("a", events), Failing("broken", events), Server("c", events)])
        assert await manager.run(before_stop=drain) == 1
        assert not drained  # before_stop is for interrupts only
        assert events == ["start a", "ready a", "start broken", "stop a"]  # c never started
        assert manager.reason == "broken failed: boom"
        assert not manager.started.is_set()

    run(body)


def test_resilient_restarts_with_exponential_backoff_and_does_not_hold_the_start() -> None:
    async def body() -> None:
        events: list[str] = []
        delays: list[float] = []

        async def no_wait(delay: float) -> None:
            delays.append(delay)
            await asyncio.sleep(0)

        flaky = Flaky(events, failures=3)
        wrapped = Resilient(flaky, 1.0, 3.0, sleep=no_wait, rand=lambda: 0.5)  # 0.5: no jitter
        manager = ComponentManager([wrapped, Server("next", events)])
        task = asyncio.create_task(manager.run())
        await manager.started.wait()
        assert events[:2] == ["flaky run 1", "start next"]  # not waited for
        await wrapped.ready.wait()  # the wrapped component's own event
        assert flaky.ready.is_set()
        assert delays == [1.0, 2.0, 3.0]  # doubling, capped at max_backoff
        assert not manager.stopped.is_set()  # failures never end the run
        manager.finish(0, "test over")
        assert await task == 0

    run(body)


def test_resilient_backoff_starts_over_after_a_long_run() -> None:
    async def body() -> None:
        events: list[str] = []
        delays: list[float] = []
        now = [0.0]

        class LongThirdRun(Flaky):
            async def run(self) -> None:
                if self.runs == 2:
                    now[0] += 100.0  # the third run lasts longer than the cap
                await super().run()

        flaky = LongThirdRun(events, failures=4)

        async def no_wait(delay: float) -> None:
            delays.append(delay)

        wrapped = Resilient(flaky, 1.0, 10.0, sleep=no_wait, rand=lambda: 0.5, clock=lambda: now[0])
        task = asyncio.create_task(wrapped.run())
        await wrapped.ready.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert delays == [1.0, 2.0, 1.0, 2.0]

    run(body)


def test_with_restarts_wraps_only_the_flagged_components() -> None:
    async def body() -> None:
        events: list[str] = []
        plain, flaky = Server("plain", events), Flaky(events, failures=0)
        wrapped = with_restarts([plain, flaky], 0.1, 1.0)
        assert wrapped[0] is plain
        assert isinstance(wrapped[1], Resilient) and wrapped[1].component is flaky
        assert wrapped[1].name == "flaky" and not wrapped[1].wait_ready

    run(body)


def test_a_component_ignoring_cancellation_gets_its_stop_timeout(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        events: list[str] = []
        stubborn = Stubborn(events)
        manager = ComponentManager([Server("a", events), stubborn], stop_timeouts={stubborn: 0.05})
        task = asyncio.create_task(manager.run())
        await manager.started.wait()
        manager.finish(0, "test over")
        assert await task == 0
        # The manager moved on to "a" although the stubborn one is still running.
        assert events[-2:] == ["stubborn ignores the cancellation", "stop a"]
        stubborn.release.set()
        await until(lambda: "stubborn released" in events)

    with caplog.at_level(logging.WARNING, logger="kuma_dp.component"):
        run(body)
    assert "component did not stop in time component=stubborn" in [r.getMessage() for r in caplog.records]


def test_run_components_calls_on_ready_stops_on_the_event_and_raises_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        events: list[str] = []
        stop = asyncio.Event()

        def on_ready() -> None:
            events.append("on_ready")
            stop.set()

        await run_components([Server("a", events)], name="test", on_ready=on_ready, stop=stop, signals=())
        assert events == ["start a", "ready a", "on_ready", "stop a"]
        with pytest.raises(RuntimeError, match="boom"):
            await run_components([Failing("broken", events)], name="test", signals=())

    with caplog.at_level(logging.DEBUG, logger="kuma_dp.component"):
        run(body)
    # The caller reports the failure: the manager logs no error of its own.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
