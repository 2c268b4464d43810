"""The transparent proxy in real network namespaces, with the real iptables-nft and iptables-legacy.

Every test builds its own `ktp-*` namespaces (an app namespace and a "remote" one joined by a veth pair),
drives `kuma-dp transparent-proxy` as a user would (a subprocess with `--netns`), and checks the outcome
through the kernel: `*-save` dumps against Kuma's goldens, and real sockets that report which process
answered. The root namespace's iptables are never touched.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns]

REPO = Path(__file__).resolve().parents[2]
PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv/bin/python").exists() else sys.executable
PROBE = str(REPO / "tests" / "helpers" / "tproxy_probe.py")
PROXY_UID = 5678
APP_UID = 1000
EXCLUDED_UID = 1001
_counter = itertools.count()

BACKENDS = {
    "nft": ("iptables-nft", "ip6tables-nft"),
    "legacy": ("iptables-legacy", "ip6tables-legacy"),
}


def executables(backend: str) -> str:
    v4, v6 = BACKENDS[backend]
    parts = []
    for base in (v4, v6):
        fam = "iptables" if base.startswith("iptables") else "ip6tables"
        for suffix in ("", "-save", "-restore"):
            path = shutil.which(base + suffix) or f"/usr/sbin/{base}{suffix}"
            parts.append(f"{fam}{suffix}:{path}")
    return ",".join(parts)


def sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, input=input, timeout=60)


@dataclass
class Pod:
    """An app namespace `ns` wired to a remote namespace `remote` (10.213.0.0/24, fd00:213::/64)."""

    ns: str
    remote: str
    app_ip: str = "10.213.0.1"
    remote_ip: str = "10.213.0.2"
    remote_ip2: str = "10.213.0.3"
    app_ip6: str = "fd00:213::1"
    remote_ip6: str = "fd00:213::2"
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def kuma(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                PY,
                "-c",
                "from kuma_dp.cli import main; main()",
                "transparent-proxy",
                *args,
                "--netns",
                self.ns,
            ],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
            cwd=str(REPO),
            env={**os.environ, **(env or {})},
        )

    def save(self, cmd: str) -> str:
        return sh("ip", "netns", "exec", self.ns, cmd).stdout

    def serve(self, where: str, uid: int, *specs: str) -> None:
        argv = [PY, PROBE, "--netns", where, "--uid", str(uid), "serve", *specs]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "READY", p.stderr.read() if p.stderr else line

    def probe(self, where: str, uid: int, items: list[dict[str, object]]) -> list[str]:
        out = sh(PY, PROBE, "--netns", where, "--uid", str(uid), "probe", input=json.dumps(items))
        return list(json.loads(out.stdout))


@pytest.fixture
def pod(require_root: None) -> Iterator[Pod]:
    for tool in ("ip", "iptables-nft", "iptables-legacy"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (./dev installs iptables and iproute2)")
    n = f"{os.getpid() % 100000}{next(_counter)}"
    p = Pod(ns=f"ktp-a{n}", remote=f"ktp-r{n}")
    try:
        sh("ip", "netns", "add", p.ns)
        sh("ip", "netns", "add", p.remote)
        sh(
            "ip",
            "link",
            "add",
            f"ktpa{n}",
            "netns",
            p.ns,
            "type",
            "veth",
            "peer",
            "name",
            f"ktpr{n}",
            "netns",
            p.remote,
        )
        for ns, dev, ip4, ip6 in (
            (p.ns, f"ktpa{n}", p.app_ip, p.app_ip6),
            (p.remote, f"ktpr{n}", p.remote_ip, p.remote_ip6),
        ):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip4}/24", "dev", dev)
            sh("ip", "-n", ns, "-6", "addr", "add", f"{ip6}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", p.remote, "addr", "add", f"{p.remote_ip2}/24", "dev", f"ktpr{n}")
        yield p
    finally:
        for proc in p.procs:
            proc.kill()
            proc.wait()
        for ns in (p.ns, p.remote):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def normalise(out: str) -> str:
    """Kuma's `CleanIptablesSaveOutput` (`test/framework/utils/utils.go`), verbatim: drop `#` lines, hide the
    out-interface name, strip the counters off chain lines."""
    out = "\n".join(line for line in out.split("\n") if not line.startswith("#"))
    out = re.sub(r"-o ([^ ]+)", "-o ifPlaceholder", out)
    return re.sub(r"(?m)^:([^ ]+) ([^ ]+) .*?$", r":\1 \2", out)


MULTIPLE_FLAGS = [
    "--redirect-all-dns-traffic",
    "--vnet",
    "docker0:172.17.0.0/16",
    "--vnet",
    "br+:172.18.0.0/16",
    "--vnet",
    "iface:::1/64",
    "--exclude-outbound-ports-for-uids",
    "53,3000-5000:106-108",
    "--exclude-outbound-ips",
    "10.0.0.1,192.168.0.0/24,fe80::1",
    "--exclude-outbound-ips",
    "fd00::/8",
    "--exclude-outbound-ports",
    "1,22,333",
    "--exclude-inbound-ports",
    "4444,55555",
    "--exclude-inbound-ips",
    "192.168.0.1,172.32.16.8/16,fe80::/10",
    "--exclude-inbound-ips",
    "a81b:a033:6399:73c7:72b6:aa8c:6f22:7098",
]
STDIN_CONFIG = """
redirect:
  vnet:
    networks:
    - docker2:10.0.0.0/8
    - docker0:172.17.0.0/16
    - br+:172.18.0.0/16
    - iface:::1/64
  dns:
    enabled: true
    captureAll: true
  inbound:
    enabled: true
    excludePorts:
    - 4444
    - 55555
    excludePortsForIPs:
    - 192.168.0.1,172.32.16.8/16,fe80::/10
    - a81b:a033:6399:73c7:72b6:aa8c:6f22:7098
  outbound:
    enabled: true
    excludePortsForUIDs:
    - 1
    - 2-3:4-5
    excludePorts:
    - 6
    - 77
    - 888
    excludePortsForIPs:
    - 10.0.0.1,192.168.0.0/24,fe80::1
    - fd00::/8

