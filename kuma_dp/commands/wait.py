"""`kuma-dp wait`: block until the local dataplane answers its readiness URL with 200 (Kuma's
`app/kuma-dp/cmd/wait.go`).

Used as a Kubernetes `postStart` hook or before starting an application on a VM, so it must only ever talk
to the local machine: `--url` must name a loopback host, and `--unix-socket` (Envoy's admin socket)
overrides it.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import click

from kuma_dp.commands.goflags import GoDuration
from kuma_dp.envoy import AdminAddress, AdminError, http_request, is_loopback_host
from kuma_dp.goparse import format_duration

DEFAULT_URL = "http://localhost:9901/ready"
#: Intervals: Go's error text alone, and zero or negative rejected.
INTERVAL = GoDuration(positive=True, pflag=False)


def target_for(url: str, unix_socket: str | None) -> tuple[AdminAddress, str]:
    """Where to send `GET` and which request target; a clear ClickException for URLs we will not probe."""
    if unix_socket:
        return AdminAddress(socket_path=unix_socket), "/ready"
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise click.BadParameter(
            f"{url!r}: only http:// URLs are supported "
            "(Envoy's admin API and the readiness reporter speak plain HTTP)",
            param_hint="--url",
        )
    host = parts.hostname or ""
    if not is_loopback_host(host):
        raise click.BadParameter(
            f"{url!r}: host {host!r} is not a loopback address; kuma-dp wait only checks the local dataplane "
            "(use localhost, 127.0.0.1 or ::1)",
            param_hint="--url",
        )
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise click.BadParameter(f"{url!r}: {exc}", param_hint="--url") from None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return AdminAddress(host=host, port=port), target


async def _wait(
    address: AdminAddress, target: str, timeout: float, request_timeout: float, every: float
) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        started = time.monotonic()
        try:
            resp = await http_request(address, "GET", target, timeout=min(request_timeout, timeout))
            if resp.status == 200:
                return True
            reason = f"HTTP {resp.status} {resp.text.strip()[:80]}"
        except AdminError as exc:
            reason = str(exc)
        click.echo(f"Dataplane not ready yet: {reason}", err=True)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(remaining, max(0.0, every - (time.monotonic() - started))))
        if time.monotonic() >= deadline:
            return False


@click.command("wait", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url", default=DEFAULT_URL, show_default=True, help="readiness URL of the dataplane (loopback)"
)
@click.option("--unix-socket", default="", help="Envoy admin unix socket; overrides --url (GET /ready on it)")
@click.option("--timeout", type=INTERVAL, default="3m0s", show_default=True, help="how long to wait in total")
@click.option(
    "--request-timeout", type=INTERVAL, default="500ms", show_default=True, help="timeout of one request"
)
@click.option("--check-frequency", type=INTERVAL, default="1s", show_default=True, help="time between checks")
def wait(url: str, unix_socket: str, timeout: float, request_timeout: float, check_frequency: float) -> None:
    """Waits for Dataplane (Envoy) to be ready."""
    address, target = target_for(url, unix_socket or None)
    click.echo(f"Waiting {format_duration(timeout)} for Dataplane to be ready")
    if asyncio.run(_wait(address, target, timeout, request_timeout, check_frequency)):
        click.echo("Dataplane is ready!")
        return
    raise click.ClickException("timeout occurred while waiting for Dataplane to be ready")
