"""The contract every part of a running agent follows.

Kuma's kuma-dp composes components (DNS, Envoy, config fetcher, access-log streamer, metrics hijacker,
readiness reporter) under one manager; we do the same in one asyncio program. A component is an object with
an async `run()` that works until it is cancelled (clean-up in `finally`), sets `ready` once it can serve,
and raises to report failure. The manager in `kuma_dp.agent` starts components in order, waits for each
`ready` where the order matters, restarts `resilient` ones with backoff and takes the agent down when a
non-resilient one fails.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar


class Component:
    """Base class: subclasses set `name`, maybe `resilient`, and implement `run`."""

    name: ClassVar[str] = "component"
    #: Resilient components (config fetcher, access-log streamer) are restarted with exponential backoff
    #: (5 s base, 1 min cap, jitter) instead of stopping the agent.
    resilient: ClassVar[bool] = False

    def __init__(self) -> None:
        self.ready = asyncio.Event()

    async def run(self) -> None:
        raise NotImplementedError
