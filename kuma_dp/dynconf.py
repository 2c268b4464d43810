"""The dynamic-configuration poller: Kuma's config fetcher,
`app/kuma-dp/pkg/dataplane/configfetcher/component.go`.

Envoy serves per-path JSON (`/dns`, `/meshmetric`, ...) as direct responses on a unix socket in the work dir,
`kuma-mesh-metric-config.sock`, with a SHA-256 ETag. Every interval (1 s) we GET each registered path with
`If-None-Match: <last etag>`:

* 200: call the path's handler with the body; keep the ETag only if the handler succeeded (else refetch);
* 304: unchanged (the handler's optional `not_modified` hook marks its data fresh: the DNS table age);
* 404: not configured yet, forget the ETag; other statuses: logged, forget the ETag;
* missing socket / connection refused / timeout: skipped quietly (Envoy is not up, or is restarting).

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
        while True:
            await self.poll_once()
            await asyncio.sleep(self.interval)

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
            except _http.HttpError as exc:
                log.debug("dynconf: GET %s failed: %s", path, exc)
                return
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
