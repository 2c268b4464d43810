"""A stand-in for Envoy's admin API on a real socket (unix or TCP), for the readiness and drain tests.

Like the fake admin of Kuma's `app/kuma-dp/pkg/dataplane/readiness/component_test.go`: it serves `/ready`
and a few sensitive endpoints, answers each path with a fixed status and body, and records what it was asked,
so a test can tell whether the agent proxied a request or refused it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

#: The admin endpoints Kuma's test serves "SENSITIVE" on, to prove the reporter never proxies them.
SENSITIVE_PATHS = ("/config_dump", "/stats", "/clusters", "/certs", "/logging", "/quitquitquit")


@dataclass
class FakeAdmin:
    """path (without query) -> (status, body); every request line received, in order."""

    routes: dict[str, tuple[int, bytes]] = field(
        default_factory=lambda: {
            "/ready": (200, b"LIVE\n"),
            **{p: (200, b"SENSITIVE") for p in SENSITIVE_PATHS},
        }
    )
    requests: list[str] = field(default_factory=list)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            self.requests.append(line)
            target = line.split(" ")[1]
            status, body = self.routes.get(target.split("?", 1)[0], (404, b"not found\n"))
            writer.write(
                f"HTTP/1.1 {status} X\r\ncontent-type: text/plain; charset=UTF-8\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def serve_unix(self, path: str) -> AsyncIterator[FakeAdmin]:
        server = await asyncio.start_unix_server(self._handle, path=path)
        async with server:
            yield self

    @contextlib.asynccontextmanager
    async def serve_tcp(self, host: str = "127.0.0.1") -> AsyncIterator[int]:
        """Yields the port it listens on."""
        server = await asyncio.start_server(self._handle, host=host, port=0)
        async with server:
            yield int(server.sockets[0].getsockname()[1])
