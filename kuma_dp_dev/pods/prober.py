"""Kubelet's prober, as a small server that runs inside the "node" network namespace, so probes reach the pod
IP over the veth as kubelet's do: `python -m kuma_dp_dev.pods.prober` reads JSON requests on stdin, one a line
(`{"id", "kind": "http"|"tcp"|"grpc", "host", "port", "timeout", ...}`), answers each on stdout as
`{"id", "ok", "detail"}`, each probe in a thread of its own, so a slow probe never delays another.

Semantics follow kubernetes `pkg/probe/{http,tcp,grpc}`: HTTP GET with `User-Agent: kube-probe/<version>`,
`Accept: */*` and the probe's headers, success for 200 <= status < 400, the body read up to 10 KiB; TCP is a
connect; gRPC calls grpc.health.v1.Health/Check and succeeds on SERVING. A timeout is a failure.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
from typing import Any

KUBE_PROBE_UA = "kube-probe/1.31"
MAX_BODY = 10 * 1024
_out_lock = threading.Lock()


def http_probe(req: dict[str, Any]) -> tuple[bool, str]:
    scheme = str(req.get("scheme") or "HTTP").upper()
    timeout = float(req["timeout"])
    host, port = str(req["host"]), int(req["port"])
    if scheme == "HTTPS":
        import ssl

        ctx = ssl.create_default_context()
        # kubelet does not verify the certificate of an HTTPS probe (InsecureSkipVerify in pkg/probe/http).
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=ctx
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"User-Agent": KUBE_PROBE_UA, "Accept": "*/*"}
    for h in req.get("headers") or []:
        headers[str(h["name"])] = str(h["value"])
    try:
        conn.request("GET", str(req.get("path") or "/"), headers=headers)
        resp = conn.getresponse()
        body = resp.read(MAX_BODY)
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    detail = f"HTTP {resp.status} {body[:200].decode(errors='replace')}"
    return 200 <= resp.status < 400, detail


def tcp_probe(req: dict[str, Any]) -> tuple[bool, str]:
    try:
        with socket.create_connection((str(req["host"]), int(req["port"])), timeout=float(req["timeout"])):
            return True, "connected"
    except OSError as exc:
        return False, f"{type(exc).__name__}: {exc}"


def grpc_probe(req: dict[str, Any]) -> tuple[bool, str]:
    import grpc

    service = str(req.get("service") or "").encode()
    # HealthCheckRequest{service = 1}; HealthCheckResponse{status = 1}: 1 = SERVING.
    payload = b"\x0a" + bytes([len(service)]) + service if service else b""
    target = f"{req['host']}:{req['port']}"
    try:
        with grpc.insecure_channel(target) as channel:
            call = channel.unary_unary("/grpc.health.v1.Health/Check")
            answer = call(payload, timeout=float(req["timeout"]), metadata=[("user-agent", KUBE_PROBE_UA)])
    except grpc.RpcError as exc:
        return False, f"rpc error: {exc.code()}"  # type: ignore[attr-defined]
    status = answer[1] if len(answer) >= 2 and answer[0] == 0x08 else 0
    return status == 1, f"status {status}"


PROBES = {"http": http_probe, "tcp": tcp_probe, "grpc": grpc_probe}


def _answer(req: dict[str, Any]) -> None:
    try:
        ok, detail = PROBES[req["kind"]](req)
    except Exception as exc:
        ok, detail = False, f"probe error: {exc}"
    with _out_lock:
        sys.stdout.write(json.dumps({"id": req["id"], "ok": ok, "detail": detail}) + "\n")
        sys.stdout.flush()


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        threading.Thread(target=_answer, args=(req,), daemon=True).start()


if __name__ == "__main__":
    main()
