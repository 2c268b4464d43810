"""Virtual IPs for mesh services and their DNS names, as kuma-cp allocates them (Kuma's
`pkg/dns/vips_allocator.go`, `pkg/dns/vips/`).

Addresses come from 240.0.0.0/4 in sorted name order, the first being 240.0.0.0 (the network address is not
reserved). An assignment is kept for as long as its service exists, so a proxy's outbound listener and a
client's cached DNS answer stay valid while other services come and go; a deleted service's VIP may be reused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

DEFAULT_CIDR = "240.0.0.0/4"
DEFAULT_DOMAIN = "mesh"
#: kuma-cp's `serviceVipPort`: the port of the outbound listener on each VIP.
VIP_PORT = 80


class VipExhausted(RuntimeError):
    """The CIDR has no free address left for a new service."""


def allocate(
    names: Iterable[str], previous: Mapping[str, str] | None = None, cidr: str = DEFAULT_CIDR
) -> dict[str, str]:
    """Map every name to a VIP: keep `previous` assignments of names still present, give new names (in sorted
    order) the lowest free addresses of `cidr`. Pure, so the store can recompute it on every change."""
    network = ipaddress.ip_network(cidr)
    wanted = sorted(set(names))
    kept = {n: ip for n, ip in (previous or {}).items() if n in wanted}
    used = {int(ipaddress.ip_address(ip)) for ip in kept.values()}
    result = dict(kept)
    candidate = int(network.network_address)
    last = int(network.broadcast_address)
    for name in wanted:
        if name in result:
            continue
        while candidate in used:
            candidate += 1
        if candidate > last:
            raise VipExhausted(f"no free VIP left in {cidr} for service {name!r}; widen the CIDR")
        result[name] = str(ipaddress.ip_address(candidate))
        used.add(candidate)
    return dict(sorted(result.items()))


def hostnames(service: str, domain: str = DEFAULT_DOMAIN) -> list[str]:
    """`<service>.<domain>`, plus the alias with every `_` turned into `.` (Kubernetes-style service
    names)."""
    names = [f"{service}.{domain}"]
    if "_" in service:
        names.append(f"{service.replace('_', '.')}.{domain}")
    return names


def domains(vips: Mapping[str, str], domain: str = DEFAULT_DOMAIN) -> dict[str, str]:
    """Every DNS name -> its VIP, sorted by name (the order of the /dns records)."""
    out: dict[str, str] = {}
    for service, ip in vips.items():
        for name in hostnames(service, domain):
            out[name] = ip
    return dict(sorted(out.items()))


def ipv4_mapped(ip: str) -> str:
    """`240.0.0.1` -> `::ffff:f000:1`: the hex form kuma-cp puts next to an IPv4 VIP for dual-stack
    proxies."""
    v4 = int(ipaddress.IPv4Address(ip))
    return f"::ffff:{v4 >> 16:x}:{v4 & 0xFFFF:x}"
