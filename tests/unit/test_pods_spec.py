"""The pure parts of the pod runtime and of the Kubernetes pieces around it: the injector's Pods read as
kubelet reads them, the Pod -> Dataplane conversion (kuma-cp's pod controller), the images' mapping (kept
in step with the Dockerfiles), `kumactl`, and the builtin-DNS settings mapped onto our DNS server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuma_dp.config import RunConfig, load_config
from kuma_dp_dev.devcp.k8s import TCP_PORT_RESERVED, PodsDirWatcher, pod_to_dataplane
from kuma_dp_dev.devcp.state import Store
from kuma_dp_dev.pods import images
from kuma_dp_dev.pods.spec import (
    PodSpecError,
    container_env,
    expand,
    parse_pod,
    probe_proxy_port,
    probe_targets,
)

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def golden(conformance_dir: Path, name: str) -> dict[str, Any]:
    return yaml.safe_load((conformance_dir / "k8s-injector" / name).read_text())


def test_classic_and_native_sidecar_goldens_read_as_kubelet_does(conformance_dir: Path) -> None:
    classic = parse_pod(golden(conformance_dir, "inject.13.golden.yaml"), namespace="ns")
    assert [c.name for c in classic.init_containers] == ["kuma-init"]
    assert [c.name for c in classic.containers] == ["kuma-sidecar", "busybox"]
    init = classic.container("kuma-init")
    assert init.command[0] == "/usr/bin/kumactl" and init.uid == 0 and init.read_only_root
    assert init.caps_add == ["NET_ADMIN", "NET_RAW"] and init.drop_all
    sidecar = classic.container("kuma-sidecar")
    assert (sidecar.uid, sidecar.gid, sidecar.no_new_privs, sidecar.native_sidecar) == (
        5678,
        5678,
        True,
        False,
    )
    assert sidecar.readiness is not None and sidecar.readiness.success_threshold == 11
    assert sidecar.readiness.port == 9901 and sidecar.readiness.path == "/ready"
    app = classic.container("busybox")
    # kubelet's defaults for what the probe leaves out.
    assert app.liveness is not None and (app.liveness.timeout, app.liveness.failure_threshold) == (1.0, 3)
    assert probe_proxy_port(classic) == 9000
    # The injector's rewrite undone: the app serves /metrics on 8080 and 3001.
    assert probe_targets(app, 9000) == {"http": {8080, 3001}, "tcp": set(), "grpc": set()}

    native = parse_pod(golden(conformance_dir, "inject.sidecar-feature.13.golden.yaml"))
    sidecar = native.container("kuma-sidecar")
    assert (
        sidecar.native_sidecar
        and sidecar.startup is not None
        and sidecar.pre_stop[:2] == ["killall", "-USR2"]
    )
    assert [c.name for c in native.containers] == ["busybox"]


def test_probe_targets_for_tcp_and_grpc_rewrites() -> None:
    pod = parse_pod(
        {
            "metadata": {"name": "p"},
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "ports": [{"name": "web", "containerPort": 8081}],
                        "livenessProbe": {"httpGet": {"path": "/tcp/6379", "port": 9001}},
                        "readinessProbe": {"httpGet": {"path": "/grpc/5000/health", "port": 9001}},
                        "startupProbe": {"httpGet": {"path": "/", "port": "web"}},
                    }
                ]
            },
        }
    )
    app = pod.container("app")
    assert app.startup is not None and app.startup.port == 8081
    assert probe_targets(app, 9001) == {"http": {8081}, "tcp": {6379}, "grpc": {5000}}


def test_env_field_refs_and_expansion(conformance_dir: Path) -> None:
    pod = parse_pod(golden(conformance_dir, "inject.01.golden.yaml"), namespace="demo")
    env = container_env(pod.container("kuma-sidecar"), pod, "10.0.0.2", "10.0.0.1", "node", {"PATH": "/bin"})
    assert (env["POD_NAME"], env["POD_NAMESPACE"], env["INSTANCE_IP"]) == ("busybox", "demo", "10.0.0.2")
    assert env["KUMA_DATAPLANE_RUNTIME_TOKEN_PATH"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert env["PATH"] == "/bin"
    assert expand("$(A)-$$(A)-$(B)", {"A": "x"}) == "x-$(A)-$(B)"


def test_bad_manifests_are_named() -> None:
    with pytest.raises(PodSpecError, match="no containers"):
        parse_pod({"metadata": {"name": "p"}, "spec": {}})
    with pytest.raises(PodSpecError, match="volume 'v'"):
        parse_pod({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "volumeMounts": [
            {"name": "v", "mountPath": "/x"}]}]}})  # fmt: skip
    with pytest.raises(PodSpecError, match="named port 'nope'"):
        parse_pod({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "livenessProbe": {
            "tcpSocket": {"port": "nope"}}}]}})  # fmt: skip


def test_images_follow_the_dockerfiles(tmp_path: Path) -> None:
    """Every path the runtime maps for an image is one the image has: its ENTRYPOINT and its symlinks."""
    venv, envoy = tmp_path / "bin", "/opt/envoy"
    for ref, dockerfile in (("kuma/kuma-init:latest", "kuma-init"), ("kuma/kuma-sidecar:latest", "kuma-dp")):
        text = (REPO / "packaging" / "docker" / f"{dockerfile}.Dockerfile").read_text()
        image = images.image_for(ref, venv, envoy)
        entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
        assert tuple(entry) == image.entrypoint
        links = dict((dst, src) for src, dst in re.findall(r"ln -s (\S+) (/usr/bin/\S+)", text))
        for path in image.paths:
            if path.startswith("/usr/bin/"):
                assert path in links, f"{dockerfile} image lacks {path}"
        assert "useradd --system --uid 5678" in text  # the kuma-dp user both images' passwd has
    init = images.image_for("kuma/kuma-init:latest", venv, envoy)
    argv = images.argv_for(init, ["/usr/bin/kumactl", "install", "transparent-proxy"], ["--verbose"], [])
    assert argv == [str(venv / "kumactl"), "install", "transparent-proxy", "--verbose"]
    sidecar = images.image_for("kuma/kuma-sidecar:latest", venv, envoy)
    assert images.argv_for(sidecar, [], ["run"], []) == [str(venv / "kuma-dp"), "run"]
    assert sidecar.env["KUMA_DATAPLANE_RUNTIME_BINARY_PATH"] == envoy
    app = images.image_for("busybox", venv, envoy)
    assert images.argv_for(app, [], [], ["python", "-m", "app"]) == ["python", "-m", "app"]
    assert images.argv_for(app, ["sh", "-c", "sleep 5"], [], ["x"]) == ["sh", "-c", "sleep 5"]


def record(conformance_dir: Path, **extra: Any) -> dict[str, Any]:
    pod = golden(conformance_dir, "inject.01.golden.yaml")
    return {"pod": pod, "namespace": "demo", "podIP": "10.1.2.3", **extra}


def test_pod_without_service_becomes_a_serviceless_dataplane(conformance_dir: Path) -> None:
    dp = pod_to_dataplane(record(conformance_dir))
    assert (dp.mesh, dp.name, dp.address, dp.admin_port) == ("default", "busybox.demo", "10.1.2.3", 9901)
    (inbound,) = dp.inbounds
    assert inbound.port == TCP_PORT_RESERVED and inbound.service == "busybox_demo_svc"
    assert inbound.tags["kuma.io/instance"] == "busybox" and inbound.tags["kuma.io/protocol"] == "tcp"
    assert dp.transparent and dp.transparent_proxying.ip_family_mode == "dualstack"  # type: ignore[union-attr]
    # The sidecar not ready, or the pod being deleted: the inbound is NotReady (no endpoint).
    assert not pod_to_dataplane(record(conformance_dir, ready={"kuma-sidecar": False})).inbounds[0].ready
    assert not pod_to_dataplane(record(conformance_dir, deleting=True)).inbounds[0].ready


def test_service_ports_become_inbounds_as_kuma_cp_converts_them(conformance_dir: Path) -> None:
    svc = {"metadata": {"name": "web", "namespace": "demo"},
           "spec": {"selector": {"run": "busybox"}, "ports": [{"port": 80, "targetPort": 8080,
                                                                "appProtocol": "http"}]}}  # fmt: skip
    other = {"metadata": {"name": "db", "namespace": "elsewhere"}, "spec": {"selector": {"run": "busybox"},
             "ports": [{"port": 5432}]}}  # fmt: skip
    dp = pod_to_dataplane(record(conformance_dir, services=[svc, other], ready={"busybox": True}))
    (inbound,) = dp.inbounds
    assert (inbound.port, inbound.service, inbound.protocol) == (8080, "web_demo_svc_80", "http")
    assert inbound.tags["k8s.kuma.io/service-port"] == "80" and inbound.tags["run"] == "busybox"
    assert "kuma.io/mesh" not in inbound.tags  # kuma.io/ labels are not copied to tags
    unselected = {**svc, "spec": {**svc["spec"], "selector": {"run": "other"}}}
    assert pod_to_dataplane(record(conformance_dir, services=[unselected])).inbounds[0].ignored


def test_pods_dir_watcher_upserts_and_deletes(conformance_dir: Path, tmp_path: Path) -> None:
    store = Store()
    watcher = PodsDirWatcher(store, tmp_path)
    path = tmp_path / "demo.busybox.yaml"
    path.write_text(yaml.safe_dump(record(conformance_dir)))
    watcher.scan()
    assert store.get_dataplane("default", "busybox.demo") is not None
    (tmp_path / "bad.yaml").write_text("pod: 3\n")
    watcher.scan()  # a bad record is logged and skipped, the good one stays
    assert [dp.name for dp in store.dataplanes()] == ["busybox.demo"]
    path.unlink()
    watcher.scan()
    assert store.get_dataplane("default", "busybox.demo") is None


def test_builtin_dns_settings_put_our_server_on_the_coredns_port_without_a_gate() -> None:
    env = {"KUMA_DNS_ENABLED": "true", "KUMA_DNS_CORE_DNS_PORT": "25053", "KUMA_DNS_ENVOY_DNS_PORT": "25055"}
    cfg = load_config(RunConfig(), env)
    assert (cfg.dns.coredns_compat, cfg.dns.proxy_port, cfg.dns.envoy_dns_port) == (True, 25053, 25055)
    # KUMA_DNS_PROXY_PORT given: the embedded proxy mode, as Kuma's (ProxyPort != 0).
    cfg = load_config(RunConfig(), {**env, "KUMA_DNS_PROXY_PORT": "15053"})
    assert (cfg.dns.coredns_compat, cfg.dns.proxy_port) == (False, 15053)
    # Nothing about DNS: our default, the embedded proxy on 15053 with its gate.
    cfg = load_config(RunConfig(), {})
    assert (cfg.dns.coredns_compat, cfg.dns.proxy_port) == (False, 15053)


def test_dns_gate_only_outside_coredns_mode() -> None:
    import asyncio
    from pathlib import Path as P

    from kuma_dp.agent import AgentContext
    from kuma_dp.readiness import ReadinessState

    for compat, gated in ((True, False), (False, True)):
        cfg = RunConfig()
        cfg.dns.coredns_compat = compat
        ctx = AgentContext(cfg=cfg, bootstrap_path=P("b"), work_dir=P("w"), admin=None,  # type: ignore[arg-type]
                           readiness=ReadinessState())  # fmt: skip
        event = ctx.enable_dns_gate()
        assert isinstance(event, asyncio.Event) and ctx.readiness.dns_gate is gated


def test_kumactl_has_kumas_transparent_proxy_commands() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "iptables.kumactl", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    assert "--exclude-inbound-ports" in run("install", "transparent-proxy", "--help").stdout
    assert "--redirect-inbound" in run("install", "transparent-proxy", "--help").stdout
    assert run("uninstall", "transparent-proxy", "--help").returncode == 0
    bad = run("get", "meshes")
    assert bad.returncode == 2 and "No such command 'get'" in bad.stderr
