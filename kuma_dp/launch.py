"""Envoy's exec, the moment its bootstrap is written: the start-up's critical path ends here.

Go's kuma-dp hands every component to its component manager (`pkg/core/runtime/component/manager.go` in
kumahq/kuma v2.14.3), which starts the non-leader ones together, each in its own goroutine: Envoy does not
wait for the DNS server, the metrics hijacker or the config fetcher. `kuma-dp run` does the same here:
`launch_envoy` runs right after `<workdir>/bootstrap.yaml` is written, before the agent imports or builds any
other component, and `kuma_dp.agent.run_agent(..., launched=...)` adopts the running Envoy. Envoy takes a few
hundred milliseconds to reach LIVE; the rest of the agent starts in that time instead of before it.

What must precede the exec, and so happens here:

* the readiness port is bound, so a taken port fails the start before Envoy runs (kumahq/kuma#11769);
* the access-log FIFO exists, or Envoy would create a regular file at its path when a listener's access log
  arrives over xDS and the logs would go nowhere (a failure is left to the streamer, which retries);
* the admin address is read from the bootstrap, so one without a usable admin address never starts Envoy.

Envoy runs in its own process group with the parent-death signal armed (kuma_dp.envoy.spawn_envoy), so
whatever happens between here and the agent's signal handlers, it never outlives us; `Launched.abort`
stops it when the agent cannot be built.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kuma_dp import starttrace

if TYPE_CHECKING:
    from kuma_dp.config import RunConfig
    from kuma_dp.envoy import AdminAddress

log = logging.getLogger(__name__)


class ReadinessPortError(RuntimeError):
    """The readiness port cannot be bound; the message is the one line shown to the operator."""


def readiness_bind_host(admin: AdminAddress, *, on_kubernetes: bool, ipv6: bool = False) -> str:
    """Kuma's rule (app/kuma-dp/cmd/run.go): the admin address when admin is TCP; with a unix-socket admin,
    all addresses on Kubernetes (the kubelet probes the pod IP), loopback elsewhere, in the family of the
    dataplane's address (`ipv6`: kumaSidecarConfiguration.networking.address is IPv6)."""
    if not admin.is_unix:
        return admin.host
    if on_kubernetes:
        return "::" if ipv6 else "0.0.0.0"
    return "::1" if ipv6 else "127.0.0.1"


