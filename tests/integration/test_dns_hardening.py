"""Adversarial suite for the DNS server: what a hostile local user, a broken upstream or a greedy client did
to it (planted tables, a FIFO records file, a big swap, EDNS oddities, malformed replies, a slow upstream, TCP
slot hogging, descriptor exhaustion), driven with real clients (dig, dnspython) against `kuma-dp dns`, the
agent's DNS component, and dnsmasq as upstream and as the peer that shows what a trusted server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from kuma_dp.fsutil import atomic_write
from kuma_dp_dev.harness import dnsmasq
from kuma_dp_dev.harness.dnsmasq import ServerProcess
from kuma_dp_dev.harness.poll import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = {
    "records": [{"name": "httpbin.mesh", "ips": ["240.0.0.1", "::ffff:f000:1"]}],
    "ttl": 30,
    "extraLabels": {"mesh": "default"},
}
OTHER_UID = 5678  # the agent's default uid under the transparent proxy; here simply "another user"


# -- helpers ------------------------------------------------------------------------------------------------


def need(tool: str) -> None:
    if not shutil.which(tool):
        pytest.skip(f"{tool} not installed (apt install dnsmasq-base bind9-dnsutils)")


def dig(port: int, *args: str) -> str:
    return subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+time=8", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout


def query(port: int, name: str, rdtype: str = "A", tcp: bool = False, **kw: object) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=8)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=8)


#: `kuma-dp dns` on the standard asyncio loop, as inside `kuma-dp run` (the command itself prefers uvloop).
ON_ASYNCIO = (
    "import asyncio, sys; import kuma_dns.cli as cli; "
    "cli._run_loop = lambda main: asyncio.run(main()); cli.dns(sys.argv[1:], prog_name='kuma-dp dns')"
)


def start_server(
    tmp: Path, records: Path, *args: str, nofile: int | None = None, plain_asyncio: bool = False
) -> ServerProcess:
    """`kuma-dp dns --port 0` (RLIMIT_NOFILE=`nofile` if given); returns once it printed its port."""
    (tmp / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    command = ("-c", ON_ASYNCIO) if plain_asyncio else ("-m", "kuma_dp", "dns")

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log = tmp / f"server-{time.monotonic_ns()}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [
                *(sys.executable, *command, "--port", "0", "--records", str(records)),
                *("--resolv-conf", str(tmp / "resolv.conf"), *args),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=REPO,
            preexec_fn=limit,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening port="):
        proc.kill()
        raise RuntimeError(f"server did not start: {log.read_text()}")
    return ServerProcess(proc, int(line.split("=")[1]), log)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[ServerProcess]:
    need("dnsmasq")
    p = dnsmasq.start_dnsmasq(tmp_path, "--address=/example.test/10.9.9.9", "--local-ttl=300")
    yield p
    p.stop()


@pytest.fixture
def records(tmp_path: Path) -> Path:
    path = tmp_path / "records.json"
    path.write_text(json.dumps(PAYLOAD))
    return path


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A work dir every local user can write (mode 1777, like /tmp), reachable by the other uid."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another uid")
    d = Path(tempfile.mkdtemp(prefix="kdns-shared-", dir="/tmp"))
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_other_user(*argv: str) -> None:
    """Run a small Python program as OTHER_UID (setuid in the child before exec)."""
    subprocess.run(
        [sys.executable, "-c", *argv],
        user=OTHER_UID,
        group=OTHER_UID,
        extra_groups=[],
        check=True,
        timeout=30,
    )


async def run_component(**kw: object) -> tuple[object, asyncio.Task[None]]:
    from kuma_dns.component import DNSComponent

    comp = DNSComponent(port=0, register_metrics=False, **kw)  # type: ignore[arg-type]
    task = asyncio.ensure_future(comp.run())
    await asyncio.wait_for(comp.ready.wait(), 30)  # a failed start fails the test instead of hanging it
    return comp, task


async def stop_component(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def persisted_doc(fetched_at: float, name: str = "evil.mesh", ip: str = "6.6.6.6") -> str:
    return json.dumps(
        {
            "version": 1,
            "etag": "planted",
            "fetchedAt": fetched_at,
            "payload": {"records": [{"name": name, "ips": [ip]}], "ttl": 30},
        }
    )


# -- item 3: planted persisted tables -----------------------------------------------------------------------


def test_table_planted_by_another_user_is_not_served(
    shared_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another uid writes `kuma-dns-table.json` (far-future timestamp) into a shared work dir before the agent
    starts: the agent must neither answer from it nor count it as a loaded table."""
    target = shared_dir / "kuma-dns-table.json"
    as_other_user(
        "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])",
        str(target),
        persisted_doc(time.time() + 365 * 86400),
    )
    assert target.stat().st_uid == OTHER_UID

    async def main() -> tuple[str, bool, int]:
        comp, task = await run_component(workdir=shared_dir, upstreams=[], resolv_conf=tmp_path / "none")
        try:
            r = await dns.asyncquery.udp(
                dns.message.make_query("evil.mesh", "A"),
                "127.0.0.1",
                port=comp.port,
                timeout=8,  # type: ignore[attr-defined]
            )
            return r.to_text(), comp.has_records.is_set(), comp.store.rejected  # type: ignore[attr-defined]
        finally:
            await stop_component(task)

    with caplog.at_level(logging.WARNING, "kuma_dns"):
        text, has_records, rejected = asyncio.run(main())
    assert "6.6.6.6" not in text and "rcode SERVFAIL" in text  # no table, no upstream: nothing to say
    assert not has_records and rejected == 1
    lines = [r.getMessage() for r in caplog.records if "persisted table" in r.getMessage()]
    assert len(lines) == 1 and f"owned by uid {OTHER_UID}" in lines[0] and str(target) in lines[0]


