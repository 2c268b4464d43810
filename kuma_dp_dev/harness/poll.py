"""Poll a condition until it holds or a deadline passes, for the demos, the harnesses, the tests and bench.

Starting a mesh means waiting for things that come up in their own time (the dev CP's ready file, Envoy's
admin API, a request through two Envoys). A check returns something truthy once the condition holds (that
value is returned) and a falsy value while it does not yet; an exception from the check also means "not
yet" (connection refused, a half-written file) and is remembered for the timeout message. `before` runs
ahead of every attempt and its exceptions propagate: a demo or a test uses it to stop waiting as soon as
one of its processes died. `wait_until` is for plain code, `wait_until_async` for code inside an event
loop (its check may also return an awaitable); both follow this one contract.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["wait_until", "wait_until_async"]


class _Deadline:
    """The state both loops share: when to give up, and the last error a check raised."""

    def __init__(self, timeout: float, what: str, context: str) -> None:
        self.timeout = timeout
        self.what = what
        self.context = context
        self.end = time.monotonic() + timeout
        self.last_error: Exception | None = None

    def failed(self, exc: Exception) -> None:
        self.last_error = exc

    def check_expired(self) -> None:
        """TimeoutError naming what was awaited, the last error and the context, once the time is up."""
        if time.monotonic() <= self.end:
            return
        detail = f"; last error: {self.last_error!r}" if self.last_error is not None else ""
        extra = f"; {self.context}" if self.context else ""
        raise TimeoutError(f"timed out after {self.timeout:g}s waiting for {self.what}{detail}{extra}")


def wait_until(
    check: Callable[[], T | None],
    timeout: float,
    what: str = "condition",
    *,
    interval: float = 0.05,
    context: str = "",
    before: Callable[[], object] | None = None,
) -> T:
    """The first truthy `check()`, polled every `interval` seconds; TimeoutError once `timeout` seconds pass.

    The message names `what`, the last error the check raised and `context` (e.g. where the logs are).
    """
    deadline = _Deadline(timeout, what, context)
    while True:
        if before is not None:
            before()
        try:
            value = check()
        except Exception as exc:  # the thing being waited for is not up yet
            value = None
            deadline.failed(exc)
        if value:
            return value
        deadline.check_expired()
        time.sleep(interval)


async def wait_until_async(
    check: Callable[[], T | Awaitable[T | None] | None],
    timeout: float,
    what: str = "condition",
    *,
    interval: float = 0.05,
    context: str = "",
    before: Callable[[], object] | None = None,
) -> T:
    """`wait_until` inside an event loop: the check may return an awaitable, and the pause is
    `asyncio.sleep`, so the loop keeps serving the thing being waited for.

        await wait_until_async(lambda: client.ready(), 30, "/ready to answer 200")
    """
    deadline = _Deadline(timeout, what, context)
    while True:
        if before is not None:
            before()
        value: Any
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:  # the thing being waited for is not up yet
            value = None
            deadline.failed(exc)
        if value:
            return value  # type: ignore[no-any-return]
        deadline.check_expired()
        await asyncio.sleep(interval)
