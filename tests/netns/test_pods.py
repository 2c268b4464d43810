"""Kuma's injector output, run unmodified in the pod runtime (`kuma_dp_dev.pods`): real kernel, real Envoy,
the dev CP as kuma-cp, kubelet's probes sent from the node namespace to the pod IP.

One node (namespace, bridge, dev CP, prober) serves the module; each test creates its pods and deletes them.
The sidecar's probe timings come from the injector config in the goldens (a readiness probe needing 11
successes 15 s apart), so the node runs them at `TIME_SCALE`; the apps' probes keep their own timings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from kuma_dp_dev.harness.poll import wait_until
from kuma_dp_dev.pods.runtime import Node, Pod

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

TIME_SCALE = 0.02
GOLDENS = [
    "inject.01.golden.yaml",
    "inject.06.golden.yaml",
    "inject.13.golden.yaml",
    "inject.14.golden.yaml",
    "inject.23.golden.yaml",
    "inject.sidecar-feature.01.golden.yaml",
    "inject.sidecar-feature.13.golden.yaml",
]


@pytest.fixture(scope="module")
def node(envoy_binary: str) -> Iterator[Node]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network and mount namespaces, iptables); CI runs as root")
    n = Node(envoy=envoy_binary, time_scale=TIME_SCALE).start()
    try:
        yield n
    finally:
        assert n.close() == [], "namespaces left behind"


def golden(conformance_dir: Path, name: str) -> dict[str, Any]:
    return yaml.safe_load((conformance_dir / "k8s-injector" / name).read_text())


def process_of(pod: Pod, container: str) -> psutil.Process:
    proc = pod.states[container].proc
    assert proc is not None and proc.poll() is None, pod.log_tail(container)
    return psutil.Process(proc.pid)


def root_mount_options(pid: int) -> set[str]:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return set(fields[5].split(","))
    raise AssertionError("no / mount")


@pytest.mark.parametrize("name", GOLDENS)
def test_golden_runs_unmodified(node: Node, conformance_dir: Path, name: str) -> None:
    manifest = golden(conformance_dir, name)
    pod = node.create_pod(manifest, namespace="goldens").start()
    try:
        pod.wait_ready(150)
        # Every init container that is not a native sidecar ran to completion with 0, once.
        for c in pod.spec.init_containers:
            if not c.native_sidecar:
                assert pod.states[c.name].exit_codes == [0], pod.log_tail(c.name)
        assert "transparent proxy installed" in pod.log_tail("kuma-init")
        rules = pod.exec(["nft", "list", "ruleset"]).stdout + pod.exec(["iptables-save"]).stdout
        assert "KUMA_MESH" in rules or "kuma" in rules.lower()
        # The sidecar: the agent as uid 5678 with a read-only root, Envoy beside it; ready through kubelet's
        # probe of <pod IP>:9901/ready (kuma-cp's admin listener -> the readiness reporter).
        agent = process_of(pod, "kuma-sidecar")
        assert agent.uids().real == 5678 and agent.gids().real == 5678
        assert "ro" in root_mount_options(agent.pid)
        assert any("envoy" in p.name() for p in agent.children(recursive=True))
        ready = [r for r in pod.results("kuma-sidecar", "readiness") if r.ok]
        assert ready and "READY" in ready[-1].detail
        # The control plane knows it as <pod>.<namespace> with the mesh from the pod's label.
        info = json.loads(pod.exec(["curl", "-sS", "http://127.0.0.1:9901/server_info"]).stdout)
        assert info["node"]["id"] == "default.busybox.goldens"
        # Native sidecars: started before the app container, which started only after.
        sidecar = pod.spec.container("kuma-sidecar")
        if sidecar.native_sidecar:
            assert pod.states["busybox"].pids
            first_app = psutil.Process(pod.states["busybox"].pids[0]).create_time()
            assert agent.create_time() <= first_app
    finally:
        pod.delete(grace=5)


def test_app_probes_go_through_the_probe_proxy_and_a_failing_app_fails_within_one_period(
    node: Node, conformance_dir: Path
) -> None:
    pod = node.create_pod(golden(conformance_dir, "inject.13.golden.yaml"), namespace="probes").start()
    try:
        pod.wait_ready(150)
        app = pod.spec.container("busybox")
        assert (
            app.readiness is not None and app.readiness.port == 9000 and app.readiness.path == "/3001/metrics"
        )

        # The app saw the probes of kubelet (its User-Agent forwarded) from the probe proxy, which dials from
        # 127.0.0.6 so the transparent proxy does not capture it, on the original ports and path.
        def probed() -> set[tuple[int, str, str]] | None:
            hits = json.loads(pod.exec(["curl", "-sS", f"http://{pod.ip}:8080/__hits"]).stdout)
            seen = {
                (h["port"], h["path"], h["client"]) for h in hits if h["user_agent"].startswith("kube-probe/")
            }
            return (
                seen if {(3001, "/metrics", "127.0.0.6"), (8080, "/metrics", "127.0.0.6")} <= seen else None
            )

        wait_until(probed, 30, "the app to see kubelet's probes from the probe proxy")
        # The app starts failing: the next readiness probe kubelet runs says so (the first result after the
        # switch is a failure: within one period), and after failureThreshold the container is not ready.
        app_proc = process_of(pod, "busybox")
        switched = time.monotonic()
        app_proc.send_signal(signal.SIGUSR1)
        # A probe already in flight when the signal landed may still report 200: the one after it may not.
        after = wait_until(lambda: [r for r in pod.results("busybox", "readiness") if r.at > switched][:2]
                           if len([r for r in pod.results("busybox", "readiness") if r.at > switched]) >= 2
                           else None, 30, "two readiness probes after the app failed")  # fmt: skip
        failed = [r for r in after if not r.ok]
        assert failed and "503" in failed[0].detail, after
        wait_until(lambda: not pod.states["busybox"].ready, 30, "the app container not ready")
        app_proc.send_signal(signal.SIGUSR2)
        wait_until(lambda: pod.states["busybox"].ready, 30, "the app container ready again")
    finally:
        pod.delete(grace=5)


def test_agent_killed_sidecar_probe_fails_and_restart_recovers(node: Node, conformance_dir: Path) -> None:
    pod = node.create_pod(golden(conformance_dir, "inject.01.golden.yaml"), namespace="restart").start()
    try:
        pod.wait_ready(150)
        st = pod.states["kuma-sidecar"]
        agent = process_of(pod, "kuma-sidecar")
        family = agent.children(recursive=True)
        killed = time.monotonic()
        agent.kill()
        # The agent is a child of this process: the runtime's supervisor reaps it and records its exit code.
        # psutil must not wait for it too (whichever reaped it first would leave the other a made-up 0).
        assert st.exited.wait(10), "the agent did not exit"
        _, alive = psutil.wait_procs(family, timeout=10)
        assert alive == [], "Envoy outlived its agent"
        # kubelet's probe of <pod IP>:9901/ready fails: nothing listens there any more.
        after = wait_until(lambda: [r for r in pod.results("kuma-sidecar", "readiness") if r.at > killed], 30,
                           "a sidecar probe after the kill")  # fmt: skip
        assert after[0].ok is False, after[0]
        # The container exited; kubelet restarts it (back-off) and it becomes ready again.
        wait_until(lambda: st.restarts >= 1 and st.ready, 120, "the sidecar restarted and ready")
        assert st.exit_codes[0] == -signal.SIGKILL
        assert [r for r in pod.results("kuma-sidecar", "readiness") if r.at > killed and r.ok]
        assert pod.all_ready()
    finally:
        pod.delete(grace=5)


def test_builtin_dns_pod_resolves_through_the_coredns_port(node: Node, conformance_dir: Path) -> None:
    """Golden 23: the init container redirects all DNS to 25053 (the CoreDNS port the injector chose); the
    embedded server takes CoreDNS's place there and answers the app for another pod's service."""
    other = node.create_pod(golden(conformance_dir, "inject.01.golden.yaml"), name="other", namespace="dns")
    pod = node.create_pod(golden(conformance_dir, "inject.23.golden.yaml"), namespace="dns")
    try:
        other.start()
        pod.start().wait_ready(150)
        init_args = pod.spec.container("kuma-init").args
        assert "--redirect-dns-port=25053" in init_args and "--redirect-all-dns-traffic" in init_args
        listening = pod.exec(["ss", "-lunp"]).stdout
        assert ":25053" in listening and "kuma-dp" in listening, listening
        # The app (uid 1000) asks its resolv.conf name server (the node's address, where nothing answers
        # DNS): the rules send the query to the agent's server, which answers from the CP's table.
        name = "other.dns.svc.mesh"  # the dotted alias: glibc refuses host names with "_"

        def resolved() -> subprocess.CompletedProcess[str] | None:
            r = pod.exec(["getent", "ahostsv4", name], uid=1000)
            return r if r.returncode == 0 else None

        r = wait_until(resolved, 60, f"getent {name}")
        assert r.stdout.split()[0].startswith("240."), r.stdout
    finally:
        pod.delete(grace=5)
        other.delete(grace=5)


def test_pod_runtime_demo_once(require_root: None, conformance_dir: Path) -> None:
    """`kuma-dp demo --pod <golden> --once`: a person runs a golden by hand and sees it ready."""
    path = conformance_dir / "k8s-injector" / "inject.sidecar-feature.13.golden.yaml"
    argv = [sys.executable, "-m", "kuma_dp", "demo", "--pod", str(path), "--once"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all containers ready" in r.stdout, r.stdout
