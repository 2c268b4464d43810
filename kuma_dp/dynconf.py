"""The dynamic-configuration poller: Kuma's config fetcher,
`app/kuma-dp/pkg/dataplane/configfetcher/component.go`.

Envoy serves per-path JSON (`/dns`, `/meshmetric`, ...) as direct responses on a unix socket in the work dir,
`kuma-mesh-metric-config.sock`, with a SHA-256 ETag. Every interval (1 s) we GET each registered path with
`If-None-Match: <last etag>`:

* 200: call the path's handler with the body; keep the ETag only if the handler succeeded (else refetch);
* 304: unchanged (the handler's optional `not_modified` hook marks its data fresh: the DNS table age);
* 404: not configured yet, forget the ETag; other statuses: logged, forget the ETag;
* missing socket / connection refused / timeout: skipped quietly (Envoy is not up, or is restarting).

Until Envoy first answers, the wait is not a whole interval: the socket appears when Envoy gets its first
listeners, and the first `/dns` table opens the DNS gate of `/ready`, so start-up would otherwise lose up to
an interval there. For the first `STARTUP_WINDOW` seconds the fetcher checks for the socket every
`STARTUP_POLL` (a stat, no request) and asks as soon as it exists (retries that find it but get no answer
back off, doubling up to the interval); after that, or once Envoy answered, one round per interval (a
bootstrap without the dynamic-config listener must not cost a wake-up every few ms for ever).

The component is resilient: nothing here may take the agent down, and a handler that raises only costs that
path one refetch.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from kuma_dp import _http
from kuma_dp.component import Component
from kuma_dp.paths import dynconf_socket_path

if TYPE_CHECKING:
    from kuma_dp.agent import AgentContext

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 1.0
CLIENT_TIMEOUT = 5.0
#: Until Envoy first answers (for at most STARTUP_WINDOW seconds): how often to look for its socket.
STARTUP_POLL = 0.005
STARTUP_WINDOW = 30.0

Handler = Callable[[bytes, str | None], Awaitable[object] | object]


@dataclass
class PathHandler:
    handler: Handler
    not_modified: Callable[[], object] | None = None
    etag: str | None = None
    fetches: int = 0
    failures: int = 0


class ConfigFetcher(Component):
    """Polls Envoy's dynamic-config socket and feeds each path's body to its handler."""

    name = "config-fetcher"
    resilient: ClassVar[bool] = True

    def __init__(
        self,
        socket: str | os.PathLike[str],
        interval: float = DEFAULT_INTERVAL,
        timeout: float = CLIENT_TIMEOUT,
    ) -> None:
        super().__init__()
        self.socket = os.fspath(socket)
        self.interval = interval
        self.timeout = timeout
        self.paths: dict[str, PathHandler] = {}
        #: Handlers registered late: read at the start of run(), so components resolved after the fetcher
        #: (MeshMetric's "/meshmetric", the OpenTelemetry pipe's "/otel") are polled too.
        self.sources: list[dict[str, Any]] = []
        #: Envoy answered on the socket at least once: from then on, one round per interval.
        self.reached = False
        #: Paths whose last answer was over the body cap: warned once until a good answer comes.
        self._too_large: set[str] = set()

    def register(self, path: str, handler: Handler, not_modified: Callable[[], object] | None = None) -> None:
        """Add a path: `handler(body, etag)` (sync or async) runs on every 200; raise to reject the body."""
        if not path.startswith("/"):
            raise ValueError(f"dynconf path must start with '/': {path!r}")
        self.paths[path] = PathHandler(handler, not_modified)

    def _register_sources(self) -> None:
        for source in self.sources:
            for path, h in source.items():
                if path in self.paths:
                    continue
                if isinstance(h, tuple):
                    self.register(path, h[0], h[1])
                else:
                    self.register(path, h)

    async def run(self) -> None:
        self._register_sources()
        self.ready.set()
        retry = STARTUP_POLL
        fast_until = asyncio.get_running_loop().time() + STARTUP_WINDOW
        while True:
            await self.poll_once()
            if self.reached or asyncio.get_running_loop().time() >= fast_until:
                await asyncio.sleep(self.interval)
                continue
            # Start-up: wait for the socket to appear (or, if it was there and nobody answered, back off).
            retry = await self._await_socket(retry)

    async def _await_socket(self, retry: float) -> float:
        """Sleep until the socket exists (checked every STARTUP_POLL) or one interval passed; returns the
        pause for the next failed attempt (doubling, up to the interval)."""
        if os.path.exists(self.socket):  # it exists but did not answer: Envoy is binding, or it is stale
            await asyncio.sleep(retry)
            return min(retry * 2, self.interval)
        loop = asyncio.get_running_loop()
        end = loop.time() + self.interval
        while loop.time() < end and not os.path.exists(self.socket):
            await asyncio.sleep(STARTUP_POLL)
        return retry

    async def poll_once(self) -> None:
        """One round over every path, in registration order (as kuma-dp does)."""
        for path, ph in self.paths.items():
            if not os.path.exists(self.socket):
                return  # Envoy has not created its listener yet
            headers = {"If-None-Match": ph.etag} if ph.etag else {}
            try:
                resp = await _http.get(
                    target=path, unix_path=self.socket, headers=headers, timeout=self.timeout
                )
            except _http.BodyTooLarge as exc:
                # Envoy relays what the control plane sent: refused at the cap, counted every time, one
                # warning until the path answers within the cap again (not one line per poll).
                if path not in self._too_large:
                    self._too_large.add(path)
                    log.warning("dynconf: GET %s refused: %s; retrying every interval", path, exc)
                from kuma_dp.metrics import agent_metrics

                agent_metrics().body_too_large("dynamic_config")
                return
            except _http.HttpError as exc:
                log.debug("dynconf: GET %s failed: %s", path, exc)
                return
            self.reached = True
            if resp.status == 304:
                if ph.not_modified is not None:
                    ph.not_modified()
                continue
            if resp.status == 404:
                ph.etag = None
                continue
            if resp.status != 200:
                log.warning("dynconf: GET %s answered %d; retrying next interval", path, resp.status)
                ph.etag = None
                continue
            self._too_large.discard(path)
            etag = resp.headers.get("etag")
            ph.fetches += 1
            try:
                result = ph.handler(resp.body, etag)
                if inspect.isawaitable(result):
                    async with asyncio.timeout(self.interval * 5):
                        await result
            except Exception as exc:
                ph.failures += 1
                ph.etag = None
                log.warning("dynconf: handler for %s rejected the body: %s", path, exc)
                continue
            ph.etag = etag


def from_agent(ctx: AgentContext) -> ConfigFetcher:
    """Agent factory: polls the paths other components put in `ctx.dynconf_handlers` (path -> handler or
    (handler, not_modified)), including those added by factories resolved after this one ("/meshmetric" is
    always there, as in Kuma, so the fetcher always runs).
    """
    interval = ctx.cfg.dataplane_runtime.dynamic_configuration_refresh_interval or DEFAULT_INTERVAL
    fetcher = ConfigFetcher(dynconf_socket_path(ctx.work_dir), interval=interval)
    fetcher.sources.append(ctx.dynconf_handlers)
    return fetcher
