"""Time to install the full dual-stack transparent-proxy ruleset with DNS, ours vs a Kuma-style sequence.

    sudo .venv/bin/python bench/tproxy.py [--reps 10] [--backend nft|legacy]

Runs inside a throw-away network namespace (`ktp-bench-<pid>`, removed at the end; the root namespace's rules
are never touched) with an IPv4+IPv6 interface and a resolv.conf with one server per family. Measured,
interleaved, `--reps` times each (median and p90), every repetition starting from a clean namespace:

* ours, in-process: `iptables.install.prepare()` + `install()` = netlink facts + concurrent probes + build
  + one `iptables-restore --noflush` per family + conntrack flush (target: <= 150 ms);
* ours with `--backend nft-native` (one `nft -f` transaction), in-process;
* ours, as a command: `kuma-dp transparent-proxy install` wall time (adds Python start-up and imports);
* the peer: the step sequence Kuma's installer runs (`pkg/transparentproxy/iptables/setup.go` and
  `pkg/transparentproxy/config/config_executables.go` in kumahq/kuma), one process after another with
  the same binaries and rules: `--version` of all six binaries, `*-save` of both backends, the module and
  table probes, then per family save -> `restore --test` -> `restore` (clean-up) and `restore --noflush`
  (install). kumactl itself is not available here, so this emulates its process sequence.

It also prints Kuma's documented retry defaults (4 retries, 2 s apart; `--wait 5` s for the legacy lock),
i.e. what one transient failure costs there: our apply is atomic per family, so a retry restarts clean.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from iptables import backend, builder, state  # noqa: E402
from iptables import install as install_mod  # noqa: E402
from iptables.config import load_config  # noqa: E402

MODULES = ("owner", "tcp", "udp", "comment", "conntrack", "multiport")


def run(argv: list[str], stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)


def kuma_style(mode: str, texts: dict[int, str]) -> float:
    """Kuma's documented process sequence, one process after another; returns seconds."""
    t0 = time.perf_counter()
    for m in ("nft", "legacy"):
        for suffix in ("", "-save", "-restore"):
            run([f"iptables-{m}{suffix}", "--version"])
        run([f"iptables-{m}-save"])
    for fam in (4, 6):
        base = "iptables" if fam == 4 else "ip6tables"
        for mod in MODULES:
            run([f"{base}-{mode}", "-m", mod, "-h"])
        for table in ("nat", "raw", "mangle"):
            run([f"{base}-{mode}-save", "-t", table])
    for fam in (4, 6):
        base = "iptables" if fam == 4 else "ip6tables"
        saved = subprocess.run([f"{base}-{mode}-save"], capture_output=True, text=True).stdout
        cleaned = "\n".join(line for line in saved.splitlines() if not state.is_ours(line)) + "\n"
        run([f"{base}-{mode}-restore", "--test"], cleaned)
        run([f"{base}-{mode}-restore"], cleaned)
        run([f"{base}-{mode}-restore", "--noflush"], texts[fam])
    return time.perf_counter() - t0


def clean(cfg_exec: str) -> None:
    cfg = load_config([], {"iptables-executables": cfg_exec}, {})
    install_mod.uninstall(cfg, os.environ)


def stats(xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))]
    return f"median {statistics.median(xs) * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms   (n={len(xs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--backend", choices=("nft", "legacy"), default="nft")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/tproxy.py needs root (it creates a network namespace)")
    ns = f"ktp-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="ktp-bench-"))
    try:
        for argv in (
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            ["ip", "-n", ns, "link", "add", "ktpb0", "type", "veth", "peer", "name", "ktpb1"],
            ["ip", "-n", ns, "addr", "add", "10.214.0.1/24", "dev", "ktpb0"],
            ["ip", "-n", ns, "-6", "addr", "add", "fd00:214::1/64", "dev", "ktpb0", "nodad"],
            ["ip", "-n", ns, "link", "set", "ktpb0", "up"],
        ):
            subprocess.run(argv, check=True)
        resolv = tmp / "resolv.conf"
        resolv.write_text("nameserver 10.214.0.53\nnameserver fd00:214::53\n")
        exe = ",".join(
            f"{fam}{s}:/usr/sbin/{fam}-{args.backend}{s}"
            for fam in ("iptables", "ip6tables")
            for s in ("", "-save", "-restore")
        )
        flags = {
            "kuma-dp-user": "5678",
            "redirect-dns": True,
            "exclude-inbound-ports": "22",
            "iptables-executables": exe,
            "max-retries": "0",
        }
        env = {"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_RESOLV_CONFIG_PATH": str(resolv)}
        cfg = load_config([], flags, env)

        from iptables import netlink

        netlink.enter_netns(ns)
        prep = install_mod.prepare(cfg, os.environ)
        assert len(prep.rulesets) == 2, "expected a dual-stack ruleset"
        texts = {rs.family: builder.render(rs, comments=prep.facts.comments) + "\n" for rs in prep.rulesets}
        n_rules = sum(len(t.rules) for rs in prep.rulesets for t in rs.tables)
        cli = [
            sys.executable,
            "-c",
            "from kuma_dp.cli import main; main()",
            "transparent-proxy",
            "install",
            "--kuma-dp-user",
            "5678",
            "--redirect-dns",
            "--exclude-inbound-ports",
            "22",
            "--iptables-executables",
            exe,
            "--max-retries",
            "0",
        ]
        ours: list[float] = []
        native: list[float] = []
        ours_cli: list[float] = []
        peer: list[float] = []
        for i in range(args.reps + 1):  # first round is warm-up
            clean(exe)
            t0 = time.perf_counter()
            res = install_mod.install(install_mod.prepare(cfg, os.environ))
            t_ours = time.perf_counter() - t0
            assert res.families == (4, 6)
            clean(exe)
            t0 = time.perf_counter()
            install_mod.install_native(install_mod.prepare(cfg, os.environ, native=True))
            t_native = time.perf_counter() - t0
            install_mod.uninstall_native()
            t0 = time.perf_counter()
            subprocess.run(cli, check=True, capture_output=True, cwd=str(REPO), env={**os.environ, **env})
            t_cli = time.perf_counter() - t0
            clean(exe)
            t_peer = kuma_style(args.backend, texts)
            live = backend.save(prep.detected.v4)  # type: ignore[union-attr]
            assert state.has_ours(live), "the Kuma-style sequence did not install the rules"
            if i:
                ours.append(t_ours)
                native.append(t_native)
                ours_cli.append(t_cli)
                peer.append(t_peer)
        clean(exe)
        med_ours, med_peer = statistics.median(ours), statistics.median(peer)
        print(
            f"transparent-proxy install, dual-stack + DNS ({n_rules} rules), backend {args.backend}, "
            f"{args.reps} reps, interleaved"
        )
        print(f"  ours (in-process install())          {stats(ours)}")
        print(f"  ours, --backend nft-native           {stats(native)}")
        print(f"  ours (kuma-dp transparent-proxy CLI) {stats(ours_cli)}")
        print(f"  Kuma-style process sequence (peer)   {stats(peer)}")
        print(f"  ratio peer/ours (in-process)         {med_peer / med_ours:5.2f}x")
        print(f"  target <= 150 ms in-process:         {'met' if med_ours <= 0.150 else 'MISSED'}")
        print(
            "  Kuma retry defaults: 4 retries x 2 s sleep = 8 s extra per transient failure, plus up to 5 s "
            "xtables lock wait (legacy)"
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    main()