def test_fifo_and_symlink_planted_at_the_table_path_are_refused_without_blocking(
    shared_dir: Path, tmp_path: Path
) -> None:
    """A FIFO (which would block the start forever) or a symlink to a file the attacker controls."""
    target = shared_dir / "kuma-dns-table.json"
    as_other_user("import os, sys; os.mkfifo(sys.argv[1], 0o666)", str(target))
    own = tmp_path / "elsewhere.json"
    own.write_text(persisted_doc(time.time()))
    os.chmod(own, 0o600)

    async def main() -> list[tuple[bool, int]]:
        out = []
        for _ in ("fifo", "symlink"):
            comp, task = await run_component(workdir=shared_dir, upstreams=[], resolv_conf=tmp_path / "none")
            out.append((comp.has_records.is_set(), comp.store.rejected))  # type: ignore[attr-defined]
            await stop_component(task)
            target.unlink()
            target.symlink_to(own)  # root's own valid file, but reached through a link
        return out

    assert asyncio.run(main()) == [(False, 1), (False, 1)]


def test_own_table_from_the_future_refused_and_an_old_one_flagged_stale_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path = work / "kuma-dns-table.json"
    atomic_write(path, persisted_doc(time.time() + 3600, "future.mesh", "240.0.0.7"))

    async def serve(name: str) -> tuple[str, bool, str]:
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        comp, task = await run_component(
            workdir=work, upstreams=[], resolv_conf=tmp_path / "none", stale_after=300.0
        )
        comp.metrics.register(registry)  # type: ignore[attr-defined]
        try:
            r = await dns.asyncquery.udp(
                dns.message.make_query(name, "A"),
                "127.0.0.1",
                port=comp.port,
                timeout=8,  # type: ignore[attr-defined]
            )
            return r.to_text(), comp.has_records.is_set(), generate_latest(registry).decode()  # type: ignore[attr-defined]
        finally:
            await stop_component(task)

    with caplog.at_level(logging.INFO, "kuma_dns"):
        text, has_records, _ = asyncio.run(serve("future.mesh"))
    assert "240.0.0.7" not in text and not has_records
    assert any("in the future" in r.getMessage() for r in caplog.records)

    caplog.clear()
    atomic_write(path, persisted_doc(time.time() - 7200, "old.mesh", "240.0.0.8"))
    with caplog.at_level(logging.INFO, "kuma_dns"):
        text, has_records, metrics = asyncio.run(serve("old.mesh"))
    # Two hours old: still served (last known good), flagged stale at start, age exported from fetchedAt.
    assert "240.0.0.8" in text and has_records
    stale = [r.getMessage() for r in caplog.records if "stale" in r.getMessage()]
    assert len(stale) == 1 and "source=persisted" in stale[0]
    age = next(ln for ln in metrics.splitlines() if ln.startswith("kuma_dp_dns_table_age_seconds"))
    assert float(age.split()[-1]) >= 7200


# -- item 4: records file swaps -----------------------------------------------------------------------------


