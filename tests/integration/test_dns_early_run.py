"""The early DNS responder, driven as a user would: `kuma-dp run` (real Envoy, real sockets, dnspython and raw
sockets as clients) in a work dir where a previous run left its table, snapshot and listen plan.

- Against a control plane that takes `/bootstrap` and holds its answer, the agent is provably before its
  configuration is fetched, yet answers mesh names; what it cannot answer yet (a name for the upstream, an
  unknown mesh name, a TCP query) is answered once the control plane lets it go and the DNS component has
  taken over.
- Against a control plane that answers at once, queries sent in a loop from the first early answer until well
  after the handover all get their answer: no refused port, no lost datagram.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from kuma_dns import early
from kuma_dp_dev.harness.dnsmasq import dnsmasq_cmd, free_udp_tcp_port
from kuma_dp_dev.harness.poll import wait_until
from kuma_dp_dev.harness.ports import free_port
from kuma_dp_dev.harness.procs import stop
from tests.helpers.agent_proc import KUMA_DP, AgentProcess, kuma_dp_run
from tests.helpers.fake_cp import FakeCP, Reply, make_token, minimal_bootstrap_yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PAYLOAD = {
    "records": [{"name": "backend.mesh", "ips": ["240.0.0.1", "fd00::1"]}],
    "ttl": 30,
    "extraLabels": {"mesh": "default"},
}
TOOK_OVER = "took over from the early responder"


def seed(work: Path, port: int) -> None:
    """What a previous `kuma-dp run` leaves in its work dir: the real DNS component, listening on `port`,
    loads a `/dns` payload (persisted table + hot snapshot) and records where it listened."""
    from kuma_dns.component import DNSComponent

    async def main() -> None:
        comp = DNSComponent(
            port=port, workdir=work, upstreams=[], resolv_conf=work / "none", register_metrics=False
        )
        task = asyncio.ensure_future(comp.run())
        await asyncio.wait_for(comp.ready.wait(), 30)
        await comp.update_async(json.dumps(PAYLOAD).encode(), etag="seed")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    for name in ("kuma-dns-table.json", early.HOT_NAME, early.PLAN_NAME):
        assert (work / name).is_file(), name


class HeldCP:
    """A control plane that reads each `POST /bootstrap` and answers it only once `release()` is called."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.got_request = threading.Event()
        self.released = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                body += conn.recv(65536)
            assert head.startswith(b"POST /bootstrap"), head
            self.got_request.set()
            self.released.wait()
            r = self.reply
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                % (r.content_type.encode(), len(r.body))
                + r.body
            )
        except OSError:
            pass
        finally:
            conn.close()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.sock.close()


def run_args(cp_url: str, envoy_binary: str, work: Path) -> list[str]:
    token = make_token({"Name": "dp-1", "Mesh": "default", "Tags": {}})
    return ["--cp-address", cp_url, "--name", "dp-1", "--mesh", "default", "--dataplane-token", token,
            "--binary-path", envoy_binary, "--work-dir", str(work), "--concurrency", "1"]  # fmt: skip


def ask(port: int, name: str, qtype: str = "A", timeout: float = 1.0) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, qtype), "127.0.0.1", port=port, timeout=timeout)


def addresses(r: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in r.answer for rd in rrset)


@contextlib.contextmanager
def upstream_on_port_53(log_dir: Path) -> Iterator[str]:
    """dnsmasq answering `*.example.test` with 192.0.2.7 on port 53 (resolv.conf has no port) of a loopback
    address of this test's own (127.77.x.y from the pid), so no other test's server is in the way."""
    addr = f"127.77.{os.getpid() % 250 + 1}.{os.getpid() // 250 % 250 + 1}"
    cmd = [a if a != "--listen-address=127.0.0.1" else f"--listen-address={addr}"
           for a in dnsmasq_cmd(53, "--address=/example.test/192.0.2.7")]  # fmt: skip
    log = log_dir / "dnsmasq.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: "dnsmasq: started," in log.read_text(errors="replace"), 10, "dnsmasq")
        yield addr
    finally:
        stop(proc)


@pytest.fixture
def seeded(short_tmp: Path) -> Iterator[tuple[Path, int]]:
    work = short_tmp / "wd"
    work.mkdir(mode=0o711)
    port = free_udp_tcp_port()
    seed(work, port)
    yield work, port


