"""Start-up cost of the agent against bare Envoy, measured side by side in one run.

    .venv/bin/python bench/startup.py [--reps 7] [--baseline OTHER_CHECKOUT]

Five ways to reach a serving proxy, each round in a rotated order (so machine load and caches hit all
alike), one warm-up round discarded, `--reps` measured rounds, medians reported (and the main comparisons
round by round). Child processes run from compiled byte code, as an installed agent does
(kuma_dp_dev.harness.timeline.use_compiled_bytecode):

* bare     Envoy with kuma-dp's command line on a static bootstrap (admin API + one HTTP listener): time
           from exec to the admin API's `/ready` = 200 (LIVE);
* run      `kuma-dp run` against the development control plane (`kuma-dp dev-cp`, a real /bootstrap, ADS and
           the dynamic-config `/dns` table), with the DNS proxy on (the default): time from exec to the
           readiness reporter's `/ready` = 200, which needs Envoy LIVE and the first DNS table (the DNS gate);
* cpboot   Envoy alone on the very bootstrap the dev CP served to `kuma-dp run` in the warm-up round (Kuma's
           bootstrap: its stats tags, ADS to the dev CP): time from exec to LIVE. What Envoy itself costs with
           Kuma's configuration, so `run - cpboot` is the agent's own share (Go kuma-dp's: process start and
           one bootstrap round trip);
* warm     `kuma-dp run` as `run`, but its work dir holds what an earlier run persisted (a restart with a
           kept work dir): the DNS table, the early responder's snapshot and listen plan (kuma_dns/early.py)
           and so the same DNS port: /ready (the DNS gate opens from that table) and the DNS server's first
           answer for a name from it, asked every few ms from exec on;
* harness  the agent alone (kuma_dp_dev/harness/static_agent.py: `run_agent` on the static bootstrap, no
           control plane, no DNS proxy): time from exec to its `/ready` = 200.

Printed: medians, the ratio and the overhead against bare Envoy, a per-phase timeline from exec to the end
for every side (kuma-dp's own CLOCK_MONOTONIC marks, `KUMA_DP_STARTUP_TRACE`, beside what the bench sees),
and the agent's RSS without Envoy (psutil, the Python process only, once ready). Targets (issue 16): overhead
<= +60 ms with DNS on; first DNS answer <= 50 ms after exec with a persisted table; RSS <= 35 MiB.
`--baseline` adds a side: `kuma-dp run` from another checkout, for a before/after in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kuma_dns import early  # noqa: E402
from kuma_dp.envoy import EnvoyOptions, build_command, find_envoy  # noqa: E402
from kuma_dp_dev.harness.poll import wait_until  # noqa: E402
from kuma_dp_dev.harness.ports import free_port  # noqa: E402
from kuma_dp_dev.harness.static_agent import static_bootstrap  # noqa: E402
from kuma_dp_dev.harness.timeline import Timeline, read_marks, use_compiled_bytecode  # noqa: E402

POLL = 0.005  # the same for every side; a faster poll mostly measures how fast the agent answers it
TIMEOUT = 60.0
MIB = 1024 * 1024
SIDES = ["bare", "run", "cpboot", "harness", "warm"]


def wait_200(url: str, proc: subprocess.Popen[bytes]) -> float:
    """Poll until 200; returns the monotonic time it happened."""
    deadline = time.monotonic() + TIMEOUT
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before ready")
            try:
                if client.get(url).status_code == 200:
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


def write_bootstrap(work: Path) -> tuple[Path, int, int]:
    admin_port, listener_port = free_port(), free_port()
    path = work / "bootstrap.yaml"
    path.write_text(json.dumps(static_bootstrap(admin_port=admin_port, listener_port=listener_port)))
    return path, admin_port, listener_port


def bare_envoy(envoy: str, work: Path) -> tuple[dict[str, float], int]:
    bootstrap, admin_port, listener_port = write_bootstrap(work)
    argv = build_command(EnvoyOptions(binary=envoy, config_path=str(bootstrap), concurrency=1))
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        live = wait_200(f"http://127.0.0.1:{admin_port}/ready", proc) - t0
        listener = wait_200(f"http://127.0.0.1:{listener_port}/", proc) - t0
        return {"envoy_spawned": 0.0, "envoy_live": live, "listener_200": listener, "ready_200": live}, 0
    finally:
        stop(proc)


def cp_bootstrap_envoy(envoy: str, template: Path) -> tuple[dict[str, float], int]:
    """Envoy on the warm-up's bootstrap (its dataplane name, ports and work dir: rounds never overlap)."""
    import yaml

    admin = yaml.safe_load(template.read_text())["admin"]["address"]["socketAddress"]["portValue"]
    argv = build_command(EnvoyOptions(binary=envoy, config_path=str(template), concurrency=1))
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        live = wait_200(f"http://127.0.0.1:{admin}/ready", proc) - t0
        return {"envoy_spawned": 0.0, "envoy_live": live, "ready_200": live}, 0
    finally:
        stop(proc)


def agent_rss(proc: subprocess.Popen[bytes]) -> int:
    return int(psutil.Process(proc.pid).memory_info().rss)


