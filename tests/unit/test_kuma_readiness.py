"""Kuma v2.14.3's `app/kuma-dp/pkg/dataplane/readiness/component_test.go`, case by case, against our reporter
on real sockets: a real HTTP client asks `/ready`, a fake Envoy admin (tests/helpers/fake_admin.py) answers
on a unix socket or on TCP.

One deliberate difference: with Envoy's admin on TCP ("without admin socket" in Kuma's test) Kuma answers
200 `READY` without asking Envoy; we answer `READY` only when Envoy's own /ready says 200, else 503
`envoy not ready` (traffic must not reach an Envoy that has no configuration yet). Those cases run with a
fake admin on TCP that answers 200, and the difference itself is tested below.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kuma_dp.envoy import AdminAddress, AdminClient
from kuma_dp.readiness import ReadinessReporter, ReadinessState, bind_readiness_socket, readiness_bind_host
from tests.helpers.fake_admin import SENSITIVE_PATHS, FakeAdmin

pytestmark = pytest.mark.unit


def _get(host: str, port: int, path: str) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


async def get(port: int, path: str = "/ready", host: str = "127.0.0.1") -> tuple[int, bytes, dict[str, str]]:
    return await asyncio.to_thread(_get, host, port, path)


@contextlib.asynccontextmanager
async def reporter(state: ReadinessState, admin: AdminAddress, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """The reporter on `host`, port picked by the kernel; yields the port."""
    sock = bind_readiness_socket(host, 0)
    rep = ReadinessReporter(sock, state, AdminClient(admin))
    task = asyncio.create_task(rep.run())
    await asyncio.wait_for(rep.ready.wait(), 5)
    try:
        yield rep.port
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


@contextlib.asynccontextmanager
async def tcp_admin(fake: FakeAdmin | None = None) -> AsyncIterator[AdminAddress]:
    async with (fake or FakeAdmin()).serve_tcp() as port:
        yield AdminAddress("127.0.0.1", port)


# --- "with DNS config gate" -----------------------------------------------------------------------


def test_not_ready_until_the_dns_config_arrives_then_ready() -> None:
    """ "returns NOT_READY until DNS config channel is closed" / "returns READY after ... is closed"."""

    async def main() -> None:
        state = ReadinessState(dns_gate=True)
        async with tcp_admin() as admin, reporter(state, admin) as port:
            status, body, _ = await get(port)
            assert (status, body) == (503, b"NOT_READY")
            state.dns_ready.set()
            status, body, _ = await get(port)
            assert (status, body) == (200, b"READY")

    asyncio.run(main())


def test_gate_bypassed_when_the_deadline_is_already_past() -> None:
    """ "with DNS config gate timeout": deadline in the past -> READY without the DNS config."""

    async def main() -> None:
        state = ReadinessState(dns_gate=True, started_at=time.monotonic() - 16.0)
        async with tcp_admin() as admin, reporter(state, admin) as port:
            assert (await get(port))[:2] == (200, b"READY")

    asyncio.run(main())


# --- "without admin socket" -----------------------------------------------------------------------


def test_ready_with_kumas_headers() -> None:
    """ "returns READY on /ready" with `x-powered-by: kuma-dp` (and Kuma's other headers)."""

    async def main() -> None:
        async with tcp_admin() as admin, reporter(ReadinessState(), admin) as port:
            status, body, headers = await get(port)
            assert (status, body) == (200, b"READY")
            assert headers["x-powered-by"] == "kuma-dp"
            assert headers["content-type"] == "text/plain"
            assert headers["cache-control"] == "no-cache, max-age=0"
            assert headers["content-length"] == "5"

    asyncio.run(main())


def test_tcp_admin_not_ready_is_not_ready_on_purpose() -> None:
    """Ours: Kuma would say 200 READY here without asking Envoy; we pass on Envoy's refusal, and an admin we
    cannot reach is `envoy not ready` (Kuma's text for that case on the unix-socket path)."""

    async def main() -> None:
        fake = FakeAdmin(routes={"/ready": (503, b"PRE_INITIALIZING\n")})
        async with tcp_admin(fake) as admin, reporter(ReadinessState(), admin) as port:
            assert (await get(port))[:2] == (503, b"envoy not ready\n")
        gone = AdminAddress("127.0.0.1", admin.port)  # the fake admin has stopped: nothing listens there
        async with reporter(ReadinessState(), gone) as port:
            assert (await get(port))[:2] == (503, b"envoy not ready\n")

    asyncio.run(main())


def test_terminating() -> None:
    """ "returns TERMINATING after Terminating()"."""

    async def main() -> None:
        state = ReadinessState()
        async with tcp_admin() as admin, reporter(state, admin) as port:
            state.terminating = True
            assert (await get(port))[:2] == (503, b"TERMINATING")

    asyncio.run(main())


def test_404_for_non_ready_paths() -> None:
    """ "returns 404 for non-ready paths"."""

    async def main() -> None:
        fake = FakeAdmin()
        async with tcp_admin(fake) as admin, reporter(ReadinessState(), admin) as port:
            for path in ("/stats", "/config_dump", "/clusters", "/quitquitquit", "/logging"):
                assert (await get(port, path))[0] == 404, path
        assert fake.requests == []

    asyncio.run(main())


# --- "with admin socket" --------------------------------------------------------------------------


def _with_unix_admin(short_tmp: Path, check) -> FakeAdmin:  # type: ignore[no-untyped-def]
    fake = FakeAdmin()
    sock = str(short_tmp / "admin.sock")

    async def main() -> None:
        async with fake.serve_unix(sock), reporter(ReadinessState(), AdminAddress(socket_path=sock)) as port:
            await check(port)

    asyncio.run(main())
    return fake


def test_proxies_ready_to_envoy_admin_over_the_uds(short_tmp: Path) -> None:
    """ "proxies /ready to Envoy admin over the UDS": Envoy's body unchanged, `LIVE\\n` with its newline."""

    async def check(port: int) -> None:
        assert (await get(port))[:2] == (200, b"LIVE\n")

    fake = _with_unix_admin(short_tmp, check)
    assert fake.requests == ["GET /ready HTTP/1.1"]


def test_envoy_not_ready_body_passes_through_too(short_tmp: Path) -> None:
    """Envoy's 503 and its body (`PRE_INITIALIZING\\n`) reach the prober as they came."""
    fake = FakeAdmin(routes={"/ready": (503, b"PRE_INITIALIZING\n")})
    sock = str(short_tmp / "admin.sock")

    async def main() -> None:
        async with fake.serve_unix(sock), reporter(ReadinessState(), AdminAddress(socket_path=sock)) as port:
            assert (await get(port))[:2] == (503, b"PRE_INITIALIZING\n")

    asyncio.run(main())


def test_does_not_expose_any_admin_endpoint(short_tmp: Path) -> None:
    """ "does not expose any admin endpoint on the readiness port"."""

    async def check(port: int) -> None:
        for path in SENSITIVE_PATHS:
            status, body, _ = await get(port, path)
            assert status == 404, path
            assert b"SENSITIVE" not in body, path

    fake = _with_unix_admin(short_tmp, check)
    assert fake.requests == []


def test_serves_only_the_exact_ready_path(short_tmp: Path) -> None:
    """ "serves only the exact /ready path, not subpaths"."""

    async def check(port: int) -> None:
        for path in ("/ready/", "/ready/config_dump", "/readyz"):
            status, body, _ = await get(port, path)
            assert status == 404, path
            assert body != b"LIVE\n", path

    fake = _with_unix_admin(short_tmp, check)
    assert fake.requests == []


# --- "with IPv6 wildcard listener" ----------------------------------------------------------------


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_ipv6_wildcard_accepts_ipv6_and_ipv4_loopback() -> None:
    """ "accepts probes on IPv6 loopback" and "... on IPv4 loopback (dual-stack)": IPV6_V6ONLY is cleared
    explicitly, so this holds whatever net.ipv6.bindv6only says (tests/netns checks it with the sysctl on)."""
    if not _ipv6_loopback():
        pytest.skip("IPv6 loopback not available")

    async def main() -> None:
        async with tcp_admin() as admin, reporter(ReadinessState(), admin, host="::") as port:
            assert (await get(port, host="::1"))[0] == 200
            assert (await get(port, host="127.0.0.1"))[0] == 200

    asyncio.run(main())
    sock = bind_readiness_socket("::", 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("admin", "kubernetes", "ipv6", "host"),
    [
        (AdminAddress("127.0.0.1", 9901), False, False, "127.0.0.1"),
        (AdminAddress("::", 9901), True, True, "::"),
        (AdminAddress(socket_path="/w/admin.sock"), True, True, "::"),
        (AdminAddress(socket_path="/w/admin.sock"), True, False, "0.0.0.0"),
        (AdminAddress(socket_path="/w/admin.sock"), False, True, "::1"),
        (AdminAddress(socket_path="/w/admin.sock"), False, False, "127.0.0.1"),
    ],
)
def test_where_readiness_is_served(admin: AdminAddress, kubernetes: bool, ipv6: bool, host: str) -> None:
    """app/kuma-dp/cmd/run.go: the admin's TCP address, else by POD_NAME and the dataplane address family."""
    assert readiness_bind_host(admin, on_kubernetes=kubernetes, ipv6=ipv6) == host


def _request(port: int, method: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, "/ready")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_methods_other_than_get_and_head_are_refused_on_purpose() -> None:
    """Ours: Kuma's ServeMux pattern `/ready` takes any method; we answer GET and HEAD (what the kubelet,
    `kuma-dp wait` and load balancers send) and 405 to the rest, so nothing else reaches Envoy's admin."""

    async def main() -> None:
        async with tcp_admin() as admin, reporter(ReadinessState(), admin) as port:
            assert await asyncio.to_thread(_request, port, "HEAD") == (200, b"")
            assert (await asyncio.to_thread(_request, port, "POST"))[0] == 405

    asyncio.run(main())