def test_mesh_names_answered_before_the_config_the_rest_after_the_handover(
    envoy_binary: str, short_tmp: Path, seeded: tuple[Path, int]
) -> None:
    for tool in ("dnsmasq", "unshare", "mount"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (apt install dnsmasq-base util-linux mount)")
    if os.geteuid() != 0:
        pytest.skip("needs root for a mount namespace with its own /etc/resolv.conf")
    work, port = seeded
    with upstream_on_port_53(short_tmp) as upstream:
        # The agent reads its upstreams from /etc/resolv.conf: its own, in a mount namespace of its own.
        resolv = short_tmp / "resolv.conf"
        resolv.write_text(f"nameserver {upstream}\n")
        cp = HeldCP(Reply.bootstrap(minimal_bootstrap_yaml(free_port())))
        readiness = free_port()
        argv = ["unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv),
                *KUMA_DP, "run", *run_args(f"http://127.0.0.1:{cp.port}", envoy_binary, work)]  # fmt: skip
        env = {"KUMA_DNS_PROXY_PORT": str(port), "KUMA_READINESS_PORT": str(readiness)}
        try:
            with AgentProcess(argv, short_tmp / "run.log", env=env, readiness_port=readiness) as agent:
                agent.wait_for(cp.got_request.is_set, 60, "the agent to ask for its bootstrap")
                r = agent.wait_for(lambda: ask(port, "backend.mesh"), 30, "an answer for backend.mesh")
                # The control plane has not answered: the agent has no configuration from it, no Envoy, no
                # DNS component; what answered is the early responder.
                assert addresses(r) == ["240.0.0.1"] and r.rcode() == dns.rcode.NOERROR
                assert addresses(ask(port, "BACKEND.mesh", "AAAA")) == ["fd00::1"]
                assert "dns server listening" not in agent.output() and not cp.released.is_set()

                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                udp.connect(("127.0.0.1", port))
                upstream_q = dns.message.make_query("www.example.test", "A")
                unknown_q = dns.message.make_query("nothere.mesh", "A")
                for q in (upstream_q, unknown_q):
                    udp.send(q.to_wire())
                tcp = socket.create_connection(("127.0.0.1", port), timeout=60)
                tcp_q = dns.message.make_query("backend.mesh", "A").to_wire()
                tcp.sendall(struct.pack("!H", len(tcp_q)) + tcp_q)

                cp.release()
                udp.settimeout(60)  # a deadline for a failing agent; the replies come once it took over
                replies = {}
                while len(replies) < 2:
                    m = dns.message.from_wire(udp.recv(65535))
                    replies[m.id] = m
                assert addresses(replies[upstream_q.id]) == ["192.0.2.7"]
                assert replies[unknown_q.id].rcode() == dns.rcode.NXDOMAIN
                (n,) = struct.unpack("!H", recv_exactly(tcp, 2))
                assert addresses(dns.message.from_wire(recv_exactly(tcp, n))) == ["240.0.0.1"]
                tcp.close()
                udp.close()
                agent.wait_log(TOOK_OVER)
                took = re.search(r"answered=(\d+) handed_over=(\d+) servfail=0 dropped=(\d+)", agent.output())
                assert took is not None
                answered, handed_over, dropped = map(int, took.groups())
                assert answered >= 2 and handed_over >= 2 and dropped == 0
                # And the server that took over answers mesh names on the same sockets.
                assert addresses(ask(port, "backend.mesh", timeout=10)) == ["240.0.0.1"]
        finally:
            cp.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def test_queries_in_a_loop_through_the_whole_start_up_all_get_answers(
    envoy_binary: str, short_tmp: Path, seeded: tuple[Path, int]
) -> None:
    work, port = seeded
    env = {"KUMA_DNS_PROXY_PORT": str(port)}
    outcomes: list[str] = []
    cp = FakeCP([Reply.bootstrap(minimal_bootstrap_yaml(free_port()))])
    with cp, kuma_dp_run(run_args(cp.url, envoy_binary, work), short_tmp / "run.log", env=env) as agent:
        agent.wait_for(lambda: ask(port, "backend.mesh", timeout=0.2), 60, "the first (early) answer")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", port))  # a refused port would show as ConnectionRefusedError
        sock.settimeout(10)  # a deadline for a lost query, not a performance bound
        after = 0
        for i in range(20_000):
            q = dns.message.make_query("backend.mesh", "A")
            q.id = i & 0xFFFF
            try:
                sock.send(q.to_wire())
                r = dns.message.from_wire(sock.recv(65535))
                outcomes.append("ok" if r.id == q.id and addresses(r) == ["240.0.0.1"] else f"bad {r}")
            except OSError as exc:  # refused, timed out
                outcomes.append(f"{type(exc).__name__}")
            if after or TOOK_OVER in agent.output():
                after += 1
            if after > 200:
                break
        sock.close()
        assert TOOK_OVER in agent.output()
        agent.wait_ready()
    assert after > 200, "the handover was never reached"
    assert len(outcomes) > after and set(outcomes) == {"ok"}, [o for o in outcomes if o != "ok"][:5]


def test_the_component_takes_over_the_early_answers_counts_and_queries(short_tmp: Path) -> None:
    """In process, with real sockets: the early responder of `start_early` answers and keeps what it cannot;
    the DNS component adopts its sockets, counts its answers in kuma_dp_dns_requests_total and answers what it
    kept (an unknown mesh name: NXDOMAIN) on the socket it was sent to."""
    from kuma_dns.component import DNSComponent

    work = short_tmp / "wd"
    work.mkdir(mode=0o711)
    port = free_udp_tcp_port()
    seed(work, port)
    r = early.start_early(["run", "--work-dir", str(work)], {"KUMA_DNS_PROXY_PORT": str(port)})
    assert r is not None
    try:
        for qtype in ("A", "AAAA", "A"):
            assert ask(port, "backend.mesh", qtype, timeout=10).rcode() == dns.rcode.NOERROR
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.connect(("127.0.0.1", port))
        kept = dns.message.make_query("nothere.mesh", "A")
        client.send(kept.to_wire())

        async def main() -> tuple[list[list[int]], dns.message.Message]:
            comp = DNSComponent(
                port=port, workdir=work, upstreams=[], resolv_conf=work / "none", register_metrics=False
            )
            task = asyncio.ensure_future(comp.run())
            try:
                await asyncio.wait_for(comp.ready.wait(), 30)
                client.setblocking(False)
                loop = asyncio.get_running_loop()
                reply = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(client, 65535), 30))
                return comp.metrics.queries, reply
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        queries, reply = asyncio.run(main())
        client.close()
        assert reply.id == kept.id and reply.rcode() == dns.rcode.NXDOMAIN
        assert queries[0][0] == 3 and queries[1][0] == 1  # the early A, A and AAAA answers, then the NXDOMAIN
        assert r.answered == [2, 1, 0] and early.take() is None  # taken over, once
    finally:
        early.discard()
        r.close()


