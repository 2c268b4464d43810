"""The pod runtime's stand-in for an application image: serves the targets of the pod's probes and a small
HTTP answer for mesh traffic.

`python -m kuma_dp_dev.pods.app --name POD [--http PORT]... [--tcp PORT]... [--grpc PORT]...`: every HTTP port
answers `GET <any path>` with 200 and JSON `{"pod", "path", "headers"}` (`?delay=S` waits S seconds first, to
keep a request in flight), every TCP port accepts, every gRPC port serves grpc.health.v1.Health/Check.
SIGUSR1 makes the app unhealthy (HTTP 503, TCP ports closed, NOT_SERVING), SIGUSR2 healthy again: what a test
uses to see a failing app through kubelet's probes. `GET /__hits` lists who asked what (port, path,
User-Agent, client address: the probe proxy dials from 127.0.0.6). SIGTERM: serve `--shutdown-delay` more
seconds, finish what is in flight, exit 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

healthy = threading.Event()
healthy.set()
#: (port, path, user-agent, client address) of every request, newest last, at most 1000: `GET /__hits`.
hits: list[dict[str, Any]] = []
in_flight = 0
_count_lock = threading.Lock()


def http_server(port: int, pod: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            global in_flight
            url = urlsplit(self.path)
            if url.path == "/__hits":
                data = json.dumps(hits[-1000:]).encode()
                status = 200
            else:
                with _count_lock:
                    in_flight += 1
                    agent = self.headers.get("user-agent", "")
                    hits.append({"port": port, "path": url.path, "user_agent": agent,
                                 "client": self.client_address[0]})  # fmt: skip
                    del hits[:-1000]
                try:
                    delay = float((parse_qs(url.query).get("delay") or ["0"])[0])
                    if delay > 0:
                        time.sleep(min(delay, 30))
                    status = 200 if healthy.is_set() else 503
                    body = {"pod": pod, "port": port, "path": url.path, "headers": dict(self.headers)}
                    data = json.dumps(body).encode()
                finally:
                    with _count_lock:
                        in_flight -= 1
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def tcp_server(port: int) -> None:
    def serve() -> None:
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", port))
            sock.listen(16)
            sock.settimeout(0.1)
            while healthy.is_set():
                try:
                    conn, _ = sock.accept()
                    conn.close()
                except TimeoutError:
                    continue
            sock.close()  # unhealthy: nobody listens, a TCP probe is refused
            healthy.wait()

    threading.Thread(target=serve, daemon=True).start()


def grpc_server(ports: list[int]) -> Any:
    import grpc

    def check(request: bytes, context: Any) -> bytes:
        return b"\x08\x01" if healthy.is_set() else b"\x08\x02"

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)}
    )
    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(max_workers=4), handlers=[handler])
    for port in ports:
        server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kuma_dp_dev.pods.app")
    parser.add_argument("--name", default="app")
    parser.add_argument("--http", type=int, action="append", default=[])
    parser.add_argument("--tcp", type=int, action="append", default=[])
    parser.add_argument("--grpc", type=int, action="append", default=[])
    parser.add_argument(
        "--shutdown-delay",
        type=float,
        default=1.0,
        help="on SIGTERM keep serving this long (a well-behaved app under a draining sidecar), then exit "
        "once no request is in flight",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGUSR1, lambda *_: healthy.clear())
    signal.signal(signal.SIGUSR2, lambda *_: healthy.set())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for port in sorted(set(args.http)):
        http_server(port, args.name)
    for port in sorted(set(args.tcp)):
        tcp_server(port)
    keep = grpc_server(sorted(set(args.grpc))) if args.grpc else None
    print(f"app {args.name} serving http={args.http} tcp={args.tcp} grpc={args.grpc}", flush=True)
    stop.wait()
    time.sleep(args.shutdown_delay)
    while in_flight:
        time.sleep(0.05)
    if keep is not None:
        keep.stop(0)
    sys.exit(0)


if __name__ == "__main__":
    main()
