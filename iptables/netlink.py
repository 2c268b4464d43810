"""Kernel facts and work over netlink: loopback name, IPv6, `::6/128` on lo, netns, conntrack.

Netlink instead of parsing `ip` output: one socket, no subprocess per question, and errors come back as
errno. The few messages the installer needs are spoken directly over `socket.AF_NETLINK` (rtnetlink:
RTM_GETLINK, RTM_GETADDR, RTM_NEWADDR; ctnetlink: IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE) rather than through
pyroute2, whose package import alone costs the init container about 0.5 s of CPU and 17 MB of RSS. The
layouts are the kernel's uapi (`linux/netlink.h`, `linux/rtnetlink.h`, `linux/if_addr.h`,
`linux/netfilter/nfnetlink_conntrack.h`); Kuma does the same work with vishvananda/netlink
(`configureIPv6OutboundAddress` in `pkg/transparentproxy/config/utils.go`).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

IFF_LOOPBACK = 0x8
CLONE_NEWNET = 0x40000000

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR = 18, 20, 22
IFLA_IFNAME = 3
IFA_ADDRESS, IFA_LOCAL = 1, 2
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
#: ctnetlink: subsystem 1 (NFNL_SUBSYS_CTNETLINK) in the message type's high byte
IPCTNL_MSG_CT_GET = (1 << 8) | 1
IPCTNL_MSG_CT_DELETE = (1 << 8) | 2
CTA_TUPLE_ORIG, CTA_ZONE = 1, 18
CTA_TUPLE_PROTO = 2
CTA_PROTO_NUM, CTA_PROTO_DST_PORT = 1, 3

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big-endian, 0 here)
_RTATTR = struct.Struct("=HH")  # len, type


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def _attrs(data: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """(type without flags, payload, the attribute's raw bytes as the kernel sent them) for each attribute."""
    off = 0
    while off + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, off)
        if length < _RTATTR.size:
            return
        yield kind & NLA_TYPE_MASK, data[off + _RTATTR.size : off + length], data[off : off + _align(length)]
        off += _align(length)


def _talk(protocol: int, msg_type: int, flags: int, payload: bytes) -> list[tuple[int, bytes]]:
    """Send one request; return the (type, body) of every answer up to the dump's end or the ack.

    Raises OSError with the kernel's errno when it answers with one.
    """
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol) as sock:
        sock.bind((0, 0))
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags, 1, 0) + payload)
        out: list[tuple[int, bytes]] = []
        while True:
            data = sock.recv(1 << 16)
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, off)
                body = data[off + _NLMSGHDR.size : off + length]
                off += _align(length)
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", body)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return out  # the ack of a non-dump request
                out.append((kind, body))


def enter_netns(name_or_path: str) -> None:
    """Move this process (and every child it starts) into a network namespace, by name or by path."""
    path = name_or_path if "/" in name_or_path else f"/run/netns/{name_or_path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise RuntimeError(
            f"cannot enter network namespace '{name_or_path}': {exc.strerror or exc} "
            "(give a name from `ip netns list` or a path like /proc/<pid>/ns/net)"
        ) from exc
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise RuntimeError(f"cannot enter network namespace '{name_or_path}': {os.strerror(code)}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class LinkFacts:
    loopback: str
    loopback_index: int
    has_ipv6: bool  # a non-loopback IPv6 address exists


def _ipv6_addresses() -> list[tuple[int, bytes]]:
    """(interface index, address) of every IPv6 address in this namespace."""
    out = []
    request = _IFADDRMSG.pack(socket.AF_INET6, 0, 0, 0, 0)
    for _, body in _talk(NETLINK_ROUTE, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, request):
        family, _, _, _, index = _IFADDRMSG.unpack_from(body)
        if family != socket.AF_INET6:
            continue
        for kind, payload, _ in _attrs(body[_IFADDRMSG.size :]):
            if kind == IFA_ADDRESS:
                out.append((index, payload))
    return out


def link_facts() -> LinkFacts:
    lo_name, lo_index = "lo", 1
    request = _IFINFOMSG.pack(0, 0, 0, 0, 0)
    for _, body in _talk(NETLINK_ROUTE, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, request):
        _, _, index, flags, _ = _IFINFOMSG.unpack_from(body)
        if flags & IFF_LOOPBACK:
            for kind, payload, _ in _attrs(body[_IFINFOMSG.size :]):
                if kind == IFLA_IFNAME:
                    lo_name, lo_index = payload.rstrip(b"\0").decode(), index
            break
    loopback6 = socket.inet_pton(socket.AF_INET6, "::1")
    has_v6 = any(addr != loopback6 and index != lo_index for index, addr in _ipv6_addresses())
    return LinkFacts(lo_name, lo_index, has_v6)


def ensure_ipv6_passthrough(lo_index: int) -> bool:
    """Add `::6/128` to lo (Envoy's inbound passthrough source); False when IPv6 is unusable here."""
    passthrough = socket.inet_pton(socket.AF_INET6, "::6")
    try:
        if (lo_index, passthrough) in _ipv6_addresses():
            return True
        payload = _IFADDRMSG.pack(socket.AF_INET6, 128, 0, 0, lo_index)
        payload += _attr(IFA_LOCAL, passthrough) + _attr(IFA_ADDRESS, passthrough)
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        _talk(NETLINK_ROUTE, RTM_NEWADDR, flags, payload)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return True
        log.info("event=ipv6_disabled reason=%r", exc.strerror or exc)
        return False
    return True


def _udp_dport(tuple_orig: bytes) -> int | None:
    for kind, payload, _ in _attrs(tuple_orig):
        if kind == CTA_TUPLE_PROTO:
            proto = dict((k, p) for k, p, _ in _attrs(payload))
            if proto.get(CTA_PROTO_NUM, b"\0")[0] == socket.IPPROTO_UDP and CTA_PROTO_DST_PORT in proto:
                return int(struct.unpack("!H", proto[CTA_PROTO_DST_PORT])[0])
    return None


def flush_dns_conntrack(dns_port: int = 53) -> int:
    """Delete UDP conntrack entries to port 53 so flows opened before install hit the new REDIRECT rules.

    Without this an app that sent DNS just before install keeps talking to the old resolver for the entry's
    lifetime (the Istio conntrack race, istio/istio#33469). Returns the number of entries deleted.
    """
    deleted = 0
    try:
        dump = _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)  # every family
        for _, body in _talk(NETLINK_NETFILTER, IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, dump):
            attrs = {k: (payload, raw) for k, payload, raw in _attrs(body[_NFGENMSG.size :])}
            if CTA_TUPLE_ORIG not in attrs or _udp_dport(attrs[CTA_TUPLE_ORIG][0]) != dns_port:
                continue
            # the entry is named by its original tuple (and zone), sent back as the kernel wrote them
            zone = attrs[CTA_ZONE][1] if CTA_ZONE in attrs else b""
            request = _NFGENMSG.pack(body[0], 0, 0) + attrs[CTA_TUPLE_ORIG][1] + zone
            try:
                _talk(NETLINK_NETFILTER, IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, request)
                deleted += 1
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
    except OSError as exc:  # no nf_conntrack_netlink: nothing to flush
        log.info("event=conntrack_flush_skipped reason=%r", exc.strerror or exc)
    return deleted