"""


@pytest.mark.conformance
@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize("case", ["default", "with-multiple-flags", "with-multiple-config-flags"])
def test_install_matches_kuma_iptables_save_goldens(
    pod: Pod, conformance_dir: Path, tmp_path: Path, case: str, backend: str
) -> None:
    args = ["install", "--kuma-dp-user", str(PROXY_UID), "--iptables-executables", executables(backend)]
    stdin = None
    if case == "with-multiple-flags":
        args += MULTIPLE_FLAGS
    elif case == "with-multiple-config-flags":
        (tmp_path / "1.yaml").write_text("\nredirect:\n  dns:\n    enabled: false\n    port: 7777\n")
        (tmp_path / "2.yaml").write_text(
            "\nredirect:\n  dns:\n    enabled: true\n    port: 8888\n  outbound:\n    excludePortsForIPs:\n"
            "    - 10.11.12.13\n    - 172.14.15.16/32\n  inbound:\n    excludePorts:\n    - 10000\n    - 20000\n"  # noqa: E501
        )
        args += ["--config", str(tmp_path / "1.yaml"), "--config", str(tmp_path / "2.yaml"), "--config", "-"]
        stdin = STDIN_CONFIG
    r = pod.kuma(*args, input=stdin)
    assert r.returncode == 0, r.stderr
    v4, v6 = BACKENDS[backend]
    golden = conformance_dir / "tproxy"
    assert normalise(pod.save(f"{v4}-save")) == (golden / f"debian-12-{case}.iptables-nft.golden").read_text()
    assert (
        normalise(pod.save(f"{v6}-save")) == (golden / f"debian-12-{case}.ip6tables-nft.golden").read_text()
    )


def backend_args(backend: str) -> list[str]:
    if backend == "nft-native":
        if not shutil.which("nft"):
            pytest.skip("nft not installed (nftables package)")
        return ["--backend", "nft-native"]
    return ["--iptables-executables", executables(backend)]


@pytest.mark.parametrize("backend", ["nft", "legacy", "nft-native"])
def test_traffic_lands_where_kuma_says(pod: Pod, tmp_path: Path, backend: str) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {pod.remote_ip}\nnameserver {pod.remote_ip6}\n")
    resolv.chmod(0o644)
    r = pod.kuma(
        "install",
        "--kuma-dp-user",
        str(PROXY_UID),
        *backend_args(backend),
        "--redirect-dns",
        "--exclude-outbound-ports",
        "9090",
        "--exclude-outbound-ips",
        pod.remote_ip2,
        "--exclude-outbound-ports-for-uids",
        f"tcp:8080:{EXCLUDED_UID}",
        "--exclude-inbound-ports",
        "2222",
        env={"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_RESOLV_CONFIG_PATH": str(resolv)},
    )
    assert r.returncode == 0, r.stderr
    assert "families=ipv4,ipv6" in r.stdout

    pod.serve(pod.remote, 0, "--tcp", "8080:remote", "--tcp", "9090:remote", "--udp", "53:remote-dns")
    pod.serve(
        pod.ns,
        PROXY_UID,
        "--tcp",
        "15001:proxy-outbound",
        "--tcp",
        "15006:proxy-inbound",
        "--udp",
        "15053:proxy-dns",
    )
    pod.serve(pod.ns, 0, "--tcp", "8080:app", "--tcp", "2222:ssh")

    app = pod.probe(
        pod.ns,
        APP_UID,
        [
            {"kind": "tcp", "host": pod.remote_ip, "port": 8080},
            {"kind": "tcp", "host": pod.remote_ip6, "port": 8080},
            {"kind": "tcp", "host": pod.remote_ip, "port": 9090},
            {"kind": "tcp", "host": pod.remote_ip2, "port": 8080},
            {"kind": "udp", "host": pod.remote_ip, "port": 53},
            {"kind": "udp", "host": pod.remote_ip6, "port": 53},
        ],
    )
    assert app[0] == f"proxy-outbound uid={PROXY_UID} orig={pod.remote_ip}:8080"
    assert app[1] == f"proxy-outbound uid={PROXY_UID} orig=[{pod.remote_ip6}]:8080"
    assert app[2].startswith("remote uid=0 orig="), "excluded outbound port must bypass"
    assert app[3] == f"remote uid=0 orig={pod.remote_ip2}:8080", "excluded outbound IP must bypass"
    assert app[4] == f"proxy-dns uid={PROXY_UID}", "UDP/53 to the resolv.conf server lands on 15053"
    assert app[5] == f"proxy-dns uid={PROXY_UID}"

    excluded = pod.probe(
        pod.ns,
        EXCLUDED_UID,
        [
            {"kind": "tcp", "host": pod.remote_ip, "port": 8080},
            {"kind": "tcp", "host": pod.remote_ip, "port": 8081},
        ],
    )
    assert excluded[0].startswith("remote uid=0"), "excluded uid/port pair must bypass"
    assert excluded[1].startswith("proxy-outbound"), "the uid exclusion is only for its ports"

    proxy = pod.probe(
        pod.ns,
        PROXY_UID,
        [
            {"kind": "tcp", "host": pod.remote_ip, "port": 8080},
            {"kind": "udp", "host": pod.remote_ip, "port": 53},
            {"kind": "tcp", "host": pod.app_ip, "port": 8080, "src": "127.0.0.6"},
            {"kind": "tcp", "host": pod.app_ip, "port": 8080},
        ],
    )
    assert proxy[0].startswith("remote uid=0"), "kuma-dp's own traffic is not redirected"
    assert proxy[1] == "remote-dns uid=0", "kuma-dp's own DNS goes upstream"
    assert proxy[2] == f"app uid=0 orig={pod.app_ip}:8080", "127.0.0.6 passthrough reaches the app, no loop"
    assert proxy[3] == f"proxy-inbound uid={PROXY_UID} orig={pod.app_ip}:8080", (
        "envoy -> own pod IP is inbound"
    )

    remote = pod.probe(
        pod.remote,
        0,
        [
            {"kind": "tcp", "host": pod.app_ip, "port": 8080},
            {"kind": "tcp", "host": pod.app_ip6, "port": 8080},
            {"kind": "tcp", "host": pod.app_ip, "port": 2222},
        ],
    )
    assert remote[0] == f"proxy-inbound uid={PROXY_UID} orig={pod.app_ip}:8080"
    assert remote[1] == f"proxy-inbound uid={PROXY_UID} orig=[{pod.app_ip6}]:8080"
    assert remote[2] == f"ssh uid=0 orig={pod.app_ip}:2222", "excluded inbound port reaches the app"


USER_RULES = [
    "-t nat -N CUSTOM_CHAIN_NAT",
    "-t raw -N CUSTOM_CHAIN_RAW",
    "-t mangle -N CUSTOM_CHAIN_MANGLE",
    "-t nat -A OUTPUT -p tcp -j CUSTOM_CHAIN_NAT",
    "-t nat -A PREROUTING -p udp -j CUSTOM_CHAIN_NAT",
    "-t raw -A OUTPUT -p tcp --dport 53 -j CUSTOM_CHAIN_RAW",
    "-t raw -A PREROUTING -j CUSTOM_CHAIN_RAW",
    "-t mangle -A OUTPUT -p udp --sport 53 -j CUSTOM_CHAIN_MANGLE",
    "-t mangle -A PREROUTING -j CUSTOM_CHAIN_MANGLE",
]


def all_saves(pod: Pod, backend: str) -> dict[str, str]:
    """Both families' `*-save`, byte for byte except the `#` timestamp lines and the policy packet counters
    (IPv6 neighbour discovery on the veth bumps those on its own)."""
    v4, v6 = BACKENDS[backend]
    return {
        cmd: re.sub(
            r"(?m)^(:\S+ \S+) \[\d+:\d+\]$",
            r"\1 [0:0]",
            "\n".join(x for x in pod.save(cmd).splitlines() if not x.startswith("#")),
        )
        for cmd in (f"{v4}-save", f"{v6}-save")
    }


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_idempotent_install_and_exact_uninstall(pod: Pod, backend: str) -> None:
    v4, v6 = BACKENDS[backend]
    for binary in (v4, v6):
        for rule in USER_RULES:
            sh("ip", "netns", "exec", pod.ns, binary, *rule.split())
    before = all_saves(pod, backend)
    flags = [
        "--kuma-dp-user",
        str(PROXY_UID),
        "--iptables-executables",
        executables(backend),
        *MULTIPLE_FLAGS,
        "--drop-invalid-packets",
        "--iptables-logs",
    ]
    args = ["install", *flags]
    assert pod.kuma(*args).returncode == 0
    once = all_saves(pod, backend)
    r = pod.kuma(*args)
    assert r.returncode == 0, r.stderr
    assert all_saves(pod, backend) == once, "install twice = same ruleset"
    assert "CUSTOM_CHAIN_NAT" in once[f"{v4}-save"] and "KUMA_MESH_OUTBOUND" in once[f"{v6}-save"]
    plan = pod.kuma("plan", *flags)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    r = pod.kuma("uninstall", "--iptables-executables", executables(backend))
    assert r.returncode == 0, r.stderr
    assert all_saves(pod, backend) == before, "uninstall must leave *-save byte-identical (user rules kept)"


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_failure_mid_apply_leaves_previous_state(pod: Pod, backend: str) -> None:
    exe = executables(backend)
    base = ["install", "--kuma-dp-user", str(PROXY_UID), "--iptables-executables", exe, "--max-retries", "0"]
    assert pod.kuma(*base).returncode == 0
    previous = all_saves(pod, backend)
    # IPv4 applies fine; the IPv6 transaction then hits a rule the kernel rejects (interface name > 15 chars),
    # so the already-committed IPv4 change must be rolled back too.
    bad = pod.kuma(
        *base, "--exclude-inbound-ports", "2222", "--vnet", "averyveryverylonginterface:fd00:1::/64"
    )
    assert bad.returncode == 1
    assert "ip6tables" in bad.stderr and "line" in bad.stderr and "averyveryverylonginterface" in bad.stderr
    assert "rules left as they were" in bad.stderr
    assert bad.stderr.startswith("Error: ") and bad.stderr.count("\n") == 1, "one-line error"
    assert all_saves(pod, backend) == previous


def test_plan_diff_reports_drift(pod: Pod) -> None:
    exe = executables("nft")
    args = ["--kuma-dp-user", str(PROXY_UID), "--iptables-executables", exe, "--ip-family-mode", "ipv4"]
    before = pod.kuma("plan", *args, "--json")
    assert before.returncode == 2
    assert json.loads(before.stdout)["families"][0]["missing"]
    assert pod.kuma("install", *args).returncode == 0
    assert pod.kuma("plan", *args, "--diff").returncode == 0
    sh("ip", "netns", "exec", pod.ns, "iptables-nft", "-t", "nat", "-D", "KUMA_MESH_OUTBOUND", "1")
    drift = pod.kuma("plan", *args, "--diff")
    assert drift.returncode == 2
    assert "\n-nat: -A KUMA_MESH_OUTBOUND" not in drift.stdout
    assert re.search(
        r"(?m)^\+nat: -A KUMA_MESH_OUTBOUND -s 127\.0\.0\.6/32 -o lo .* -j RETURN$", drift.stdout
    )


def test_bad_input_is_one_line_and_changes_nothing(pod: Pod) -> None:
    before = all_saves(pod, "nft")
    r = pod.kuma("install", "--redirect-dns", "--redirect-all-dns-traffic", "--kuma-dp-user", "0")
    assert r.returncode == 1
    assert (
        r.stderr
        == "Error: only one of '--redirect-dns' or '--redirect-all-dns-traffic' should be specified\n"
    )
    r = pod.kuma("install", "--kuma-dp-user", "no-such-user-ktp")
    assert r.returncode == 1 and "no-such-user-ktp" in r.stderr
    assert all_saves(pod, "nft") == before


def test_stale_dns_conntrack_entry_is_flushed_on_install(pod: Pod, tmp_path: Path) -> None:
    """An app that queried DNS just before install must not keep bypassing the proxy (istio/istio#33469)."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {pod.remote_ip}\n")
    pod.serve(pod.remote, 0, "--udp", "53:remote-dns")
    pod.serve(pod.ns, PROXY_UID, "--udp", "15053:proxy-dns")
    # a pre-existing stateful rule (as most hosts have) makes conntrack track flows in this namespace
    sh(
        "ip",
        "netns",
        "exec",
        pod.ns,
        "iptables-nft",
        "-A",
        "OUTPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "INVALID",
        "-j",
        "DROP",
    )
    query = [{"kind": "udp", "host": pod.remote_ip, "port": 53, "sport": 40053}]
    assert pod.probe(pod.ns, APP_UID, query) == ["remote-dns uid=0"]  # conntrack entry now exists, un-NATed
    # without the zone split the new request would reuse that entry; only the flush makes it hit the REDIRECT
    r = pod.kuma(
        "install",
        "--kuma-dp-user",
        str(PROXY_UID),
        "--redirect-dns",
        "--skip-dns-conntrack-zone-split",
        "--ip-family-mode",
        "ipv4",
        "--iptables-executables",
        executables("nft"),
        env={"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_RESOLV_CONFIG_PATH": str(resolv)},
    )
    assert r.returncode == 0, r.stderr
    assert re.search(r"dns_conntrack_flushed=[1-9]", r.stdout), r.stdout
    assert pod.probe(pod.ns, APP_UID, query) == [f"proxy-dns uid={PROXY_UID}"]


def test_kuma_init_takes_kuma_flags_and_env(pod: Pod) -> None:
    kuma_init = REPO / ".venv" / "bin" / "kuma-init"
    if not kuma_init.exists():
        pytest.skip("kuma-init console script not installed (pip install -e .)")
    r = subprocess.run(
        [
            str(kuma_init),
            "--netns",
            pod.ns,
            "--kuma-dp-user",
            str(PROXY_UID),
            "--redirect-all-dns-traffic",
            "--iptables-executables",
            executables("nft"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "KUMA_TRANSPARENT_PROXY_REDIRECT_INBOUND_PORT": "15106",
            "KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_PORT": "15153",
        },
    )
    assert r.returncode == 0, r.stderr
    save = pod.save("iptables-nft-save")
    assert "-j REDIRECT --to-ports 15106" in save
    assert "-m udp --dport 53 -j REDIRECT --to-ports 15153" in save


def test_dry_run_prints_kuma_format_and_changes_nothing(pod: Pod, conformance_dir: Path) -> None:
    before = all_saves(pod, "nft")
    r = pod.kuma("install", "--dry-run", "--ip-family-mode", "ipv4", "--kuma-dp-user", "root")
    assert r.returncode == 0, r.stderr
    assert '-m comment --comment "kuma/mesh/transparent/proxy/' in r.stdout  # comment module detected
    stripped = re.sub(r'-m comment --comment ".*?" ', "", re.sub(r"-o ([^ ]+)", "-o ifPlaceholder", r.stdout))
    assert (
        stripped
        == (conformance_dir / "tproxy-dryrun" / "install-transparent-proxy.defaults.golden.txt").read_text()
    )
    assert all_saves(pod, "nft") == before


def test_uninstall_refuses_foreign_kuma_chains(pod: Pod) -> None:
    for argv in (
        ["-t", "nat", "-N", "KUMA_MESH_OUTBOUND"],
        ["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "KUMA_MESH_OUTBOUND"],
        ["-t", "nat", "-A", "KUMA_MESH_OUTBOUND", "-j", "RETURN"],
    ):
        sh("ip", "netns", "exec", pod.ns, "iptables-nft", *argv)
    before = all_saves(pod, "nft")
    r = pod.kuma("uninstall", "--iptables-executables", executables("nft"))
    assert r.returncode == 1
    assert "refusing to uninstall: chain(s) nat/KUMA_MESH_OUTBOUND exist without Kuma's comments" in r.stderr
    assert all_saves(pod, "nft") == before


CP_IN_NETNS = """
import json, sys
sys.path.insert(0, sys.argv[2])
from tests.helpers.tproxy_probe import enter_netns
enter_netns(sys.argv[1])
from tests.helpers.fake_cp import FakeCP, Reply
with FakeCP([Reply.status_only(422, "stop after the request")]) as cp:
    print(cp.url, flush=True)
    cp.wait_requests(1, timeout=30)
    print(json.dumps(cp.requests[-1].json if cp.requests else None), flush=True)
"""


def test_kuma_dp_run_reports_tproxy_settings_without_touching_iptables(
    pod: Pod, tmp_path: Path, envoy_binary: str
) -> None:
    """`kuma-dp run --transparent-proxy-config` tells the CP (dataplaneConfig), installs no rules."""
    from tests.helpers.fake_cp import make_token

    before = {**all_saves(pod, "nft"), **all_saves(pod, "legacy")}
    cfg = tmp_path / "tproxy.yaml"
    cfg.write_text(
        "ipFamilyMode: ipv4\nredirect:\n  inbound: {port: 15106}\n"
        "  vnet: {networks: ['docker0:172.17.0.0/16']}\n"
    )
    cfg.chmod(0o644)
    cp = subprocess.Popen([PY, "-c", CP_IN_NETNS, pod.ns, str(REPO)], stdout=subprocess.PIPE, text=True)
    pod.procs.append(cp)
    assert cp.stdout is not None
    url = cp.stdout.readline().strip()
    run = subprocess.run(
        ["ip", "netns", "exec", pod.ns, PY, "-m", "kuma_dp", "run", "--cp-address", url, "--name", "dp-1",
         "--mesh", "default", "--dataplane-token", make_token({"Name": "dp-1", "Mesh": "default"}),
         "--binary-path", envoy_binary, "--work-dir", str(tmp_path / "wd"),
         "--transparent-proxy-config", str(cfg)],
        capture_output=True, text=True, timeout=60, cwd=str(REPO),
    )  # fmt: skip
    assert run.returncode != 0  # the stand-in CP answered 422 on purpose
    request = json.loads(cp.stdout.readline())
    assert request["dataplaneConfig"]["ipFamilyMode"] == "ipv4"
    assert request["dataplaneConfig"]["redirect"]["inbound"] == {"enabled": True, "port": 15106}
    assert request["dataplaneConfig"]["redirect"]["outbound"] == {"enabled": True, "port": 15001}
    assert request["dataplaneConfig"]["redirect"]["vnet"] == {"networks": ["docker0:172.17.0.0/16"]}
    assert "feature-transparent-proxy-in-dataplane-metadata" in request["features"]
    assert {**all_saves(pod, "nft"), **all_saves(pod, "legacy")} == before


def test_native_nftables_install_is_idempotent_and_uninstall_exact(pod: Pod) -> None:
    if not shutil.which("nft"):
        pytest.skip("nft not installed (nftables package)")
    sh("ip", "netns", "exec", pod.ns, "nft", "add table inet user_table")
    sh(
        "ip",
        "netns",
        "exec",
        pod.ns,
        "nft",
        "add chain inet user_table out { type filter hook output priority 0; }",
    )
    sh("ip", "netns", "exec", pod.ns, "nft", "add rule inet user_table out tcp dport 9999 counter")
    before = sh("ip", "netns", "exec", pod.ns, "nft", "list", "ruleset").stdout
    args = ["install", "--backend", "nft-native", "--kuma-dp-user", str(PROXY_UID), *MULTIPLE_FLAGS]
    assert pod.kuma(*args).returncode == 0
    once = sh("ip", "netns", "exec", pod.ns, "nft", "list", "table", "inet", "kuma_mesh").stdout
    assert "redirect to :15001" in once and "ip6 daddr != ::/64" in once
    assert pod.kuma(*args).returncode == 0
    assert sh("ip", "netns", "exec", pod.ns, "nft", "list", "table", "inet", "kuma_mesh").stdout == once
    assert pod.kuma("uninstall", "--backend", "nft-native").returncode == 0
    assert sh("ip", "netns", "exec", pod.ns, "nft", "list", "ruleset").stdout == before


def failing_wrapper(tmp_path: Path, name: str, real: str, *, succeed_first: bool = False) -> str:
    """An `*-restore` stand-in that fails like a broken binary would (exit 1, a message on stderr).

    With `succeed_first` it runs the real binary once, then fails: an install that applies this family and
    a rollback that then cannot restore it.
    """
    script = tmp_path / name
    marker = tmp_path / f"{name}.used"
    body = f"echo '{name}: simulated failure' >&2\nexit 1\n"
    if succeed_first:
        body = f'if [ ! -e {marker} ]; then : > {marker}; exec {real} "$@"; fi\n' + body
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def executables_with(backend: str, **override: str) -> str:
    """`executables(backend)` with some paths replaced (`ip6tables_restore="/tmp/x"`)."""
    parts = dict(p.split(":", 1) for p in executables(backend).split(","))
    parts.update({k.replace("_", "-"): v for k, v in override.items()})
    return ",".join(f"{k}:{v}" for k, v in parts.items())


def without_bare(save: str) -> str:
    """A save without its tables that hold only built-in ACCEPT chains and no rules."""
    return re.sub(r"(?m)^\*\w+\n(?::[A-Z]+ ACCEPT \[0:0\]\n)+COMMIT(?:\n|$)", "", save + "\n").strip()


def nft_ruleset(pod: Pod) -> str:
    return sh("ip", "netns", "exec", pod.ns, "nft", "list", "ruleset").stdout


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_ipv6_restore_failure_rolls_back_ipv4_too(pod: Pod, tmp_path: Path, backend: str) -> None:
    """A dual-stack install whose ip6tables-restore fails leaves both families (and nft's tables) as found."""
    v4, v6 = BACKENDS[backend]
    # a rule of the user's in each family, so the IPv6 rollback has tables to put back
    for binary in (v4, v6):
        sh("ip", "netns", "exec", pod.ns, binary, "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT")
    before, tables = all_saves(pod, backend), nft_ruleset(pod)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {pod.remote_ip}\nnameserver {pod.remote_ip6}\n")
    real = shutil.which(f"{v6}-restore") or f"/usr/sbin/{v6}-restore"
    exe = executables_with(backend, ip6tables_restore=failing_wrapper(tmp_path, "ip6-restore", real))
    r = pod.kuma(
        "install", "--kuma-dp-user", str(PROXY_UID), "--iptables-executables", exe, "--max-retries", "1",
        "--sleep-between-retries", "10ms", "--redirect-dns",
        env={"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_RESOLV_CONFIG_PATH": str(resolv)},
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "ip6-restore: simulated failure" in r.stderr
    assert r.stderr.rstrip().endswith("(rules left as they were before this install)"), r.stderr
    if backend == "legacy":  # a legacy table, once used in a namespace, stays: compare without bare ones
        assert {k: without_bare(v) for k, v in all_saves(pod, backend).items()} == {
            k: without_bare(v) for k, v in before.items()
        }
    else:
        assert all_saves(pod, backend) == before, "both families must be back as they were"
    if backend == "nft":
        assert nft_ruleset(pod) == tables, "no table created by the failed install may remain"


def test_rollback_that_fails_says_so(pod: Pod, tmp_path: Path) -> None:
    """When the IPv4 rollback itself fails, the error says which rules remain, never "left as they were"."""
    real4 = shutil.which("iptables-nft-restore") or "/usr/sbin/iptables-nft-restore"
    real6 = shutil.which("ip6tables-nft-restore") or "/usr/sbin/ip6tables-nft-restore"
    exe = executables_with(
        "nft",
        iptables_restore=failing_wrapper(tmp_path, "ip4-restore", real4, succeed_first=True),
        ip6tables_restore=failing_wrapper(tmp_path, "ip6-restore", real6),
    )
    r = pod.kuma("install", "--kuma-dp-user", str(PROXY_UID), "--iptables-executables", exe)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1, r.stderr
    assert "left as they were" not in r.stderr
    assert "ROLLBACK INCOMPLETE: IPv4" in r.stderr and "nat" in r.stderr, r.stderr
    assert "kuma-dp transparent-proxy uninstall" in r.stderr
    assert "KUMA_MESH_OUTBOUND" in pod.save("iptables-nft-save"), "the message must match what is there"
    # and the advice works
    assert pod.kuma("uninstall", "--iptables-executables", executables("nft")).returncode == 0
    assert "KUMA_MESH" not in pod.save("iptables-nft-save")


def test_uninstall_leaves_tables_as_found(pod: Pod, tmp_path: Path) -> None:
    """Install with DNS redirection (rules in raw and nat), uninstall: the nft ruleset is as it was.

    iptables-nft creates `raw` and `nat` on the first rule and never deletes them; uninstall must. (With
    iptables-legacy a table, once used in a namespace, lives as long as it: a bare table is what is left.)
    """
    if not shutil.which("nft"):
        pytest.skip("nft not installed (nftables package)")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {pod.remote_ip}\nnameserver {pod.remote_ip6}\n")
    before, saves = nft_ruleset(pod), all_saves(pod, "nft")
    r = pod.kuma(
        "install", "--kuma-dp-user", str(PROXY_UID), "--iptables-executables", executables("nft"),
        "--redirect-dns", env={"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_RESOLV_CONFIG_PATH": str(resolv)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "table ip raw" in nft_ruleset(pod) and "table ip6 raw" in nft_ruleset(pod)
    r = pod.kuma("uninstall", "--iptables-executables", executables("nft"))
    assert r.returncode == 0, r.stderr
    assert nft_ruleset(pod) == before
    assert all_saves(pod, "nft") == saves


@pytest.mark.conformance
def test_vnet_dns_redirect_without_dns_redirection(pod: Pod, conformance_dir: Path) -> None:
    """`--vnet` alone: the kernel takes Kuma's per-interface UDP/53 redirect and saves it as Kuma's golden
    shows it (the line of `debian-12-with-multiple-flags`, where DNS capture is also on)."""
    r = pod.kuma(
        "install", "--kuma-dp-user", str(PROXY_UID), "--iptables-executables", executables("nft"),
        "--ip-family-mode", "ipv4", "--vnet", "docker0:172.17.0.0/16",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    golden = (conformance_dir / "tproxy" / "debian-12-with-multiple-flags.iptables-nft.golden").read_text()
    (expected,) = [ln for ln in golden.splitlines() if "DNS requests on interface docker0" in ln]
    save = normalise(pod.save("iptables-nft-save"))
    assert expected in save.splitlines()
    assert "--dport 53 -j REDIRECT" not in save.replace(expected, ""), "no other DNS redirect without DNS on"
