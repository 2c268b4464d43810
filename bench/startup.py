"""Start-up cost of the agent against bare Envoy, measured side by side in one run.

    .venv/bin/python bench/startup.py [--reps 5]

Three ways to reach a serving proxy with the same bootstrap (admin API + one HTTP listener), interleaved so
machine load hits all alike, `--reps` times each, median reported:

* bare Envoy, with kuma-dp's command line: time from spawn to the admin API's `/ready` = 200 (LIVE);
* `kuma-dp run` against a stand-in control plane (tests/helpers/fake_cp.py serving that bootstrap):
  time from spawn to the readiness reporter's `/ready` = 200 (it asks Envoy, so it implies LIVE);
* the agent alone (kuma_dp_dev/harness/static_agent.py: `run_agent` on the bootstrap file, no CP round trip).

Printed: medians, the ratio and the overhead against bare Envoy, and the agent's RSS without Envoy (psutil,
the Python process only, once ready). Targets: overhead <= 300 ms, RSS <= 35 MiB. DNS is disabled in the
timed `kuma-dp run` case (no control plane serves a DNS table here, so the DNS gate would hold /ready for
15 s); a fourth, untimed run with the DNS proxy on (the default) reports the RSS of the full agent.
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

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kuma_dp.envoy import EnvoyOptions, build_command, find_envoy  # noqa: E402
from kuma_dp_dev.harness.ports import free_port  # noqa: E402
from kuma_dp_dev.harness.static_agent import static_bootstrap  # noqa: E402
from tests.helpers.fake_cp import FakeCP, Reply, make_token  # noqa: E402

POLL = 0.005
TIMEOUT = 60.0
MIB = 1024 * 1024


def wait_200(url: str, proc: subprocess.Popen[bytes], any_status: bool = False) -> float:
    """Poll until 200 (or any answer); returns the monotonic time it happened."""
    deadline = time.monotonic() + TIMEOUT
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before ready")
            try:
                if client.get(url).status_code == 200 or any_status:
                    return time.monotonic()
            except httpx.TransportError:
                pass
            time.sleep(POLL)
    raise RuntimeError(f"{url} not ready within {TIMEOUT}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGINT to end the agent's drain wait; Envoy gets the same and exits."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        if proc.poll() is None:
            proc.send_signal(sig)
            time.sleep(0.1)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_bootstrap(work: Path) -> tuple[Path, int]:
    admin_port = free_port()
    path = work / "bootstrap.yaml"
    path.write_text(json.dumps(static_bootstrap(admin_port=admin_port, listener_port=free_port())))
    return path, admin_port


def bare_envoy(envoy: str, work: Path) -> float:
    bootstrap, admin_port = write_bootstrap(work)
    argv = build_command(EnvoyOptions(binary=envoy, config_path=str(bootstrap), concurrency=1))
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return wait_200(f"http://127.0.0.1:{admin_port}/ready", proc) - t0
    finally:
        stop(proc)


def agent_rss(proc: subprocess.Popen[bytes]) -> int:
    return int(psutil.Process(proc.pid).memory_info().rss)


def harness(envoy: str, work: Path) -> tuple[float, int]:
    bootstrap, _ = write_bootstrap(work)
    port = free_port()
    argv = [sys.executable, "-m", "kuma_dp_dev.harness.static_agent", "run", str(bootstrap)]
    argv += ["--readiness-port", str(port), "--binary-path", envoy]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        elapsed = wait_200(f"http://127.0.0.1:{port}/ready", proc) - t0
        return elapsed, agent_rss(proc)
    finally:
        stop(proc)


def kuma_dp_run(envoy: str, work: Path, dns: bool = False) -> tuple[float, int]:
    bootstrap, _ = write_bootstrap(work)
    port = free_port()
    env = {**os.environ, "KUMA_READINESS_PORT": str(port), "KUMA_DNS_ENABLED": "false"}
    if dns:
        env.update(KUMA_DNS_ENABLED="true", KUMA_DNS_PROXY_PORT=str(free_port()))
    token = make_token({"Name": "bench", "Mesh": "default", "Tags": {}})
    with FakeCP([Reply.bootstrap(bootstrap.read_text())]) as cp:
        argv = [sys.executable, "-m", "kuma_dp", "run", "--cp-address", cp.url, "--name", "bench"]
        argv += ["--mesh", "default", "--dataplane-token", token, "--binary-path", envoy]
        argv += ["--work-dir", str(work / "wd"), "--concurrency", "1"]
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            elapsed = wait_200(f"http://127.0.0.1:{port}/ready", proc, any_status=dns) - t0
            if dns:
                time.sleep(1.0)  # every component started and settled (the gate holds /ready at 503)
            return elapsed, agent_rss(proc)
        finally:
            stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    envoy = str(find_envoy("envoy"))
    bare: list[float] = []
    runs: list[float] = []
    harnessed: list[float] = []
    rss_run: list[int] = []
    rss_harness: list[int] = []
    with tempfile.TemporaryDirectory(prefix="kdp-bench-") as tmp:
        for i in range(args.reps):
            for name in ("bare", "run", "harness"):
                work = Path(tmp) / f"{name}{i}"
                work.mkdir()
                if name == "bare":
                    bare.append(bare_envoy(envoy, work))
                elif name == "run":
                    t, rss = kuma_dp_run(envoy, work)
                    runs.append(t)
                    rss_run.append(rss)
                else:
                    t, rss = harness(envoy, work)
                    harnessed.append(t)
                    rss_harness.append(rss)
    b, r, h = statistics.median(bare), statistics.median(runs), statistics.median(harnessed)
    print(f"startup, median of {args.reps} (Envoy {envoy}):")
    print(f"  bare Envoy to LIVE                  {b * 1000:8.1f} ms")
    for label, t in (("kuma-dp run (fake CP) to /ready 200", r), ("run_agent harness to /ready 200", h)):
        print(f"  {label:<35} {t * 1000:8.1f} ms   ratio {t / b:5.2f}   overhead {(t - b) * 1000:+7.1f} ms")
    print(f"agent RSS without Envoy (median): kuma-dp run {statistics.median(rss_run) / MIB:.1f} MiB, "
          f"harness {statistics.median(rss_harness) / MIB:.1f} MiB   (target <= 35 MiB)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kdp-bench-") as tmp:
        _, rss = kuma_dp_run(envoy, Path(tmp), dns=True)
    print(f"agent RSS without Envoy, kuma-dp run with the DNS proxy on (default): {rss / MIB:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
