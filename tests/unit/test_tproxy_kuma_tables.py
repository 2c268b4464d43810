"""Kuma v2.14.3's own unit-test tables for the rule builder, ported case by case.

* `pkg/transparentproxy/iptables/builder/builder_table_nat_test.go`: "should insert PREROUTING rules" (6
  entries) and "should append PREROUTING rules" (1 entry), with Kuma's config (inbound port 1234, outbound
  port 12345, DNS port 15053 and DNS redirection *off*) and Kuma's check (each expected text is a substring
  of the rendered nat table once the `-m comment` parts are removed).
* `pkg/transparentproxy/iptables/parameters/{ininterface,outinterface,protocol,source_destination,
  match_conntrack}_test.go`: how each parameter is spelled, short and `--verbose`. Kuma builds parameters as
  objects; our builder keeps each rule as the short argv and spells it long when rendering, so each case
  here is that argv rendered both ways.

Kuma's entry titles are kept (two of them are misnamed upstream: "not verbose" entries that are verbose).
"""

from __future__ import annotations

import re

import pytest

from iptables.builder import HostFacts, Rule, Table, build, render_table
from iptables.config import load_config

pytestmark = pytest.mark.unit

#: Kuma's comment filter, verbatim: `(?:-m|--match) comment --comment ".*?" `
COMMENTS = re.compile(r'(?:-m|--match) comment --comment ".*?" ')


def nat_table(vnets: list[str], *, verbose: bool, ipv6: bool) -> str:
    """The nat table Kuma's test builds: ports 1234/12345, DNS port 15053, DNS redirection not enabled."""
    cfg = load_config(
        [],
        {
            "redirect-inbound-port": "1234",
            "redirect-outbound-port": "12345",
            "redirect-dns-port": "15053",
            "vnet": vnets,
        },
        {},
    )
    assert not cfg.dns.enabled
    ruleset = build(cfg, HostFacts(ipv6=ipv6), 5678, 6 if ipv6 else 4)
    nat = ruleset.table("nat")
    assert nat is not None
    return COMMENTS.sub("", render_table(nat, verbose=verbose))


