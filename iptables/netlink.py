"""Kernel facts and work over netlink (pyroute2): loopback name, IPv6, `::6/128` on lo, netns, conntrack.

Netlink instead of parsing `ip` output: one socket, no subprocess per question, and errors come back as errno.
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass

log = logging.getLogger(__name__)

IFF_LOOPBACK = 0x8


def enter_netns(name_or_path: str) -> None:
    """Move this process (and every child it starts) into a network namespace, by name or by path."""
    from pyroute2 import netns

    try:
        netns.setns(name_or_path)
    except OSError as exc:
        raise RuntimeError(
            f"cannot enter network namespace '{name_or_path}': {exc.strerror or exc} "
            "(give a name from `ip netns list` or a path like /proc/<pid>/ns/net)"
        ) from exc


@dataclass(frozen=True)
class LinkFacts:
    loopback: str
    loopback_index: int
    has_ipv6: bool  # a non-loopback IPv6 address exists


def link_facts() -> LinkFacts:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        lo_name, lo_index = "lo", 1
        for link in ipr.get_links():
            if link["flags"] & IFF_LOOPBACK:
                lo_name, lo_index = link.get_attr("IFLA_IFNAME"), link["index"]
                break
        has_v6 = False
        for addr in ipr.get_addr(family=socket.AF_INET6):
            a = addr.get_attr("IFA_ADDRESS")
            if a and a != "::1" and addr["index"] != lo_index:
                has_v6 = True
                break
    return LinkFacts(lo_name, lo_index, has_v6)


def ensure_ipv6_passthrough(lo_index: int) -> bool:
    """Add `::6/128` to lo (Envoy's inbound passthrough source); False when IPv6 is unusable here."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        for addr in ipr.get_addr(family=socket.AF_INET6, index=lo_index):
            if addr.get_attr("IFA_ADDRESS") == "::6":
                return True
        try:
            ipr.addr("add", index=lo_index, address="::6", prefixlen=128)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return True
            log.info("event=ipv6_disabled reason=%r", exc.args[-1] if exc.args else exc)
            return False
    return True


def flush_dns_conntrack(dns_port: int = 53) -> int:
    """Delete UDP conntrack entries to port 53 so flows opened before install hit the new REDIRECT rules.

    Without this an app that sent DNS just before install keeps talking to the old resolver for the entry's
    lifetime (the Istio conntrack race, istio/istio#33469). Returns the number of entries deleted.
    """
    from pyroute2 import Conntrack
    from pyroute2.netlink.exceptions import NetlinkError

    deleted = 0
    try:
        with Conntrack() as ct:
            for entry in list(ct.dump_entries()):
                t = entry.tuple_orig
                if t.proto == socket.IPPROTO_UDP and t.dport == dns_port:
                    try:
                        ct.entry("del", tuple_orig=t)
                        deleted += 1
                    except NetlinkError as exc:
                        if exc.code != errno.ENOENT:
                            raise
    except (OSError, NetlinkError) as exc:  # no nf_conntrack_netlink: nothing to flush
        log.info("event=conntrack_flush_skipped reason=%r", exc)
    return deleted
