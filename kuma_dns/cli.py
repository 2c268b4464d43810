"""`kuma-dp dns`: the DNS server on its own, for operators and tests.

    kuma-dp dns --port PORT --records FILE [--upstream HOST:PORT ...] [--address ADDR ...]

FILE holds a `/dns` payload (the JSON kuma-cp serves through Envoy) and is re-read when it changes.
`--upstream` replaces the resolv.conf nameservers; search domains still come from `--resolv-conf`.
`KUMA_DNS_MMSG=0` turns batched UDP I/O off, as for the agent's DNS proxy (the `dns.mmsg` setting), and the
caps are the agent's too: KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS, KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS_PER_SOURCE,
KUMA_DNS_PROXY_UPSTREAM_MAX_PENDING_QUERIES (their defaults when unset).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys

import click

from .upstream import parse_hostport


def _run_loop(coro_factory: object) -> None:
    try:
        import uvloop

        uvloop.run(coro_factory())  # type: ignore[operator]
    except ImportError:
        asyncio.run(coro_factory())  # type: ignore[operator]


def _cap(path: str) -> int:
    """A cap shared with `kuma-dp run` (its KUMA_* variable, else its default); a bad value is one line
    naming the variable and exit 2, as for a bad flag."""
    from kuma_dp.config import SETTINGS, EnvError, env_value

    try:
        value = int(env_value(path, os.environ))
    except EnvError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    if value < 1:
        (s,) = [s for s in SETTINGS if s.path == path]
        click.echo(f"Error: {s.env} must be positive", err=True)
        sys.exit(2)
    return value


@click.command("dns")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=15053, show_default=True, help="UDP+TCP port (0: any)."
)
@click.option(
    "--records",
    "records",
    type=click.Path(dir_okay=False),
    required=True,
    help="File with a /dns JSON payload; re-read when it changes.",
)
@click.option("--upstream", "upstreams", multiple=True, help="HOST:PORT to forward to (repeatable).")
@click.option(
    "--address", "addresses", multiple=True, help="Address to listen on (repeatable). Default 127.0.0.1."
)
@click.option(
    "--resolv-conf", default="/etc/resolv.conf", show_default=True, help="Nameservers and search domains."
)
@click.option("--parallel/--in-order", default=False, help="Ask all upstreams at once (default: in order).")
@click.option("--forward-unknown-mesh", is_flag=True, help="Forward unknown *.mesh names (default NXDOMAIN).")
@click.option(
    "--stale-after",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Warn when the table is older than this many seconds (it is still served).",
)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def dns(
    port: int,
    records: str,
    upstreams: tuple[str, ...],
    addresses: tuple[str, ...],
    resolv_conf: str,
    parallel: bool,
    forward_unknown_mesh: bool,
    stale_after: float,
    log_level: str,
) -> None:
    """Serve *.mesh names from a records file and forward everything else."""
    from kuma_dp.component import run_components
    from kuma_dp.config import env_value

    from .component import DNSComponent, RecordsFileError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        ups = [parse_hostport(u) for u in upstreams] if upstreams else None
    except ValueError:
        raise click.BadParameter(
            f"{upstreams!r}: expected HOST:PORT, e.g. 127.0.0.1:53", param_hint="--upstream"
        ) from None
    comp = DNSComponent(
        port=port,
        addresses=addresses or ("127.0.0.1",),
        upstreams=ups,
        resolv_conf=resolv_conf,
        parallel=parallel,
        nxdomain_mesh=not forward_unknown_mesh,
        records_file=records,
        stale_after=stale_after,
        mmsg=env_value("dns.mmsg", os.environ),
        max_tcp_connections=_cap("dns.proxy_tcp_max_connections"),
        max_tcp_per_source=_cap("dns.proxy_tcp_max_connections_per_source"),
        max_pending=_cap("dns.proxy_upstream_max_pending_queries"),
    )

    def serving() -> None:
        # Everything imported and loaded so far lives for the whole run: keep it out of the collector's
        # full passes, which otherwise show up as millisecond stalls in the latency tail.
        gc.freeze()
        # One machine-readable line so scripts (and tests) learn the port when --port 0 was given.
        print(f"listening port={comp.port}", flush=True)

    async def main() -> None:
        # Until SIGINT/SIGTERM; a failure (records file, port in use) is raised to the handlers below.
        await run_components([comp], name="dns server", on_ready=serving)

    try:
        _run_loop(main)
    except RecordsFileError as exc:
        hint = '{"records": [], "ttl": 30}'
        click.echo(f"Error: {exc} (write a /dns JSON payload there, e.g. {hint})", err=True)
        sys.exit(2)
    except OSError as exc:
        click.echo(f"Error: {exc.strerror or exc}", err=True)
        sys.exit(1)
