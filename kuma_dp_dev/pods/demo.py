"""`kuma-dp demo --pod FILE [--once]`: run a Pod manifest (kuma-cp's injector output) in the pod runtime and
show what kubelet would: containers, their readiness, the probe results, and how to look inside."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import click
import yaml

from kuma_dp_dev.pods.runtime import Node, PodError
from kuma_dp_dev.pods.spec import PodSpecError

#: The injector's sidecar probe timings (11 readiness successes 15 s apart in kuma-cp's test config) run 50x
#: faster; the app's probes keep theirs.
DEMO_TIME_SCALE = 0.02


def run_pod_demo(path: str, once: bool, namespace: str = "default") -> int:
    def say(text: str = "") -> None:
        click.echo(text)

    if os.geteuid() != 0:
        click.echo("demo --pod needs root (network and mount namespaces, iptables in the pod)", err=True)
        return 1
    try:
        manifest = yaml.safe_load(open(path).read())  # noqa: SIM115 - read once
    except (OSError, yaml.YAMLError) as exc:
        click.echo(f"demo --pod {path}: cannot read the manifest: {exc}", err=True)
        return 1

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    node: Node | None = None
    try:
        node = Node(time_scale=DEMO_TIME_SCALE)
        node.start()
        pod = node.create_pod(manifest, namespace=namespace)
        say(f"pod {pod.spec.namespace}/{pod.spec.name}: IP {pod.ip}, netns {pod.netns}; node {node.ip} "
            f"(netns {node.netns}, dev CP on :5681)")  # fmt: skip
        pod.start()
        took = pod.wait_ready(240)
        say(f"[ok] all containers ready after {took:.1f}s")
        for c in pod.spec.all_containers:
            st = pod.states[c.name]
            role = "native sidecar" if c.native_sidecar else ("init" if c.init else "container")
            codes = f" exit codes {st.exit_codes}" if st.exit_codes else ""
            say(f"  {c.name:<14} {role:<15} ready={st.ready}{codes}")
        for c in pod.spec.all_containers:
            for kind in ("startup", "liveness", "readiness"):
                results = pod.results(c.name, kind)
                if results:
                    last = results[-1]
                    say(f"  probe {c.name}/{kind}: {len(results)} run, last {'ok' if last.ok else 'FAIL'}: "
                        f"{last.detail.strip()[:60]}")  # fmt: skip
        if once:
            return 0
        say("\nTry (as root):")
        say(f"  ip netns exec {pod.netns} curl -s localhost:9901/clusters | head")
        say(f"  ip netns exec {node.netns} curl -s {pod.ip}:9901/ready      # what kubelet probes")
        say(f"  ip netns exec {pod.netns} iptables-save | grep KUMA; logs in {pod.dir / 'logs'}")
        say("\nRunning. Ctrl-C deletes the pod (SIGTERM, drain) and removes everything.")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        say("\nstopping...")
        return 0
    except (PodError, PodSpecError, TimeoutError, OSError) as exc:
        click.echo(f"demo --pod failed: {exc}", err=True)
        return 1
    finally:
        if node is not None:
            node.close()
        for s, handler in old.items():
            signal.signal(s, handler)
        sys.stdout.flush()
