"""Every `kuma-init` argument list in Kuma's injector goldens parses and yields the rules Kuma installs.

kuma-cp 2.14.3's injector (`k8s-injector/inject.*.golden.yaml`) runs `kumactl install transparent-proxy`
with `--exclude-inbound-ports=N --verbose`, `--redirect-inbound=false --verbose` (gateway pods) or
`--redirect-all-dns-traffic --redirect-dns-port=25053 --verbose` (builtin DNS). Each argument list is
run unmodified through our `kuma-init`, as the init container would (a subprocess in a fresh network
namespace), and checked against rules Kuma wrote down:

* `--dry-run` output against `tproxy-dryrun/` goldens (Kuma's `install_transparent_proxy_test.go` flags
  and normalisation), adjusted by the one rule each argument adds as Kuma's builder
  (`pkg/transparentproxy/iptables/builder/builder_table_nat.go`) writes it;
* a real install, its `iptables-nft-save`/`ip6tables-nft-save` against `tproxy/debian-12-default.*`
  (Kuma's `CleanIptablesSaveOutput` normalisation), adjusted the same way with lines taken from Kuma's
  `with-multiple-flags` goldens where one shows the rule.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.conformance, pytest.mark.netns]

REPO = Path(__file__).resolve().parents[2]
PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv/bin/python").exists() else sys.executable
KUMA_INIT = [PY, "-c", "from iptables.cli import kuma_init_main; kuma_init_main()"]
GOLDENS = [
    "inject.01.golden.yaml",
    "inject.06.golden.yaml",
    "inject.13.golden.yaml",
    "inject.14.golden.yaml",
    "inject.23.golden.yaml",
    "inject.sidecar-feature.01.golden.yaml",
    "inject.sidecar-feature.13.golden.yaml",
]


def init_args(conformance_dir: Path, golden: str) -> list[str]:
    """The `kuma-init` container's args, after checking it runs `kumactl install transparent-proxy`."""
    pod = yaml.safe_load((conformance_dir / "k8s-injector" / golden).read_text())
    (init,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "kuma-init"]
    assert init["command"] == ["/usr/bin/kumactl", "install", "transparent-proxy"]
    env = {e["name"]: e.get("value") for e in init.get("env", [])}
    assert env == {"XTABLES_LOCKFILE": "/tmp/xtables.lock"}
    return list(init["args"])


@pytest.fixture(autouse=True)
def _tools(require_root: None) -> None:
    for tool in ("unshare", "ip", "iptables-nft"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (./dev installs util-linux, iproute2 and iptables)")


def kuma_init(*args: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*KUMA_INIT, *args] if netns else ["unshare", "--net", "--", *KUMA_INIT, *args]
    if netns:
        argv += ["--netns", netns]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
        env={**os.environ, "XTABLES_LOCKFILE": "/tmp/xtables.lock"},
    )


def has_conntrack() -> bool:
    r = subprocess.run(["iptables-nft", "-m", "conntrack", "-h"], capture_output=True)
    return r.returncode == 0


def kuma_dry_run_expectation(dryrun: Path, args: list[str]) -> str:
    """What Kuma's `--dry-run --ip-family-mode ipv4 --kuma-dp-user 0` prints for the golden's args."""
    defaults = (dryrun / "install-transparent-proxy.defaults.golden.txt").read_text()
    redirect_all = "-A KUMA_MESH_INBOUND -p tcp -j KUMA_MESH_INBOUND_REDIRECT\n"
    flags = [a for a in args if a != "--verbose"]
    if len(flags) == 1 and flags[0].startswith("--exclude-inbound-ports="):
        port = flags[0].split("=", 1)[1]
        # buildMeshInbound: one RETURN per excluded port, before the catch-all (cf. overrides.golden.txt)
        return defaults.replace(
            redirect_all, f"-A KUMA_MESH_INBOUND -p tcp --dport {port} -j RETURN\n" + redirect_all
        )
    if flags == ["--redirect-inbound=false"]:
        return defaults.replace(redirect_all, "-A KUMA_MESH_INBOUND -p tcp -j RETURN\n")
    if flags == ["--redirect-all-dns-traffic", "--redirect-dns-port=25053"]:
        # Kuma's entries for these flags use port 12345; the conntrack variant is the corrected stale golden
        if has_conntrack():
            stale = (dryrun / "install-transparent-proxy.dns.golden.txt").read_text()
            nat = (dryrun / "install-transparent-proxy.dns.no-conntrack.golden.txt").read_text()
            text = stale[: stale.index("* nat")] + nat[nat.index("* nat") :]
        else:
            text = (dryrun / "install-transparent-proxy.dns.no-conntrack.golden.txt").read_text()
        return text.replace("12345", "25053")
    raise AssertionError(f"a golden with arguments this test does not know: {args}")


def normalise_dry_run(stdout: str) -> str:
    """Kuma's transform in `install_transparent_proxy_test.go`, verbatim."""
    out = re.sub(r"-o ([^ ]+)", "-o ifPlaceholder", stdout)
    out = re.sub(r'-m comment --comment ".*?" ', "", out)
    return re.sub(
        r"(?m)^-I OUTPUT (\d+) -p udp --dport 53 -m owner --uid-owner (\d+) -j (\w+)$",
        r"-I OUTPUT \1 -p udp --dport 53 -m owner --uid-owner \2 -j dnsJumpTargetPlaceholder",
        out,
    )


