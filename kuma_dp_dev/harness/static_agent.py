"""Run the agent (`kuma_dp.agent.run_agent`) on a static Envoy bootstrap, without a control plane.

Used by bench/startup.py and tests/integration/test_agent_*.py, so both drive the code path `kuma-dp run`
ends in, with a bootstrap that needs no xDS server:

    python -m kuma_dp_dev.harness.static_agent write-bootstrap OUT.yaml --admin-port N | --admin-socket PATH
    python -m kuma_dp_dev.harness.static_agent run OUT.yaml [--readiness-port N] [--drain-time S] [--dns-gate]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kuma_dp.config import RunConfig

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def static_bootstrap(
    *, admin_port: int = 0, admin_socket: str | None = None, listener_port: int = 0
) -> dict[str, object]:
    """A minimal valid bootstrap: an admin API and one INBOUND HTTP listener answering 200 `hello`."""
    if admin_socket:
        admin_address: dict[str, object] = {"pipe": {"path": admin_socket, "mode": 0o600}}
    else:
        admin_address = {"socketAddress": {"address": "127.0.0.1", "portValue": admin_port}}
    route = {
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": "hello"}},
                    }
                ],
            }
        ]
    }
    listener = {
        "name": "inbound:hello",
        "traffic_direction": "INBOUND",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": "inbound_hello",
                            "route_config": route,
                            "http_filters": [
                                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
                            ],
                        },
                    }
                ]
            }
        ],
    }
    return {
        "node": {"id": "default.bench", "cluster": "bench"},
        "admin": {"address": admin_address},
        "static_resources": {"listeners": [listener]},
    }


def write_bootstrap(path: Path, **kwargs: object) -> Path:
    path.write_text(json.dumps(static_bootstrap(**kwargs), indent=1))  # type: ignore[arg-type]
    path.chmod(0o600)
    return path


def agent_config(
    work_dir: Path, binary: str, *, readiness_port: int = 0, drain_time: float = 30.0
) -> RunConfig:
    """The config of an agent without a control plane: `/ready` on `readiness_port`, Envoy `binary` with one
    worker in `work_dir`, and no DNS proxy (it has its own tests and bench, bench/dns.py)."""
    from kuma_dp.config import RunConfig

    cfg = RunConfig()
    cfg.dataplane.readiness_port = readiness_port
    cfg.dataplane.drain_time = drain_time
    cfg.dataplane_runtime.work_dir = str(work_dir)
    cfg.dataplane_runtime.binary_path = binary
    cfg.dataplane_runtime.concurrency = 1
    cfg.dns.enabled = False
    return cfg


def run(bootstrap: Path, readiness_port: int, drain_time: float, dns_gate: bool, binary: str) -> int:
    from kuma_dp.agent import AgentContext, run_agent

    cfg = agent_config(bootstrap.parent, binary, readiness_port=readiness_port, drain_time=drain_time)
    cfg.log.level = "info"
    specs = []
    if dns_gate:

        def gate_only(ctx: AgentContext) -> None:
            # Stands in for the DNS component: closes the gate and never opens it (tests the 15 s skip rule).
            ctx.enable_dns_gate()

        specs.append(gate_only)
    return asyncio.run(run_agent(cfg, bootstrap, before_envoy=specs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write-bootstrap")
    w.add_argument("out", type=Path)
    w.add_argument("--admin-port", type=int, default=0)
    w.add_argument("--admin-socket")
    w.add_argument("--listener-port", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("bootstrap", type=Path)
    r.add_argument("--readiness-port", type=int, default=0)
    r.add_argument("--drain-time", type=float, default=30.0)
    r.add_argument("--dns-gate", action="store_true")
    r.add_argument("--binary-path", default="envoy")
    args = parser.parse_args(argv)
    if args.cmd == "write-bootstrap":
        write_bootstrap(
            args.out,
            admin_port=args.admin_port,
            admin_socket=args.admin_socket,
            listener_port=args.listener_port,
        )
        return 0
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # The start-up timeline for bench/startup.py, as `kuma-dp run` writes it (the setting of that name).
    from kuma_dp import starttrace

    starttrace.mark("imports")
    starttrace.enable(os.environ.get("KUMA_DP_STARTUP_TRACE", ""))
    return run(args.bootstrap, args.readiness_port, args.drain_time, args.dns_gate, args.binary_path)


if __name__ == "__main__":
    sys.exit(main())
