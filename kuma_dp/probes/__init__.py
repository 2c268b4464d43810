"""The application probe proxy (`kuma-dp run` with KUMA_APPLICATION_PROBE_PROXY_PORT > 0), as kumahq/kuma
v2.14.3 `app/kuma-dp/pkg/dataplane/probes/`.

Modules: `proxy` (the component: listener, routing, answers), `upstream` (dialling the application from
127.0.0.6 / ::6, the TCP and HTTP(S) probes), `grpc_health` (the grpc.health.v1 probe), `wire` (Go
`net/http` details), `convert` (the injector's probe rewrite, the contract the proxy serves).

The agent wires it with `from_agent` (listed in `kuma_dp.agent.AFTER_ENVOY`); this module imports nothing
heavy, so a run with the proxy off pays only for this file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kuma_dp.component import Component

if TYPE_CHECKING:
    from kuma_dp.agent import AgentContext


def pod_address(sidecar_config: dict[str, Any]) -> str:
    """Where the application is probed: the control plane's `kumaSidecarConfiguration.networking.address`
    (Kuma's run.go passes it to `probes.NewProber`).
    """
    networking = sidecar_config.get("networking") or {}
    return str(networking.get("address") or "") if isinstance(networking, dict) else ""


class LazyProbeProxy(Component):
    """The agent's handle on the proxy: `kuma_dp.probes.proxy` (about 25 ms of imports) is loaded when the
    component runs, after Envoy has been started, not while the agent builds its components.
    """

    name = "application-probe-proxy"
    wait_ready = False

    def __init__(self, port: int, address: str, version: str) -> None:
        super().__init__()
        self.port = port
        self.address = address
        self.version = version

    async def run(self) -> None:
        from kuma_dp.probes.proxy import ProbeProxy

        proxy = ProbeProxy(self.port, self.address, version=self.version)
        proxy.ready = self.ready
        await proxy.run()


def from_agent(ctx: AgentContext) -> LazyProbeProxy | None:
    """Agent factory: the proxy on KUMA_APPLICATION_PROBE_PROXY_PORT, or None when that is 0 (off)."""
    port = ctx.cfg.application_probe_proxy_port
    if not port or port <= 0:
        return None
    from kuma_dp import __version__

    return LazyProbeProxy(port, pod_address(ctx.sidecar_config), __version__)
