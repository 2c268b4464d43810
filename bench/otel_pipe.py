"""The OpenTelemetry pipe against exporting straight to the collector, measured side by side in one run.

    .venv/bin/python bench/otel_pipe.py [--reps 5] [--requests 2000] [--spans 10]

One real OTLP gRPC collector (kuma_dp_dev.otlp_collector, in this process) and one real agent
(kuma_dp_dev/harness/static_agent.py: `run_agent` with Envoy, whose dynamic-config listener serves `/otel`,
so the agent's receiver forwards to that collector). The peer is the same gRPC client exporting to the
collector directly, as Envoy does without the pipe. Runs alternate (direct, pipe, direct, ...), the first
pair is a discarded warm-up, medians are reported:

* throughput: `--requests` ExportTraceServiceRequests of `--spans` spans each, sent back to back; time until
  the collector holds all of them; spans/s and the ratio pipe/direct;
* added latency: one request at a time, time from the send to the collector having it; median and p99 of
  each, and the difference (the pipe's hop);
* the agent's RSS (Python process only, psutil) with the pipe idle and with receivers running, and the ratio;
  the agent without OpenTelemetry must stay within 35 MiB (grpc is imported only with a backend).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as svc
from opentelemetry.proto.trace.v1 import trace_pb2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kuma_dp.envoy import find_envoy  # noqa: E402
from kuma_dp.paths import otel_socket_path  # noqa: E402
from kuma_dp_dev.devcp.xds import dynconf_listener  # noqa: E402
from kuma_dp_dev.harness.ports import free_port  # noqa: E402
from kuma_dp_dev.otlp_collector import OtlpCollector  # noqa: E402

MIB = 1024 * 1024
METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def request(n_spans: int, seq: int) -> bytes:
    spans = [
        trace_pb2.Span(
            name=f"span-{seq}-{i}", trace_id=seq.to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big")
        )
        for i in range(n_spans)
    ]
    req = svc.ExportTraceServiceRequest(
        resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=spans)])]
    )
    return req.SerializeToString()


def start_agent(work: Path, collector_port: int, with_otel: bool) -> subprocess.Popen[bytes]:
    paths: dict[str, bytes] = {}
    if with_otel:
        backend = {
            "name": "bench",
            "socketPath": otel_socket_path(work, "bench"),
            "endpoint": f"127.0.0.1:{collector_port}",
            "useHTTP": False,
            "traces": {"enabled": True},
        }
        paths["/otel"] = json.dumps({"backends": [backend]}).encode()
    listeners = [dynconf_listener(str(work), paths)] if paths else []
    doc = {
        "node": {"id": "default.bench", "cluster": "bench"},
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": free_port()}}},
        "staticResources": {"listeners": listeners},
    }
    bootstrap = work / "bootstrap.yaml"
    bootstrap.write_text(json.dumps(doc))
    argv = [sys.executable, "-m", "kuma_dp_dev.harness.static_agent", "run", str(bootstrap),
            "--readiness-port", str(free_port()), "--binary-path", str(find_envoy("envoy"))]  # fmt: skip
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        if proc.poll() is None:
            proc.send_signal(sig)
            time.sleep(0.1)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_count(collector: OtlpCollector, n: int, timeout: float = 120) -> None:
    collector.wait_for(lambda c: len(c.traces) >= n, timeout)


def throughput(target: str, collector: OtlpCollector, payloads: list[bytes], n_spans: int) -> float:
    before = len(collector.traces)
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(METHOD)
        t0 = time.perf_counter()
        futures = [call.future(p, timeout=60) for p in payloads]
        for f in futures:
            f.result()
        wait_count(collector, before + len(payloads))
        elapsed = time.perf_counter() - t0
    return len(payloads) * n_spans / elapsed


def latency(target: str, collector: OtlpCollector, payloads: list[bytes]) -> list[float]:
    out = []
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(METHOD)
        for p in payloads:
            before = len(collector.traces)
            t0 = time.perf_counter()
            call(p, timeout=10)
            wait_count(collector, before + 1, timeout=10)
            out.append(time.perf_counter() - t0)
    return out


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.99) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--spans", type=int, default=10)
    parser.add_argument("--latency-samples", type=int, default=200)
    args = parser.parse_args()
    collector = OtlpCollector()
    port = collector.start_grpc("127.0.0.1:0")
    results: dict[str, dict[str, list[Any]]] = {m: {"tput": [], "lat": []} for m in ("direct", "pipe")}
    with tempfile.TemporaryDirectory(prefix="kdp-otel-", dir="/tmp") as tmp:
        work = Path(tmp)
        agent = start_agent(work, port, with_otel=True)
        sock = otel_socket_path(work, "bench")
        try:
            deadline = time.monotonic() + 60
            while not Path(sock).exists():
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the agent did not start its OTel receiver")
                time.sleep(0.05)
            time.sleep(0.5)
            rss_otel = psutil.Process(agent.pid).memory_info().rss
            targets = {"direct": f"127.0.0.1:{port}", "pipe": f"unix:{sock}"}
            seq = 0
            for rep in range(args.reps + 1):  # rep 0 is the warm-up
                for mode in ("direct", "pipe") if rep % 2 == 0 else ("pipe", "direct"):
                    payloads = [request(args.spans, seq + i) for i in range(args.requests)]
                    seq += args.requests
                    tput = throughput(targets[mode], collector, payloads, args.spans)
                    lat = latency(targets[mode], collector, payloads[: args.latency_samples])
                    if rep > 0:
                        results[mode]["tput"].append(tput)
                        results[mode]["lat"].extend(lat)
        finally:
            stop(agent)
        (work / "idle").mkdir()
        idle = start_agent(work / "idle", port, with_otel=False)
        try:
            time.sleep(3.0)  # started and settled
            rss_idle = psutil.Process(idle.pid).memory_info().rss
        finally:
            stop(idle)
    collector.stop()
    d_t, p_t = (statistics.median(results[m]["tput"]) for m in ("direct", "pipe"))
    d_l, p_l = (statistics.median(results[m]["lat"]) for m in ("direct", "pipe"))
    print(
        f"OTLP traces, {args.requests} requests x {args.spans} spans, median of {args.reps} (warm-up dropped)"
    )
    print(f"  direct to collector   {d_t:10.0f} spans/s   latency median {d_l * 1000:6.2f} ms  "
          f"p99 {p99(results['direct']['lat']) * 1000:6.2f} ms")  # fmt: skip
    print(f"  through the pipe      {p_t:10.0f} spans/s   latency median {p_l * 1000:6.2f} ms  "
          f"p99 {p99(results['pipe']['lat']) * 1000:6.2f} ms")  # fmt: skip
    print(f"  ratio pipe/direct     throughput {p_t / d_t:5.2f}   latency {p_l / d_l:5.2f} "
          f"(added {1000 * (p_l - d_l):+.2f} ms)")  # fmt: skip
    print(f"agent RSS (Python process): without OpenTelemetry {rss_idle / MIB:.1f} MiB (target <= 35), "
          f"with a pipe backend {rss_otel / MIB:.1f} MiB, ratio {rss_otel / rss_idle:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
