"""Pod start with the mesh against the same pod without it, and the Kubernetes limits, in the pod runtime.

    .venv/bin/python bench/pod_start.py [--reps 5] [--golden DIR]     (root)

* Start: Kuma's golden 13 (`inject.13.golden.yaml`, what kuma-cp's injector makes of `inject.13.input.yaml`:
  init container, sidecar, probes rewritten to the probe proxy) against the input Pod itself (the app and its
  own probes), each from `Pod.start()` to "all containers ready" as kubelet sees it (readiness probes
  passed), alternated mesh / plain `--reps` times after one discarded warm-up pair; the ratio of the medians
  is printed.
  The sidecar's probe timings from the injector config are scaled by the runtime's TIME_SCALE (see
  kuma_dp_dev/pods/runtime.py), the app's are real in both pods.
* Limits: the peak RSS of the init container's process tree (`kumactl install transparent-proxy` and the
  iptables/nft processes it runs) for the largest argument set among the goldens, sampled every ~2 ms (the sum
  of the tree's RSS at each sample, and the sum of each process's own peak, VmHWM, as an upper bound), against
  the injector's 50M limit; and the sidecar agent's RSS without Envoy (the kuma-dp process alone) once ready.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kuma_dp_dev.pods.runtime import Node, Pod  # noqa: E402

TIME_SCALE = 0.02
#: Process names of the pod runtime's own steps before the container's command runs (launch.py, setpriv).
LAUNCHER = {"python", "python3", "python3.11", "setpriv", "ip"}
MIB = 1024 * 1024


def start_time(node: Node, manifest: dict[str, Any], name: str) -> tuple[float, Pod]:
    pod = node.create_pod(manifest, name=name, namespace="bench").start()
    return pod.wait_ready(240), pod


def _memory_cgroup() -> Path | None:
    """A fresh cgroup v1 memory group for the init container, when this host has the v1 controller."""
    root = Path("/sys/fs/cgroup/memory")
    if not (root / "cgroup.procs").exists():
        return None
    group = root / f"kpod-bench-{os.getpid()}"
    group.mkdir(exist_ok=True)
    return group


def _hwm(p: psutil.Process) -> int:
    for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def init_tree_peak(node: Node, manifest: dict[str, Any]) -> tuple[int, int, int, list[str]]:
    """Run only the pod's kuma-init container, sampling its process tree; (peak sum of RSS, peak sum of PSS,
    sum of the processes' VmHWM, the argv). RSS counts the pages a forked child shares with its parent twice
    until it execs; PSS counts each page once, as the memory cgroup charges it."""
    pod = node.create_pod(manifest, name="limits", namespace="bench")
    st = pod.states["kuma-init"]
    peaks: dict[int, int] = {}
    names: dict[int, str] = {}
    best = best_pss = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal best, best_pss
        while not done.is_set():
            proc = st.proc
            if proc is None:
                time.sleep(0.001)
                continue
            try:
                root = psutil.Process(proc.pid)
                if root.name() in LAUNCHER:  # the runtime's launcher, before it execs the container's command
                    continue
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                time.sleep(0.002)
                continue
            total = total_pss = 0
            for p in tree:
                try:
                    total += p.memory_info().rss
                    total_pss += p.memory_full_info().pss
                    peaks[p.pid] = max(peaks.get(p.pid, 0), _hwm(p))
                    names[p.pid] = p.name()
                except (psutil.Error, OSError):
                    continue
            best = max(best, total)
            best_pss = max(best_pss, total_pss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    cgroup = _memory_cgroup()
    pod._start_container(st)  # the init container alone, as the pod worker would start it
    if cgroup is not None and st.proc is not None:
        # Moved in while the runtime's launcher still runs, before it execs kumactl: its children follow.
        (cgroup / "cgroup.procs").write_text(str(st.proc.pid))
    st.exited.wait(120)
    if cgroup is not None:
        usage = int((cgroup / "memory.max_usage_in_bytes").read_text())
        print(f"  memory cgroup peak (as a 50M limit counts, page cache included): {usage / MIB:.1f} MiB")
        cgroup.rmdir()
    done.set()
    sampler.join()
    assert st.exit_codes == [0], pod.log_tail("kuma-init")
    argv = [*pod.spec.container("kuma-init").command, *pod.spec.container("kuma-init").args]
    top = sorted(((peaks[p], names[p]) for p in peaks), reverse=True)[:6]
    print("  per-process peak RSS (VmHWM): " + ", ".join(f"{n} {v / MIB:.1f} MiB" for v, n in top))
    pod.delete(grace=2)
    return best, best_pss, sum(peaks.values()), argv


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--limits-only", action="store_true", help="only the init container's peak RSS")
    parser.add_argument("--golden", default=str(REPO.parent / "shared" / "conformance" / "kuma-2.14.3"))
    args = parser.parse_args()
    base = Path(args.golden) / "k8s-injector"
    meshed = yaml.safe_load((base / "inject.13.golden.yaml").read_text())
    plain = yaml.safe_load((base / "inject.13.input.yaml").read_text())
    goldens = {p.name: yaml.safe_load(p.read_text()) for p in sorted(base.glob("inject.*golden.yaml"))}

    with Node(time_scale=TIME_SCALE) as node:
        # The largest argument set the injector gave an init container among the goldens.
        def init_args(m: dict[str, Any]) -> list[str]:
            inits = (m.get("spec") or {}).get("initContainers") or []
            return next((c.get("args") or [] for c in inits if c.get("name") == "kuma-init"), [])

        largest = max(
            goldens, key=lambda n: (len(init_args(goldens[n])), len(" ".join(init_args(goldens[n]))))
        )
        print(f"init container limits ({largest}):")
        sampled, pss, upper, argv = init_tree_peak(node, goldens[largest])
        print(f"  argv: {' '.join(argv)}")
        print(f"  peak of the process tree: PSS {pss / MIB:.1f} MiB, RSS {sampled / MIB:.1f} MiB "
              "(a forked child's shared pages twice)")  # fmt: skip
        print(f"  sum of the peaks (VmHWM) of the processes sampled: {upper / MIB:.1f} MiB")
        print(f"  injector limit 50M = {50e6 / MIB:.1f} MiB, goal 35 MiB")

        if args.limits_only:
            return
        times: dict[str, list[float]] = {"mesh": [], "plain": []}
        agent_rss: list[int] = []
        for i in range(args.reps + 1):
            for kind, manifest in (("mesh", meshed), ("plain", plain)):
                took, pod = start_time(node, manifest, f"{kind}-{i}")
                if kind == "mesh":
                    st = pod.states["kuma-sidecar"]
                    assert st.proc is not None
                    agent_rss.append(psutil.Process(st.proc.pid).memory_info().rss)
                if i > 0:  # the first pair warms caches up: discarded
                    times[kind].append(took)
                pod.delete(grace=2)
        mesh_t, plain_t = statistics.median(times["mesh"]), statistics.median(times["plain"])
        print(f"pod start to all containers ready, median of {args.reps} (warm-up discarded, alternated):")
        print(f"  with the mesh {mesh_t:.2f}s, without {plain_t:.2f}s: ratio {mesh_t / plain_t:.2f}")
        rss = statistics.median(agent_rss) / MIB
        print(f"  sidecar agent RSS without Envoy once ready: {rss:.1f} MiB (median)")


if __name__ == "__main__":
    main()