def test_a_start_that_takes_long_fails_other_names_fast_and_keeps_answering_mesh_names(
    envoy_binary: str, short_tmp: Path, seeded: tuple[Path, int]
) -> None:
    """The control plane never answers: the agent stays before its configuration, the early responder keeps
    answering mesh names, and a name it cannot answer gets SERVFAIL (after kuma_dns.early.STASH_WAIT)
    instead of leaving the client to its resolver's whole timeout."""
    work, port = seeded
    cp = HeldCP(Reply.bootstrap(minimal_bootstrap_yaml(free_port())))
    try:
        args = run_args(f"http://127.0.0.1:{cp.port}", envoy_binary, work)
        with kuma_dp_run(args, short_tmp / "run.log", env={"KUMA_DNS_PROXY_PORT": str(port)}) as agent:
            agent.wait_for(cp.got_request.is_set, 60, "the agent to ask for its bootstrap")
            agent.wait_for(lambda: ask(port, "backend.mesh"), 30, "an early answer")
            r = ask(port, "www.example.test", timeout=early.STASH_WAIT + 30)
            assert r.rcode() == dns.rcode.SERVFAIL and not cp.released.is_set()
            assert addresses(ask(port, "backend.mesh")) == ["240.0.0.1"]
    finally:
        cp.close()
