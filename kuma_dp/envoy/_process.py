"""Supervising Envoy (spawned by kuma_dp.envoy._spawn) so that it never outlives the agent.

Envoy gets its own process group (a terminal's Ctrl-C reaches only the agent, which drains first) and the
Linux parent-death signal SIGKILL, so even `kill -9` of the agent takes Envoy with it. Stopping is SIGTERM to
the group, SIGKILL after a grace period: Kuma's `app/kuma-dp/pkg/dataplane/command/build_command_linux.go`
and `base_command.go` (SIGTERM, kill after 5 s). Envoy is never restarted, here as in Kuma (kumahq/kuma#1480):
an exit ends the agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import BinaryIO, TextIO

from kuma_dp.component import Component
from kuma_dp.envoy._spawn import needs_redaction as needs_redaction
from kuma_dp.envoy._spawn import spawn_envoy

log = logging.getLogger(__name__)

#: Envoy's output is forwarded in lines; a line longer than this is cut at a separator and forwarded in
#: pieces (a token never contains one, so no piece holds part of a token that the next piece completes).
_MAX_LINE = 256 * 1024
_SEPARATORS = re.compile(rb"[\s\"',;]")


async def _wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """Envoy's exit status, awaited without a thread: a pidfd becomes readable when the process exits.

    Only the agent reaps Envoy (asyncio's child watchers wait for the pids they spawned themselves), so
    `wait()` after the pidfd fires returns at once. Without pidfd_open (Linux < 5.3) a worker thread waits.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return await asyncio.to_thread(proc.wait)
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    try:
        loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
    finally:
        os.close(pidfd)
    return proc.wait()


async def _pump_redacted(stream: asyncio.StreamReader, out: TextIO) -> None:
    """Copy `stream` to `out` line by line with secrets redacted (kuma_dp.logs.redact)."""
    from kuma_dp.logs import redact

    target = getattr(out, "buffer", None)
    pending = b""

    def emit(data: bytes) -> None:
        text = redact(data.decode("utf-8", "replace"))
        try:
            if target is not None:
                target.write(text.encode("utf-8", "replace"))
                target.flush()
            else:
                out.write(text)
                out.flush()
        except (OSError, ValueError):
            pass  # our own output is gone (closed stderr): keep draining so Envoy never blocks

    while chunk := await stream.read(64 * 1024):
        pending += chunk
        cut = pending.rfind(b"\n") + 1
        if not cut and len(pending) > _MAX_LINE:
            seps = list(_SEPARATORS.finditer(pending, 0, len(pending) - 1))
            cut = seps[-1].end() if seps else len(pending)
        if cut:
            emit(pending[:cut])
            pending = pending[cut:]
    if pending:
        emit(pending)


async def _stream_reader(pipe: BinaryIO) -> asyncio.StreamReader:
    """An asyncio reader over one of Envoy's output pipes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader


class EnvoyExitedError(RuntimeError):
    """Envoy ended by itself; `returncode` follows subprocess (negative = killed by that signal)."""

    def __init__(self, returncode: int) -> None:
        self.returncode = returncode
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        super().__init__(f"Envoy terminated unexpectedly ({how})")


class EnvoyComponent(Component):
    """Runs one Envoy; `run()` returns when Envoy exits with 0 and raises EnvoyExitedError otherwise.

    `process`: an Envoy already spawned with `spawn_envoy` (the start-up's critical path does that before
    the agent exists), adopted by `run()`; without it `run()` spawns one. Cancelling `run()` stops Envoy:
    SIGTERM to its process group, SIGKILL after `stop_timeout` seconds. `on_exit`, if given, hears every exit
    code (for metrics).
    """

    name = "envoy"

    def __init__(
        self,
        argv: Sequence[str],
        *,
        stop_timeout: float = 5.0,
        env: dict[str, str] | None = None,
        on_exit: Callable[[int], None] | None = None,
        redact_output: bool = False,
        process: subprocess.Popen[bytes] | None = None,
    ) -> None:
        super().__init__()
        self.argv = list(argv)
        self.stop_timeout = stop_timeout
        self.env = env
        self.on_exit = on_exit
        self.redact_output = redact_output
        self.process: subprocess.Popen[bytes] | None = process
        self._exit: asyncio.Task[int] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _exited(self) -> asyncio.Task[int]:
        """The one task that reaps Envoy (run() and stop() both await it)."""
        if self._exit is None:
            assert self.process is not None
            self._exit = asyncio.ensure_future(_wait_exit(self.process))
        return self._exit

    async def run(self) -> None:
        if self.process is None:
            log.info("starting Envoy argv=%s", " ".join(self.argv))
            self.process = spawn_envoy(self.argv, env=self.env, redact_output=self.redact_output)
        log.info("Envoy started pid=%d", self.process.pid)
        pumps: list[asyncio.Task[None]] = []
        if self.process.stdout is not None and self.process.stderr is not None:
            pumps = [
                asyncio.create_task(_pump_redacted(await _stream_reader(self.process.stdout), sys.stdout)),
                asyncio.create_task(_pump_redacted(await _stream_reader(self.process.stderr), sys.stderr)),
            ]
        self.ready.set()
        try:
            returncode = await asyncio.shield(self._exited())
            if pumps:  # Envoy's last words (why it exited) are in the pipes: forward them before returning
                await asyncio.wait(pumps, timeout=2.0)
        finally:
            if self.process.returncode is None:
                await self.stop()
            for pump in pumps:
                pump.cancel()
            if self.on_exit is not None and self.process.returncode is not None:
                self.on_exit(self.process.returncode)
        if returncode != 0:
            raise EnvoyExitedError(returncode)
        log.info("Envoy exited with code 0")

    def kill_now(self) -> None:
        """SIGKILL Envoy's process group at once (the third signal's `exit 1 at once`)."""
        if self.process is not None and self.process.returncode is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        """SIGTERM Envoy's group, SIGKILL after the grace period; safe to call when it already exited."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        log.info("stopping Envoy pid=%d signal=SIGTERM", proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            await asyncio.wait_for(asyncio.shield(self._exited()), self.stop_timeout)
        except TimeoutError:
            log.warning("Envoy did not stop within %gs; sending SIGKILL pid=%d", self.stop_timeout, proc.pid)
            self.kill_now()
            await asyncio.shield(self._exited())
        log.info("Envoy stopped pid=%d exit=%s", proc.pid, proc.returncode)
