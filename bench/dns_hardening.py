#!/usr/bin/env python3
"""Benchmark: the DNS server under a big table swap and under fd exhaustion, next to dnsmasq in the same run.

    bench/dns_hardening.py [--mode swap|fds|all] [--names 100000] [--rounds 2] [--tree DIR]

* `swap`: `kuma-dp dns` serves a 100k-name records file; a prober sends a query every 2 ms (mesh and cached
  forwarded names alternately) while the file is replaced by another 100k-name file. Printed: the longest
  gap between two answers and the slowest answer during the swap, queries lost, and the same for dnsmasq
  re-reading a 100k-line `--addn-hosts` file on SIGHUP (its reload is synchronous too). Lower is better.
* `fds`: the server runs with RLIMIT_NOFILE=`--nofile` and a client holds idle TCP connections to it until
  accepts fail (EMFILE); then forwarded UDP queries (all cache misses) and TCP queries are sent. Printed: how
  many got a correct answer, and how many log lines and tracebacks the server wrote meanwhile; dnsmasq under
  the same limit and the same idle connections alongside.

`--tree DIR` runs the server from another checkout (e.g. a copy taken before a change) for before/after
figures. It is a benchmark, not a test: it exits 0 unless a tool is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# bench/dns.py would shadow dnspython's `dns` package: import from the repository root, not from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

import dns.exception  # noqa: E402
import dns.message  # noqa: E402
import dns.rcode  # noqa: E402

from kuma_dp_dev.harness.dnsmasq import ServerProcess, free_udp_tcp_port, start_dnsmasq  # noqa: E402
from kuma_dp_dev.harness.poll import wait_until  # noqa: E402
from kuma_dp_dev.harness.procs import stop  # noqa: E402


def payload(n: int, third: int) -> dict[str, object]:
    """`n` names; `third` picks the third octet block so two payloads differ in every address."""
    return {
        "records": [
            {"name": f"svc-{i:06d}.mesh", "ips": [f"240.{third}.{i // 256 % 256}.{i % 256}"]}
            for i in range(n)
        ],
        "ttl": 30,
        "extraLabels": {"mesh": "default"},
    }


def hosts(n: int, third: int) -> str:
    return "".join(f"240.{third}.{i // 256 % 256}.{i % 256} svc-{i:06d}.mesh\n" for i in range(n))


def ask(port: int, name: str, tcp: bool = False, timeout: float = 3.0) -> dns.message.Message | None:
    import dns.query

    q = dns.message.make_query(name, "A")
    try:
        if tcp:
            return dns.query.tcp(q, "127.0.0.1", port=port, timeout=timeout)
        return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)
    except (OSError, EOFError, dns.exception.DNSException):
        return None  # no answer: refused, closed, timed out


def first_a(port: int, name: str) -> str | None:
    r = ask(port, name, timeout=1.0)
    if r is None or not r.answer:
        return None
    return r.answer[-1][0].to_text()


#: `kuma-dp dns` on the standard asyncio loop, as inside `kuma-dp run` (the command itself prefers uvloop).
ON_ASYNCIO = (
    "import asyncio, sys; import kuma_dns.cli as cli; "
    "cli._run_loop = lambda main: asyncio.run(main()); cli.dns(sys.argv[1:], prog_name='kuma-dp dns')"
)


def start_ours(
    tree: Path,
    tmp: Path,
    records: Path,
    upstream: int,
    nofile: int | None = None,
    plain_asyncio: bool = False,
) -> ServerProcess:
    (tmp / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    command = ["-c", ON_ASYNCIO] if plain_asyncio else ["-m", "kuma_dp", "dns"]
    env = dict(os.environ, PYTHONPATH=str(tree))

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log = tmp / f"ours-{time.monotonic_ns()}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                *command,
                "--port",
                "0",
                "--records",
                str(records),
                "--upstream",
                f"127.0.0.1:{upstream}",
                "--resolv-conf",
                str(tmp / "resolv.conf"),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=tree,
            env=env,
            preexec_fn=limit,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening port="):
        stop(proc)
        raise RuntimeError(f"kuma-dp dns did not start: {log.read_text()[-800:]}")
    return ServerProcess(proc, int(line.split("=")[1]), log)


@dataclass
class Probe:
    sent: int
    answered: int
    max_gap_ms: float
    max_latency_ms: float
    p99_ms: float


class Prober:
    """Sends one query every `interval` seconds over one UDP socket and times every answer by its ID."""

    def __init__(self, port: int, names: list[str], interval: float = 0.002) -> None:
        self.port = port
        self.wires = [dns.message.make_query(n, "A").to_wire() for n in names]
        self.interval = interval
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(0.05)
        self.sent: dict[int, float] = {}
        self.got: dict[int, float] = {}
        self.arrivals: list[float] = []
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self._send), threading.Thread(target=self._recv)]

    def _send(self) -> None:
        i = 0
        nxt = time.monotonic()
        while not self.stop_flag.is_set():
            qid = i % 65536
            wire = bytearray(self.wires[i % len(self.wires)])
            wire[0:2] = qid.to_bytes(2, "big")
            self.sent[qid] = time.monotonic()
            with contextlib.suppress(OSError):
                self.sock.send(bytes(wire))
            i += 1
            nxt += self.interval
            time.sleep(max(0.0, nxt - time.monotonic()))

    def _recv(self) -> None:
        while not self.stop_flag.is_set() or len(self.got) < len(self.sent):
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                if self.stop_flag.is_set():
                    return
                continue
            except OSError:
                continue
            now = time.monotonic()
            self.got[int.from_bytes(data[0:2], "big")] = now
            self.arrivals.append(now)

    def __enter__(self) -> Prober:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1.0)  # let the last answers arrive
        self.stop_flag.set()
        for t in self.threads:
            t.join()
        self.sock.close()

    def window(self, start: float, end: float) -> Probe:
        ids = [q for q, t in self.sent.items() if start <= t <= end]
        lat = sorted((self.got[q] - self.sent[q]) * 1000 for q in ids if q in self.got)
        arr = [t for t in self.arrivals if start <= t <= end + 6]
        gaps = [b - a for a, b in itertools.pairwise(arr)]
        return Probe(
            len(ids),
            len(lat),
            max(gaps, default=float("nan")) * 1000,
            max(lat, default=float("nan")),
            lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
        )


def swap_round(
    server: str, port: int, replace: object, check_name: str, new_ip: str, names: list[str]
) -> Probe:
    """Replace the table (callable `replace`) under the prober; the window ends once the new table answers."""
    with Prober(port, names) as prober:
        time.sleep(0.5)  # warm: the prober's first answers, then the swap
        start = time.monotonic()
        replace()  # type: ignore[operator]
        wait_until(lambda: first_a(port, check_name) == new_ip, 120, f"{server} to serve the new table")
        end = time.monotonic()
        time.sleep(0.3)
    return prober.window(start, end)


def mode_swap(args: argparse.Namespace, tmp: Path) -> None:
    n = args.names
    pa, pb = payload(n, 1), payload(n, 2)
    recs = tmp / "records.json"
    recs.write_text(json.dumps(pa))
    (tmp / "a.json").write_text(json.dumps(pa))
    (tmp / "b.json").write_text(json.dumps(pb))
    (tmp / "hosts-a").write_text(hosts(n, 1))
    (tmp / "hosts-b").write_text(hosts(n, 2))
    shutil.copy(tmp / "hosts-a", tmp / "hosts")
    check = f"svc-{n - 1:06d}.mesh"
    probe_names = ["svc-000001.mesh", "svc-000002.mesh", "fwd-1.example.test", "fwd-2.example.test"]
    results: dict[str, list[Probe]] = {"kuma-dp dns": [], "dnsmasq": []}
    with start_dnsmasq(tmp, "--address=/example.test/10.9.9.9", "--local-ttl=3600") as origin:
        ours = start_ours(args.tree, tmp, recs, origin.port)
        peer = start_dnsmasq(
            tmp,
            f"--addn-hosts={tmp / 'hosts'}",
            "--local-ttl=30",
            "--cache-size=10000",
            f"--server=127.0.0.1#{origin.port}",
            timeout=60,
        )
        try:
            for port in (ours.port, peer.port):
                wait_until(lambda p=port: first_a(p, check) is not None, 120, "the first table")
                for nm in probe_names:
                    ask(port, nm)  # cache the forwarded names
            state = {"ours": 1, "peer": 1}
            for rnd in range(args.rounds):
                order = ["kuma-dp dns", "dnsmasq"] if rnd % 2 == 0 else ["dnsmasq", "kuma-dp dns"]
                for server in order:
                    if server == "kuma-dp dns":
                        state["ours"] = 3 - state["ours"]
                        src = tmp / ("a.json" if state["ours"] == 1 else "b.json")

                        def replace(src: Path = src) -> None:
                            shutil.copy(src, tmp / "records.tmp")
                            os.replace(tmp / "records.tmp", recs)

                        ip = f"240.{state['ours']}.{(n - 1) // 256 % 256}.{(n - 1) % 256}"
                        results[server].append(swap_round(server, ours.port, replace, check, ip, probe_names))
                    else:
                        state["peer"] = 3 - state["peer"]
                        src = tmp / ("hosts-a" if state["peer"] == 1 else "hosts-b")

                        def replace_peer(src: Path = src) -> None:
                            shutil.copy(src, tmp / "hosts.tmp")
                            os.replace(tmp / "hosts.tmp", tmp / "hosts")
                            peer.proc.send_signal(signal.SIGHUP)

                        ip = f"240.{state['peer']}.{(n - 1) // 256 % 256}.{(n - 1) % 256}"
                        results[server].append(
                            swap_round(server, peer.port, replace_peer, check, ip, probe_names)
                        )
        finally:
            stop(ours.proc)
            peer.stop()
    print(f"swap: {n:,} names replaced by {n:,} others while a query is sent every 2 ms (mesh + forwarded)")
    print(
        f"{'server':<12} {'max gap ms':>11} {'max latency ms':>15} {'p99 ms':>8} {'lost':>6}"
        "   rounds (max gap)"
    )
    worst = {}
    for server, probes in results.items():
        worst[server] = max(p.max_gap_ms for p in probes)
        print(
            f"{server:<12} {worst[server]:>11.1f} {max(p.max_latency_ms for p in probes):>15.1f} "
            f"{statistics.median(p.p99_ms for p in probes):>8.1f} "
            f"{sum(p.sent - p.answered for p in probes):>6}"
            f"   [{', '.join(f'{p.max_gap_ms:.0f}' for p in probes)}]"
        )
    print(f"max-gap ratio ours/dnsmasq = {worst['kuma-dp dns'] / worst['dnsmasq']:.2f} (lower is better)")


def idle_connections(port: int, count: int) -> list[socket.socket]:
    """Open up to `count` idle TCP connections (nothing sent); the server's accept queue takes the rest."""
    out = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        out.append(s)
    return out


