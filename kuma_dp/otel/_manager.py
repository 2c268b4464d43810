"""The OpenTelemetry pipe component: the `/otel` dynamic-config handler and the receivers it keeps running.

Follows app/kuma-dp/pkg/dataplane/otelreceiver/manager.go: the control plane's `OtelDpConfig` lists backends
(`OtelPipeBackend`); each gets a receiver on its `socketPath`, restarted when its resolved runtime changes and
stopped when the backend goes; after each reconcile the running backends are reported (run.go feeds the
metrics ones to MeshMetric's OTLP pushers). A configuration that fails to start one backend leaves the others
running; the component itself never fails the agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from kuma_dp.component import Component
from kuma_dp.metrics._agent import AgentMetrics
from kuma_dp.otel._env import BackendRuntime, EnvConfig, resolve_backend

log = logging.getLogger(__name__)

__all__ = ["OTEL_PATH", "OtelPipeManager", "parse_otel_config"]

#: The dynamic-config path (pkg/core/xds/otel_pipe.go `OtelDynconfPath`).
OTEL_PATH = "/otel"
MAX_BACKENDS = 64


def parse_otel_config(body: bytes) -> list[dict[str, Any]]:
    """`OtelDpConfig` → its backends; ValueError naming the problem otherwise."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"otel dp config decode error: {exc}") from None
    if not isinstance(doc, Mapping):
        raise ValueError("otel dp config decode error: expected a JSON object")
    backends = doc.get("backends") or []
    if not isinstance(backends, list) or not all(isinstance(b, Mapping) for b in backends):
        raise ValueError("otel dp config decode error: backends must be a list of objects")
    if len(backends) > MAX_BACKENDS:
        raise ValueError(f"otel dp config: {len(backends)} backends, at most {MAX_BACKENDS} are served")
    for b in backends:
        if not isinstance(b.get("socketPath"), str) or not b["socketPath"]:
            raise ValueError(f"otel dp config: backend {b.get('name')!r} has no socketPath")
    return [dict(b) for b in backends]


class OtelPipeManager(Component):
    name = "otel-receiver"

    def __init__(
        self,
        env: EnvConfig,
        metrics: AgentMetrics | None = None,
        *,
        on_reconcile: Callable[[list[tuple[dict[str, Any], BackendRuntime]]], None] | None = None,
        host_ip: str | None = None,
    ) -> None:
        super().__init__()
        self.env = env
        self.metrics = metrics
        self.on_reconcile = on_reconcile
        self.host_ip = host_ip
        self.running: dict[str, Any] = {}  # socketPath -> BackendReceiver
        self._lock = asyncio.Lock()

    async def on_change(self, body: bytes, _etag: str | None = None) -> None:
        """The `/otel` handler: reconcile at once (a ValueError rejects the body; the fetcher retries)."""
        backends = parse_otel_config(body)
        async with self._lock:
            await self._reconcile(backends)

    async def _reconcile(self, backends: list[dict[str, Any]]) -> None:
        from kuma_dp.otel._receiver import BackendReceiver  # grpcio: only once a backend exists

        desired = {b["socketPath"]: b for b in backends}
        for path in [p for p in self.running if p not in desired]:
            await self.running.pop(path).stop()
            log.info("stopped OTel receiver", extra={"socketPath": path})
        for path, backend in desired.items():
            runtime = resolve_backend(self.env, backend, self.host_ip)
            current = self.running.get(path)
            if current is not None:
                if current.runtime == runtime:
                    continue
                await self.running.pop(path).stop()
            receiver = BackendReceiver(str(backend.get("name") or path), path, runtime, self.metrics)
            try:
                await receiver.start()
            except Exception as exc:
                log.error("failed to start OTel receiver", extra={"socketPath": path, "error": str(exc)})
                continue
            self.running[path] = receiver
        if self.on_reconcile is not None:
            self.on_reconcile([(b, self.running[p].runtime) for p, b in desired.items() if p in self.running])

    async def run(self) -> None:
        self.ready.set()
        try:
            await asyncio.Future()
        finally:
            for receiver in list(self.running.values()):
                await receiver.stop(grace=0.5)
            self.running.clear()
