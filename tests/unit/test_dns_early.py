"""The early responder (kuma_dns/early.py): its answers are `DNSServer._hot`'s bytes for the same table, its
snapshot and plan survive a round trip and refuse to be forged or cut short, it reads the work dir and the
port from the command line as the settings table does, and its stash is bounded."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kuma_dns import _wire as w
from kuma_dns import early, table
from kuma_dns._files import FileRefused
from kuma_dns.early import EarlyResponder, SnapshotError
from kuma_dns.metrics import DNSMetrics
from kuma_dns.server import DNSServer
from kuma_dns.table import TableStore, build_table, parse_payload

pytestmark = pytest.mark.unit

WRITE_HEX = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_bytes(bytes.fromhex(sys.argv[2]))"
OTHER_UID = 5678  # another user, as in tests/integration/test_dns_hardening.py
PAYLOAD = {
    "records": [
        {"name": "backend.mesh", "ips": ["240.0.0.1", "::ffff:f000:1"]},
        {"name": "v6.mesh", "ips": ["fd00::1"]},
        {"name": "big.mesh", "ips": [f"10.0.{i // 250}.{i % 250}" for i in range(40)]},  # > 512 bytes
    ],
    "ttl": 30,
    "extraLabels": {"mesh": "default"},
}


def responder(answers: dict[bytes, early.HotAnswer], opt_do: bytes = w.OPT_DO) -> EarlyResponder:
    """A responder without sockets: `answer` and `receive` are what the serving thread calls."""
    return EarlyResponder("/nonexistent", answers, opt_do, [], 0, [], [])


def hot_of(tbl: table.MeshTable, fetched_at: float = 1000.0) -> dict[bytes, early.HotAnswer]:
    answers, stamp, opt_do = early.decode_snapshot(early.encode_snapshot(tbl.answers, fetched_at, w.OPT_DO))
    assert stamp == fetched_at and opt_do == w.OPT_DO
    return answers


# -- same bytes as the server's hot path --------------------------------------------------------------------

label = st.text(alphabet="abcdefgh-0123", min_size=1, max_size=12).filter(
    lambda s: not s.startswith("-") and not s.endswith("-")
)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.tuples(*[st.integers(0, 0xFFFF)] * 8).map(lambda t: ":".join(f"{x:x}" for x in t))
record = st.fixed_dictionaries(
    {"name": st.lists(label, min_size=1, max_size=3).map(lambda ls: ".".join(ls) + ".mesh"),
     "ips": st.lists(st.one_of(ipv4, ipv6), max_size=30)}
)  # fmt: skip
payloads = st.fixed_dictionaries({"records": st.lists(record, max_size=8), "ttl": st.integers(0, 0x7FFFFFFF)})


def _case(name: str, flips: list[bool]) -> str:
    return "".join(c.upper() if f else c for c, f in zip(name, flips + [False] * len(name), strict=False))


@st.composite
def queries(draw: st.DrawFn, names: list[str]) -> bytes:
    pool = [*names, "example.org", "nothere.mesh", "mesh"]
    name = draw(st.sampled_from(pool))
    if draw(st.booleans()) and names:
        name = draw(st.sampled_from(names)) + draw(st.sampled_from([".svc.local", ".corp", ""]))
    name = _case(name, draw(st.lists(st.booleans(), max_size=40)))
    qtype = draw(st.sampled_from(["A", "AAAA", "MX", "TXT", "ANY"]))
    use_edns = draw(st.sampled_from([False, 0, 1]))  # no OPT, EDNS0, EDNS1 (the hot path refuses 1)
    q = dns.message.make_query(
        name + ".",
        qtype,
        use_edns=use_edns,
        want_dnssec=draw(st.booleans()) and use_edns is not False,
        payload=draw(st.sampled_from([512, 1232, 4096])),
    )
    q.id = draw(st.integers(0, 0xFFFF))
    rd, cd = dns.flags.RD, dns.flags.CD
    q.flags = draw(st.sampled_from([0, rd, cd, rd | cd, dns.flags.AA]))
    wire = bytearray(q.to_wire())
    if draw(st.integers(0, 9)) == 0:  # a damaged query: the same answer or none, from both
        at = draw(st.integers(0, len(wire) - 1))
        wire[at] = draw(st.integers(0, 255))
    if draw(st.integers(0, 19)) == 0:
        wire += b"\x00"
    return bytes(wire)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), payload=payloads, search=st.lists(st.sampled_from(["svc.local", "corp"]), max_size=2))
def test_early_answers_are_the_hot_paths_bytes(data: st.DataObject, payload: dict, search: list[str]) -> None:
    store = TableStore(search_domains=tuple(search))
    server = DNSServer(store, None, DNSMetrics())
    store.update(json.dumps(payload))
    r = responder(hot_of(store.current))
    names = [rec["name"] for rec in payload["records"]]
    try:
        for _ in range(20):
            q = data.draw(queries(names))
            expected = server._hot(q, 0.0)
            assert r.answer(q) == expected
            if expected is not None:
                dns.message.from_wire(expected)  # and it is a well-formed reply
        hits = sum(server.metrics.queries[k][0] for k in range(3))
        assert r.total_answered == hits
        assert r.answered == [server.metrics.queries[k][0] for k in range(3)]
    finally:
        r.close()


def test_a_reply_too_big_for_512_bytes_is_left_to_the_server() -> None:
    tbl = build_table(parse_payload(json.dumps(PAYLOAD)))
    r = responder(hot_of(tbl))
    try:
        big = dns.message.make_query("big.mesh.", "A").to_wire()
        assert r.answer(big) is None  # the server truncates it; not the early responder's job
        ok = dns.message.make_query("Backend.mesh.", "A", use_edns=0, want_dnssec=True)
        reply = dns.message.from_wire(r.answer(ok.to_wire()) or b"")
        assert reply.id == ok.id and reply.flags & dns.flags.AA and reply.ednsflags & dns.flags.DO
        assert [rr.to_text() for rr in reply.answer[0]] == ["240.0.0.1"]
    finally:
        r.close()


# -- the files ----------------------------------------------------------------------------------------------


def test_persist_writes_the_snapshot_beside_the_table_privately(tmp_path: Path) -> None:
    store = TableStore(workdir=tmp_path)
    store.update(json.dumps(PAYLOAD), etag="e1")
    hot = tmp_path / early.HOT_NAME
    assert stat.S_IMODE(hot.stat().st_mode) == 0o600
    answers, fetched_at, opt_do = early.decode_snapshot(hot.read_bytes())
    assert fetched_at == store.confirmed_at and opt_do == w.OPT_DO
    served = {k: a for k, a in store.current.answers.items() if a.tail is not None or a.fast_edns is not None}
    assert set(answers) == set(served)
    for k, a in served.items():
        assert answers[k] == (a.counts, a.tail, a.counts_edns, a.fast_edns, a.local_kind)
    # Constants the early responder duplicates so as not to import the table module.
    assert early.MAX_FILE_BYTES == table.MAX_TABLE_BYTES and early.FUTURE_SKEW == table.FUTURE_SKEW


def test_plan_round_trip_and_refusals() -> None:
    assert early.decode_plan(early.encode_plan(["127.0.0.1", "::1"], 15053)) == (["127.0.0.1", "::1"], 15053)
    good = early.encode_plan(["127.0.0.1"], 5353)
    port_zero = good[:8] + b"\x00\x00" + good[10:]
    for bad in (good[:-1], good + b"x", good.replace(b"127.0.0.1", b"localhos1"), port_zero):
        with pytest.raises(SnapshotError):
            early.decode_plan(bad)


def test_every_truncation_of_a_snapshot_is_refused() -> None:
    tbl = build_table(parse_payload(json.dumps(PAYLOAD)), ["corp"])
    data = early.encode_snapshot(tbl.answers, 1000.0, w.OPT_DO)
    early.decode_snapshot(data)
    for n in range(len(data)):
        with pytest.raises(SnapshotError):
            early.decode_snapshot(data[:n])
    with pytest.raises(SnapshotError):
        early.decode_snapshot(data + b"\x00")


@settings(max_examples=500, deadline=None)
@given(garbage=st.binary(max_size=300), at=st.integers(0, 10_000), prefix=st.booleans())
def test_garbage_snapshots_are_refused_cleanly(garbage: bytes, at: int, prefix: bool) -> None:
    """Random bytes, alone or spliced into a valid snapshot: decoded or refused with SnapshotError only."""
    tbl = build_table(parse_payload(json.dumps(PAYLOAD)))
    good = early.encode_snapshot(tbl.answers, 1000.0, w.OPT_DO)
    data = good[: at % len(good)] + garbage + good[at % len(good) + len(garbage) :] if prefix else garbage
    try:
        answers, _, _ = early.decode_snapshot(data)
    except SnapshotError:
        return
    r = responder(answers)  # whatever decoded is servable without raising
    try:
        r.answer(dns.message.make_query("backend.mesh.", "A").to_wire())
    finally:
        r.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A work dir holding a real table's snapshot and a plan for a port nothing listens on."""
    store = TableStore(workdir=tmp_path)
    store.update(json.dumps(PAYLOAD))
    early.write_files(tmp_path, early.PLAN_NAME, early.encode_plan(["127.0.0.1"], free_port()))
    yield tmp_path


