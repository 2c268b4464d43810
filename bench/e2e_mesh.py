"""bench/e2e: time to the first request through the mesh, against bare Envoy with the same config statically.

Setup (all loopback, free ports): `kuma-dp dev-cp`, a `backend` app behind its own `kuma-dp run` + Envoy.
Then, for a `web` proxy with an outbound to backend, the time from exec to the first 200 from backend
through that outbound, for each variant; one warm-up round discarded, then `-n` rounds (default 7), the
order rotated each round so machine load hits all alike:

  mesh      `kuma-dp run` with its defaults (the DNS proxy on): POST /bootstrap, Envoy start, ADS
  ads       Envoy started directly with an ADS bootstrap (no kuma-dp): the xDS part alone
  static    Envoy started with the very same listeners/clusters/endpoints in static_resources (the peer)
  static+k  static, plus the stats configuration of Kuma's bootstrap (`statsConfig`: the stats tag regexes
            kuma-cp's template adds, pkg/xds/bootstrap/template_v3.go), taken from the warm-up's bootstrap:
            what Envoy itself costs with Kuma's configuration (~+120 ms of stat-name tagging here), which Go
            kuma-dp pays too; mesh/static+k is the agent's own share

Printed: medians, the ratios mesh/static and ads/static (lower is better; 1.0 = no cost over static), and
the per-phase timeline from exec to the first 200 (kuma-dp's own marks, KUMA_DP_STARTUP_TRACE; Envoy LIVE
as the bench sees it on the admin API for the Envoy-only variants). Target (issue 16): mesh/static <= 1.5.
Run: .venv/bin/python bench/e2e_mesh.py [-n 7]
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
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kuma_dp_dev.demoapp import serve_in_thread  # noqa: E402
from kuma_dp_dev.devcp import vip, xds  # noqa: E402
from kuma_dp_dev.devcp.state import Endpoint, Service, parse_dataplane  # noqa: E402
from kuma_dp_dev.harness.localmesh import EnvoyProcess, ads_bootstrap, envoy_binary  # noqa: E402
from kuma_dp_dev.harness.poll import wait_until  # noqa: E402
from kuma_dp_dev.harness.ports import free_port  # noqa: E402
from kuma_dp_dev.harness.timeline import Timeline, read_marks, use_compiled_bytecode  # noqa: E402

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


def kuma_dp_run(
    cp_url: str,
    res: dict[str, Any],
    workdir: Path,
    envoy: str,
    trace: Path | None = None,
    tree: Path = REPO,
) -> subprocess.Popen[bytes]:
    """`kuma-dp run` from the checkout `tree` (its `-m kuma_dp` is the one imported: cwd comes first)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KUMA_READINESS_PORT": str(free_port()), "KUMA_DNS_PROXY_PORT": str(free_port())}
    env.pop("KUMA_DNS_ENABLED", None)  # the default (on), as users run it
    if trace is not None:
        env["KUMA_DP_STARTUP_TRACE"] = str(trace)
    argv = [*KUMA_DP, "run", "--cp-address", cp_url, "--dataplane", json.dumps(res), "--binary-path", envoy,
            "--work-dir", str(workdir), "--drain-time", "1s", "--concurrency", "1"]  # fmt: skip
    log = open(workdir / "kuma-dp.log", "wb")  # noqa: SIM115 (the child owns it)
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tree)
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


