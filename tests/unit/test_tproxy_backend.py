"""Backend choice as Kuma makes it, restore-error texts and nft-native translation; no kernel needed."""

from __future__ import annotations

import pytest

from iptables.backend import Executables, _choose, failing_line, version_mode
from iptables.builder import HostFacts, Rule, build_all
from iptables.config import load_config
from iptables.nftables import render, translate
from iptables.state import parse_save

pytestmark = pytest.mark.unit

EMPTY = parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")
RULES = parse_save("*nat\n:OUTPUT ACCEPT [0:0]\n:X - [0:0]\n-A OUTPUT -j X\nCOMMIT\n")
DOCKER = parse_save(
    "*nat\n:OUTPUT ACCEPT [0:0]\n:DOCKER_OUTPUT - [0:0]\n-A OUTPUT -j DOCKER_OUTPUT\nCOMMIT\n"
)


def exe(mode: str) -> Executables:
    return Executables(4, mode, f"iptables-{mode}", f"iptables-{mode}-save", f"iptables-{mode}-restore")


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("iptables v1.8.9 (nf_tables)", "nft"),
        ("ip6tables-nft v1.8.7 (nf_tables)\n", "nft"),
        ("iptables v1.8.9 (legacy)", "legacy"),
        ("iptables v1.6.1", "legacy"),
        ("iptables-legacy-save: unrecognized option '--version'", "legacy"),
        ("something else", None),
    ],
)
def test_version_mode(text: str, mode: str | None) -> None:
    assert version_mode(text) == mode


def test_choice_follows_kuma() -> None:
    warnings: list[str] = []
    assert _choose([(exe("nft"), EMPTY, False), (exe("legacy"), EMPTY, False)], warnings)[0].mode == "nft"
    assert _choose([(exe("nft"), EMPTY, False), (exe("legacy"), RULES, True)], warnings)[0].mode == "legacy"
    assert _choose([(exe("nft"), RULES, True), (exe("legacy"), EMPTY, False)], warnings)[0].mode == "nft"
    assert not warnings
    assert _choose([(exe("nft"), RULES, True), (exe("legacy"), DOCKER, True)], warnings)[0].mode == "legacy"
    assert warnings and warnings[0].startswith("conflicting iptables modes detected")
    # only one set usable in this netns (the other's nat table failed): that one, whatever it holds
    assert _choose([(exe("legacy"), EMPTY, False)], [])[0].mode == "legacy"


def test_failing_line_is_one_line_with_the_rule() -> None:
    stderr = (
        "iptables-restore v1.8.9 (legacy): interface name `x' must be shorter than IFNAMSIZ (15)\n"
        "Error occurred at line: 2\n"
        "Try `iptables-restore -h' or 'iptables-restore --help' for more information.\n"
    )
    msg = failing_line(stderr, "*nat\n-A PREROUTING -i x -j RETURN\nCOMMIT\n")
    assert msg == (
        "line 2 `-A PREROUTING -i x -j RETURN`: iptables-restore v1.8.9 (legacy): interface name `x' must be "
        "shorter than IFNAMSIZ (15)"
    )


def r(chain: str, args: str, comment: str = "") -> Rule:
    return Rule(chain, tuple(args.split(" ")), comment)


def test_nft_translation() -> None:
    o3 = r("OUTPUT", "-p tcp -o lo ! -d ::1/128 -m owner --uid-owner 5678 -j KUMA_MESH_INBOUND_REDIRECT")
    assert translate(o3, "nat", 6) == (
        'meta l4proto tcp oifname "lo" ip6 daddr != ::1/128 meta skuid 5678 '
        "jump KUMA_MESH_INBOUND_REDIRECT_IPV6"
    )
    exc = r("OUTPUT", "-m multiport -p udp --dport 53,3000:5000 -m owner --uid-owner 106:108 -j RETURN", "c")
    assert translate(exc, "nat", 4, comments=False) == (
        "meta l4proto udp udp dport { 53, 3000-5000 } meta skuid 106-108 return"
    )
    vnet = r("PREROUTING", "! -d 172.18.0.0/16 -i br+ -p tcp -j REDIRECT --to-ports 15001")
    assert translate(vnet, "nat", 4) == (
        'ip daddr != 172.18.0.0/16 iifname "br*" meta l4proto tcp redirect to :15001'
    )


def test_nft_render_is_one_replacing_transaction() -> None:
    cfg = load_config([], {"redirect-all-dns-traffic": True}, {})
    text = render(build_all(cfg, HostFacts(ipv6=True), 5678))
    assert text.startswith("table inet kuma_mesh\ndelete table inet kuma_mesh\ntable inet kuma_mesh {\n")
    assert (
        "meta nfproto ipv4 jump nat_OUTPUT_IPV4" in text and "meta nfproto ipv6 jump nat_OUTPUT_IPV6" in text
    )
    assert "type filter hook output priority raw" in text  # CT zones before conntrack, as the raw table