def test_records_file_replaced_by_a_fifo_keeps_serving(tmp_path: Path, records: Path) -> None:
    srv = start_server(tmp_path, records)
    try:
        assert query(srv.port, "httpbin.mesh").answer[0][0].to_text() == "240.0.0.1"
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        os.replace(fifo, records)  # nobody will ever write to it
        wait_until(lambda: "a FIFO" in srv.log.read_text(), 30, "the FIFO to be noticed")
        for _ in range(5):  # the loop is not stuck on the FIFO: mesh names are still answered
            assert query(srv.port, "httpbin.mesh").answer[0][0].to_text() == "240.0.0.1"
        assert srv.log.read_text().count("a FIFO") == 1  # one line, not one per poll
        assert srv.proc.poll() is None
    finally:
        srv.stop()
    # At start a FIFO is a configuration error: exit 2 with the reason, immediately.
    os.unlink(records)
    os.mkfifo(records)
    bad = subprocess.run(
        [sys.executable, "-m", "kuma_dp", "dns", "--port", "0", "--records", str(records)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert bad.returncode == 2 and "a FIFO, not a regular file" in bad.stderr


def _log_time(line: str) -> float:
    """The wall-clock time of a `kuma-dp dns` log line (`%(asctime)s`: local time, milliseconds)."""
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_big_records_swap_answers_mesh_and_forwarded_names_while_it_runs(
    tmp_path: Path, upstream: ServerProcess
) -> None:
    """30k names replaced by 30k others: between the server starting to load the new file and the swap,
    queries (mesh and forwarded) keep being answered. Measured by events: answers that arrived between the
    two log lines; the old server answered none (its loop was inside the build)."""
    n = 30_000

    def payload(block: int) -> str:
        recs = [{"name": f"svc-{i:05d}.mesh", "ips": [f"240.{block}.{i // 256}.{i % 256}"]} for i in range(n)]
        return json.dumps({"records": recs, "ttl": 30})

    records = tmp_path / "records.json"
    records.write_text(payload(1))
    srv = start_server(tmp_path, records, "--upstream", f"127.0.0.1:{upstream.port}")
    answers: list[tuple[float, str, str]] = []
    stop = threading.Event()

    def prober() -> None:
        names = ["svc-00001.mesh", "fwd.example.test"]
        i = 0
        while not stop.is_set():
            name = names[i % 2]
            i += 1
            with contextlib.suppress(Exception):
                r = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=srv.port, timeout=10)
                answers.append((time.time(), name, r.answer[0][0].to_text()))
            time.sleep(0.005)

    thread = threading.Thread(target=prober)
    try:
        wait_until(lambda: query(srv.port, "svc-00001.mesh").answer, 60, "the first table")
        thread.start()
        atomic_write(records, payload(2))
        wait_until(lambda: "generation=2" in srv.log.read_text(), 120, "the new table")
        stop.set()
        thread.join()
        log = srv.log.read_text().splitlines()
        began = _log_time(next(ln for ln in log if "changed: loading it off the event loop" in ln))
        swapped = _log_time(next(ln for ln in log if "generation=2" in ln))
        during = [(name, ip) for t, name, ip in answers if began < t < swapped]
        assert any(name.endswith(".mesh") and ip == "240.1.0.1" for name, ip in during), (began, swapped)
        assert any(name == "fwd.example.test" and ip == "10.9.9.9" for name, ip in during)
        assert query(srv.port, "svc-00001.mesh").answer[0][0].to_text() == "240.2.0.1"
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        srv.stop()


# -- item 7: DNS correctness --------------------------------------------------------------------------------


def test_edns_version_1_gets_badvers_and_do_is_copied(
    tmp_path: Path, records: Path, upstream: ServerProcess
) -> None:
    need("dig")
    srv = start_server(tmp_path, records, "--upstream", f"127.0.0.1:{upstream.port}")
    try:
        for name in ("httpbin.mesh", "www.example.test"):  # local and forwarded: both ours to refuse
            for transport in ("+notcp", "+tcp"):
                out = dig(srv.port, name, "+edns=1", "+noednsnegotiation", transport)
                assert "status: BADVERS" in out and "EDNS: version: 0" in out, out
            r = query(srv.port, name, use_edns=1)
            assert r.rcode() == dns.rcode.BADVERS and r.edns == 0
        # RFC 3225: the DO bit comes back in local answers: the hot path (A), NODATA, NXDOMAIN, TCP.
        for args in (("httpbin.mesh", "A"), ("httpbin.mesh", "TXT"), ("nope.mesh", "A")):
            for transport in ("+notcp", "+tcp"):
                out = dig(srv.port, *args, "+dnssec", transport)
                opt = out.split("OPT PSEUDOSECTION:")[1].splitlines()[1]
                assert "flags: do;" in opt, out
            out = dig(srv.port, *args, "+edns=0")  # and not when the client did not set it
            assert "flags:;" in out.split("OPT PSEUDOSECTION:")[1].splitlines()[1]
        r = query(srv.port, "httpbin.mesh", want_dnssec=True)
        assert r.ednsflags & dns.flags.DO and r.answer[0][0].to_text() == "240.0.0.1"
    finally:
        srv.stop()


class Upstream(asyncio.DatagramProtocol):
    """A scripted nameserver on loopback: `reply(query)` gives the bytes to send back after `delay`."""

    def __init__(self, reply: object, delay: float = 0.0) -> None:
        self.reply = reply
        self.delay = delay
        self.seen = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen += 1
        out = self.reply(dns.message.from_wire(data))  # type: ignore[operator]
        assert self.transport is not None
        asyncio.get_running_loop().call_later(self.delay, self.transport.sendto, out, addr)


async def scripted(reply: object, delay: float = 0.0) -> tuple[Upstream, tuple[str, int]]:
    proto = Upstream(reply, delay)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: proto, local_addr=("127.0.0.1", 0)
    )
    return proto, transport.get_extra_info("sockname")[:2]


