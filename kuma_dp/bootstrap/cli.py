"""`kuma-dp bootstrap render`: print the Envoy bootstrap a control plane would return for a request.

The same renderer as the dev control plane's /bootstrap and `kuma-dp run --bootstrap-source=local`, so a user
can see (and diff) what Envoy will be started with, without a control plane.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from kuma_dp.bootstrap.render import RenderError, RenderParams, dump_yaml, render_bootstrap
from kuma_dp.fsutil import atomic_write


@click.group()
def bootstrap() -> None:
    """Envoy bootstrap tools."""


def _read(source: str, what: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text()
    except OSError as exc:
        raise click.ClickException(f"{what} {source}: cannot read the file: {exc.strerror}") from None


@bootstrap.command()
@click.argument("request_file", metavar="REQUEST", default="-")
@click.option("--xds-host", default="127.0.0.1", show_default=True, help="Where Envoy reaches ADS.")
@click.option("--xds-port", default=5678, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--ca-cert-file",
    type=click.Path(dir_okay=False),
    help="PEM CA Envoy trusts for the control plane (the request's caCert takes precedence).",
)
@click.option("--plaintext", is_flag=True, help="The CP serves ADS without TLS (development only).")
@click.option("--admin-address", default="127.0.0.1", show_default=True)
@click.option(
    "--admin-port",
    default=9901,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Admin port when the Dataplane sets none (0: no admin).",
)
@click.option("--admin-unix-socket", is_flag=True, help="Admin API on <workdir>/kuma-envoy-admin.sock.")
@click.option("--admin-access-log-path", default="/dev/null", show_default=True)
@click.option("--hds/--no-hds", default=True, show_default=True, help="Health discovery (universal).")
@click.option("--reloadable-tokens", is_flag=True, help="With a token path: Envoy re-reads the token file.")
@click.option(
    "--unified-resource-naming",
    is_flag=True,
    help="The mesh uses MeshServices in Exclusive mode (system_* cluster names with the feature).",
)
@click.option(
    "--dataplane-file",
    type=click.Path(dir_okay=False),
    help="The stored Dataplane (YAML/JSON), used when the request has no dataplaneResource.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here (0600) instead of stdout.")
def render(
    request_file: str,
    xds_host: str,
    xds_port: int,
    ca_cert_file: str | None,
    plaintext: bool,
    admin_address: str,
    admin_port: int,
    admin_unix_socket: bool,
    admin_access_log_path: str,
    hds: bool,
    reloadable_tokens: bool,
    unified_resource_naming: bool,
    dataplane_file: str | None,
    output: str | None,
) -> None:
    """Render the Envoy bootstrap YAML for a BootstrapRequest JSON (a file, or - for stdin)."""
    if plaintext and ca_cert_file:
        raise click.ClickException("--plaintext and --ca-cert-file exclude each other; pass one of them")
    text = _read(request_file, "request")
    try:
        request = json.loads(text)
    except ValueError as exc:
        raise click.ClickException(
            f"request {request_file}: not valid JSON ({exc}); pass the BootstrapRequest kuma-dp sends"
        ) from None
    dataplane: dict[str, Any] | None = None
    if dataplane_file:
        try:
            dataplane = yaml.safe_load(_read(dataplane_file, "--dataplane-file"))
        except yaml.YAMLError as exc:
            raise click.ClickException(f"--dataplane-file {dataplane_file}: not valid YAML: {exc}") from None
        if not isinstance(dataplane, dict):
            raise click.ClickException(f"--dataplane-file {dataplane_file}: must be one Dataplane object")
    params = RenderParams(
        xds_host=xds_host,
        xds_port=xds_port,
        xds_tls=not plaintext,
        ca_cert_pem=_read(ca_cert_file, "--ca-cert-file") if ca_cert_file else None,
        admin_address=admin_address,
        default_admin_port=admin_port,
        admin_unix_socket=admin_unix_socket,
        admin_access_log_path=admin_access_log_path,
        hds_enabled=hds,
        reloadable_tokens=reloadable_tokens,
        mesh_services_exclusive=unified_resource_naming,
        dataplane=dataplane,
    )
    try:
        rendered = dump_yaml(render_bootstrap(request, params))
    except RenderError as exc:
        raise click.ClickException(f"request {request_file}: {exc}") from None
    if output:
        atomic_write(output, rendered, mode=0o600)
    else:
        click.echo(rendered, nl=False)
