"""Poll a condition until it holds or a deadline passes, for the demos, the local-mesh harness and bench.

Starting a mesh means waiting for things that come up in their own time (the dev CP's ready file, Envoy's
admin API, a request through two Envoys). A check returns something truthy once the condition holds (that
value is returned) and a falsy value while it does not yet; an exception from the check also means "not
yet" (connection refused, a half-written file) and is remembered for the timeout message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["wait_until"]


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
    `before` runs ahead of every attempt and its exceptions propagate: a demo uses it to stop waiting as
    soon as one of its processes died.
    """
    end = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if before is not None:
            before()
        try:
            value = check()
        except Exception as exc:  # the thing being waited for is not up yet
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > end:
            detail = f"; last error: {last_error!r}" if last_error is not None else ""
            extra = f"; {context}" if context else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{detail}{extra}")
        time.sleep(interval)