def free_port() -> int:
    from kuma_dp_dev.harness.dnsmasq import free_udp_tcp_port

    return free_udp_tcp_port()


def test_a_trusted_snapshot_opens_and_binds(workdir: Path) -> None:
    r = EarlyResponder.open(str(workdir))
    assert r is not None
    try:
        assert r.answer(dns.message.make_query("backend.mesh.", "A").to_wire()) is not None
    finally:
        r.close()


def test_sockets_outside_the_servers_plan_are_closed_before_it_binds(workdir: Path) -> None:
    """The plan said 127.0.0.1, the configuration now says 0.0.0.0 on the same port: the early socket must
    not stand in the way of the server's bind, and is not handed over."""
    r = EarlyResponder.open(str(workdir))
    assert r is not None
    try:
        r.stop()
        r.keep_only(["0.0.0.0"], r.port)
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("0.0.0.0", r.port))
        assert r.adopt("127.0.0.1", r.port, tcp=False) is None
    finally:
        r.close()


def test_a_symlinked_snapshot_is_refused(workdir: Path) -> None:
    hot = workdir / early.HOT_NAME
    real = workdir / "elsewhere.bin"
    hot.rename(real)
    hot.symlink_to(real)
    with pytest.raises(FileRefused, match="symbolic link"):
        EarlyResponder.open(str(workdir))


