"""A tiny HTTP app for the demo and the end-to-end tests: it says who it is and, if it has an upstream,
calls it.

`GET /` answers JSON `{"service", "instance", "request_headers"}`; with `--upstream URL` it also calls the
upstream (through its Envoy's outbound) and embeds that answer plus the response headers Envoy added, which
is the visible proof that a request crossed both Envoys. `GET /?delay=S` sleeps S seconds first (at most
60), so a drain test has requests in flight.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def make_server(service: str, instance: str, port: int, upstream: str | None = None) -> ThreadingHTTPServer:
    """A threaded HTTP server on 127.0.0.1:port (0: any free port)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            delay = float(query.get("delay", ["0"])[0])
            if delay > 0:
                time.sleep(min(delay, 60))
            body: dict[str, Any] = {
                "service": service,
                "instance": instance,
                "request_headers": dict(self.headers.items()),
            }
            status = 200
            if upstream:
                try:
                    # Pass the trace context on, as an instrumented app does, so both Envoys' spans
                    # form one trace (W3C traceparent from Envoy's OpenTelemetry tracer, x-request-id).
                    context = {
                        k: v
                        for k, v in self.headers.items()
                        if k.lower() in ("traceparent", "tracestate", "x-request-id")
                    }
                    req = urllib.request.Request(upstream + self.path, headers=context)
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        body["upstream"] = {
                            "status": resp.status,
                            "headers": dict(resp.headers.items()),
                            "body": json.loads(resp.read() or b"null"),
                        }
                except Exception as exc:  # shown to the caller: that is the point of the demo
                    status = 502
                    body["upstream_error"] = f"{type(exc).__name__}: {exc}"
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            # Headers and body in one write, as most servers do: a response is then never half-sent.
            self._headers_buffer.append(b"\r\n" + data)
            self.flush_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def serve_in_thread(
    service: str, instance: str, upstream: str | None = None
) -> tuple[ThreadingHTTPServer, int]:
    """Start an app on a free port in a daemon thread; call `.shutdown()` then `.server_close()` to stop."""
    server = make_server(service, instance, 0, upstream)
    threading.Thread(target=server.serve_forever, name=f"app-{instance}", daemon=True).start()
    return server, int(server.server_address[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--service", required=True)
    parser.add_argument("--instance", default="")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream")
    args = parser.parse_args()
    server = make_server(args.service, args.instance or args.service, args.port, args.upstream)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
