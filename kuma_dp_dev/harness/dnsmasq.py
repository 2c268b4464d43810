"""dnsmasq as a real DNS server next to `kuma-dp dns`: the upstream the DNS tests forward to, and the peer
bench/dns.py measures us against.

It runs in the foreground on 127.0.0.1 (inside a network namespace when asked), reads no system file
(`/etc/resolv.conf`, `/etc/hosts`, `/etc/dnsmasq.conf`), and writes everything it logs to a file of its own;
in the foreground it logs to stderr too, so its "started" line there says the sockets are bound.
No pytest here: bench/dns.py imports it as well.
"""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from kuma_dp_dev.harness.poll import wait_until
from kuma_dp_dev.harness.procs import stop


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq and `kuma-dp dns` bind both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")


@dataclass
class ServerProcess:
    """A started DNS server: its process and the port it answers on; a context manager that stops it."""

    proc: subprocess.Popen[bytes] | subprocess.Popen[str]
    port: int
    log: Path  # what it wrote to stdout and stderr

    def stop(self) -> None:
        stop(self.proc)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def dnsmasq_cmd(port: int, *args: str) -> list[str]:
    return [
        "dnsmasq",
        "--no-daemon",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--pid-file=",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        f"--port={port}",
        *args,
    ]


def start_dnsmasq(
    log_dir: Path, *args: str, port: int | None = None, netns: str | None = None, timeout: float = 10.0
) -> ServerProcess:
    """Start dnsmasq with extra `args` and return once it serves; its log is `<log_dir>/dnsmasq-<port>.log`.

    `port` defaults to a free one; inside `netns` (entered with `ip netns exec`) give it explicitly.
    """
    if port is None:
        if netns is not None:
            raise ValueError("start_dnsmasq in a network namespace needs an explicit port")
        port = free_udp_tcp_port()
    cmd = dnsmasq_cmd(port, *args)
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    log = log_dir / f"dnsmasq-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def alive() -> None:
        if proc.poll() is not None:
            raise RuntimeError("dnsmasq exited")

    try:
        wait_until(
            lambda: "dnsmasq: started," in log.read_text(errors="replace"),
            timeout,
            f"dnsmasq on port {port}",
            interval=0.02,
            before=alive,
        )
    except (TimeoutError, RuntimeError):
        stop(proc)
        raise RuntimeError(
            f"dnsmasq did not start on port {port}: {log.read_text(errors='replace')[-500:]}"
        ) from None
    return ServerProcess(proc, port, log)
