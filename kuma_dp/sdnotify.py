"""systemd notifications: `READY=1`, `STOPPING=1`, `WATCHDOG=1` (Go kuma-dp has none of this).

With `Type=notify` a unit's dependents start only when the service says it is ready; for a sidecar that means
"`/ready` answers 200" (Envoy LIVE, first DNS table), not "the process exists". With `WatchdogSec=` systemd
restarts an agent whose event loop is stuck. Everything is a no-op without `NOTIFY_SOCKET`, so the same
binary runs under Kubernetes, a shell or systemd. The protocol is one datagram per message on a unix socket
whose name may be abstract (`@name`, sent as a leading NUL).

The protocol's variables (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`) are the `systemd.*` settings of
the agent's configuration; the functions here take them as a mapping named like the variables, and an
absent mapping means none of them is set.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from kuma_dp.component import Component
from kuma_dp.config import SETTINGS, RunConfig, get_path

if TYPE_CHECKING:
    from kuma_dp.agent import AgentContext

log = logging.getLogger(__name__)

__all__ = ["SdNotifier", "SystemdNotifier", "notifier_component", "systemd_environ", "watchdog_interval"]

ReadyCheck = Callable[[], bool | Awaitable[bool]]


class SdNotifier:
    """Sends sd_notify datagrams to `$NOTIFY_SOCKET`; `enabled` is False (and sends do nothing) without it."""

    def __init__(self, socket_path: str | None = None, *, environ: Mapping[str, str] | None = None) -> None:
        env = environ or {}
        path = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path:
            if path.startswith("@"):
                self.address = "\0" + path[1:]
            elif path.startswith("/"):
                self.address = path
            else:
                log.warning(
                    "ignoring NOTIFY_SOCKET that is neither a path nor @abstract", extra={"value": path}
                )
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram (`KEY=value` lines); False when disabled or the send failed (never raises)."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as exc:
            log.warning(
                "sd_notify failed", extra={"notification": lines[0] if lines else "", "error": str(exc)}
            )
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Half of `$WATCHDOG_USEC` in seconds when the watchdog is on for this process (sd_watchdog_enabled)."""
    env = environ or {}
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2 / 1_000_000


class SystemdNotifier(Component):
    """Polls `is_ready` and sends READY=1 once; pings the watchdog; STOPPING=1 on `stopping()` or exit.

    Wiring: ``SystemdNotifier(is_ready)`` where `is_ready()` (sync or async) is True exactly when `/ready`
    would answer 200 (e.g. the readiness reporter's state check). The agent calls `stopping()` when the first
    SIGTERM starts the drain, so systemd shows "deactivating" during the drain, not after it.
    """

    name = "sd-notify"

    def __init__(
        self,
        is_ready: ReadyCheck,
        *,
        is_stopping: Callable[[], bool] | None = None,
        notifier: SdNotifier | None = None,
        poll_interval: float = 0.2,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.is_ready = is_ready
        self.is_stopping = is_stopping
        self.notifier = notifier if notifier is not None else SdNotifier(environ=environ)
        self.poll_interval = poll_interval
        self.watchdog = watchdog_interval(environ)
        self.sent_ready = False
        self.sent_stopping = False

    def stopping(self) -> None:
        if not self.sent_stopping:
            self.sent_stopping = True
            self.notifier.notify("STOPPING=1", "STATUS=draining")

    async def _check(self) -> bool:
        result = self.is_ready()
        if inspect.isawaitable(result):
            result = await result
        return bool(result)

    async def run(self) -> None:
        self.ready.set()
        if not self.notifier.enabled:
            await asyncio.Future()  # nothing to do; stay a well-behaved component until cancelled
        try:
            async with asyncio.TaskGroup() as tg:
                if self.watchdog:
                    tg.create_task(self._ping_watchdog(), name="sd-watchdog")
                await self._wait_ready()
                await self._wait_stopping()
        finally:
            self.stopping()
            self.notifier.close()

    async def _wait_ready(self) -> None:
        while not self.sent_stopping:
            if self.is_stopping is not None and self.is_stopping():
                self.stopping()
                return
            try:
                ready = await self._check()
            except Exception as exc:  # a failing check means "not ready yet", not "crash the agent"
                log.debug("readiness check failed", extra={"error": str(exc)})
                ready = False
            if ready:
                self.notifier.notify("READY=1", "STATUS=ready", f"MAINPID={os.getpid()}")
                self.sent_ready = True
                log.info("notified systemd: READY=1")
                return
            await asyncio.sleep(self.poll_interval)

    async def _wait_stopping(self) -> None:
        """Send STOPPING=1 as soon as the drain starts; then idle (the watchdog keeps pinging)."""
        while self.is_stopping is not None and not self.sent_stopping:
            if self.is_stopping():
                self.stopping()
            await asyncio.sleep(self.poll_interval)
        await asyncio.Future()

    async def _ping_watchdog(self) -> None:
        assert self.watchdog is not None
        while True:
            self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog)


def systemd_environ(cfg: RunConfig) -> dict[str, str]:
    """The `systemd.*` settings under the protocol's variable names, as the functions here take them."""
    return {s.env: get_path(cfg, s.path) for s in SETTINGS if s.path.startswith("systemd.")}


def notifier_component(ctx: AgentContext) -> SystemdNotifier | None:
    """For kuma_dp.agent's AFTER_ENVOY: READY=1 when `/ready` would answer 200, STOPPING=1 once the first
    termination signal flips readiness to TERMINATING; None (no component) without NOTIFY_SOCKET."""
    environ = systemd_environ(ctx.cfg)
    notifier = SdNotifier(environ=environ)
    if not notifier.enabled:
        return None
    from kuma_dp.readiness import evaluate

    async def is_ready() -> bool:
        return (await evaluate(ctx.readiness, ctx.admin)).status == 200

    return SystemdNotifier(
        is_ready, is_stopping=lambda: ctx.readiness.terminating, notifier=notifier, environ=environ
    )