def first_ok(port: int, deadline: float = 60, admin_port: int | None = None) -> dict[str, float]:
    """Poll until a 200 from backend through 127.0.0.1:`port`; returns the monotonic times of Envoy LIVE
    (when `admin_port` is given: its /ready polled alongside) and of that 200."""
    seen: dict[str, float] = {}
    with httpx.Client(timeout=2) as client:

        def attempt() -> bool:
            if admin_port is not None and "envoy_live" not in seen:
                try:
                    if client.get(f"http://127.0.0.1:{admin_port}/ready").status_code == 200:
                        seen["envoy_live"] = time.monotonic()
                except httpx.HTTPError:
                    pass
            try:
                resp = client.get(f"http://127.0.0.1:{port}/")
            except httpx.HTTPError:
                return False
            if resp.status_code == 200 and resp.json()["service"] == "backend":
                seen["mesh_200"] = time.monotonic()
                return True
            return False

        wait_until(attempt, deadline, interval=0.005, what=f"first 200 through 127.0.0.1:{port}")
    return seen


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
    parser.add_argument(
        "-n", type=int, default=7, help="measured runs per variant (default 7), after 1 warm-up"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of this repository (e.g. before a change): its `kuma-dp run` becomes the "
        "variant `base`, measured in the same rounds, for a before/after that machine load cannot skew",
    )
    args = parser.parse_args()
    envoy = envoy_binary()
    tmp = Path(tempfile.mkdtemp(prefix="kdp-e2e-", dir="/tmp"))
    use_compiled_bytecode(tmp / "pycache", REPO)
    if args.baseline:
        use_compiled_bytecode(tmp / "pycache", args.baseline.resolve())
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

        variants = ["static", "static+k", "ads", "mesh"] + (["base"] if args.baseline else [])
        results: dict[str, list[float]] = {v: [] for v in variants}
        timeline = Timeline(variants)
        stats_config: dict[str, Any] = {}
        for i in range(args.n + 1):  # round 0 is the warm-up, discarded; mesh first (static+k needs it)
            k = i % len(variants)
            for variant in (
                variants[k:] + variants[:k] if i else ["mesh", *(v for v in variants if v != "mesh")]
            ):
                outbound = free_port()
                res = dataplane(f"web-{variant}-{i}", "web", free_port(), outbound)
                workdir = tmp / f"{variant}-{i}"
                workdir.mkdir()
                trace = workdir / "trace.json"
                admin_port: int | None = None
                if variant in ("mesh", "base"):
                    tree = args.baseline.resolve() if variant == "base" else REPO
                    start = time.monotonic()
                    proc = kuma_dp_run(cp_url, res, workdir, envoy, trace, tree)
                    stopper = lambda p=proc: stop(p)  # noqa: E731
                else:
                    admin_port = res["networking"]["admin"]["port"]
                    if variant == "ads":
                        config = ads_bootstrap(
                            resource=res, ads_port=cp_port, admin_port=admin_port, workdir=workdir
                        )
                    else:
                        config = static_bootstrap(res, backend_inbound, workdir)
                        if variant == "static+k":
                            config["statsConfig"] = stats_config
                    envoy_proc = EnvoyProcess(config, workdir, envoy)
                    start = time.monotonic()
                    envoy_proc.start()
                    stopper = envoy_proc.stop
                try:
                    seen = first_ok(outbound, admin_port=admin_port)
                    if variant in ("mesh", "base"):
                        time.sleep(0.05)  # the agent writes its last marks right after
                        if not stats_config:
                            written = yaml.safe_load((workdir / "bootstrap.yaml").read_text())
                            stats_config = written.get("statsConfig") or {}
                    if i == 0:
                        continue
                    results[variant].append(seen["mesh_200"] - start)
                    phases = {k: t - start for k, t in seen.items()}
                    agent = variant in ("mesh", "base")
                    phases.update(read_marks(trace, start) if agent else {"envoy_spawned": 0.0})
                    timeline.add(variant, phases)
                finally:
                    stopper()
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"time to first request through the mesh, median of {args.n} after 1 warm-up, order rotated "
              "(loopback, 1 Envoy worker, DNS proxy on):")  # fmt: skip
        for v in variants:
            print(
                f"  {v:<9} {med[v] * 1000:8.1f} ms   runs: " + " ".join(f"{x * 1000:.0f}" for x in results[v])
            )
        mesh_ratio, ads_ratio = med["mesh"] / med["static"], med["ads"] / med["static"]
        print(f"ratio mesh/static   (kuma-dp run + dev CP vs bare static Envoy): {mesh_ratio:.2f}")
        print(f"ratio ads/static    (Envoy over ADS, no kuma-dp, vs static):      {ads_ratio:.2f}")
        own = med["mesh"] / med["static+k"]
        print(f"ratio mesh/static+k (vs static with Kuma's stats config):        {own:.2f}")
        # Round by round (the variants of one round ran within seconds of each other): less skewed by load
        # that changes over the run than a ratio of medians.
        pairs = list(zip(results["mesh"], results["static"], strict=True))
        print(f"per-round median of mesh/static: {statistics.median(m / s for m, s in pairs):.2f}")
        if args.baseline:
            base = statistics.median(m - b for m, b in zip(results["mesh"], results["base"], strict=True))
            print(f"per-round median of mesh - base (--baseline): {base * 1000:+.1f} ms")
        print(timeline.render())
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