def fd_round(
    server: str, port: int, log: Path, pid: int, args: argparse.Namespace
) -> tuple[int, int, int, int]:
    log_before = len(log.read_text(errors="replace").splitlines())
    tb_before = log.read_text(errors="replace").count("Traceback")
    conns = idle_connections(port, args.nofile * 2)
    try:
        time.sleep(1.0)  # the server accepts until EMFILE
        udp_ok = 0
        for i in range(args.queries):
            r = ask(port, f"miss-{pid}-{i}.example.test", timeout=2.0)
            udp_ok += r is not None and r.rcode() == dns.rcode.NOERROR and bool(r.answer)
        tcp_ok = 0
        for i in range(args.queries // 4):
            name = "svc-000001.mesh" if i % 2 else f"tcp-{pid}-{i}.example.test"
            r = ask(port, name, tcp=True, timeout=2.0)
            tcp_ok += r is not None and r.rcode() == dns.rcode.NOERROR and bool(r.answer)
        time.sleep(1.0)
    finally:
        for s in conns:
            s.close()
    text = log.read_text(errors="replace")
    return udp_ok, tcp_ok, len(text.splitlines()) - log_before, text.count("Traceback") - tb_before


def mode_fds(args: argparse.Namespace, tmp: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    recs = tmp / "fd-records.json"
    recs.write_text(json.dumps(payload(10, 1)))
    (tmp / "fd-hosts").write_text(hosts(10, 1))
    rows = []
    with start_dnsmasq(tmp, "--address=/example.test/10.9.9.9", "--local-ttl=3600") as origin:
        for rnd in range(args.rounds):
            order = ["ours/uvloop", "ours/asyncio", "dnsmasq"]
            for server in order if rnd % 2 == 0 else reversed(order):
                if server.startswith("ours"):
                    srv = start_ours(
                        args.tree, tmp, recs, origin.port, args.nofile, plain_asyncio=server == "ours/asyncio"
                    )
                else:
                    port = free_udp_tcp_port()
                    srv = start_dnsmasq(
                        tmp,
                        f"--addn-hosts={tmp / 'fd-hosts'}",
                        f"--server=127.0.0.1#{origin.port}",
                        port=port,
                    )
                    subprocess.run(
                        ["prlimit", f"--pid={srv.proc.pid}", f"--nofile={args.nofile}:{args.nofile}"],
                        check=True,
                    )
                try:
                    wait_until(lambda p=srv.port: first_a(p, "svc-000001.mesh"), 30, "the server")
                    rows.append((server, *fd_round(server, srv.port, srv.log, rnd, args)))
                finally:
                    srv.stop()
    print(
        f"fds: RLIMIT_NOFILE={args.nofile}, {args.nofile * 2} idle TCP connections held, then {args.queries} "
        f"forwarded UDP queries (cache misses) and {args.queries // 4} TCP queries (mesh + forwarded)"
    )
    print(f"{'server':<13} {'UDP answered':>13} {'TCP answered':>13} {'log lines':>10} {'tracebacks':>11}")
    for server, udp, tcp, lines, tbs in rows:
        print(
            f"{server:<12} {udp:>6}/{args.queries:<6} {tcp:>6}/{args.queries // 4:<6} {lines:>10} {tbs:>11}"
        )
    asked = len([r for r in rows if r[0] == "dnsmasq"]) * (args.queries + args.queries // 4)
    for server in ("ours/uvloop", "ours/asyncio", "dnsmasq"):
        got = sum(r[1] + r[2] for r in rows if r[0] == server)
        print(f"{server:<12} answered {got}/{asked} ({100 * got / max(asked, 1):.0f}%)")
    print("(ours = kuma-dp dns; ours/asyncio is the loop `kuma-dp run` uses)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["swap", "fds", "all"], default="all")
    ap.add_argument("--names", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nofile", type=int, default=128, help="RLIMIT_NOFILE of the servers in the fds mode")
    ap.add_argument("--queries", type=int, default=40, help="forwarded UDP queries in the fds mode")
    ap.add_argument("--tree", type=Path, default=REPO, help="checkout to run kuma-dp dns from")
    args = ap.parse_args()
    for tool in ("dnsmasq", "dig", "prlimit"):
        if not shutil.which(tool):
            print(
                f"bench/dns_hardening: {tool} not found (apt install dnsmasq-base bind9-dnsutils util-linux)"
            )
            return 2
    args.tree = args.tree.resolve()
    print(
        f"bench/dns_hardening: server tree {args.tree}; "
        f"load average {os.getloadavg()[0]:.2f} (shared machine)"
    )
    tmp = Path(tempfile.mkdtemp(prefix="kdns-hard-"))
    try:
        if args.mode in ("swap", "all"):
            mode_swap(args, tmp)
        if args.mode in ("fds", "all"):
            mode_fds(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