@pytest.mark.parametrize("name", [early.HOT_NAME, early.PLAN_NAME])
def test_a_group_writable_file_is_refused(workdir: Path, name: str) -> None:
    os.chmod(workdir / name, 0o620)
    with pytest.raises(FileRefused, match="writable by group"):
        EarlyResponder.open(str(workdir))


def test_a_future_stamp_is_refused(workdir: Path) -> None:
    tbl = build_table(parse_payload(json.dumps(PAYLOAD)))
    (workdir / early.HOT_NAME).write_bytes(early.encode_snapshot(tbl.answers, time.time() + 3600, w.OPT_DO))
    with pytest.raises(SnapshotError, match="future"):
        EarlyResponder.open(str(workdir))


def test_truncated_and_missing_files(workdir: Path) -> None:
    hot = workdir / early.HOT_NAME
    hot.write_bytes(hot.read_bytes()[:-3])
    with pytest.raises(SnapshotError):
        EarlyResponder.open(str(workdir))
    hot.unlink()
    assert EarlyResponder.open(str(workdir)) is None  # no snapshot: nothing to do, nothing to say


@pytest.fixture
def shared_dir(workdir: Path) -> Iterator[Path]:
    """`workdir`'s files in a dir every local user can write (mode 1777, like /tmp), reachable by the other
    uid (pytest's own temp dirs are not)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another uid")
    d = Path(tempfile.mkdtemp(prefix="kdns-early-", dir="/tmp"))
    os.chmod(d, 0o1777)
    for name in (early.HOT_NAME, early.PLAN_NAME):
        shutil.copy2(workdir / name, d / name)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_file_planted_by_another_user_is_refused_and_start_early_says_so(shared_dir: Path) -> None:
    workdir = shared_dir
    hot = workdir / early.HOT_NAME
    data = hot.read_bytes()
    hot.unlink()
    subprocess.run(
        [sys.executable, "-c", WRITE_HEX, str(hot), data.hex()],
        user=OTHER_UID, group=OTHER_UID, extra_groups=[], check=True, timeout=30,
    )  # fmt: skip
    assert hot.stat().st_uid == OTHER_UID and hot.read_bytes() == data
    with pytest.raises(FileRefused, match="another user"):
        EarlyResponder.open(str(workdir))
    early.refused = None
    port = early.decode_plan((workdir / early.PLAN_NAME).read_bytes())[1]
    argv = ["run", "--work-dir", str(workdir), "--dns-proxy-port", str(port)]
    assert early.start_early(argv, {}) is None and early.take() is None
    assert early.refused is not None and "another user" in early.refused
    early.refused = None


def test_start_early_serves_and_hands_over_once(workdir: Path) -> None:
    port = early.decode_plan((workdir / early.PLAN_NAME).read_bytes())[1]
    r = early.start_early(["run", f"--work-dir={workdir}"], {"KUMA_DNS_PROXY_PORT": str(port)})
    assert r is not None
    try:
        assert early.take() is r and early.take() is None
    finally:
        r.close()
    # A port other than the plan's: the plan is stale, no responder.
    other = str(port + 1 if port < 65535 else port - 1)
    assert early.start_early(["run", f"--work-dir={workdir}"], {"KUMA_DNS_PROXY_PORT": other}) is None
    assert early.take() is None


V4_V6 = ["127.0.0.1", "::1"]


# -- which work dir -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["run", "--work-dir", "/w"], {}, ("/w", 15053, None)),
        (["run", "--work-dir=/w", "--dns-proxy-port", "5353"], {}, ("/w", 5353, None)),
        (["run", "--work-dir", "/flag"], {"KUMA_DATAPLANE_RUNTIME_WORK_DIR": "/env"}, ("/env", 15053, None)),
        (["run", "--config-dir", "/old"], {}, ("/old", 15053, None)),
        (["run", "--work-dir", "/w"], {"KUMA_DATAPLANE_RUNTIME_WORK_DIR": ""}, None),  # set, empty: temp
        (["run", "--work-dir", "/w", "--dns-proxy-port=1"], {"KUMA_DNS_PROXY_PORT": "2"}, ("/w", 2, None)),
        (["run", "--work-dir", "/w"], {"KUMA_DNS_PROXY_PORT": ""}, ("/w", 15053, None)),  # empty: ignored
        (["run", "--work-dir", "/w"], {"KUMA_DNS_PROXY_ADDRESS": "127.0.0.1, ::1"}, ("/w", 15053, V4_V6)),
        (["run"], {}, None),
        (["run", "--work-dir", "/w", "--dns-enabled=false"], {}, None),
        (["run", "--work-dir", "/w", "--dns-enabled"], {"KUMA_DNS_ENABLED": "false"}, None),
        (["run", "--work-dir", "/w", "--dns-enabled=false"], {"KUMA_DNS_ENABLED": "1"}, ("/w", 15053, None)),
        (["run", "--work-dir", "/w", "--dns-enabled=maybe"], {}, None),
        (["run", "--work-dir", "/w"], {"KUMA_DNS_PROXY_PORT": "0"}, None),
        (["run", "--work-dir", "/w"], {"KUMA_DNS_CORE_DNS_PORT": "15053"}, None),
        (["run", "--work-dir", "/w", "--dns-coredns-compat"], {}, None),
        (["run", "--work-dir", "/w", "--dns-coredns-port", "5300"], {}, None),
        (["version", "--work-dir", "/w"], {}, None),
    ],
)
def test_guess_plan_reads_the_settings_table_names(
    argv: list[str], env: dict[str, str], expected: tuple[str, int, list[str] | None] | None
) -> None:
    assert early.guess_plan(argv, env) == expected


# -- the stash ----------------------------------------------------------------------------------------------


def test_the_stash_is_bounded_and_counts_what_it_drops() -> None:
    r = responder({})
    try:
        q = dns.message.make_query("example.org.", "A").to_wire()
        key = early.socket_key("127.0.0.1", 5353)
        for i in range(early.STASH_MAX + 5):
            assert r.receive(q, ("127.0.0.1", i), key) is None
        assert len(r.stash) == early.STASH_MAX and r.dropped == 5
        assert r.stash[0] == (q, ("127.0.0.1", 0), key)
    finally:
        r.close()


def test_a_kept_query_gets_servfail_after_the_wait_bound() -> None:
    """While the start takes long (control plane unreachable), a query the responder cannot answer is not
    left to the client's whole resolver timeout: after STASH_WAIT it gets SERVFAIL, its question echoed."""
    r = early.EarlyResponder("/nonexistent", {}, b"", [], 0, [], [])
    q = dns.message.make_query("www.example.test", "AAAA")
    q.flags |= dns.flags.CD
    garbage = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c"  # compressed question: not ours
    key = ("127.0.0.1", 15053)
    assert r.receive(q.to_wire(), ("127.0.0.1", 40000), key, now=10.0) is None  # kept
    assert r.receive(garbage, ("127.0.0.1", 40001), key, now=10.5) is None
    assert r.expire(10.0 + early.STASH_WAIT / 2) == []
    ((reply, addr, got_key),) = r.expire(10.0 + early.STASH_WAIT)
    assert (addr, got_key) == (("127.0.0.1", 40000), key) and len(r.stash) == 1
    m = dns.message.from_wire(reply)
    assert m.id == q.id and m.rcode() == dns.rcode.SERVFAIL and m.question == q.question
    assert (
        m.flags & dns.flags.QR
        and m.flags & dns.flags.RD
        and m.flags & dns.flags.CD
        and m.flags & dns.flags.RA
    )
    assert r.expire(10.5 + early.STASH_WAIT) == [] and r.dropped == 1 and r.expired == 1
    assert r.stash == []
