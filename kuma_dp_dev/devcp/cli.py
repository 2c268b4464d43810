"""`kuma-dp dev-cp`: the development control plane in the foreground, until Ctrl-C.

One port (default 5678, like kuma-cp's DP server) serves `/bootstrap` and ADS; `kuma-dp run --cp-address
http://127.0.0.1:5678` talks to it like to kuma-cp. `--port 0` picks a free port; `--ready-file` tells scripts
which (JSON `{"url", "port", "pid"}`, written once the CP serves).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from .server import DevControlPlane

log = logging.getLogger(__name__)


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def _read_token(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        _fail(
            f"--auth-token-file {path}: cannot read it ({exc.strerror}); give a readable file with the token"
        )
    if not token:
        _fail(f"--auth-token-file {path}: the file is empty; put the dataplane token in it")
    if os.stat(path).st_mode & 0o077:
        log.warning("--auth-token-file %s is readable by group or others; chmod 600 it", path)
    return token


async def serve(cp: DevControlPlane, ready_file: str | None, pods_dir: Path | None = None) -> None:
    """Run until SIGINT/SIGTERM, then stop everything in order; a failure to serve is raised."""
    from kuma_dp.component import Component, run_components

    components: list[Component] = [cp]
    if pods_dir is not None:
        from .k8s import PodsDirWatcher

        components.append(PodsDirWatcher(cp.store, pods_dir))

    def announce() -> None:
        if ready_file:
            from kuma_dp.fsutil import atomic_write

            info = {"url": cp.url, "port": cp.port, "pid": os.getpid()}
            atomic_write(Path(ready_file), json.dumps(info).encode(), mode=0o644)
        click.echo(f"dev control plane ready: kuma-dp run --cp-address {cp.url} ...", err=True)

    async def shutting_down() -> None:
        log.info("shutting down the dev control plane")

    await run_components(components, name="dev control plane", on_ready=announce, before_stop=shutting_down)


@click.command("dev-cp")
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (loopback by default; another address exposes the CP).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=5678,
    show_default=True,
    help="Port for /bootstrap and ADS together (0: any free port).",
)
@click.option(
    "--state",
    "state_file",
    default="",
    help="YAML file with meshes, dataplanes and services (example: kuma_dp_dev/devcp/example-state.yaml).",
)
@click.option(
    "--auth-token-file",
    default="",
    help="Require this dataplane token: at /bootstrap (422 without one) and on the ADS stream.",
)
@click.option(
    "--tls-cert-file", default="", help="Serve TLS with this certificate (PEM); also sent as the CA."
)
@click.option("--tls-key-file", default="", help="Key of --tls-cert-file (PEM).")
@click.option(
    "--tls-ca-file",
    default="",
    help="CA for bootstraps whose kuma-dp sent no --ca-cert-file (default: the certificate).",
)
@click.option(
    "--pods-dir",
    default="",
    help="Directory of Kubernetes pod records (kuma_dp_dev/devcp/k8s.py): each becomes the Dataplane "
    "<pod>.<namespace> kuma-cp would derive from the Pod; re-read as files change.",
)
@click.option(
    "--policies",
    "policies_file",
    default="",
    help="YAML file of MeshMetric, MeshTrace and MeshOpenTelemetryBackend policies (one per document); "
    "applied to the matching dataplanes as kuma-cp would (kuma_dp_dev/devcp/policies.py).",
)
@click.option("--ready-file", default="", help="Write {url, port, pid} as JSON here once serving.")
@click.option("--log-level", type=click.Choice(["info", "debug"]), default="info", show_default=True)
def dev_cp(
    address: str,
    port: int,
    state_file: str,
    auth_token_file: str,
    tls_cert_file: str,
    tls_key_file: str,
    tls_ca_file: str,
    pods_dir: str,
    policies_file: str,
    ready_file: str,
    log_level: str,
) -> None:
    """Run the development control plane (kuma-cp's /bootstrap and ADS for kuma-dp and Envoy)."""
    from kuma_dp import logs

    from .server import DevControlPlane
    from .state import StateError, Store, load_state
    from .tls import TLSFiles

    logs.setup_logging(log_level, None, 100, 1, 30)
    if log_level != "debug":
        # grpc's own logger (third-party, not under kuma_dp_dev): keep its chatter out of the dev CP's log.
        logging.getLogger("grpc").setLevel(logging.WARNING)
    try:
        store = load_state(state_file) if state_file else Store()
    except StateError as exc:
        _fail(str(exc))
    if policies_file:
        from .policies import PolicyError, load_policies

        try:
            store.policies = load_policies(policies_file)
        except PolicyError as exc:
            _fail(str(exc))
    token = _read_token(auth_token_file) if auth_token_file else None
    if token:
        logs.add_secret(token)
    if bool(tls_cert_file) != bool(tls_key_file):
        _fail("--tls-cert-file and --tls-key-file go together; give both or neither")
    if tls_ca_file and not tls_cert_file:
        _fail("--tls-ca-file needs --tls-cert-file and --tls-key-file")
    for flag, path in (("--tls-cert-file", tls_cert_file), ("--tls-key-file", tls_key_file),
                       ("--tls-ca-file", tls_ca_file)):  # fmt: skip
        if path and not Path(path).is_file():
            _fail(f"{flag} {path}: no such file; give a PEM file")
    tls = TLSFiles(tls_cert_file, tls_key_file, tls_ca_file) if tls_cert_file else None
    if not _is_loopback(address) and (token is None or tls is None):
        # kuma-cp would not serve bootstraps (with the tokens in them) in the clear to the network either; a
        # dev CP may, but the operator must hear it at once rather than find out later.
        flags = (("--auth-token-file", token is None), ("--tls-cert-file", tls is None))
        missing = " and ".join(flag for flag, absent in flags if absent)
        log.warning(
            "listening on %s without %s: any host that reaches this port gets bootstraps and the mesh "
            "configuration%s; give --auth-token-file and --tls-cert-file/--tls-key-file, or listen on "
            "127.0.0.1",
            address,
            missing,
            ", and tokens travel in the clear" if tls is None else "",
        )
    cp = DevControlPlane(store, host=address, port=port, token=token, tls=tls)
    try:
        asyncio.run(serve(cp, ready_file or None, Path(pods_dir) if pods_dir else None))
    except OSError as exc:
        _fail(f"cannot listen on {address}:{port}: {exc.strerror or exc}; pick another --port (0 = any)")
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def _is_loopback(address: str) -> bool:
    import ipaddress

    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False
