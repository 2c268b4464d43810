"""The gRPC probe: one `grpc.health.v1.Health/Check` call, as kumahq/kuma v2.14.3
`app/kuma-dp/pkg/dataplane/probes/grpc.go` makes it with grpc-go (plaintext,
`User-Agent: kube-probe/<version>`, the probe's timeout as the call's deadline, the service from
`X-Kuma-Probes-GRPC-Service`).

Why not grpcio: the call must leave from 127.0.0.6 (`::6`) so the transparent proxy lets it through, and
grpcio offers no way to bind a channel's source address or to hand it a connected socket. So the call is
made over our own socket (`upstream.dial`) with the `h2` library doing HTTP/2, and the two messages are
encoded here: `HealthCheckRequest{service=1}` and `HealthCheckResponse{status=1}` are one field each, which
spares the agent a protobuf runtime. `h2` is imported only when a gRPC probe arrives.

Healthy only when the call ends with grpc-status 0 and the status SERVING; anything else (refused
connection, deadline, an HTTP/2 error, UNIMPLEMENTED, NOT_SERVING, UNKNOWN) is UNHEALTHY, as in grpc.go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from kuma_dp.probes.upstream import ProbeError, dial, join_host_port

log = logging.getLogger(__name__)

CHECK_PATH = b"/grpc.health.v1.Health/Check"
#: `HealthCheckResponse.ServingStatus.SERVING`.
SERVING = 1
#: A health answer is a few bytes; anything this large is not one (grpc-go would accept up to 4 MiB).
MAX_MESSAGE = 64 * 1024


def grpc_timeout(seconds: float) -> str:
    """The `grpc-timeout` header: at most 8 digits, in milliseconds while they fit, else seconds."""
    ms = max(1, int(seconds * 1000))
    if ms <= 99_999_999:
        return f"{ms}m"
    return f"{min(int(seconds), 99_999_999)}S"


def encode_request(service: str) -> bytes:
    """`HealthCheckRequest{service}` as protobuf, framed as one uncompressed gRPC message."""
    msg = b""
    if service:
        raw = service.encode()
        msg = b"\x0a" + _varint(len(raw)) + raw
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ProbeError("grpc: malformed varint in response")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def decode_status(message: bytes) -> int:
    """`HealthCheckResponse.status` (field 1, varint) from the protobuf bytes; 0 (UNKNOWN) when absent.
    Other fields are skipped by wire type, as a protobuf parser does.
    """
    status = 0
    i = 0
    while i < len(message):
        key, i = _read_varint(message, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(message, i)
            if field == 1:
                status = value
        elif wire == 1:
            i += 8
        elif wire == 2:
            length, i = _read_varint(message, i)
            i += length
        elif wire == 5:
            i += 4
        else:
            raise ProbeError(f"grpc: unsupported wire type {wire} in response")
        if i > len(message):
            raise ProbeError("grpc: truncated response message")
    return status


def decode_response(body: bytes) -> int:
    """The status of the one gRPC message in the response's DATA frames."""
    if len(body) < 5:
        raise ProbeError("grpc: response has no message")
    if body[0] != 0:
        raise ProbeError("grpc: compressed response without negotiated compression")
    length = int.from_bytes(body[1:5], "big")
    if len(body) - 5 < length:
        raise ProbeError("grpc: truncated response message")
    return decode_status(body[5 : 5 + length])


async def probe_grpc(address: str, port: int, ipv6: bool, service: str, timeout: float, version: str) -> int:
    """Make the Check call; returns the serving status when the call succeeded (grpc-status 0), raises
    ProbeError otherwise. The caller bounds the time; `timeout` only becomes the `grpc-timeout` header.
    """
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    sock = await dial(address, port, ipv6)
    reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_MESSAGE)
    try:
        conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", CHECK_PATH),
                (b":authority", join_host_port(address, port).encode()),
                (b"content-type", b"application/grpc"),
                (b"user-agent", f"kube-probe/{version}".encode()),
                (b"te", b"trailers"),
                (b"grpc-timeout", grpc_timeout(timeout).encode()),
            ],
        )
        conn.send_data(sid, encode_request(service), end_stream=True)
        writer.write(conn.data_to_send())
        await writer.drain()
        headers: dict[bytes, bytes] = {}
        body = bytearray()
        ended = False
        while not ended:
            data = await reader.read(65536)
            if not data:
                raise ProbeError("grpc: connection closed before the call ended")
            try:
                events = conn.receive_data(data)
            except h2.exceptions.H2Error as exc:
                raise ProbeError(f"grpc: HTTP/2 error: {exc}") from None
            for ev in events:
                if isinstance(ev, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    headers.update((bytes(k), bytes(v)) for k, v in ev.headers)
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    body += ev.data
                    if len(body) > MAX_MESSAGE + 5:
                        raise ProbeError("grpc: response message too large")
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    ended = True
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    raise ProbeError(f"grpc: stream reset, error code {ev.error_code}")
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    raise ProbeError(f"grpc: connection terminated, error code {ev.error_code}")
            pending = conn.data_to_send()
            if pending:
                writer.write(pending)
        if headers.get(b":status") != b"200":
            raise ProbeError(f"grpc: unexpected HTTP status {headers.get(b':status')!r}")
        code = headers.get(b"grpc-status")
        if code != b"0":
            message = headers.get(b"grpc-message", b"").decode("utf-8", "replace")
            raise ProbeError(f"grpc: the check failed with code {code!r} message={message!r}")
        return decode_response(bytes(body))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
