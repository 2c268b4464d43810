"""The whole agent on "VMs": the dev CP and three workload hosts, each its own network namespace on
one bridge, each workload host with the transparent-proxy rules (installed by root) and `kuma-dp run
--transparent-proxy` running as uid 5678. The application is plain `curl http://backend.mesh/` as uid 1000.

One topology serves the whole module (start-up is the expensive part); each test first restores what it needs
(`ensure_agent`), and the fixture's teardown proves no namespace or resolv.conf is left (deleting a namespace
removes its veth and its rules; every process we started is stopped by pid).

`KUMA_VM_CP_OUTAGE_SECONDS` sets how long the control plane stays down in the outage scenario: 5 s by default
to keep the suite short; `KUMA_VM_CP_OUTAGE_SECONDS=30` runs the 30 s outage the mesh is required to ride out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest

from kuma_dp_dev.demo_netns import (
    APP_UID,
    PROXY_UID,
    Topology,
    inbound_requests,
    through_both_envoys,
    wait_until,
)
from tests.helpers.vmhosts import PY, ensure_agent, processes_in, stat, topology, wait_endpoints

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

URL = "http://backend.mesh/"
CP_OUTAGE = float(os.environ.get("KUMA_VM_CP_OUTAGE_SECONDS", "5"))


@pytest.fixture(scope="module")
def vm(envoy_binary: str) -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces and iptables); CI runs as root")
    yield from topology(envoy_binary)


def ok(resp: dict[str, Any]) -> bool:
    return resp.get("status") == 200 and isinstance(resp.get("body"), dict)


def success(vm: Topology) -> dict[str, Any] | None:
    resp = vm.curl("web", URL)
    return resp if ok(resp) else None


def answer(vm: Topology) -> dict[str, Any]:
    """A request that must succeed (with the response in the failure message if not)."""
    resp = vm.curl("web", URL)
    assert ok(resp), resp
    return resp


def test_vm_curl_backend_mesh_through_both_envoys(vm: Topology) -> None:
    for role in ("web", "be1", "be2"):
        ensure_agent(vm, role)
    vips = wait_until(lambda: vm.getent("web", "backend.mesh"), 30, "getent hosts backend.mesh")
    # The name resolves to the VIP web's Envoy has its outbound listener on (what the CP pushed).
    assert len(vips) == 1 and vips[0].startswith("240.")
    assert f"outbound:{vips[0]}:80" in vm.admin("web", "/listeners")
    # The same through `getent hosts` (the glibc path an application takes).
    hosts = vm.exec("web", ["getent", "hosts", "backend.mesh"], uid=APP_UID)
    assert hosts.stdout.split()[0] == vips[0], hosts

    before = {h: inbound_requests(vm, h) for h in ("be1", "be2")}
    vip_cx = f"listener.{vips[0]}_80.downstream_cx_total"
    cx_before = stat(vm, "web", vip_cx) or 0
    resp = wait_until(lambda: success(vm), 30, "curl http://backend.mesh/")
    assert resp["body"]["service"] == "backend"
    # Both Envoys in the answer: web's Envoy added x-request-id and x-envoy-expected-rq-timeout-ms (the app
    # behind backend's Envoy saw them) and the response carries server: envoy + x-envoy-upstream-service-time.
    assert through_both_envoys(resp), resp
    # ...and in their own counters: web's VIP:80 listener took the connection, the answering backend's inbound
    # listener served the request.
    assert (stat(vm, "web", vip_cx) or 0) > cx_before
    served = resp["body"]["instance"]
    assert inbound_requests(vm, served) > before[served]
    # Agent and Envoy run as the uid the rules exclude; the client ran as an ordinary uid.
    agent = psutil.Process(vm.hosts["web"].procs["kuma-dp"].pid)
    family = [agent, *agent.children(recursive=True)]
    assert any("envoy" in p.name() for p in family)
    assert {p.uids().real for p in family} == {PROXY_UID}


def test_vm_backend_scaled_to_two_hosts_spreads_requests(vm: Topology) -> None:
    for role in ("web", "be1", "be2"):
        ensure_agent(vm, role)
    wait_endpoints(vm, ["10.213.0.11:10001", "10.213.0.12:10001"])
    instances = [answer(vm)["body"]["instance"] for _ in range(10)]
    assert set(instances) == {"be1", "be2"}, instances


def test_vm_control_plane_down_traffic_and_dns_keep_working(vm: Topology) -> None:
    for role in ("web", "be1", "be2"):
        ensure_agent(vm, role)
    assert stat(vm, "web", "control_plane.connected_state") == 1
    vm.stop_cp()
    try:
        # Envoy noticed: the CP really is gone for the agents.
        gone = lambda: stat(vm, "web", "control_plane.connected_state") == 0  # noqa: E731
        wait_until(gone, 30, "web to see the CP gone")
        end = time.monotonic() + CP_OUTAGE
        rounds = 0
        while rounds == 0 or time.monotonic() < end:
            assert vm.getent("web", "backend.mesh"), "DNS stopped answering while the CP was down"
            answer(vm)
            rounds += 1
            time.sleep(0.5)  # kept: paces the traffic for the whole outage, nothing to wait for
        for role in ("web", "be1", "be2"):
            assert vm.hosts[role].procs["kuma-dp"].poll() is None, f"kuma-dp on {role} exited without its CP"
    finally:
        vm.start_cp()
    # The CP came back empty (the dev CP keeps dataplanes in memory); every agent's Envoy reconnects and
    # re-registers its Dataplane. Until the backends have, web may briefly get a snapshot without them, so
    # traffic is checked once all are back (see README, known gap).
    for role in ("web", "be1", "be2"):
        wait_until(
            lambda r=role: stat(vm, r, "control_plane.connected_state") == 1, 60, f"{role} to reconnect"
        )
    wait_endpoints(vm, ["10.213.0.11:10001", "10.213.0.12:10001"], timeout=60)
    wait_until(lambda: ok(vm.curl("web", URL)), 30, "traffic after the CP came back")
    assert {answer(vm)["body"]["instance"] for _ in range(8)} == {"be1", "be2"}


def test_vm_sigterm_drains_in_flight_and_moves_new_requests(vm: Topology) -> None:
    for role in ("web", "be1", "be2"):
        ensure_agent(vm, role)
    wait_endpoints(vm, ["10.213.0.11:10001", "10.213.0.12:10001"])
    be2 = vm.hosts["be2"]
    agent = be2.procs["kuma-dp"]
    during: list[dict[str, Any]] = []
    moved = threading.Event()

    def keep_asking() -> None:
        # New requests all along the drain, until web's Envoy holds be1 alone.
        while not moved.is_set():
            during.append(vm.curl("web", URL))
            if vm.endpoints("web", "backend") == ["10.213.0.11:10001"]:
                moved.set()

    with ThreadPoolExecutor(max_workers=6) as pool:
        # Slow requests (the app sleeps 2 s) spread over both backends: some are in flight on be2.
        slow = [pool.submit(vm.curl, "web", URL + "?delay=2", 20) for _ in range(4)]
        wait_until(
            lambda: (stat(vm, "be2", "http.inbound_10.213.0.12_10001.downstream_rq_active") or 0) > 0,
            15,
            "a request in flight on be2",
        )
        agent.send_signal(signal.SIGTERM)
        asker = pool.submit(keep_asking)
        results = [f.result() for f in slow]
        try:
            assert agent.wait(30) == 0
            be2.procs.pop("kuma-dp")
            # Once be2's Envoy is gone the CP pushes web one endpoint fewer.
            assert moved.wait(30), "web's Envoy still has be2's endpoint"
        finally:
            moved.set()
            asker.result()
    assert all(ok(r) for r in results), results
    assert "be2" in {r["body"]["instance"] for r in results}  # be2 finished what it had accepted
    failed = [r for r in during if not ok(r)]
    assert failed == [], f"{len(failed)} of {len(during)} new requests failed during the drain: {failed[:3]}"
    assert {answer(vm)["body"]["instance"] for _ in range(6)} == {"be1"}
    assert not [p for p in processes_in(be2.ns) if "envoy" in p.name()]


def test_vm_backend_host_removed(vm: Topology) -> None:
    for role in ("web", "be1", "be2"):
        ensure_agent(vm, role)
    wait_endpoints(vm, ["10.213.0.11:10001", "10.213.0.12:10001"])
    be2 = vm.hosts["be2"]
    # The host goes away: its processes die without a drain and its NIC disappears from the LAN.
    for name in ("kuma-dp", "app"):
        vm.stop(be2, name, sig=signal.SIGKILL)
    subprocess.run(["ip", "-n", be2.ns, "link", "del", "kvm-eth0"], check=True)
    wait_endpoints(vm, ["10.213.0.11:10001"])
    instances = [answer(vm)["body"]["instance"] for _ in range(10)]
    assert set(instances) == {"be1"}
    del vm.hosts["be2"]  # nothing to restore it on: later tests use web and be1


def test_vm_agent_sigkill_leaves_no_envoy_rules_stay_restart_recovers(vm: Topology) -> None:
    web = ensure_agent(vm, "web")
    ensure_agent(vm, "be1")
    answer(vm)
    agent = psutil.Process(web.procs["kuma-dp"].pid)
    family = [agent, *agent.children(recursive=True)]
    assert any("envoy" in p.name() for p in family)
    vm.stop(web, "kuma-dp", sig=signal.SIGKILL)
    _, alive = psutil.wait_procs(family, timeout=10)
    assert alive == [], f"left running after SIGKILL of the agent: {alive}"
    assert processes_in(web.ns) == []  # no Envoy (nor anything else) left on the host
    assert vm.rules_installed("web")  # the rules are the installer's, not the agent's
    down = vm.curl("web", URL, timeout=3)
    assert not ok(down)  # redirected to 15001 with nobody there: the app sees the outage, not a bypass
    vm.start_agent(web)
    resp = wait_until(lambda: success(vm), 30, "traffic after restart")
    assert through_both_envoys(resp) and resp["body"]["instance"] == "be1"
    assert vm.getent("web", "backend.mesh")


def test_vm_demo_netns_once_leaves_nothing_behind(require_root: None) -> None:
    r = subprocess.run([PY, "-m", "kuma_dp", "demo", "--netns", "--once"], capture_output=True, text=True,
                       timeout=180)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[ok] web$ curl http://backend.mesh/" in r.stdout and "spread over be1, be2" in r.stdout
    run_id = r.stdout.split("namespaces kvm-", 1)[1].split("-", 1)[0]
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert not [ns for ns in after if ns.startswith(f"kvm-{run_id}-")]
    assert not os.path.exists(f"/etc/netns/kvm-{run_id}-web")
    assert not [p for p in psutil.process_iter(["cmdline"]) if f"/tmp/kvm-{run_id}-" in " ".join(
        p.info["cmdline"] or [])]  # fmt: skip


def test_vm_demo_netns_without_root_says_so(require_root: None) -> None:
    r = subprocess.run(["setpriv", f"--reuid={APP_UID}", f"--regid={APP_UID}", "--clear-groups",
                        PY, "-m", "kuma_dp", "demo", "--netns", "--once"],
                       capture_output=True, text=True, timeout=60, cwd="/")  # fmt: skip
    assert r.returncode == 1
    assert "demo --netns needs root" in r.stderr and "drop --netns" in r.stderr
