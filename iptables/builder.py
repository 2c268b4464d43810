"""The pure rule builder: config + host facts -> ruleset model -> iptables-restore text.

Rules, order and comments follow Kuma's builder (`pkg/transparentproxy/iptables/builder/builder_table_*.go` in
kumahq/kuma v2.14.3). Nothing here touches the kernel, so the whole rule
order is checked against Kuma's goldens in unit tests, and install, uninstall and `plan --diff` all derive
from this one model (istio's lesson: never keep a separate list of what to clean up).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from iptables.config import TransparentProxyConfig

CHAIN_PREFIX = "KUMA_MESH"
COMMENT_PREFIX = "kuma/mesh/transparent/proxy/"
INBOUND = "KUMA_MESH_INBOUND"
OUTBOUND = "KUMA_MESH_OUTBOUND"
INBOUND_REDIRECT = "KUMA_MESH_INBOUND_REDIRECT"
OUTBOUND_REDIRECT = "KUMA_MESH_OUTBOUND_REDIRECT"
CUSTOM_CHAINS = (INBOUND, OUTBOUND, INBOUND_REDIRECT, OUTBOUND_REDIRECT)
BUILTIN_ORDER = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
TABLE_ORDER = ("raw", "nat", "mangle")


@dataclass(frozen=True)
class HostFacts:
    """What the builder needs to know about the host; gathered by `iptables.netlink`/`backend`, or given in tests."""  # noqa: E501

    loopback: str = "lo"
    nameservers: tuple[str, ...] = ()
    #: chains that already exist, per family (4 or 6): only DOCKER_OUTPUT matters today
    docker_output: frozenset[int] = frozenset()
    ipv6: bool = False
    comments: bool = True
    conntrack: bool = True


@dataclass(frozen=True)
class Rule:
    chain: str
    args: tuple[str, ...]
    comment: str = ""
    insert: bool = False


@dataclass
class Table:
    name: str
    chains: list[str] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)

    def add(self, chain: str, args: str | Iterable[str], comment: str, *, insert: bool = False) -> None:
        argv = tuple(args.split()) if isinstance(args, str) else tuple(args)
        self.rules.append(Rule(chain, argv, comment, insert))

    def add_per_port(self, chain: str, ports: Iterable[int], target: str, comment: str) -> None:
        """One `-p tcp --dport <port> -j <target>` rule per port; `{port}` in `comment` names the port."""
        for port in ports:
            self.add(chain, f"-p tcp --dport {port} -j {target}", comment.format(port=port))


@dataclass
class Ruleset:
    family: int  # 4 or 6
    tables: list[Table]

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name == name), None)


# ----------------------------------------------------------------------------------------------------


def _family_of(addr: str) -> int:
    return ipaddress.ip_network(addr, strict=False).version


def build(cfg: TransparentProxyConfig, facts: HostFacts, uid: int, family: int) -> Ruleset:
    """One family's ruleset in Kuma's build order; tables without rules are left out."""
    v6 = family == 6
    lo_addr = "::1/128" if v6 else "127.0.0.1/32"
    passthrough = "::6/128" if v6 else "127.0.0.6/32"
    lo = facts.loopback
    dns_port = cfg.dns.port
    out_port = cfg.outbound.port
    nameservers = [ns for ns in facts.nameservers if _family_of(ns) == family]
    dns_on = cfg.dns.enabled and (cfg.dns.capture_all or bool(nameservers))
    docker = family in facts.docker_output

    raw, nat, mangle = Table("raw"), Table("nat", list(CUSTOM_CHAINS)), Table("mangle")

    # ---- nat PREROUTING
    if cfg.log_enabled:
        nat.add(
            "PREROUTING",
            f"-j LOG --log-prefix PREROUTING: --log-level {cfg.log_level}",
            "log matching packets using kernel logging",
        )
    vnets: dict[str, str] = {}
    for v in cfg.vnets:
        if _family_of(v.cidr) == family:
            vnets[v.interface] = v.cidr
    if not vnets and not cfg.inbound.insert_redirect_instead_of_append:
        nat.add(
            "PREROUTING",
            f"-p tcp -j {INBOUND}",
            "redirect inbound TCP traffic to our custom chain for processing",
        )
    else:
        for iface in sorted(vnets):
            cidr = vnets[iface]
            # Kuma adds this redirect whether or not DNS redirection is on, and spells the match explicitly
            # (`addPreroutingRules` in builder_table_nat.go): a container on the virtual network asks the
            # kuma-dp DNS proxy in every case.
            nat.add(
                "PREROUTING",
                f"-i {iface} -m udp -p udp --dport 53 -j REDIRECT --to-ports {dns_port}",
                f"redirect DNS requests on interface {iface} to the kuma-dp DNS proxy "
                f"(listening on port {dns_port})",
                insert=True,
            )
            nat.add(
                "PREROUTING",
                f"! -d {cidr} -i {iface} -p tcp -j REDIRECT --to-ports {out_port}",
                f"redirect TCP traffic on interface {iface}, excluding destination {cidr}, to the envoy's "
                f"outbound passthrough port {out_port}",
                insert=True,
            )
        nat.add(
            "PREROUTING",
            f"-p tcp -j {INBOUND}",
            "redirect remaining TCP traffic to our custom chain for processing",
            insert=True,
        )

    # ---- nat OUTPUT
    if cfg.log_enabled:
        nat.add(
            "OUTPUT",
            f"-j LOG --log-prefix OUTPUT: --log-level {cfg.log_level}",
            "log matching packets using kernel logging",
            insert=True,
        )
    exc = "skip further processing for configured IP addresses, ports and UIDs"
    for u in cfg.outbound.exclude_uids:
        nat.add(
            "OUTPUT",
            f"-m multiport -p {u.protocol} --dport {u.ports} -m owner --uid-owner {u.uids} -j RETURN",
            exc,
            insert=True,
        )
    for ip in cfg.outbound.exclude_ips:
        if _family_of(ip) == family:
            nat.add("OUTPUT", f"-d {ip} -j RETURN", exc, insert=True)
    if dns_on:
        target = "DOCKER_OUTPUT" if docker else "RETURN"
        nat.add(
            "OUTPUT",
            f"-p udp --dport 53 -m owner --uid-owner {uid} -j {target}",
            "redirect DNS traffic from kuma-dp to the DOCKER_OUTPUT chain"
            if docker
            else "return early for DNS traffic from kuma-dp",
            insert=True,
        )
        nat.add(
            "OUTPUT",
            f"-p tcp --dport 53 -m owner ! --uid-owner {uid} -j RETURN",
            "allow applications to perform DNS queries over TCP to port 53 without mesh redirection (only "
            f"traffic not owned by UID {uid} (kuma-dp user))",
        )
        if cfg.dns.capture_all:
            nat.add(
                "OUTPUT",
                f"-p udp --dport 53 -j REDIRECT --to-ports {dns_port}",
                f"redirect all DNS requests to the kuma-dp DNS proxy (listening on port {dns_port})",
                insert=True,
            )
        else:
            for ns in nameservers:
                nat.add(
                    "OUTPUT",
                    f"-d {ns} -p udp --dport 53 -j REDIRECT --to-ports {dns_port}",
                    f"redirect DNS requests to {ns} to the kuma-dp DNS proxy (listening on port {dns_port})",
                    insert=True,
                )
    nat.add(
        "OUTPUT",
        f"-p tcp -j {OUTBOUND}",
        "redirect outbound TCP traffic to our custom chain for processing",
        insert=cfg.outbound.insert_redirect_instead_of_append,
    )

    # ---- KUMA_MESH_INBOUND
    inb = cfg.inbound
    if not inb.enabled:
        nat.add(INBOUND, "-p tcp -j RETURN", "inbound traffic redirection is disabled")
    else:
        for ip in inb.exclude_ips:
            if _family_of(ip) == family:
                nat.add(INBOUND, f"-s {ip} -j RETURN", "skip further processing for configured IP address")
        if inb.include_ports:
            nat.add_per_port(
                INBOUND,
                inb.include_ports,
                INBOUND_REDIRECT,
                "redirect inbound traffic from port {port} to the custom chain for processing",
            )
        else:
            nat.add_per_port(
                INBOUND,
                inb.exclude_ports,
                "RETURN",
                "exclude inbound traffic from port {port} from redirection",
            )
            nat.add(
                INBOUND,
                f"-p tcp -j {INBOUND_REDIRECT}",
                "redirect all inbound traffic to the custom chain for processing",
            )

    # ---- KUMA_MESH_OUTBOUND
    outb = cfg.outbound
    if not outb.enabled:
        nat.add(OUTBOUND, "-p tcp -j RETURN", "outbound traffic redirection is disabled")
    else:
        if not outb.include_ports:
            nat.add_per_port(
                OUTBOUND,
                outb.exclude_ports,
                "RETURN",
                "exclude outbound traffic from port {port} from redirection",
            )
        nat.add(
            OUTBOUND,
            f"-s {passthrough} -o {lo} -j RETURN",
            f"prevent traffic loops by ensuring traffic from the sidecar proxy (using {passthrough}) to loopback "  # noqa: E501
            "interface is not redirected again",
        )
        nat.add(
            OUTBOUND,
            f"-p tcp -o {lo} ! -d {lo_addr} -m owner --uid-owner {uid} -j {INBOUND_REDIRECT}",
            f"redirect outbound TCP traffic destined for loopback interface, but not targeting address {lo_addr}, "  # noqa: E501
            f"and owned by UID {uid} (kuma-dp user) to KUMA_MESH_INBOUND_REDIRECT chain for proper handling",
        )
        nat.add(
            OUTBOUND,
            f"-p tcp -o {lo} -m owner ! --uid-owner {uid} -j RETURN",
            f"return outbound TCP traffic destined for loopback interface, owned by any UID other than {uid} "
            "(kuma-dp user)",
        )
        nat.add(
            OUTBOUND,
            f"-m owner --uid-owner {uid} -j RETURN",
            f"return outbound traffic owned by UID {uid} (kuma-dp user)",
        )
        nat.add(
            OUTBOUND,
            f"-d {lo_addr} -j RETURN",
            f"return traffic destined for localhost ({lo_addr}) to avoid redirection",
        )
        if outb.include_ports:
            nat.add_per_port(
                OUTBOUND,
                outb.include_ports,
                OUTBOUND_REDIRECT,
                "redirect outbound TCP traffic to port {port} to our custom chain for further processing",
            )
        else:
            nat.add(
                OUTBOUND,
                f"-j {OUTBOUND_REDIRECT}",
                "redirect all other outbound traffic to our custom chain for further processing",
            )

    nat.add(
        INBOUND_REDIRECT,
        f"-p tcp -j REDIRECT --to-ports {inb.port}",
        f"redirect TCP traffic to envoy (port {inb.port})",
    )
    nat.add(
        OUTBOUND_REDIRECT,
        f"-p tcp -j REDIRECT --to-ports {out_port}",
        f"redirect TCP traffic to envoy (port {out_port})",
    )

    # ---- raw: DNS conntrack zone split
    split = dns_on and not cfg.dns.skip_conntrack_zone_split and facts.conntrack
    if split and not (cfg.dns.capture_all and docker):
        raw.add(
            "OUTPUT",
            f"-p udp --dport 53 -m owner --uid-owner {uid} -j CT --zone 1",
            f"assign connection tracking zone 1 to DNS traffic from the kuma-dp user (UID {uid})",
        )
        raw.add(
            "OUTPUT",
            f"-p udp --sport {dns_port} -m owner --uid-owner {uid} -j CT --zone 2",
            "assign connection tracking zone 2 to DNS responses from the kuma-dp DNS proxy",
        )
        if cfg.dns.capture_all:
            raw.add(
                "OUTPUT",
                "-p udp --dport 53 -j CT --zone 2",
                "assign connection tracking zone 2 to all DNS requests",
            )
            raw.add(
                "PREROUTING",
                "-p udp --sport 53 -j CT --zone 1",
                "assign connection tracking zone 1 to all DNS responses",
            )
        else:
            for ns in nameservers:
                raw.add(
                    "OUTPUT",
                    f"-d {ns} -p udp --dport 53 -j CT --zone 2",
                    f"assign connection tracking zone 2 to DNS requests destined for {ns}",
                )
                if ipaddress.ip_address(ns).is_loopback:
                    raw.add(
                        "OUTPUT",
                        f"-s {ns} -d {lo_addr} -p udp -j CT --zone 1",
                        "assign conntrack zone 1 to DNS responses from the local DNS server to localhost, needed "  # noqa: E501
                        "when the DNS query port is altered by a DNAT iptables rule, such as with Docker "
                        "containers in a custom network",
                    )
                raw.add(
                    "PREROUTING",
                    f"-s {ns} -p udp --sport 53 -j CT --zone 1",
                    f"assign connection tracking zone 1 to DNS responses from {ns}",
                )

    # ---- mangle
    if cfg.drop_invalid_packets:
        mangle.add(
            "PREROUTING",
            "-m conntrack --ctstate INVALID -j DROP",
            "drop packets in the INVALID state to prevent potential issues with malformed or out-of-order "
            "packets",
        )

    tables = [t for t in (raw, nat, mangle) if t.rules]
    return Ruleset(family, tables)


def conntrack_warning(cfg: TransparentProxyConfig, facts: HostFacts) -> str | None:
    if cfg.dns.enabled and not cfg.dns.skip_conntrack_zone_split and not facts.conntrack:
        return "conntrack zone splitting is disabled. This requires the 'conntrack' iptables module"
    return None


# ----------------------------------------------------------------------------------------------------
# Rendering

_LONG = {
    "-A": "--append",
    "-I": "--insert",
    "-N": "--new-chain",
    "-p": "--protocol",
    "-s": "--source",
    "-d": "--destination",
    "-i": "--in-interface",
    "-o": "--out-interface",
    "-j": "--jump",
    "-m": "--match",
    # protocol.go: the tcp/udp (and multiport) port options have long forms too
    "--dport": "--destination-port",
    "--sport": "--source-port",
}


def _comment_args(rule: Rule, comments: bool) -> list[str]:
    if not comments or not rule.comment:
        return []
    text = (COMMENT_PREFIX + rule.comment)[:254]
    return ["-m", "comment", "--comment", f'"{text}"']


def render_table(table: Table, *, comments: bool = True, verbose: bool = False) -> str:
    """One `* table ... COMMIT` block in Kuma's dry-run layout (custom chains, built-ins, then custom rules)."""  # noqa: E501

    def opt(o: str) -> str:
        return _LONG.get(o, o) if verbose else o

    lines = [f"* {table.name}"]
    if verbose and table.chains:
        lines.append("# Custom Chains:")
    lines += [f"{opt('-N')} {c}" for c in table.chains]
    if verbose:
        lines.append("# Rules:")
    order = [c for c in BUILTIN_ORDER] + list(table.chains)
    extra = [r.chain for r in table.rules if r.chain not in order]
    for chain in order + sorted(set(extra)):
        n = 0
        for r in table.rules:
            if r.chain != chain:
                continue
            if r.insert:
                n += 1
                head = [opt("-I"), chain, str(n)]
            else:
                head = [opt("-A"), chain]
            args = [opt(a) if a in _LONG and a not in ("-A", "-I", "-N") else a for a in r.args]
            lines.append(" ".join(head + _comment_args(r, comments) + args))
    lines.append("COMMIT")
    return "\n".join(lines)