INSERT_CASES = [
    pytest.param(
        ["docker:1.2.3.4/24", "br+:127.0.0.0/32"], False, False,
        [
            "-I PREROUTING 1",
            "-i docker -m udp -p udp --dport 53 -j REDIRECT --to-ports 15053",
            "-I PREROUTING 2",
            "! -d 1.2.3.4/24 -i docker -p tcp -j REDIRECT --to-ports 12345",
            "-I PREROUTING 3",
            "-i br+ -m udp -p udp --dport 53 -j REDIRECT --to-ports 15053",
            "-I PREROUTING 4",
            "! -d 127.0.0.0/32 -i br+ -p tcp -j REDIRECT --to-ports 12345",
            "-I PREROUTING 5 -p tcp -j KUMA_MESH_INBOUND",
        ],
        id="ipv4 not verbose",
    ),
    pytest.param(
        ["docker:1.2.3.4/24", "br+:127.0.0.0/32"], True, False,
        [
            "--insert PREROUTING 1",
            "--in-interface docker --match udp --protocol udp --destination-port 53 --jump REDIRECT --to-ports 15053",  # noqa: E501
            "--insert PREROUTING 2",
            "! --destination 1.2.3.4/24 --in-interface docker --protocol tcp --jump REDIRECT --to-ports 12345",  # noqa: E501
            "--insert PREROUTING 3",
            "--in-interface br+ --match udp --protocol udp --destination-port 53 --jump REDIRECT --to-ports 15053",  # noqa: E501
            "--insert PREROUTING 4",
            "! --destination 127.0.0.0/32 --in-interface br+ --protocol tcp --jump REDIRECT --to-ports 12345",
            "--insert PREROUTING 5 --protocol tcp --jump KUMA_MESH_INBOUND",
        ],
        id="ipv4 not verbose (verbose)",
    ),
    pytest.param(
        ["docker:::6/24", "br+:1::1/128"], False, True,
        [
            "-I PREROUTING 1",
            "-i docker -m udp -p udp --dport 53 -j REDIRECT --to-ports 15053",
            "-I PREROUTING 2",
            "! -d ::6/24 -i docker -p tcp -j REDIRECT --to-ports 12345",
            "-I PREROUTING 3",
            "-i br+ -m udp -p udp --dport 53 -j REDIRECT --to-ports 15053",
            "-I PREROUTING 4",
            "! -d 1::1/128 -i br+ -p tcp -j REDIRECT --to-ports 12345",
            "-I PREROUTING 5 -p tcp -j KUMA_MESH_INBOUND",
        ],
        id="ipv6 not verbose",
    ),
    pytest.param(
        ["docker:::6/24", "br+:1::1/128"], True, True,
        [
            "--insert PREROUTING 1",
            "--in-interface docker --match udp --protocol udp --destination-port 53 --jump REDIRECT --to-ports 15053",  # noqa: E501
            "--insert PREROUTING 2",
            "! --destination ::6/24 --in-interface docker --protocol tcp --jump REDIRECT --to-ports 12345",
            "--insert PREROUTING 3",
            "--in-interface br+ --match udp --protocol udp --destination-port 53 --jump REDIRECT --to-ports 15053",  # noqa: E501
            "--insert PREROUTING 4",
            "! --destination 1::1/128 --in-interface br+ --protocol tcp --jump REDIRECT --to-ports 12345",
            "--insert PREROUTING 5 --protocol tcp --jump KUMA_MESH_INBOUND",
        ],
        id="ipv6 not verbose (verbose)",
    ),
    pytest.param(
        ["docker:127.0.0.6/24", "br+:1::1/128"], True, False,
        [
            "--insert PREROUTING 1 --in-interface docker --match udp --protocol udp --destination-port 53 --jump REDIRECT --to-ports 15053",  # noqa: E501
            "--insert PREROUTING 2 ! --destination 127.0.0.6/24 --in-interface docker --protocol tcp --jump REDIRECT --to-ports 12345",  # noqa: E501
            "--insert PREROUTING 3 --protocol tcp --jump KUMA_MESH_INBOUND",
        ],
        id="ipv4 without ipv6 rules",
    ),
    pytest.param(
        ["docker:127.0.0.6/24", "br+:1::1/128"], True, True,
        [
            "--insert PREROUTING 1 --in-interface br+ --match udp --protocol udp --destination-port 53 --jump REDIRECT --to-ports 15053",  # noqa: E501
            "--insert PREROUTING 2 ! --destination 1::1/128 --in-interface br+ --protocol tcp --jump REDIRECT --to-ports 12345",  # noqa: E501
            "--insert PREROUTING 3 --protocol tcp --jump KUMA_MESH_INBOUND",
        ],
        id="ipv6 without ipv4 rules",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("vnets", "verbose", "ipv6", "expect"), INSERT_CASES)
def test_should_insert_prerouting_rules(
    vnets: list[str], verbose: bool, ipv6: bool, expect: list[str]
) -> None:
    table = nat_table(vnets, verbose=verbose, ipv6=ipv6)
    for rule in expect:
        assert rule in table, f"{rule!r} not in\n{table}"


def test_should_append_prerouting_rules() -> None:
    """Entry "ipv4 not verbose": no vnet, no insert flag -> one appended jump."""
    assert "-A PREROUTING -p tcp -j KUMA_MESH_INBOUND" in nat_table([], verbose=False, ipv6=False)


def test_vnet_dns_redirect_follows_the_dns_port_even_with_dns_off() -> None:
    """The same insert table as Kuma's first entry, with another DNS port: the redirect names that port.

    Also: the interface DNS rule precedes the interface's TCP rule, interfaces in sorted order (Kuma sorts
    `InterfaceCIDRs`' keys, `maps.SortedKeys`), and a repeated interface keeps its last CIDR (a map).
    """
    vnets = ["b0:10.0.0.0/8", "a0:10.1.0.0/16", "b0:10.2.0.0/16"]
    cfg = load_config([], {"redirect-dns-port": "5353", "vnet": vnets}, {})
    nat = build(cfg, HostFacts(), 5678, 4).table("nat")
    assert nat is not None
    lines = [ln for ln in COMMENTS.sub("", render_table(nat)).splitlines() if "PREROUTING" in ln]
    assert lines == [
        "-I PREROUTING 1 -i a0 -m udp -p udp --dport 53 -j REDIRECT --to-ports 5353",
        "-I PREROUTING 2 ! -d 10.1.0.0/16 -i a0 -p tcp -j REDIRECT --to-ports 15001",
        "-I PREROUTING 3 -i b0 -m udp -p udp --dport 53 -j REDIRECT --to-ports 5353",
        "-I PREROUTING 4 ! -d 10.2.0.0/16 -i b0 -p tcp -j REDIRECT --to-ports 15001",
        "-I PREROUTING 5 -p tcp -j KUMA_MESH_INBOUND",
    ]


def test_insert_without_vnet_says_remaining() -> None:
    """`--redirect-inbound-insert-instead-of-append` alone takes Kuma's insert branch and its comment."""
    cfg = load_config([], {"redirect-inbound-insert-instead-of-append": True}, {})
    nat = build(cfg, HostFacts(), 5678, 4).table("nat")
    assert nat is not None
    assert (
        '-I PREROUTING 1 -m comment --comment "kuma/mesh/transparent/proxy/redirect remaining TCP traffic to '
        'our custom chain for processing" -p tcp -j KUMA_MESH_INBOUND'
    ) in render_table(nat)


# ----------------------------------------------------------------------------------------------------
# pkg/transparentproxy/iptables/parameters/*_test.go: (short argv, verbose argv), one line per Kuma entry
# pair (each Kuma table has the short entry and its "- verbose" twin).

PARAMETER_CASES = [
    # ininterface_test.go
    ("-i localhost", "--in-interface localhost"),
    ("! -i localhost", "! --in-interface localhost"),
    # outinterface_test.go
    ("-o localhost", "--out-interface localhost"),
    ("! -o localhost", "! --out-interface localhost"),
    # protocol_test.go: DestinationPort, NotDestinationPort, Tcp, Udp
    ("--dport 22", "--destination-port 22"),
    ("--dport 7777", "--destination-port 7777"),
    ("! --dport 22", "! --destination-port 22"),
    ("! --dport 7777", "! --destination-port 7777"),
    ("-p tcp", "--protocol tcp"),
    ("-p tcp --dport 22", "--protocol tcp --destination-port 22"),
    ("-p tcp ! --dport 22", "--protocol tcp ! --destination-port 22"),
    ("-p udp", "--protocol udp"),
    ("-p udp --dport 53", "--protocol udp --destination-port 53"),
    ("-p udp ! --dport 53", "--protocol udp ! --destination-port 53"),
    # source_destination_test.go: Destination, negated, NotDestination, Source, negated
    ("-d 254.254.254.254", "--destination 254.254.254.254"),
    ("-d 127.0.0.1/32", "--destination 127.0.0.1/32"),
    ("-d ::1", "--destination ::1"),
    ("-d ::1/128", "--destination ::1/128"),
    ("! -d 254.254.254.254", "! --destination 254.254.254.254"),
    ("! -d 127.0.0.1/32", "! --destination 127.0.0.1/32"),
    ("! -d ::1", "! --destination ::1"),
    ("! -d ::1/128", "! --destination ::1/128"),
    ("-s 127.0.0.1/32", "--source 127.0.0.1/32"),
    ("-s 254.254.254.254", "--source 254.254.254.254"),
    ("! -s 127.0.0.1/32", "! --source 127.0.0.1/32"),
    ("! -s 254.254.254.254", "! --source 254.254.254.254"),
    # match_conntrack_test.go: Ctstate (verbose spells it the same), negated
    *[(f"--ctstate {s}", f"--ctstate {s}") for s in ("INVALID", "NEW", "ESTABLISHED", "RELATED", "UNTRACKED", "SNAT", "DNAT")],  # noqa: E501
    ("--ctstate INVALID,NEW,ESTABLISHED,RELATED,UNTRACKED,SNAT,DNAT", "--ctstate INVALID,NEW,ESTABLISHED,RELATED,UNTRACKED,SNAT,DNAT"),  # noqa: E501
    *[(f"! --ctstate {s}", f"! --ctstate {s}") for s in ("INVALID", "NEW", "ESTABLISHED", "RELATED", "UNTRACKED", "SNAT", "DNAT")],  # noqa: E501
    # ... Conntrack(): the match itself, bare and with every state
    ("-m conntrack", "--match conntrack"),
    ("-m conntrack --ctstate INVALID,NEW,ESTABLISHED,RELATED,UNTRACKED,SNAT,DNAT", "--match conntrack --ctstate INVALID,NEW,ESTABLISHED,RELATED,UNTRACKED,SNAT,DNAT"),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize(("short", "verbose"), PARAMETER_CASES)
def test_parameter_spelling(short: str, verbose: str) -> None:
    table = Table("nat", rules=[Rule("OUTPUT", tuple(short.split()))])
    assert render_table(table, comments=False).splitlines()[1] == f"-A OUTPUT {short}"
    assert render_table(table, comments=False, verbose=True).splitlines()[2] == f"--append OUTPUT {verbose}"
