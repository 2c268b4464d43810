"""Install time of the dual-stack transparent proxy with DNS: our CLI against Kuma v2.14.3's own sequence.

    sudo .venv/bin/python bench/tproxy.py [--reps 10] [--executables auto|nft|legacy]

Every measurement starts in a fresh network namespace (`ktp-bench-<pid>-<n>`, an IPv4+IPv6 veth, created
before the clock starts and deleted after; the bench process enters it, so what it spawns runs there and
nothing outside is touched), with a resolv.conf naming one server per family. Interleaved, the order
rotating each round, a warm-up round discarded, `--reps` rounds:

* **ours, CLI** (the headline): the `kuma-init` console script as a subprocess, i.e. Python start-up,
  imports, netlink facts, concurrent probes, the build, one `iptables-restore --noflush` per family and the
  DNS conntrack flush;
* **Kuma v2.14.3's sequence** (the peer): the processes `kumactl install transparent-proxy` runs, in its
  order, one after another as Go's `exec.Command` runs them, with the same binaries and the same rules.
  Read from kumahq/kuma v2.14.3 `pkg/transparentproxy/config/config.go` (`Config.Initialize`),
  `config_executables.go` (`InitializeIPv4`/`IPv6`, `Executable.Initialize`, `getIptablesVersion`),
  `config_executables_functionality.go` (`verifyFunctionality`), `pkg/transparentproxy/iptables/setup.go`
  (`Setup`, `cleanupIPvX`) and `builder/builder.go` (`RestoreIPTables`). Per family, for each candidate
  mode (IPv4: nft then legacy when auto-detecting; IPv6: the mode IPv4 chose; one given set with
  `--iptables-executables`): `--version` of the three binaries, `iptables -m <module> -h` for owner, tcp,
  udp, comment, conntrack, multiport, `iptables-save -t nat|raw|mangle` for the existing-rules check
  (stopping at the first table with rules), `iptables-save -t nat|raw|mangle` for the tables check. Between
  the families Kuma adds `::6/128` to lo over netlink (replayed with the same netlink call). Then per
  family the clean-up's `iptables-save` (no rules of ours in a fresh namespace, so no `restore --test` and
  no flush-restore follow), and per family the rules written to a temp file and one
  `iptables-restore --noflush <file>` (`--wait=5` added for legacy). What the replay leaves out, Go's own
  start-up and its in-process work, only makes the peer look faster than kumactl is.

For information, also: ours in-process (`prepare()` + `install()`, no interpreter start-up) and ours with
`--backend nft-native` (CLI). Each peer run is checked to leave the same rules as ours.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from iptables import builder, netlink, state  # noqa: E402
from iptables import install as install_mod  # noqa: E402
from iptables.config import load_config  # noqa: E402

MODULES = ("owner", "tcp", "udp", "comment", "conntrack", "multiport")
#: verifyExistingRules: (table, lines a table with only its built-in chains prints), in Kuma's order
EXISTING_RULES_CHECK = (("nat", 4), ("raw", 2), ("mangle", 5))
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


class Namespace:
    """A fresh namespace with a dual-stack veth; `with` enters it and returns to where we were."""

    def __init__(self, home: int) -> None:
        self.home = home
        self.name = f"ktp-bench-{os.getpid()}-{next(_counter)}"

    def __enter__(self) -> Namespace:
        n = self.name
        for argv in (
            ["ip", "netns", "add", n],
            ["ip", "-n", n, "link", "set", "lo", "up"],
            ["ip", "-n", n, "link", "add", "ktpb0", "type", "veth", "peer", "name", "ktpb1"],
            ["ip", "-n", n, "addr", "add", "10.214.0.1/24", "dev", "ktpb0"],
            ["ip", "-n", n, "-6", "addr", "add", "fd00:214::1/64", "dev", "ktpb0", "nodad"],
            ["ip", "-n", n, "link", "set", "ktpb0", "up"],
        ):
            subprocess.run(argv, check=True, capture_output=True)
        fd = os.open(f"/run/netns/{n}", os.O_RDONLY)
        try:
            setns(fd)
        finally:
            os.close(fd)
        return self

    def __exit__(self, *_: object) -> None:
        setns(self.home)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def which(name: str) -> str:
    found = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin") if os.access(p := f"{d}/{name}", os.X_OK)),
        None,
    )
    if not found:
        sys.exit(f"bench/tproxy.py: {name} not found (install iptables)")
    return found


def kuma_initialize_family(base: str) -> bool:
    """One `ExecutablesIPvX.Initialize` for binaries `base`, `base-save`, `base-restore`; True = has rules."""
    binary, save = which(base), which(f"{base}-save")
    for path in (binary, save, which(f"{base}-restore")):
        run([path, "--version"])  # getIptablesVersion
    for module in MODULES:
        run([binary, "-m", module, "-h"])  # verifyModule
    existing = False
    for table, builtin_lines in EXISTING_RULES_CHECK:  # verifyExistingRules: stops at the first hit
        out = run([save, "-t", table])
        lines = [ln for ln in out.splitlines() if ln.strip() and ln[0] not in "#*" and ln != "COMMIT"]
        if len(lines) > builtin_lines:
            existing = True
            break
    for table in ("nat", "raw", "mangle"):  # verifyTable
        run([save, "-t", table])
    return existing


def kuma_sequence(executables: str, texts: dict[int, str], lo_index: int) -> None:
    """What `kumactl install transparent-proxy` runs for this install, in its order (see the module doc)."""
    modes = ["nft", "legacy"] if executables == "auto" else [executables]
    chosen = modes[0]
    for family in (4, 6):
        prefix = "iptables" if family == 4 else "ip6tables"
        if family == 6:
            netlink.ensure_ipv6_passthrough(lo_index)  # configureIPv6OutboundAddress
        for mode in modes if family == 4 else [chosen]:
            kuma_initialize_family(f"{prefix}-{mode}")
    for family in (4, 6):  # Cleanup: cleanupIPvX
        run([which(f"{'iptables' if family == 4 else 'ip6tables'}-{chosen}-save")])
    for family in (4, 6):  # RestoreIPTables
        prefix = "iptables" if family == 4 else "ip6tables"
        with tempfile.NamedTemporaryFile("w", prefix=f"{prefix}-rules.", suffix=".txt") as f:
            f.write(texts[family])
            f.flush()
            wait = ["--wait=5"] if chosen == "legacy" else []
            proc = subprocess.run(
                [which(f"{prefix}-{chosen}-restore"), *wait, "--noflush", f.name],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"peer restore failed: {proc.stderr}")


def our_rules() -> dict[str, list[str]]:
    """Our lines in both families' saves, for checking that the peer left the same rules."""
    return {
        cmd: state.our_lines(state.parse_save(run([which(cmd)])))
        for cmd in (
            "iptables-nft-save",
            "ip6tables-nft-save",
            "iptables-legacy-save",
            "ip6tables-legacy-save",
        )
    }