@pytest.mark.parametrize("golden", GOLDENS)
def test_injector_args_dry_run_as_kuma(conformance_dir: Path, golden: str) -> None:
    args = init_args(conformance_dir, golden)
    base = ["--dry-run", "--ip-family-mode", "ipv4", "--kuma-dp-user", "0"]
    verbose = kuma_init(*base, *args)
    assert verbose.returncode == 0, verbose.stderr
    assert "# Rules:" in verbose.stdout and "--append KUMA_MESH_INBOUND" in verbose.stdout, (
        "--verbose honoured"
    )
    # the same arguments, `--verbose=false` last (pflag: the last occurrence wins), in Kuma's golden layout
    plain = kuma_init(*base, *args, "--verbose=false")
    assert plain.returncode == 0, plain.stderr
    expected = kuma_dry_run_expectation(conformance_dir / "tproxy-dryrun", args)
    assert normalise_dry_run(plain.stdout) == expected


# ----------------------------------------------------------------------------------------------------
# Real installs


def normalise_save(out: str) -> str:
    """Kuma's `CleanIptablesSaveOutput` (`test/framework/utils/utils.go`), verbatim."""
    out = "\n".join(line for line in out.split("\n") if not line.startswith("#"))
    out = re.sub(r"-o ([^ ]+)", "-o ifPlaceholder", out)
    return re.sub(r"(?m)^:([^ ]+) ([^ ]+) .*?$", r":\1 \2", out)


def kuma_save_expectation(tproxy: Path, args: list[str], cmd: str) -> str:
    """Kuma's `debian-12-default.<cmd>.golden`, changed by the golden's args as Kuma's builder changes it."""
    default = (tproxy / f"debian-12-default.{cmd}.golden").read_text()
    multi = (tproxy / f"debian-12-with-multiple-flags.{cmd}.golden").read_text().splitlines(keepends=True)
    redirect_all = next(
        ln for ln in default.splitlines(keepends=True) if "redirect all inbound traffic" in ln
    )
    flags = [a for a in args if a != "--verbose"]
    if len(flags) == 1 and flags[0].startswith("--exclude-inbound-ports="):
        port = flags[0].split("=", 1)[1]
        excluded = next(ln for ln in multi if "exclude inbound traffic from port 4444" in ln)
        return default.replace(redirect_all, excluded.replace("4444", port) + redirect_all)
    if flags == ["--redirect-inbound=false"]:
        disabled = (
            '-A KUMA_MESH_INBOUND -p tcp -m comment --comment "kuma/mesh/transparent/proxy/inbound traffic '
            'redirection is disabled" -j RETURN\n'
        )
        return default.replace(redirect_all, disabled)
    if flags == ["--redirect-all-dns-traffic", "--redirect-dns-port=25053"]:
        # the raw table and the three nat OUTPUT DNS rules of the capture-all golden, on port 25053
        end_of_raw = multi.index("COMMIT\n") + 1
        raw = "".join(multi[:end_of_raw])
        nat = multi[end_of_raw:]
        dns = [ln for ln in nat if ln.startswith("-A OUTPUT") and ("DNS" in ln or "port 53" in ln)]
        outbound = next(ln for ln in default.splitlines(keepends=True) if ln.startswith("-A OUTPUT"))
        return (raw + default.replace(outbound, "".join(dns) + outbound)).replace("15053", "25053")
    raise AssertionError(f"a golden with arguments this test does not know: {args}")


@pytest.fixture
def pod_netns() -> Iterator[str]:
    """A namespace with IPv4 and IPv6 on a veth, as a pod has (its peer in a second namespace)."""
    n = f"{os.getpid() % 100000}"
    ns, peer = f"ktp-inj{n}", f"ktp-injp{n}"
    try:
        for argv in (
            ["ip", "netns", "add", ns],
            ["ip", "netns", "add", peer],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            ["ip", "link", "add", f"ktpi{n}", "netns", ns, "type", "veth", "peer", "name", f"ktpo{n}", "netns", peer],  # noqa: E501
            ["ip", "-n", ns, "addr", "add", "10.215.0.1/24", "dev", f"ktpi{n}"],
            ["ip", "-n", ns, "-6", "addr", "add", "fd00:215::1/64", "dev", f"ktpi{n}", "nodad"],
            ["ip", "-n", ns, "link", "set", f"ktpi{n}", "up"],
        ):  # fmt: skip
            subprocess.run(argv, check=True, capture_output=True)
        yield ns
    finally:
        for name in (ns, peer):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.parametrize(
    "golden",
    ["inject.01.golden.yaml", "inject.06.golden.yaml", "inject.14.golden.yaml", "inject.23.golden.yaml"],
)
def test_injector_args_install_kumas_rules(conformance_dir: Path, pod_netns: str, golden: str) -> None:
    """Unmodified args (plus the user and executables the image would have); both families as Kuma's."""
    args = init_args(conformance_dir, golden)
    executables = ",".join(
        f"{fam}{suffix}:{shutil.which(f'{fam}-nft{suffix}') or f'/usr/sbin/{fam}-nft{suffix}'}"
        for fam in ("iptables", "ip6tables")
        for suffix in ("", "-save", "-restore")
    )
    r = kuma_init(*args, "--kuma-dp-user", "5678", "--iptables-executables", executables, netns=pod_netns)
    assert r.returncode == 0, r.stderr
    for cmd in ("iptables-nft", "ip6tables-nft"):
        save = subprocess.run(
            ["ip", "netns", "exec", pod_netns, f"{cmd}-save"], capture_output=True, text=True, check=True
        ).stdout
        expected = kuma_save_expectation(conformance_dir / "tproxy", args, cmd)
        assert normalise_save(save) == expected, cmd


def test_every_golden_is_covered(conformance_dir: Path) -> None:
    """A new injector golden must be added to this file, not silently skipped."""
    found = sorted(p.name for p in (conformance_dir / "k8s-injector").glob("inject.*.golden.yaml"))
    assert found == sorted(GOLDENS)
