#!/usr/bin/env python3
"""Benchmark: `kuma-dp dns` against dnsmasq, same names, same machine, same run (dnsperf drives both).

    bench/dns [--names 1000] [--duration 5] [--rounds 3] [--clients 4] [--p99-qps 20000]

Three workloads, each run against both servers in alternating order for `--rounds` rounds (medians
reported, which tames a noisy shared machine a little):

* mesh names: 1,000 names with A and AAAA (ours from a `/dns` payload; dnsmasq from an addn-hosts file);
* cached forwarded names: 1,000 names served by an origin dnsmasq, warmed into both caches first;
* latency at a fixed rate (`--p99-qps`, default 20k QPS) on mesh names: p50/p99 from dnsperf's per-query log.

Prints QPS, latencies and our/dnsmasq ratios next to the targets (mesh QPS ratio >= 1.0, p99 <= 1 ms
at 20k QPS, cached forwarded >= 0.8x). It is a benchmark, not a test: it exits 0 unless `--strict` is given
and a target is missed, or a tool is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kuma_dp_dev.harness.dnsmasq import free_udp_tcp_port, start_dnsmasq  # noqa: E402
from kuma_dp_dev.harness.procs import stop  # noqa: E402


def wait_answering(port: int, name: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(port), name, "+short", "+time=1", "+tries=1"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if out and not out.startswith(";"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} does not answer {name}")


@contextmanager
def process(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
    try:
        yield proc
    finally:
        stop(proc)


@dataclass
class Result:
    qps: float
    avg_ms: float
    lost: float
    cpu_us: float  # server CPU time (user+sys) per completed query: robust to a busy machine


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_dnsperf(port: int, datafile: Path, duration: float, *args: str) -> str:
    """dnsperf against 127.0.0.1:`port` for `duration` seconds with a 2 s query timeout; its report."""
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(datafile), "-l", str(duration), "-t", "2"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, check=True).stdout


def dnsperf(port: int, pid: int, datafile: Path, duration: float, clients: int) -> Result:
    cpu0 = cpu_seconds(pid)
    out = run_dnsperf(port, datafile, duration, "-c", str(clients), "-q", "200")
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    avg = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lost = float(re.search(r"Queries lost:\s+\d+ \(([\d.]+)%\)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    return Result(qps, avg * 1000, lost, (cpu_seconds(pid) - cpu0) * 1e6 / max(done, 1))


def latency_at_rate(port: int, datafile: Path, qps: int, duration: float) -> tuple[float, float, int]:
    """p50 and p99 (ms) at a fixed offered rate, from dnsperf's per-query lines; plus non-NOERROR count."""
    out = run_dnsperf(port, datafile, duration, "-Q", str(qps), "-v")
    lat = []
    bad = 0
    for line in out.splitlines():
        if line.startswith("> "):
            parts = line.split()
            if parts[1] != "NOERROR":
                bad += 1
            lat.append(float(parts[-1]) * 1000)
    lat.sort()
    if not lat:
        return float("nan"), float("nan"), bad
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))], bad


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per dnsperf run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--p99-qps", type=int, default=20000)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    for tool in ("dnsperf", "dnsmasq", "dig"):
        if not shutil.which(tool):
            print(
                f"bench/dns: {tool} not found; install it (apt install dnsperf dnsmasq-base bind9-dnsutils)"
            )
            return 2

    tmp = Path(tempfile.mkdtemp(prefix="kdns-bench-"))
    n = args.names
    payload = {
        "records": [
            {"name": f"svc-{i:05d}.mesh", "ips": [f"240.0.{i // 256}.{i % 256}", f"::ffff:f000:{i:x}"]}
            for i in range(n)
        ],
        "ttl": 30,
        "extraLabels": {"mesh": "default"},
    }
    (tmp / "records.json").write_text(json.dumps(payload))
    (tmp / "hosts").write_text(
        "".join(
            f"240.0.{i // 256}.{i % 256} svc-{i:05d}.mesh\n::ffff:f000:{i:x} svc-{i:05d}.mesh\n"
            for i in range(n)
        )
    )
    mesh_q = tmp / "mesh.txt"
    mesh_q.write_text("".join(f"svc-{i:05d}.mesh {'A' if i % 2 else 'AAAA'}\n" for i in range(n)))
    fwd_q = tmp / "forwarded.txt"
    fwd_q.write_text("".join(f"e-{i:05d}.example.test A\n" for i in range(1000)))
    (tmp / "resolv.conf").write_text("nameserver 127.0.0.1\n")

    ours_port = free_udp_tcp_port()
    print(f"bench/dns: {n} mesh names; load average before: {loadavg()} (shared machine: numbers are noisy)")
    with (
        start_dnsmasq(tmp, "--address=/example.test/10.9.9.9", "--local-ttl=3600") as origin,
        process(
            [
                sys.executable,
                "-m",
                "kuma_dp",
                "dns",
                "--port",
                str(ours_port),
                "--records",
                str(tmp / "records.json"),
                "--upstream",
                f"127.0.0.1:{origin.port}",
                "--resolv-conf",
                str(tmp / "resolv.conf"),
                "--log-level",
                "warning",
            ],
            tmp / "ours.log",
        ) as ours,
        start_dnsmasq(
            tmp,
            f"--addn-hosts={tmp / 'hosts'}",
            "--local-ttl=30",
            "--cache-size=10000",
            f"--server=127.0.0.1#{origin.port}",
        ) as peer,
    ):
        for port in (origin.port, ours_port, peer.port):
            wait_answering(port, "e-00000.example.test" if port == origin.port else "svc-00001.mesh")
        # Warm both caches with every forwarded name (one pass, low rate: nothing may be lost).
        for port in (ours_port, peer.port):
            subprocess.run(
                ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(fwd_q), "-n", "1", "-q", "20"],
                capture_output=True,
                check=True,
            )
        servers = {"kuma-dp dns": ours_port, "dnsmasq": peer.port}
        pids = {"kuma-dp dns": ours.pid, "dnsmasq": peer.proc.pid}
        results: dict[tuple[str, str], list[Result]] = {}
        for rnd in range(args.rounds):
            order = list(servers.items()) if rnd % 2 == 0 else list(reversed(servers.items()))
            for workload, datafile in (("mesh", mesh_q), ("cached forwarded", fwd_q)):
                for name, port in order:
                    results.setdefault((workload, name), []).append(
                        dnsperf(port, pids[name], datafile, args.duration, args.clients)
                    )
        lat = {
            name: latency_at_rate(port, mesh_q, args.p99_qps, min(args.duration, 3.0))
            for name, port in servers.items()
        }

    def med(workload: str, name: str) -> Result:
        rs = results[(workload, name)]
        return Result(
            statistics.median(r.qps for r in rs),
            statistics.median(r.avg_ms for r in rs),
            max(r.lost for r in rs),
            statistics.median(r.cpu_us for r in rs),
        )

    print(
        f"load average after: {loadavg()}; {args.rounds} rounds x {args.duration}s, "
        f"{args.clients} dnsperf clients"
    )
    print(
        f"{'workload':<18} {'server':<12} {'QPS (median)':>13} {'avg ms':>8} {'lost %':>7} {'CPU us/q':>9}"
        "   QPS of every round"
    )
    ok = True
    for workload in ("mesh", "cached forwarded"):
        for name in servers:
            r = med(workload, name)
            rounds = ", ".join(f"{x.qps:,.0f}" for x in results[(workload, name)])
            print(
                f"{workload:<18} {name:<12} {r.qps:>13,.0f} {r.avg_ms:>8.3f} {r.lost:>7.2f} {r.cpu_us:>9.2f}"
                f"   [{rounds}]"
            )
        ratio = med(workload, "kuma-dp dns").qps / med(workload, "dnsmasq").qps
        cpu_ratio = med(workload, "dnsmasq").cpu_us / max(med(workload, "kuma-dp dns").cpu_us, 1e-9)
        target = 1.0 if workload == "mesh" else 0.8
        hit = ratio >= target
        ok &= hit
        print(
            f"{'':<18} QPS ratio ours/dnsmasq = {ratio:.2f} (target >= {target}) "
            f"{'OK' if hit else 'MISSED'}; "
            f"CPU-efficiency ratio (dnsmasq us/q / ours) = {cpu_ratio:.2f}"
        )
    for name, (p50, p99, bad) in lat.items():
        hit = p99 <= 1.0 or name != "kuma-dp dns"
        ok &= hit
        mark = ("OK" if p99 <= 1.0 else "MISSED") if name == "kuma-dp dns" else "(peer)"
        print(
            f"latency at {args.p99_qps:,} QPS, mesh, {name:<12} p50 {p50:.3f} ms  p99 {p99:.3f} ms  "
            f"non-NOERROR {bad}  target p99 <= 1 ms {mark}"
        )
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