def stats(xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))]
    return f"median {statistics.median(xs) * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms   (n={len(xs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument(
        "--executables",
        choices=("auto", "nft", "legacy"),
        default="auto",
        help="auto: both sides detect nft/legacy as the injector's kuma-init does; "
        "nft|legacy: both are given that set with --iptables-executables",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/tproxy.py needs root (it creates network namespaces)")
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    tmp = Path(tempfile.mkdtemp(prefix="ktp-bench-"))
    resolv = tmp / "resolv.conf"
    resolv.write_text("nameserver 10.214.0.53\nnameserver fd00:214::53\n")
    env = {**os.environ, "KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_RESOLV_CONFIG_PATH": str(resolv)}
    flags = [
        "--kuma-dp-user",
        "5678",
        "--redirect-dns",
        "--exclude-inbound-ports",
        "22",
        "--max-retries",
        "0",
    ]
    if args.executables != "auto":
        flags += [
            "--iptables-executables",
            ",".join(
                f"{fam}{s}:{which(f'{fam}-{args.executables}{s}')}"
                for fam in ("iptables", "ip6tables")
                for s in ("", "-save", "-restore")
            ),
        ]
    kuma_init = str(REPO / ".venv" / "bin" / "kuma-init")
    ours_cli = (
        [kuma_init]
        if os.access(kuma_init, os.X_OK)
        else [sys.executable, "-c", "from iptables.cli import kuma_init_main; kuma_init_main()"]
    ) + flags
    native_cli = [
        sys.executable,
        "-m",
        "kuma_dp",
        "transparent-proxy",
        "install",
        "--backend",
        "nft-native",
        *flags,
    ]
    in_process_flags = {"kuma-dp-user": "5678", "redirect-dns": True, "exclude-inbound-ports": "22"}
    if args.executables != "auto":
        in_process_flags["iptables-executables"] = flags[flags.index("--iptables-executables") + 1]
    cfg = load_config([], in_process_flags, env)

    def cli(argv: list[str]) -> Callable[[], None]:
        def go() -> None:
            subprocess.run(argv, check=True, capture_output=True, cwd=str(REPO), env=env)

        return go

    def in_process() -> None:
        res = install_mod.install(install_mod.prepare(cfg, env))
        assert res.families == (4, 6), "expected a dual-stack install"

    reference: dict[str, list[str]] = {}
    texts: dict[int, str] = {}
    with Namespace(home):  # the rules Kuma's sequence restores: our builder's, for this namespace
        prep = install_mod.prepare(cfg, env, dry_run=True)
        texts = {rs.family: builder.render(rs, comments=prep.facts.comments) + "\n" for rs in prep.rulesets}
        n_rules = sum(len(t.rules) for rs in prep.rulesets for t in rs.tables)

    def peer() -> None:
        kuma_sequence(args.executables, texts, netlink.link_facts().loopback_index)

    contenders: dict[str, Callable[[], None]] = {
        "ours (kuma-init CLI)": cli(ours_cli),
        "Kuma v2.14.3 sequence (peer)": peer,
        "ours (in-process install())": in_process,
        "ours (CLI, --backend nft-native)": cli(native_cli),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    try:
        for rnd in range(args.reps + 1):  # round 0 is the warm-up
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in order:
                with Namespace(home):
                    t0 = time.perf_counter()
                    contenders[name]()
                    elapsed = time.perf_counter() - t0
                    if "nft-native" not in name:
                        rules = our_rules()
                        if not reference:
                            reference.update(rules)
                        assert rules == reference, f"{name} left other rules than the first run"
                if rnd:
                    times[name].append(elapsed)
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
        os.close(home)
    ours, kuma = statistics.median(times[names[0]]), statistics.median(times[names[1]])
    print(
        f"transparent-proxy install, dual-stack + DNS ({n_rules} rules), executables {args.executables}, "
        f"{args.reps} rounds, interleaved, fresh namespace each"
    )
    for name in names:
        print(f"  {name:<34} {stats(times[name])}")
    print(f"  ratio Kuma sequence / ours (CLI)   {kuma / ours:5.2f}x")


if __name__ == "__main__":
    main()