def harness(envoy: str, work: Path) -> tuple[dict[str, float], int]:
    bootstrap, _, listener_port = write_bootstrap(work)
    port = free_port()
    trace = work / "trace.json"
    argv = [sys.executable, "-m", "kuma_dp_dev.harness.static_agent", "run", str(bootstrap)]
    argv += ["--readiness-port", str(port), "--binary-path", envoy]
    env = {**os.environ, "KUMA_DP_STARTUP_TRACE": str(trace)}
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=env)
    try:
        ready = wait_200(f"http://127.0.0.1:{port}/ready", proc) - t0
        listener = wait_200(f"http://127.0.0.1:{listener_port}/", proc) - t0
        rss = agent_rss(proc)
        return {**read_marks(trace, t0), "listener_200": listener, "ready_200": ready}, rss
    finally:
        stop(proc)


def dataplane(name: str) -> dict[str, Any]:
    """A Dataplane with one HTTP inbound (no application needed: /ready does not ask it)."""
    return {
        "type": "Dataplane",
        "mesh": "default",
        "name": name,
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": free_port(), "servicePort": free_port(),
                         "tags": {"kuma.io/service": "bench", "kuma.io/protocol": "http"}}],
            "admin": {"port": free_port()},
        },
    }  # fmt: skip


class DnsProbe(threading.Thread):
    """Asks the agent's DNS server for a name of its persisted table every POLL from exec on, and notes when
    the first answer with an address comes back (issue 16: <= 50 ms after exec with a persisted table)."""

    def __init__(self, port: int, name: str, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(daemon=True)
        self.port, self.proc = port, proc
        # A standard query, id 0x4b44, recursion desired, one question: `name` IN A (RFC 1035 4.1). Built by
        # hand: bench/dns.py shadows the dnspython package for scripts in this directory.
        qname = (
            b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")) + b"\0"
        )
        self.query = struct.pack("!HHHHHH", 0x4B44, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
        self.answered_at: float | None = None

    def run(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(POLL)
            while self.answered_at is None and self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    sock.sendto(self.query, ("127.0.0.1", self.port))
                    reply = sock.recv(4096)
                except OSError:
                    time.sleep(POLL)
                    continue
                # Same id, NOERROR, at least one answer record.
                if len(reply) >= 12:
                    rid, flags, _, ancount = struct.unpack("!HHHH", reply[:8])
                    if rid == 0x4B44 and flags & 0xF == 0 and ancount > 0:
                        self.answered_at = time.monotonic()


def kuma_dp_run(
    envoy: str, work: Path, cp_url: str, name: str, tree: Path = REPO, dns_table: Path | None = None
) -> tuple[dict[str, float], int]:
    """`kuma-dp run` from the checkout `tree`; with `dns_table` (a table an earlier run persisted) in its work
    dir, the time to the DNS server's first answer for a name from it is measured too."""
    port, dns_port = free_port(), free_port()
    trace = work / "trace.json"
    env = {
        **os.environ,
        "KUMA_READINESS_PORT": str(port),
        "KUMA_DNS_PROXY_PORT": str(dns_port),
        "KUMA_DP_STARTUP_TRACE": str(trace),
    }
    mesh_name = ""
    if dns_table is not None and dns_table.exists():
        (work / "wd").mkdir(mode=0o700)
        shutil.copy(dns_table, work / "wd" / dns_table.name)
        mesh_name = json.loads(dns_table.read_text())["payload"]["records"][0]["name"]
        # What else that run left for the early DNS responder (kuma_dns/early.py): the hot snapshot and the
        # listen plan, whose port a restart keeps (the responder binds the plan's sockets before the config).
        plan = dns_table.with_name(early.PLAN_NAME)
        for extra in (dns_table.with_name(early.HOT_NAME), plan):
            if extra.exists():
                shutil.copy(extra, work / "wd" / extra.name)
        if plan.exists():
            dns_port = early.decode_plan(plan.read_bytes())[1]
            env["KUMA_DNS_PROXY_PORT"] = str(dns_port)
    env.pop("KUMA_DNS_ENABLED", None)  # the default (on) is what users run
    argv = [sys.executable, "-m", "kuma_dp", "run", "--cp-address", cp_url]
    argv += ["--dataplane", json.dumps(dataplane(name)), "--binary-path", envoy]
    argv += ["--work-dir", str(work / "wd"), "--concurrency", "1"]
    t0 = time.monotonic()
    quiet = subprocess.DEVNULL
    proc = subprocess.Popen(argv, env=env, cwd=tree, stdin=quiet, stdout=quiet, stderr=quiet)
    probe = DnsProbe(dns_port, mesh_name, proc) if mesh_name else None
    if probe is not None:
        probe.start()
    try:
        ready = wait_200(f"http://127.0.0.1:{port}/ready", proc) - t0
        rss = agent_rss(proc)
        time.sleep(0.05)  # the last marks (first config, first DNS table) are written right after
        phases = {**read_marks(trace, t0), "ready_200": ready}
        if probe is not None:
            probe.join(TIMEOUT)
            if probe.answered_at is not None:
                phases["first_dns_answer"] = probe.answered_at - t0
        return phases, rss
    finally:
        stop(proc)


def start_dev_cp(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    ready = tmp / "cp.json"
    with open(tmp / "dev-cp.log", "wb") as log:
        cp = subprocess.Popen(
            [sys.executable, "-m", "kuma_dp", "dev-cp", "--port", "0", "--ready-file", str(ready)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        url = wait_until(lambda: ready.exists() and json.loads(ready.read_text())["url"], 20, what="dev-cp")
    except BaseException:
        stop(cp)
        raise
    return cp, str(url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="measured rounds (default 7), after one warm-up")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of this repository (e.g. before a change): its `kuma-dp run` becomes a fifth "
        "side, measured in the same rounds, for a before/after that machine load cannot skew",
    )
    args = parser.parse_args()
    envoy = str(find_envoy("envoy"))
    sides = SIDES + (["baseline"] if args.baseline else [])
    timeline = Timeline(sides)
    rss: dict[str, list[int]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory(prefix="kdp-bench-") as tmp:
        use_compiled_bytecode(Path(tmp) / "pycache", REPO)
        if args.baseline:
            use_compiled_bytecode(Path(tmp) / "pycache", args.baseline.resolve())
        cp, cp_url = start_dev_cp(Path(tmp))
        try:
            # The warm-up round (0, discarded) runs `kuma-dp run` first: cpboot reuses its bootstrap.
            template = Path(tmp) / "run0" / "wd" / "bootstrap.yaml"
            table = Path(tmp) / "run0" / "wd" / "kuma-dns-table.json"  # and later runs start with its table
            for i in range(args.reps + 1):
                k = i % len(sides)
                order = sides[k:] + sides[:k] if i else ["run", *(s for s in sides if s != "run")]
                for side in order:
                    work = Path(tmp) / f"{side}{i}"
                    work.mkdir()
                    if side == "bare":
                        phases, mem = bare_envoy(envoy, work)
                    elif side == "cpboot":
                        phases, mem = cp_bootstrap_envoy(envoy, template)
                    elif side == "run":
                        phases, mem = kuma_dp_run(envoy, work, cp_url, f"bench-{i}")
                    elif side == "warm":
                        phases, mem = kuma_dp_run(envoy, work, cp_url, f"warm-{i}", dns_table=table)
                    elif side == "baseline":
                        phases, mem = kuma_dp_run(envoy, work, cp_url, f"base-{i}", args.baseline.resolve())
                    else:
                        phases, mem = harness(envoy, work)
                    if i > 0:
                        timeline.add(side, phases)
                        rss[side].append(mem)
        finally:
            stop(cp)
    end = {s: statistics.median(r["ready_200"] for r in timeline.rounds[s]) for s in sides}
    b = end["bare"]
    print(f"startup, median of {args.reps} after 1 warm-up, order rotated (Envoy {envoy}):")
    print(f"  bare Envoy to LIVE                          {b * 1000:8.1f} ms")
    labels = {
        "run": "kuma-dp run (dev CP, DNS on) to /ready 200",
        "cpboot": "Envoy alone on the CP's bootstrap to LIVE",
        "harness": "run_agent harness to /ready",
        "warm": "kuma-dp run, persisted DNS table, /ready",
        "baseline": "--baseline's kuma-dp run to /ready 200",
    }
    for side, label in labels.items():
        if side not in end:
            continue
        t = end[side]
        print(f"  {label:<43} {t * 1000:8.1f} ms   ratio {t / b:5.2f}   overhead {(t - b) * 1000:+7.1f} ms")
    for side in sides:
        print(f"  runs {side:<8}" + " ".join(f"{r['ready_200'] * 1000:.0f}" for r in timeline.rounds[side]))
    agent = end["run"] - end["cpboot"]
    print(f"  the agent's own share (run - cpboot): {agent * 1000:+.1f} ms")
    # The same comparisons round by round (the sides of one round ran within seconds of each other), which
    # load that changes over the run skews less than a ratio of medians.
    runs, bares = timeline.rounds["run"], timeline.rounds["bare"]
    per_round = [(r["ready_200"], b_["ready_200"]) for r, b_ in zip(runs, bares, strict=True)]
    print(f"  per-round medians: run/bare {statistics.median(r / b_ for r, b_ in per_round):.2f}, "
          f"run - bare {statistics.median(r - b_ for r, b_ in per_round) * 1000:+.1f} ms")  # fmt: skip
    if args.baseline:
        pairs = zip(timeline.rounds["run"], timeline.rounds["baseline"], strict=True)
        diff = statistics.median(r["ready_200"] - b_["ready_200"] for r, b_ in pairs)
        print(f"  per-round median, run - baseline: {diff * 1000:+.1f} ms")
    print(timeline.render())
    run_mib, harness_mib = (statistics.median(rss[s]) / MIB for s in ("run", "harness"))
    print(
        f"agent RSS without Envoy, median MiB: kuma-dp run (DNS on) {run_mib:.1f}, harness {harness_mib:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
