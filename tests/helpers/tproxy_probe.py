"""Process used by the transparent-proxy netns tests: a server that says who it is, or a client that probes.

Started as root; it enters the network namespace first and then drops to the requested UID, so the kernel's
`-m owner` sees exactly that UID (the way Linkerd's proxy-init tests tell "the proxy answered" from "the app
answered"). Servers reply `<tag> orig=<ip>:<port>` with the pre-NAT destination (SO_ORIGINAL_DST), so a
test can also see where the app meant to go.

    python tproxy_probe.py --netns NS --uid U serve --tcp 15001:proxy-out --udp 15053:dns-proxy
    echo '[{"kind": "tcp", "host": "10.1.0.2", "port": 8080}]' | python tproxy_probe.py --netns NS probe
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import struct
import sys

SO_ORIGINAL_DST = 80


def enter_netns(name: str) -> None:
    """setns(2) via libc: cheaper to start than importing pyroute2 in every probe process."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    path = name if "/" in name else f"/run/netns/{name}"
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def original_dst(conn: socket.socket) -> str:
    try:
        if conn.family == socket.AF_INET:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack("!H", raw[2:4])[0]
            return f"{socket.inet_ntop(socket.AF_INET, raw[4:8])}:{port}"
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port = struct.unpack("!H", raw[2:4])[0]
        return f"[{socket.inet_ntop(socket.AF_INET6, raw[8:24])}]:{port}"
    except OSError:
        host, port = conn.getsockname()[:2]
        return f"{host}:{port}" if conn.family == socket.AF_INET else f"[{host}]:{port}"


def serve(tcp: list[str], udp: list[str]) -> None:
    sel = selectors.DefaultSelector()
    for spec in tcp:
        port, tag = spec.split(":", 1)
        for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr, int(port)))
            s.listen(64)
            sel.register(s, selectors.EVENT_READ, ("tcp", tag))
    for spec in udp:
        port, tag = spec.split(":", 1)
        for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            s = socket.socket(fam, socket.SOCK_DGRAM)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr, int(port)))
            sel.register(s, selectors.EVENT_READ, ("udp", tag))
    print("READY", flush=True)
    while True:
        for key, _ in sel.select():
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            kind, tag = key.data
            if kind == "tcp":
                conn, _ = sock.accept()
                with conn:
                    conn.sendall(f"{tag} uid={os.getuid()} orig={original_dst(conn)}".encode())
            else:
                _, peer = sock.recvfrom(2048)
                sock.sendto(f"{tag} uid={os.getuid()}".encode(), peer)


def probe(items: list[dict[str, object]]) -> list[str]:
    out = []
    for it in items:
        host = str(it["host"])
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        kind = socket.SOCK_STREAM if it["kind"] == "tcp" else socket.SOCK_DGRAM
        try:
            with socket.socket(fam, kind) as s:
                s.settimeout(2.0)
                if it.get("src") or it.get("sport"):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((str(it.get("src") or ""), int(it.get("sport") or 0)))  # type: ignore[call-overload]
                if kind == socket.SOCK_STREAM:
                    s.connect((host, int(it["port"])))  # type: ignore[call-overload]
                    out.append(s.recv(2048).decode())
                else:
                    s.sendto(b"q", (host, int(it["port"])))  # type: ignore[call-overload]
                    out.append(s.recvfrom(2048)[0].decode())
        except OSError as exc:
            out.append(f"ERR {type(exc).__name__}: {exc}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--netns", required=True)
    ap.add_argument("--uid", type=int, default=0)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve")
    sp.add_argument("--tcp", action="append", default=[])
    sp.add_argument("--udp", action="append", default=[])
    sub.add_parser("probe")
    args = ap.parse_args()
    enter_netns(args.netns)
    if args.uid:
        os.setgroups([])
        os.setgid(args.uid)
        os.setuid(args.uid)
    if args.cmd == "serve":
        serve(args.tcp, args.udp)
    else:
        print(json.dumps(probe(json.loads(sys.stdin.read()))))


if __name__ == "__main__":
    main()