def good_reply(q: dns.message.Message) -> bytes:
    r = dns.message.make_response(q)
    r.use_edns(False)  # the A record ends the message, where the mutations below expect it
    r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "10.0.0.1"))
    return r.to_wire()


def test_malformed_upstream_replies_become_servfail_and_are_not_cached(tmp_path: Path) -> None:
    def garbage(kind: str) -> object:
        def reply(q: dns.message.Message) -> bytes:
            wire = bytearray(good_reply(q))
            if kind == "trailing junk":
                return bytes(wire) + b"\x00\x01junk"
            if kind == "rdata overruns":
                return bytes(wire[:-2])
            if kind == "A of 5 bytes":
                wire[-6:-4] = b"\x00\x05"
                return bytes(wire) + b"\x00"
            # a compression pointer to itself in the answer's owner name
            off = len(wire) - 16
            wire[off : off + 2] = (0xC000 | off).to_bytes(2, "big")
            return bytes(wire)

        return reply

    async def main() -> list[tuple[str, str, int]]:
        out = []
        for kind in ("trailing junk", "rdata overruns", "A of 5 bytes", "pointer loop"):
            up, addr = await scripted(garbage(kind))
            comp, task = await run_component(upstreams=[addr], resolv_conf=tmp_path / "none")
            try:
                codes = []
                for _ in range(2):
                    r = await dns.asyncquery.udp(
                        dns.message.make_query("bad.example.", "A"),
                        "127.0.0.1",
                        port=comp.port,
                        timeout=8,  # type: ignore[attr-defined]
                    )
                    codes.append(dns.rcode.to_text(r.rcode()))
                out.append((kind, "/".join(codes), up.seen))
            finally:
                await stop_component(task)
        return out

    for kind, codes, seen in asyncio.run(main()):
        # SERVFAIL both times, and the second query went upstream again: nothing was cached.
        assert (kind, codes, seen) == (kind, "SERVFAIL/SERVFAIL", 2)


