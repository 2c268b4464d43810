"""Optional native nftables backend (`--backend nft-native`): one `table inet`, one transaction.

The builder's model is translated rule by rule, so rules, order and exclusions are exactly the iptables ones;
only the container differs. Both families live in one `inet` table (per-family chains behind an `nfproto`
dispatch), and install is `add table; delete table; table {...}` in a single `nft -f -` run: the whole ruleset
for IPv4 and IPv6 is replaced atomically, and uninstall is dropping one table that nobody else owns.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from iptables.builder import COMMENT_PREFIX, Rule, Ruleset

TABLE = "kuma_mesh"
#: (table, builtin chain) -> (nft chain type, hook, priority)
BASE_CHAINS = {
    ("raw", "PREROUTING"): ("filter", "prerouting", "raw"),
    ("raw", "OUTPUT"): ("filter", "output", "raw"),
    ("mangle", "PREROUTING"): ("filter", "prerouting", "mangle"),
    ("nat", "PREROUTING"): ("nat", "prerouting", "dstnat"),
    ("nat", "OUTPUT"): ("nat", "output", "-100"),
}
BUILTIN = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


class NftError(RuntimeError):
    pass


def _chain_name(table: str, chain: str, family: int) -> str:
    prefix = "" if chain.startswith("KUMA_MESH") else f"{table}_"
    return f"{prefix}{chain}_IPV{family}"


def _set(spec: str) -> str:
    items = [p.replace(":", "-") for p in spec.split(",")]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def translate(rule: Rule, table: str, family: int, *, comments: bool = True) -> str:
    """One iptables rule (builder argv) -> one nft rule statement."""
    ipk = "ip6" if family == 6 else "ip"
    args = list(rule.args)
    out: list[str] = []
    proto = ""
    neg = False
    i = 0
    while i < len(args):
        a = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else ""
        ne = "!= " if neg else ""
        step = 2
        if a == "!":
            neg, step = True, 1
        elif a == "-m":
            pass  # modules are implied by the nft expressions
        elif a == "-p":
            proto = nxt
            out.append(f"meta l4proto {nxt}")
        elif a in ("-s", "-d"):
            out.append(f"{ipk} {'saddr' if a == '-s' else 'daddr'} {ne}{nxt}")
        elif a in ("-i", "-o"):
            name = nxt[:-1] + "*" if nxt.endswith("+") else nxt
            out.append(f'{"iifname" if a == "-i" else "oifname"} {ne}"{name}"')
        elif a in ("--dport", "--sport"):
            out.append(f"{proto} {'dport' if a == '--dport' else 'sport'} {ne}{_set(nxt)}")
        elif a == "--uid-owner":
            out.append(f"meta skuid {ne}{nxt.replace(':', '-')}")
        elif a == "--ctstate":
            out.append(f"ct state {nxt.lower()}")
        elif a == "-j":
            out.append(_verdict(nxt, args[i + 2 :], table, family))
            break
        else:
            raise NftError(f"cannot translate iptables option {a!r} in {' '.join(args)}")
        if a != "!":
            neg = False
        i += step
    if comments and rule.comment:
        text = (COMMENT_PREFIX + rule.comment).replace('"', "'")[:127]
        out.append(f'comment "{text}"')
    return " ".join(out)


def _verdict(target: str, rest: list[str], table: str, family: int) -> str:
    opts = dict(zip(rest[::2], rest[1::2], strict=False))
    if target == "RETURN":
        return "return"
    if target == "DROP":
        return "drop"
    if target == "REDIRECT":
        return f"redirect to :{opts['--to-ports']}"
    if target == "CT":
        return f"ct zone set {opts['--zone']}"
    if target == "LOG":
        return f'log prefix "{opts.get("--log-prefix", "")} " level debug'
    return f"jump {_chain_name(table, target, family)}"


def render(rulesets: list[Ruleset], *, comments: bool = True) -> str:
    """The full `nft -f` input: replace our table atomically (create-if-missing, delete, define)."""
    chains: dict[str, list[str]] = {}
    base: dict[tuple[str, str], list[str]] = {}
    for rs in rulesets:
        for t in rs.tables:
            for c in t.chains:
                chains.setdefault(_chain_name(t.name, c, rs.family), [])
            ordered = [r for r in t.rules if r.insert] + [r for r in t.rules if not r.insert]
            for r in ordered:
                name = _chain_name(t.name, r.chain, rs.family)
                if r.chain in BUILTIN:
                    key = (t.name, r.chain)
                    dispatch = f"meta nfproto ipv{rs.family} jump {name}"
                    if dispatch not in base.setdefault(key, []):
                        base[key].append(dispatch)
                chains.setdefault(name, []).append(translate(r, t.name, rs.family, comments=comments))
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    for (tname, chain), rules in base.items():
        ctype, hook, prio = BASE_CHAINS[(tname, chain)]
        lines.append(f"  chain {tname}_{chain} {{")
        lines.append(f"    type {ctype} hook {hook} priority {prio}; policy accept;")
        lines += [f"    {r}" for r in rules]
        lines.append("  }")
    for name, rules in chains.items():
        lines.append(f"  chain {name} {{")
        lines += [f"    {r}" for r in rules]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def uninstall_text() -> str:
    return f"table inet {TABLE}\ndelete table inet {TABLE}\n"


def nft_binary() -> str:
    path = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None
    )
    if not path:
        raise NftError("--backend nft-native needs the nft binary (install the nftables package)")
    return path


def apply(text: str) -> None:
    proc = subprocess.run([nft_binary(), "-f", "-"], input=text, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise NftError(f"nft failed (exit {proc.returncode}), nothing changed: {proc.stderr.strip()}")
