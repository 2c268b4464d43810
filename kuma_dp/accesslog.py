"""The access-log streamer: Envoy writes access logs into a FIFO, we forward them to TCP collectors.

Kuma's control plane configures TCP access-log backends as Envoy file loggers whose path is the FIFO
`<workdir>/kuma-al-<name>-<mesh>.sock` (feature `feature-tcp-accesslog-via-named-pipe`). Each line is
`address;message` or JSON `{"address": "host:port", "message": <string or object>}`; the message goes, one
line each, to a TCP connection per address.

The FIFO must never fill up: Envoy's flush thread would stall behind it and its in-memory log buffers grow.
So reading never waits on the network: lines go into a bounded buffer per collector (oldest dropped and
counted when full) and each collector has its own sender task that connects, writes and reconnects with
backoff. We also hold a write end of the FIFO open ourselves, so an Envoy restart (writer gone) is not EOF.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
from typing import TYPE_CHECKING

from kuma_dp.component import Component
from kuma_dp.fsutil import PrivateFifoError, open_private_fifo
from kuma_dp.paths import access_log_socket_path

if TYPE_CHECKING:
    from kuma_dp.agent import AgentContext
    from kuma_dp.metrics._agent import AgentMetrics

log = logging.getLogger(__name__)

__all__ = ["AccessLogFifoError", "AccessLogStreamer", "parse_line", "streamer_component"]

MAX_LINE_BYTES = 1024 * 1024
DEFAULT_BUFFER_LINES = 10_000
_BACKOFF_START, _BACKOFF_CAP = 0.1, 5.0


def parse_line(line: bytes) -> tuple[str, bytes] | None:
    """`address;message` or `{"address":..., "message":...}` → (address, message bytes); None if malformed."""
    line = line.rstrip(b"\r\n")
    if not line.strip():
        return None
    if line.lstrip().startswith(b"{"):
        try:
            doc = json.loads(line)
        except ValueError:
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("address"), str):
            return None
        message = doc.get("message")
        if isinstance(message, str):
            body = message.encode()
        else:
            body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        address = doc["address"]
    else:
        raw_address, sep, body = line.partition(b";")
        if not sep:
            return None
        address = raw_address.decode("utf-8", "replace")
    if not _split_address(address):
        return None
    return address, body


def _split_address(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


class _Sender:
    """One collector: a bounded buffer and a task that keeps a TCP connection to it."""

    def __init__(self, address: str, capacity: int, metrics: AgentMetrics | None) -> None:
        self.address = address
        self.host, self.port = _split_address(address) or ("", 0)
        self.buffer: collections.deque[bytes] = collections.deque()
        self.capacity = capacity
        self.metrics = metrics
        self.wakeup = asyncio.Event()
        self.sent = 0
        self.dropped = 0

    def put(self, message: bytes) -> None:
        if len(self.buffer) >= self.capacity:
            self.buffer.popleft()
            self._drop("buffer_full")
        self.buffer.append(message)
        self.wakeup.set()

    def _drop(self, reason: str, n: int = 1) -> None:
        self.dropped += n
        if self.metrics is not None:
            self.metrics.access_log_dropped.labels(address=self.address, reason=reason).inc(n)

    def _connected(self, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.access_log_connected.labels(address=self.address).set(1 if up else 0)

    async def run(self) -> None:
        backoff = _BACKOFF_START
        while True:
            await self.wakeup.wait()
            try:
                async with asyncio.timeout(5):
                    _, writer = await asyncio.open_connection(self.host, self.port)
            except (OSError, TimeoutError) as exc:
                log.warning(
                    "cannot connect to the access-log collector; retrying",
                    extra={"address": self.address, "error": str(exc), "retryIn": backoff},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_CAP)
                continue
            log.info("connected to the access-log collector", extra={"address": self.address})
            self._connected(True)
            backoff = _BACKOFF_START
            try:
                await self._pump(writer)
            except (OSError, ConnectionError) as exc:
                log.warning(
                    "access-log collector connection lost", extra={"address": self.address, "error": str(exc)}
                )
            finally:
                self._connected(False)
                writer.close()
                with contextlib.suppress(OSError, RuntimeError):
                    await writer.wait_closed()

    async def _pump(self, writer: asyncio.StreamWriter) -> None:
        while True:
            if not self.buffer:
                self.wakeup.clear()
                await self.wakeup.wait()
                if writer.is_closing():
                    raise ConnectionError("closed")
            batch = list(self.buffer)
            self.buffer.clear()
            try:
                writer.write(b"".join(m + b"\n" for m in batch))
                await writer.drain()
            except BaseException:
                # Put the unsent batch back in front, keeping the bound (oldest go first).
                room = self.capacity - len(self.buffer)
                keep = batch[-room:] if room > 0 else []
                self.buffer.extendleft(reversed(keep))
                if len(batch) > len(keep):
                    self._drop("buffer_full", len(batch) - len(keep))
                raise
            self.sent += len(batch)
            if self.metrics is not None:
                self.metrics.access_log_lines.labels(address=self.address).inc(len(batch))


#: A FIFO path that holds something not ours and cannot be replaced (kuma_dp.fsutil.open_private_fifo).
AccessLogFifoError = PrivateFifoError


class AccessLogStreamer(Component):
    """Creates the FIFO and forwards its lines; resilient (the manager restarts it with backoff).

    Wiring: ``AccessLogStreamer(access_log_socket_path(workdir, name, mesh), metrics=agent_metrics())``
    (`access_log_socket_path` from kuma_dp.paths, the path the bootstrap gives Envoy; the FIFO keeps Kuma's
    `.sock` name although it is a pipe).
    """

    name = "access-log-streamer"
    resilient = True

    def __init__(
        self,
        fifo_path: str,
        *,
        buffer_lines: int = DEFAULT_BUFFER_LINES,
        metrics: AgentMetrics | None = None,
        fifo_fd: int | None = None,
    ) -> None:
        super().__init__()
        self.fifo_path = fifo_path
        #: The read end of a FIFO opened before Envoy was spawned (kuma_dp.launch), used by the first run.
        self._fifo_fd = fifo_fd
        self.buffer_lines = max(1, buffer_lines)
        self.metrics = metrics
        self.senders: dict[str, _Sender] = {}
        self.malformed = 0

    def _open_fifo(self) -> int:
        if self._fifo_fd is not None:
            fd, self._fifo_fd = self._fifo_fd, None
            return fd
        return open_private_fifo(self.fifo_path, self._fifo_rejected)

    async def run(self) -> None:
        read_fd = self._open_fifo()
        # Our own writer keeps the pipe open between Envoy (re)opens, so reads never see EOF. Opened through
        # /proc/self/fd: the very FIFO checked above, not whatever the path names now.
        try:
            keep_fd = os.open(f"/proc/self/fd/{read_fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            keep_fd = os.open(self.fifo_path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        log.info("started access-log streamer", extra={"fifo": self.fifo_path})
        try:
            async with asyncio.TaskGroup() as senders:
                # After a restart (resilient component), senders keep their buffered lines: run them again.
                for sender in self.senders.values():
                    senders.create_task(sender.run(), name=f"access-log-sender {sender.address}")
                self.ready.set()
                await self._read_loop(reader, senders)
        finally:
            transport.close()
            os.close(keep_fd)

    async def _read_loop(self, reader: asyncio.StreamReader, tg: asyncio.TaskGroup) -> None:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                # An over-long line: discard it whole and count it.
                await reader.readexactly(exc.consumed)
                with contextlib.suppress(asyncio.LimitOverrunError):
                    await reader.readuntil(b"\n")
                self._malformed("too_long")
                continue
            except asyncio.IncompleteReadError:
                raise RuntimeError(f"access-log FIFO {self.fifo_path} was closed") from None
            parsed = parse_line(line)
            if parsed is None:
                if line.strip():
                    self._malformed("malformed")
                continue
            address, message = parsed
            sender = self.senders.get(address)
            if sender is None:
                sender = self.senders[address] = _Sender(address, self.buffer_lines, self.metrics)
                tg.create_task(sender.run(), name=f"access-log-sender {address}")
            sender.put(message)

    def _fifo_rejected(self, reason: str) -> None:
        """Count a foreign object at the FIFO path (kuma_dp_access_log_fifo_rejections)."""
        if self.metrics is not None:
            self.metrics.access_log_fifo_rejected(reason)

    def _malformed(self, reason: str) -> None:
        self.malformed += 1
        if self.metrics is not None:
            self.metrics.access_log_dropped.labels(address="", reason=reason).inc()
        if self.malformed == 1 or self.malformed % 1000 == 0:
            log.warning(
                "dropped access-log lines that are neither 'address;message' nor JSON",
                extra={"count": self.malformed},
            )


def streamer_component(ctx: AgentContext) -> AccessLogStreamer:
    """For kuma_dp.agent: the FIFO `<workdir>/kuma-al-<name>-<mesh>.sock`. Start it BEFORE Envoy opens the
    path (BEFORE_ENVOY), or Envoy creates a regular file there and the logs go nowhere."""
    from kuma_dp.metrics import agent_metrics

    metrics = agent_metrics()
    fifo = access_log_socket_path(ctx.work_dir, ctx.cfg.dataplane.name, ctx.cfg.dataplane.mesh)
    launched = ctx.launched
    if launched is None:
        return AccessLogStreamer(fifo, metrics=metrics)
    for reason in launched.fifo_rejections:  # counted before the metrics existed (kuma_dp.launch)
        metrics.access_log_fifo_rejected(reason)
    return AccessLogStreamer(fifo, metrics=metrics, fifo_fd=launched.take_fifo_fd(fifo))