def render(ruleset: Ruleset, *, comments: bool = True, verbose: bool = False) -> str:
    """The iptables-restore input for one family (no trailing newline); empty string when there is nothing."""
    sep = "\n\n" if verbose else "\n"
    return sep.join(render_table(t, comments=comments, verbose=verbose) for t in ruleset.tables)


def render_dry_run(rulesets: list[Ruleset], *, comments: bool = True, verbose: bool = False) -> str:
    parts = []
    for rs in rulesets:
        parts.append(f"### IPv{rs.family} ###\n\n" + render(rs, comments=comments, verbose=verbose).strip())
    return "\n\n".join(parts) + "\n"


def build_all(cfg: TransparentProxyConfig, facts: HostFacts, uid: int) -> list[Ruleset]:
    """IPv4 always; IPv6 when the mode allows it and the host has usable IPv6 (Kuma silently drops it otherwise)."""  # noqa: E501
    out = [build(cfg, facts, uid, 4)]
    if cfg.ipv6_wanted and facts.ipv6:
        out.append(build(cfg, facts, uid, 6))
    return out


def parse_resolv_conf(text: str) -> tuple[str, ...]:
    """`nameserver` lines, valid IPs only, in file order (zone suffixes like `%eth0` dropped)."""
    out: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            addr = parts[1].split("%", 1)[0]
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                continue
            if addr not in out:
                out.append(addr)
    return tuple(out)