def bind_readiness_socket(host: str, port: int) -> socket.socket:
    """Bind and listen now, so a taken port is reported before anything else starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Dual stack on `::` whatever net.ipv6.bindv6only says: Kuma listens with Go's "tcp" network,
            # which clears IPV6_V6ONLY, so a kubelet probing the pod's IPv4 address reaches us too.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ReadinessPortError(
                f"readiness reporter: listen tcp {shown}: bind: address already in use "
                "(another kuma-dp on this host?); "
                "set KUMA_READINESS_PORT to a free port, or to 0 to let the kernel pick one"
            ) from None
        raise ReadinessPortError(
            f"readiness reporter: listen tcp {shown}: {exc.strerror}; "
            "set KUMA_READINESS_PORT to a usable port"
        ) from None
    sock.setblocking(False)
    return sock


@dataclass(frozen=True)
class EnvoyPlan:
    """Envoy's command line and the agent's sockets around it, decided from the configuration and the
    bootstrap; `kuma_dp.agent` builds the same plan when it spawns Envoy itself."""

    admin: AdminAddress
    readiness_socket: socket.socket
    argv: list[str]
    redact_output: bool


@dataclass
class Launched:
    """What `launch_envoy` made, for the agent to adopt: the plan it carried out and the running Envoy."""

    plan: EnvoyPlan
    envoy: subprocess.Popen[bytes]
    #: time.monotonic() right after the exec: the start-up phases count Envoy's LIVE from here.
    spawned_at: float
    #: The access-log FIFO's path and read end (None: it could not be made; the streamer tries again).
    fifo_path: str = ""
    fifo_fd: int | None = None
    #: Why a foreign object at the FIFO path was replaced or refused, counted once the metrics exist.
    fifo_rejections: list[str] = field(default_factory=list)
    #: SIGINT/SIGTERM received after the spawn, before the agent's own handlers: the agent acts on them.
    signals: list[int] = field(default_factory=list)

    def take_fifo_fd(self, path: str) -> int | None:
        """The pre-opened FIFO for the streamer of `path` (once; None for another path or when none)."""
        if path != self.fifo_path or self.fifo_fd is None:
            return None
        fd, self.fifo_fd = self.fifo_fd, None
        return fd

    def abort(self) -> None:
        """The agent could not be built: Envoy is killed and reaped, the socket and the FIFO closed."""
        if self.envoy.poll() is None:
            try:
                os.killpg(self.envoy.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.envoy.wait()
        self.plan.readiness_socket.close()
        if self.fifo_fd is not None:
            os.close(self.fifo_fd)
            self.fifo_fd = None


def plan_envoy(
    cfg: RunConfig,
    bootstrap_path: Path,
    bootstrap_doc: dict[str, Any],
    *,
    envoy_binary: str | None,
    sidecar_config: dict[str, Any],
) -> EnvoyPlan:
    """Admin address, readiness socket (bound now), argv. Raises AdminError, ReadinessPortError,
    EnvoyNotFoundError: each is one line for the operator."""
    from kuma_dp.envoy import (
        EnvoyOptions,
        admin_address_from_bootstrap,
        build_command,
        find_envoy,
        needs_redaction,
    )

    rt = cfg.dataplane_runtime
    admin = admin_address_from_bootstrap(bootstrap_doc)
    address = str((sidecar_config.get("networking") or {}).get("address") or "")
    host = readiness_bind_host(admin, on_kubernetes=cfg.pod_name is not None, ipv6=":" in address)
    sock = bind_readiness_socket(host, cfg.dataplane.readiness_port)
    try:
        if cfg.dataplane.readiness_port == 0:
            log.info("readiness reporter: KUMA_READINESS_PORT=0, picked port=%d", sock.getsockname()[1])
        binary = envoy_binary or str(find_envoy(rt.binary_path))
        argv = build_command(
            EnvoyOptions(
                binary=binary,
                config_path=str(bootstrap_path),
                drain_time_s=cfg.dataplane.drain_time,
                log_level=rt.envoy_log_level or cfg.log.level,
                component_log_level=rt.envoy_component_log_level,
                concurrency=rt.concurrency,
            )
        )
    except BaseException:
        sock.close()
        raise
    # At debug/trace Envoy prints request headers, the dataplane token among them: its output is filtered.
    redact = needs_redaction(rt.envoy_log_level or cfg.log.level, rt.envoy_component_log_level)
    return EnvoyPlan(admin=admin, readiness_socket=sock, argv=argv, redact_output=redact)


def launch_envoy(
    cfg: RunConfig,
    bootstrap_path: Path,
    bootstrap_doc: dict[str, Any],
    *,
    envoy_binary: str | None,
    sidecar_config: dict[str, Any],
) -> Launched:
    """Plan, make the access-log FIFO, exec Envoy. Raises what `plan_envoy` raises, or OSError from the
    exec; nothing is left open then."""
    from kuma_dp.envoy import spawn_envoy
    from kuma_dp.fsutil import PrivateFifoError, open_private_fifo
    from kuma_dp.paths import access_log_socket_path

    plan = plan_envoy(
        cfg, bootstrap_path, bootstrap_doc, envoy_binary=envoy_binary, sidecar_config=sidecar_config
    )
    rt = cfg.dataplane_runtime
    work_dir = Path(rt.work_dir) if rt.work_dir else bootstrap_path.parent
    fifo = access_log_socket_path(work_dir, cfg.dataplane.name, cfg.dataplane.mesh)
    rejections: list[str] = []
    fifo_fd: int | None = None
    try:
        fifo_fd = open_private_fifo(fifo, rejections.append)
    except (PrivateFifoError, OSError) as exc:
        log.warning("access-log FIFO not ready before Envoy; the streamer retries error=%r", str(exc))
    try:
        log.info("starting Envoy argv=%s", " ".join(plan.argv))
        proc = spawn_envoy(plan.argv, redact_output=plan.redact_output)
    except BaseException:
        plan.readiness_socket.close()
        if fifo_fd is not None:
            os.close(fifo_fd)
        raise
    spawned_at = time.monotonic()
    starttrace.mark("envoy_spawned", at=spawned_at)
    return Launched(
        plan=plan,
        envoy=proc,
        spawned_at=spawned_at,
        fifo_path=fifo,
        fifo_fd=fifo_fd,
        fifo_rejections=rejections,
    )
