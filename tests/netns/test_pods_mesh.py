"""Pods that talk over `*.mesh`, and a pod deleted under traffic, in the pod runtime (`kuma_dp_dev.pods`).

Three copies of Kuma's golden 23 (builtin DNS, `KUMA_DATAPLANE_DRAIN_TIME=5s`), unmodified but for their
names: `client` in namespace `front`, `server-1` and `server-2` in `back`, where the Kubernetes Service
`backend` (port 80 -> 8080, appProtocol http) selects them, so kuma-cp's converter makes the service
`backend_back_svc_80`. The client's app resolves `backend.back.svc.80.mesh` through its pod's DNS (redirected
by the init container's rules to the agent's server on the CoreDNS port) and curls it through both sidecars.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuma_dp_dev.harness.poll import wait_until
from kuma_dp_dev.pods.runtime import Node, Pod

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

TIME_SCALE = 0.02
MESH_NAME = "backend.back.svc.80.mesh"
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "backend", "namespace": "back"},
    "spec": {
        "selector": {"run": "busybox"},
        "ports": [{"port": 80, "targetPort": 8080, "appProtocol": "http"}],
    },
}


class Mesh:
    def __init__(self, node: Node, client: Pod, servers: dict[str, Pod]) -> None:
        self.node, self.client, self.servers = node, client, servers

    def curl(self, url: str, timeout: float = 10) -> dict[str, Any]:
        """curl as uid 1000 in the client pod: {"status", "headers", "body"} or {"error"}."""
        r = self.client.exec(["curl", "-sS", "-D", "-", "--max-time", str(timeout), url], uid=1000,
                             timeout=timeout + 10)  # fmt: skip
        if r.returncode != 0:
            return {"error": r.stderr.strip() or f"curl exit {r.returncode}"}
        head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
        lines = head.splitlines()
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = body
        return {"status": int(lines[0].split()[1]), "headers": headers, "body": parsed}

    def endpoints(self) -> list[str]:
        """Endpoints of the backend cluster in the client's Envoy."""
        out = self.client.exec(["curl", "-sS", "http://127.0.0.1:9901/clusters"]).stdout
        found = set()
        for line in out.splitlines():
            parts = line.split("::")
            if len(parts) >= 3 and parts[0] == "backend_back_svc_80" and parts[1][:1].isdigit():
                found.add(parts[1])
        return sorted(found)

    def in_flight(self, pod: Pod) -> int:
        """Requests in flight on the pod's inbound listeners (Envoy's http.inbound_*.downstream_rq_active)."""
        out = pod.exec(["curl", "-sS", "http://127.0.0.1:9901/stats?filter=downstream_rq_active"]).stdout
        total = 0
        for line in out.splitlines():
            key, _, value = line.partition(": ")
            if key.startswith("http.inbound") and value.strip().isdigit():
                total += int(value)
        return total


def ok(resp: dict[str, Any]) -> bool:
    return resp.get("status") == 200 and isinstance(resp.get("body"), dict)


@pytest.fixture(scope="module")
def mesh(envoy_binary: str, conformance_dir: Path) -> Iterator[Mesh]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network and mount namespaces, iptables); CI runs as root")
    manifest = yaml.safe_load((conformance_dir / "k8s-injector" / "inject.23.golden.yaml").read_text())
    node = Node(envoy=envoy_binary, time_scale=TIME_SCALE, services=[SERVICE]).start()
    try:
        client = node.create_pod(manifest, name="client", namespace="front").start()
        servers = {
            n: node.create_pod(manifest, name=n, namespace="back").start() for n in ("server-1", "server-2")
        }
        for pod in (client, *servers.values()):
            pod.wait_ready(200)
        yield Mesh(node, client, servers)
    finally:
        assert node.close() == [], "namespaces left behind"


def test_two_pods_talk_over_mesh(mesh: Mesh) -> None:
    ips = sorted(f"{p.ip}:8080" for p in mesh.servers.values())
    wait_until(lambda: mesh.endpoints() == ips, 60, "the client's Envoy to hold both servers")

    # The client's app resolves the mesh name with its pod's resolver (the agent's DNS server answers).
    def resolved() -> Any:
        r = mesh.client.exec(["getent", "ahostsv4", MESH_NAME], uid=1000)
        return r if r.returncode == 0 else None

    r = wait_until(resolved, 30, f"getent {MESH_NAME}")
    vip = r.stdout.split()[0]
    assert vip.startswith("240."), r.stdout
    resp = wait_until(
        lambda: (x := mesh.curl(f"http://{MESH_NAME}/")) and ok(x) and x, 60, "curl the mesh name"
    )
    # Through both sidecars: the client's Envoy added x-request-id (seen by the server's app), the server's
    # Envoy answered as envoy; the server's app saw the request from its own Envoy, not from the client.
    assert resp["headers"].get("server") == "envoy" and "x-envoy-upstream-service-time" in resp["headers"]
    assert "X-Request-Id" in resp["body"]["headers"] or "x-request-id" in resp["body"]["headers"]
    answered = {mesh.curl(f"http://{MESH_NAME}/")["body"]["pod"] for _ in range(10)}
    assert answered == {"server-1", "server-2"}


def test_pod_deletion_sigterm_all_at_once_and_drain_without_failed_requests(mesh: Mesh) -> None:
    ips = sorted(f"{p.ip}:8080" for p in mesh.servers.values())
    wait_until(lambda: mesh.endpoints() == ips, 60, "the client's Envoy to hold both servers")
    victim = mesh.servers["server-2"]
    survivor = mesh.servers["server-1"]
    during: list[dict[str, Any]] = []
    moved = threading.Event()

    def keep_asking() -> None:
        while not moved.is_set():
            during.append(mesh.curl(f"http://{MESH_NAME}/"))
            if mesh.endpoints() == [f"{survivor.ip}:8080"]:
                moved.set()

    with ThreadPoolExecutor(max_workers=8) as pool:
        # Slow requests (the app waits 2 s) over both servers: some are in flight on server-2.
        slow = [pool.submit(mesh.curl, f"http://{MESH_NAME}/?delay=2", 20) for _ in range(6)]
        wait_until(lambda: mesh.in_flight(victim) > 0, 15, "a request in flight on server-2")
        deletion = pool.submit(victim.delete)
        asker = pool.submit(keep_asking)
        results = [f.result() for f in slow]
        try:
            deletion.result(60)
            assert moved.wait(30), "the client's Envoy still has server-2's endpoint"
        finally:
            moved.set()
            asker.result()
    assert all(ok(r) for r in results), results
    assert "server-2" in {r["body"]["pod"] for r in results}  # server-2 finished what it had accepted
    failed = [r for r in during if not ok(r)]
    assert failed == [], f"{len(failed)} of {len(during)} requests failed during the deletion: {failed[:3]}"
    # SIGTERM went to every container at once: all were signalled before the first one exited.
    states = [victim.states[c.name] for c in victim.spec.containers]
    assert all(st.signalled_at is not None and st.exited_at is not None for st in states)
    assert max(st.signalled_at for st in states) <= min(st.exited_at for st in states)  # type: ignore[type-var]
    # The sidecar drained for KUMA_DATAPLANE_DRAIN_TIME (5s in the golden) before it exited, cleanly.
    sidecar = victim.states["kuma-sidecar"]
    assert sidecar.exit_codes[-1] == 0, victim.log_tail("kuma-sidecar")
    assert sidecar.exited_at - sidecar.signalled_at >= 5.0  # type: ignore[operator]
    assert {mesh.curl(f"http://{MESH_NAME}/")["body"]["pod"] for _ in range(5)} == {"server-1"}
