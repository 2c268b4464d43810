"""sd_notify over a real unix datagram socket; the access-log streamer's buffer, drops and reconnects."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from kuma_dp.accesslog import AccessLogStreamer
from kuma_dp.metrics import AgentMetrics
from kuma_dp.sdnotify import SdNotifier, SystemdNotifier, watchdog_interval
from kuma_dp_dev.harness.poll import wait_until_async
from kuma_dp_dev.harness.ports import free_port

pytestmark = pytest.mark.integration


def _recv_all(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_ready_watchdog_stopping(short_tmp: Path, abstract: bool) -> None:
    name = f"kdp-obs-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sd:
        if abstract:
            sd.bind("\0" + name)
            notify_socket = "@" + name
        else:
            notify_socket = str(short_tmp / "notify.sock")
            sd.bind(notify_socket)
        sd.setblocking(False)
        env = {"NOTIFY_SOCKET": notify_socket, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())}
        assert watchdog_interval(env) == 0.05
        state = {"ready": False, "stopping": False}
        received: list[str] = []

        async def until_sent(what: str, match: Callable[[str], bool]) -> None:
            def sent() -> bool:
                received.extend(_recv_all(sd))
                return any(match(m) for m in received)

            await wait_until_async(sent, 20, what, interval=0.02)

        async def scenario() -> None:
            async def is_ready() -> bool:
                return state["ready"]

            comp = SystemdNotifier(
                is_ready, is_stopping=lambda: state["stopping"], environ=env, poll_interval=0.02
            )
            task = asyncio.create_task(comp.run())
            # The watchdog pings before readiness; READY=1 must wait for the check.
            await until_sent("WATCHDOG=1", lambda m: m == "WATCHDOG=1")
            assert not any("READY=1" in m for m in received)
            state["ready"] = True
            await until_sent("READY=1", lambda m: "READY=1" in m)
            state["stopping"] = True
            await until_sent("STOPPING=1", lambda m: "STOPPING=1" in m)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            received.extend(_recv_all(sd))

        asyncio.run(scenario())
    ready = [m for m in received if "READY=1" in m]
    assert len(ready) == 1 and f"MAINPID={os.getpid()}" in ready[0].split("\n")
    assert sum("STOPPING=1" in m for m in received) == 1  # not repeated on exit
    assert received.index(ready[0]) < next(i for i, m in enumerate(received) if "STOPPING=1" in m)


def test_sd_notify_is_a_no_op_without_socket(short_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = SdNotifier(environ={})
    assert not n.enabled and n.notify("READY=1") is False
    gone = SdNotifier(str(short_tmp / "no-such.sock"))  # systemd went away: warn, never raise
    assert gone.enabled and gone.notify("WATCHDOG=1") is False
    assert "sd_notify failed" in caplog.text
    gone.close()
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None  # another process's
    assert watchdog_interval({}) is None


def test_access_log_buffer_drops_then_reconnects(short_tmp: Path) -> None:
    """The collector is down: a writer (like Envoy) is never blocked, the bounded buffer drops the oldest
    lines and counts them; when the collector comes up, the newest lines arrive on a new connection."""
    fifo = str(short_tmp / "kuma-al-dp-1-default.sock")
    port = free_port()
    address = f"127.0.0.1:{port}"
    metrics = AgentMetrics()
    total, capacity = 5000, 100

    def write_like_envoy() -> None:
        with open(fifo, "wb") as f:  # a blocking writer: it would hang if the streamer stopped reading
            for i in range(total):
                f.write(f"{address};line {i}\n".encode())
            f.write(b"garbage without separator\n")

    async def scenario() -> list[bytes]:
        streamer = AccessLogStreamer(fifo, buffer_lines=capacity, metrics=metrics)
        task = asyncio.create_task(streamer.run())
        await asyncio.wait_for(streamer.ready.wait(), 10)
        assert os.path.exists(fifo) and oct(os.stat(fifo).st_mode & 0o777) == "0o600"
        await asyncio.wait_for(asyncio.to_thread(write_like_envoy), 30)
        await wait_until_async(lambda: streamer.malformed == 1, 20, "the malformed line", interval=0.02)
        sender = streamer.senders[address]
        assert sender.dropped == total - capacity and len(sender.buffer) == capacity

        # The manager restarts a failed resilient component: the FIFO and the buffered lines survive.
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        task = asyncio.create_task(streamer.run())
        await asyncio.wait_for(streamer.ready.wait(), 10)
        with open(fifo, "wb") as f:  # a pipe with a live reader: never blocks
            f.write(f"{address};after restart\n".encode())
        await wait_until_async(
            lambda: sender.dropped == total - capacity + 1, 20, "one more line dropped", interval=0.02
        )

        lines: list[bytes] = []

        async def collect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := await reader.readline():
                lines.append(line.rstrip(b"\n"))
            writer.close()

        server = await asyncio.start_server(collect, "127.0.0.1", port)
        try:
            await wait_until_async(lambda: len(lines) >= capacity, 30, "the buffered lines", interval=0.02)
        finally:
            server.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return lines

    lines = asyncio.run(scenario())
    assert lines == [f"line {i}".encode() for i in range(total - capacity + 1, total)] + [b"after restart"]
    dropped = metrics.access_log_dropped.labels(address=address, reason="buffer_full")._value.get()
    assert dropped == total - capacity + 1
