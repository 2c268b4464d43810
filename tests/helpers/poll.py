"""`kuma_dp_dev.harness.poll.wait_until` for tests running inside an event loop.

Same contract: a check returns something truthy once the condition holds (that value is returned) and a
falsy value while it does not yet; an exception from the check also means "not yet" and is named in the
TimeoutError; `before` runs ahead of every attempt and its exceptions propagate (to stop waiting for a
process that died). The check may be a plain function or return an awaitable.

    await wait_until_async(lambda: client.ready(), 30, "/ready to answer 200")
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until_async(
    check: Callable[[], T | Awaitable[T | None] | None],
    timeout: float,
    what: str = "condition",
    *,
    interval: float = 0.05,
    before: Callable[[], object] | None = None,
) -> T:
    """The first truthy `check()`, polled every `interval` seconds; TimeoutError after `timeout` seconds."""
    end = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if before is not None:
            before()
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:  # the thing being waited for is not up yet
            value, last_error = None, exc
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > end:
            detail = f"; last error: {last_error!r}" if last_error is not None else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        await asyncio.sleep(interval)
