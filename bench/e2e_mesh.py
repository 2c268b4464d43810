"""bench/e2e: time to the first request through the mesh, against bare Envoy with the same config statically.

Setup (all loopback, free ports): `kuma-dp dev-cp`, a `backend` app behind its own `kuma-dp run` + Envoy.
Then, N times each, for a `web` proxy with an outbound to backend, the time from process start to the first
200 from backend through that outbound:

  mesh      `kuma-dp run` (POST /bootstrap, Envoy start, ADS: CDS -> EDS -> LDS)
  ads       Envoy started directly with an ADS bootstrap (no kuma-dp): the xDS part alone
  static    Envoy started with the very same listeners/clusters/endpoints in static_resources (the peer)

Printed: medians and the ratios mesh/static and ads/static (lower is better; 1.0 = no cost over static).
Run: .venv/bin/python bench/e2e_mesh.py [-n 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kuma_dp_dev.demoapp import serve_in_thread  # noqa: E402
from kuma_dp_dev.devcp import vip, xds  # noqa: E402
from kuma_dp_dev.devcp.state import Endpoint, Service, parse_dataplane  # noqa: E402
from kuma_dp_dev.harness.localmesh import EnvoyProcess, ads_bootstrap, envoy_binary  # noqa: E402
from kuma_dp_dev.harness.poll import wait_until  # noqa: E402
from kuma_dp_dev.harness.ports import free_port  # noqa: E402

KUMA_DP = [sys.executable, "-m", "kuma_dp"]


def dataplane(name: str, service: str, app_port: int, outbound: int | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "type": "Dataplane",
        "mesh": "default",
        "name": name,
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": free_port(), "servicePort": app_port,
                         "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"}}],
            "admin": {"port": free_port()},
        },
    }  # fmt: skip
    if outbound:
        res["networking"]["outbound"] = [{"port": outbound, "tags": {"kuma.io/service": "backend"}}]
    return res


def kuma_dp_run(cp_url: str, res: dict[str, Any], workdir: Path, envoy: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KUMA_READINESS_PORT": str(free_port()), "KUMA_DNS_PROXY_PORT": str(free_port())}
    argv = [*KUMA_DP, "run", "--cp-address", cp_url, "--dataplane", json.dumps(res), "--binary-path", envoy,
            "--work-dir", str(workdir), "--drain-time", "1s", "--concurrency", "1"]  # fmt: skip
    log = open(workdir / "kuma-dp.log", "wb")  # noqa: SIM115 (the child owns it)
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    finally:
        log.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def first_ok(port: int, deadline: float = 60) -> None:
    def attempt() -> bool:
        try:
            resp = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200 and resp.json()["service"] == "backend"

    wait_until(attempt, deadline, interval=0.005, what=f"first 200 through 127.0.0.1:{port}")


def static_bootstrap(res: dict[str, Any], backend_inbound: int, workdir: Path) -> dict[str, Any]:
    """web's xDS snapshot from the same generator, laid out as static_resources (EDS -> inline STATIC)."""
    dp = parse_dataplane(res)
    services = {
        "backend": Service(
            "default", "backend", "http", (Endpoint("127.0.0.1", backend_inbound, ("d", "b")),)
        ),
        "web": Service("default", "web", "http", (Endpoint("127.0.0.1", dp.inbounds[0].port, dp.key),)),
    }
    snap = xds.generate(xds.Proxy(dp, workdir=str(workdir)), services, vip.allocate(services))
    clusters = []
    for name, cluster in snap.resources[xds.CLUSTER_TYPE].items():
        cluster = dict(cluster)
        if cluster.get("type") == "EDS":
            cluster.pop("edsClusterConfig")
            cluster["type"] = "STATIC"
            cluster["loadAssignment"] = snap.resources[xds.ENDPOINT_TYPE][name]
        clusters.append(cluster)
    return {
        "node": {"id": f"default.{dp.name}", "cluster": "web"},
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": dp.admin_port}}},
        "staticResources": {
            "listeners": list(snap.resources[xds.LISTENER_TYPE].values()),
            "clusters": clusters,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=5, help="runs per variant (default 5)")
    args = parser.parse_args()
    envoy = envoy_binary()
    tmp = Path(tempfile.mkdtemp(prefix="kdp-e2e-", dir="/tmp"))
    ready = tmp / "cp.json"
    with open(tmp / "dev-cp.log", "wb") as cp_log:
        cp = subprocess.Popen(
            [*KUMA_DP, "dev-cp", "--port", "0", "--ready-file", str(ready)],
            stdout=cp_log,
            stderr=subprocess.STDOUT,
        )
    procs: list[subprocess.Popen[bytes]] = []
    backend_app, _ = serve_in_thread("backend", "backend-1")
    try:
        cp_url = wait_until(lambda: ready.exists() and json.loads(ready.read_text()), 20, what="dev-cp")[
            "url"
        ]
        cp_port = int(cp_url.rsplit(":", 1)[1])
        backend_res = dataplane("backend-1", "backend", backend_app.server_address[1])
        procs.append(kuma_dp_run(cp_url, backend_res, tmp / "backend", envoy))
        backend_inbound = backend_res["networking"]["inbound"][0]["port"]
        backend_url = f"http://127.0.0.1:{backend_inbound}/"
        wait_until(lambda: httpx.get(backend_url, timeout=2).status_code == 200, 60, what="backend's Envoy")

        results: dict[str, list[float]] = {"mesh": [], "ads": [], "static": []}
        for i in range(args.n):
            for variant in ("static", "ads", "mesh"):
                outbound = free_port()
                res = dataplane(f"web-{variant}-{i}", "web", free_port(), outbound)
                workdir = tmp / f"{variant}-{i}"
                workdir.mkdir()
                start = time.perf_counter()
                if variant == "mesh":
                    proc = kuma_dp_run(cp_url, res, workdir, envoy)
                    stopper = lambda p=proc: stop(p)  # noqa: E731
                else:
                    config = (
                        static_bootstrap(res, backend_inbound, workdir)
                        if variant == "static"
                        else ads_bootstrap(resource=res, ads_port=cp_port,
                                           admin_port=res["networking"]["admin"]["port"], workdir=workdir)
                    )  # fmt: skip
                    start = time.perf_counter()
                    envoy_proc = EnvoyProcess(config, workdir, envoy).start()
                    stopper = envoy_proc.stop
                try:
                    first_ok(outbound)
                    results[variant].append(time.perf_counter() - start)
                finally:
                    stopper()
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"time to first request through the mesh, median of {args.n} (loopback, 1 Envoy worker):")
        for k in ("static", "ads", "mesh"):
            print(
                f"  {k:<7} {med[k] * 1000:8.1f} ms   runs: " + " ".join(f"{x * 1000:.0f}" for x in results[k])
            )
        mesh_ratio, ads_ratio = med["mesh"] / med["static"], med["ads"] / med["static"]
        print(f"ratio mesh/static (kuma-dp run + dev CP vs bare static Envoy): {mesh_ratio:.2f}")
        print(f"ratio ads/static  (Envoy over ADS, no kuma-dp, vs static):      {ads_ratio:.2f}")
    finally:
        for proc in procs:
            stop(proc)
        stop(cp)
        backend_app.shutdown()
        backend_app.server_close()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
