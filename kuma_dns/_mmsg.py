"""Batched UDP I/O with Linux recvmmsg(2)/sendmmsg(2) through ctypes.

Python's socket module has one system call per datagram each way; at 100k+ queries per second those calls
(and their per-call Python overhead) are most of the cost. One recvmmsg fills up to BATCH slots, answers are
written in place over the queries, and one sendmmsg per run of answered slots sends them back to the
addresses the kernel filled in. Anything that is not answered on the spot gets a Python address tuple and
goes the ordinary way. `available()` is False off Linux/glibc; the server then uses plain recvfrom/sendto.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import struct
from collections.abc import Callable

BATCH = 64
SLOT = 4096  # bytes per datagram slot; bigger queries arrive truncated (MSG_TRUNC) and are dropped
NAME = 128  # sockaddr_storage
MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_libc: ctypes.CDLL | None = None


def available() -> bool:
    global _libc
    if _libc is not None:
        return True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        lib = ctypes.CDLL(name, use_errno=True)
        lib.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        lib.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    except (OSError, AttributeError):
        return False
    _libc = lib
    return True


def sockaddr_to_tuple(raw: bytes) -> tuple[str, int] | tuple[str, int, int, int]:
    family = struct.unpack_from("=H", raw, 0)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET6:
        flow, scope = struct.unpack_from("!I", raw, 4)[0], struct.unpack_from("=I", raw, 24)[0]
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flow, scope
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), port


class MMsgSocket:
    """Batch receive/send buffers bound to one non-blocking UDP socket."""

    def __init__(self, sock: socket.socket) -> None:
        assert _libc is not None
        self.fd = sock.fileno()
        self.bufs = ctypes.create_string_buffer(BATCH * SLOT)
        self.names = ctypes.create_string_buffer(BATCH * NAME)
        self.iovs = (_IOVec * BATCH)()
        self.msgs = (_MMsgHdr * BATCH)()
        base = ctypes.addressof(self.bufs)
        nbase = ctypes.addressof(self.names)
        for i in range(BATCH):
            self.iovs[i].iov_base = base + i * SLOT
            self.iovs[i].iov_len = SLOT
            h = self.msgs[i].msg_hdr
            h.msg_name = nbase + i * NAME
            h.msg_namelen = NAME
            h.msg_iov = ctypes.addressof(self.iovs) + i * ctypes.sizeof(_IOVec)
            h.msg_iovlen = 1
        self.msg_size = ctypes.sizeof(_MMsgHdr)
        self.len_off = _MMsgHdr.msg_len.offset
        self.namelen_off = _MsgHdr.msg_namelen.offset
        self.flags_off = _MsgHdr.msg_flags.offset
        self.iov_size = ctypes.sizeof(_IOVec)
        self.iovlen_off = _IOVec.iov_len.offset
        # Templates restored before every receive (the kernel overwrites lengths).
        self.msgs_template = bytes(self.msgs)
        self.iovs_template = bytes(self.iovs)
        self.buf_mv = memoryview(self.bufs).cast("B")
        self.names_mv = memoryview(self.names).cast("B")
        self.msgs_mv = memoryview(self.msgs).cast("B")
        self.iovs_mv = memoryview(self.iovs).cast("B")
        self.msgs_addr = ctypes.addressof(self.msgs)

    def serve_batch(
        self,
        hot: Callable[[bytes, float], bytes | None],
        now: float,
        other: Callable[[bytes, tuple[str, int] | tuple[str, int, int, int]], None],
    ) -> tuple[int, int]:
        """Receive up to BATCH datagrams, answer what `hot` answers in place, pass the rest to `other`.

        Returns (received, answered by hot); (0, 0) when nothing was waiting.
        """
        lib = _libc
        assert lib is not None
        self.msgs_mv[:] = self.msgs_template
        self.iovs_mv[:] = self.iovs_template
        n = lib.recvmmsg(self.fd, self.msgs_addr, BATCH, MSG_DONTWAIT, None)
        if n <= 0:
            return 0, 0
        buf = self.buf_mv
        msgs = self.msgs_mv
        iovs = self.iovs_mv
        unpack = struct.unpack_from
        pack = struct.pack_into
        msize, loff, foff = self.msg_size, self.len_off, self.flags_off
        isize, ioff = self.iov_size, self.iovlen_off
        hits = 0
        run_start = -1
        for i in range(n):
            ln = unpack("=I", msgs, i * msize + loff)[0]
            off = i * SLOT
            resp = None
            if not unpack("=i", msgs, i * msize + foff)[0] & MSG_TRUNC:
                data = buf[off : off + ln].tobytes()
                resp = hot(data, now)
            else:
                data = b""
            if resp is not None and len(resp) <= SLOT:
                buf[off : off + len(resp)] = resp
                pack("=Q", iovs, i * isize + ioff, len(resp))
                hits += 1
                if run_start < 0:
                    run_start = i
                continue
            if run_start >= 0:
                self._send(run_start, i)
                run_start = -1
            if data:
                noff = i * NAME
                other(data, sockaddr_to_tuple(self.names_mv[noff : noff + NAME].tobytes()))
        if run_start >= 0:
            self._send(run_start, n)
        return n, hits

    def _send(self, start: int, end: int) -> None:
        assert _libc is not None
        addr = self.msgs_addr + start * self.msg_size
        count = end - start
        while count > 0:
            sent = _libc.sendmmsg(self.fd, addr, count, MSG_DONTWAIT)
            if sent <= 0:
                return  # full socket buffer: the rest is dropped, as UDP may
            addr += sent * self.msg_size
            count -= sent