def test_single_slow_upstream_answered_within_our_budget_like_dnsmasq(tmp_path: Path) -> None:
    """One upstream answering after 2.5 s: past the 2 s per-attempt timeout, inside the 4.5 s budget."""
    need("dnsmasq")

    async def main() -> tuple[str, str, int]:
        up, addr = await scripted(good_reply, delay=2.5)
        peer = await asyncio.to_thread(
            dnsmasq.start_dnsmasq, tmp_path, f"--server={addr[0]}#{addr[1]}", "--no-negcache"
        )
        try:
            r = await dns.asyncquery.udp(
                dns.message.make_query("slow1.example.", "A"), "127.0.0.1", port=peer.port, timeout=10
            )
            theirs = r.answer[0][0].to_text() if r.answer else dns.rcode.to_text(r.rcode())
        finally:
            await asyncio.to_thread(peer.stop)
        comp, task = await run_component(upstreams=[addr], resolv_conf=tmp_path / "none")
        try:
            seen_before = up.seen
            r = await dns.asyncquery.udp(
                dns.message.make_query("slow2.example.", "A"),
                "127.0.0.1",
                port=comp.port,
                timeout=10,  # type: ignore[attr-defined]
            )
            ours = r.answer[0][0].to_text() if r.answer else dns.rcode.to_text(r.rcode())
            return theirs, ours, up.seen - seen_before
        finally:
            await stop_component(task)

    theirs, ours, sent = asyncio.run(main())
    assert theirs == "10.0.0.1" and ours == "10.0.0.1"
    assert sent >= 1


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed this idle connection (readable with EOF or a reset)."""
    r, _, _ = select.select([sock], [], [], 0)
    if not r:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def test_one_client_holding_every_tcp_slot_does_not_starve_the_others(
    tmp_path: Path, records: Path, upstream: ServerProcess
) -> None:
    need("dig")
    srv = start_server(tmp_path, records, "--upstream", f"127.0.0.1:{upstream.port}")
    hog: list[socket.socket] = []
    try:
        # One local process opens 256 connections and sends nothing.
        hog = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(256)]
        # Another client (dig, its own process) still gets its TCP answers, mesh and forwarded.
        assert dig(srv.port, "httpbin.mesh", "+tcp", "+short").strip() == "240.0.0.1"
        assert dig(srv.port, "www.example.test", "+tcp", "+short").strip() == "10.9.9.9"
        # Per source address: 127.0.0.1 keeps at most 64 (the longest idle were closed for the newcomers);
        # a client on another source address gets its own 64.
        wait_until(lambda: sum(map(_closed, hog)) >= 256 - 64, 30, "idle connections evicted")
        assert not any(_closed(s) for s in hog[-62:])  # the newest stay open (two slots went to dig)
        other = []
        for _ in range(64):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", srv.port))
            other.append(s)
        hog += other
        r = query(srv.port, "httpbin.mesh", tcp=True)
        assert r.answer[0][0].to_text() == "240.0.0.1"
        assert not any(_closed(s) for s in other)
    finally:
        for s in hog:
            s.close()
        srv.stop()


# -- item 9: descriptor exhaustion --------------------------------------------------------------------------


def _accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the listener on 127.0.0.1:`port` (its /proc/net/tcp
    rx_queue)."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == local and f[3] == "0A":
            return int(f[4].split(":")[1], 16)
    raise AssertionError(f"no listener on 127.0.0.1:{port}")


@pytest.mark.parametrize("plain_asyncio", [False, True], ids=["uvloop", "asyncio"])
def test_fd_exhaustion_keeps_forwarded_and_tcp_dns_working(
    tmp_path: Path, records: Path, upstream: ServerProcess, plain_asyncio: bool
) -> None:
    """RLIMIT_NOFILE=64 and 300 idle TCP connections: accept() hits EMFILE. Forwarded UDP (every query a
    cache miss, each needing an upstream socket) and TCP still answer; the log gets a line, not a flood."""
    need("dig")
    srv = start_server(
        tmp_path, records, "--upstream", f"127.0.0.1:{upstream.port}", nofile=64, plain_asyncio=plain_asyncio
    )
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", srv.port))
            idle.append(s)
        wait_until(lambda: "accept() on" in srv.log.read_text(), 30, "accept() to run out of descriptors")
        # Every pending connection taken (idle ones closed to make room) and every descriptor in use.
        wait_until(
            lambda: _accept_queue(srv.port) == 0 and len(os.listdir(f"/proc/{srv.proc.pid}/fd")) >= 64,
            30,
            "the server to hold all 64 descriptors with nothing left to accept",
        )
        for i in range(20):
            r = query(srv.port, f"miss-{i}.example.test")
            assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].to_text() == "10.9.9.9"
        assert "out of file descriptors for upstream sockets" in srv.log.read_text()  # the fallback ran
        assert dig(srv.port, "httpbin.mesh", "+tcp", "+short").strip() == "240.0.0.1"
        assert dig(srv.port, "tcp-miss.example.test", "+tcp", "+short").strip() == "10.9.9.9"
        text = srv.log.read_text()
        assert "Traceback" not in text
        assert text.count("accept() on") == 1 and text.count("out of file descriptors") == 1
        assert srv.proc.poll() is None
    finally:
        for s in idle:
            s.close()
        srv.stop()
