"""The pure builder against the goldens of Kuma's `install transparent-proxy --dry-run` (tproxy-dryrun/)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from iptables.builder import HostFacts, build_all, parse_resolv_conf, render_dry_run
from iptables.config import ConfigError, load_config, resolve_kuma_dp_uid

pytestmark = pytest.mark.unit

PREFIX = "--dry-run --ip-family-mode ipv4"
CASES = [
    ("install-transparent-proxy.defaults.golden.txt", "--kuma-dp-user root", True),
    ("install-transparent-proxy.defaults.golden.txt", "--kuma-dp-user 0", True),
    (
        "install-transparent-proxy.dns.no-conntrack.golden.txt",
        "--kuma-dp-user 0 --redirect-all-dns-traffic --redirect-dns-port 12345",
        False,
    ),
    (
        "install-transparent-proxy.dns.no-conntrack.golden.txt",
        "--kuma-dp-user 0 --redirect-all-dns-traffic --redirect-dns-port 12345 --skip-dns-conntrack-zone-split",  # noqa: E501
        True,
    ),
    (
        "install-transparent-proxy.overrides.golden.txt",
        "--kuma-dp-user root --redirect-outbound-port 12345 --redirect-inbound-port 12346 "
        "--exclude-outbound-ports 2000,2001 --exclude-inbound-ports 1000,1001",
        True,
    ),
    (
        "install-transparent-proxy.overrides.golden.txt",
        "--kuma-dp-user root --redirect-outbound-port 12345 --redirect-inbound-port 12346 --ip-family-mode ipv4 "  # noqa: E501
        "--exclude-outbound-ports 2000,2001 --exclude-inbound-ports 1000,1001",
        True,
    ),
    (
        "install-transparent-proxy.excludedports.txt",
        "--kuma-dp-user root --exclude-outbound-ports-for-uids tcp:1900,1902,1000-2000:106-108 "
        "--exclude-outbound-ports-for-uids tcp:2900,2902,3000-5000:203 "
        "--exclude-outbound-ports-for-uids udp:3900,3902,4000-6000:303",
        True,
    ),
    (
        "install-transparent-proxy.excludedports_simpler.txt",
        "--kuma-dp-user root --exclude-outbound-ports-for-uids tcp:1900,1902,1000-2000:106-108 "
        "--exclude-outbound-ports-for-uids tcp:2900,2902,3000-5000:203 "
        "--exclude-outbound-ports-for-uids udp:3900,3902,4000-6000:303",
        True,
    ),
    (
        "install-transparent-proxy.excludedports_wildcards.txt",
        "--kuma-dp-user root --exclude-outbound-ports-for-uids *:*:0",
        True,
    ),
    (
        "install-transparent-proxy.excludedports_allprotos.txt",
        "--kuma-dp-user root --exclude-outbound-ports-for-uids tcp:*:0",
        True,
    ),
    (
        "install-transparent-proxy.excludedports_onlyuid.txt",
        "--kuma-dp-user root --exclude-outbound-ports-for-uids 123",
        True,
    ),
]


def argv_to_flags(argv: list[str]) -> dict[str, object]:
    """A tiny argv -> flags dict, enough for the golden cases (the real CLI is tested in test_tproxy_cli)."""
    flags: dict[str, object] = {}
    booleans = {"dry-run", "redirect-all-dns-traffic", "redirect-dns", "skip-dns-conntrack-zone-split"}
    repeat = {"exclude-outbound-ports-for-uids", "exclude-inbound-ips", "exclude-outbound-ips", "vnet"}
    it = iter(argv)
    for tok in it:
        name = tok[2:]
        if name in booleans:
            flags[name] = True
        elif name in repeat:
            flags.setdefault(name, [])
            flags[name].append(next(it))  # type: ignore[union-attr]
        else:
            flags[name] = next(it)
    return flags


def normalise(out: str) -> str:
    out = re.sub(r"-o ([^ ]+)", "-o ifPlaceholder", out)
    out = re.sub(r'-m comment --comment ".*?" ', "", out)
    return re.sub(
        r"(?m)^-I OUTPUT (\d+) -p udp --dport 53 -m owner --uid-owner (\d+) -j (\w+)$",
        r"-I OUTPUT \1 -p udp --dport 53 -m owner --uid-owner \2 -j dnsJumpTargetPlaceholder",
        out,
    )


def dry_run(args: str, conntrack: bool) -> str:
    flags = argv_to_flags(shlex.split(f"{PREFIX} {args}"))
    cfg = load_config([], flags, {})
    uid = resolve_kuma_dp_uid(cfg.kuma_dp_user)
    facts = HostFacts(loopback="lo", conntrack=conntrack, ipv6=True)
    return render_dry_run(build_all(cfg, facts, uid))


@pytest.mark.parametrize(("golden", "args", "conntrack"), CASES)
def test_dry_run_matches_kuma_golden(conformance_dir: Path, golden: str, args: str, conntrack: bool) -> None:
    expected = (conformance_dir / "tproxy-dryrun" / golden).read_text()
    assert normalise(dry_run(args, conntrack)) == expected


def test_comments_present_before_normalisation() -> None:
    out = dry_run("--kuma-dp-user 0", True)
    assert (
        '-A OUTPUT -m comment --comment "kuma/mesh/transparent/proxy/redirect outbound TCP traffic to our '
        in out
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            "--redirect-dns --redirect-all-dns-traffic",
            "only one of '--redirect-dns' or '--redirect-all-dns-traffic' should be specified",
        ),
        (
            "--exclude-outbound-ports-for-uids a3000-5000:1",
            "parsing excluded outbound ports for uids failed: invalid port range: validation failed for value or "  # noqa: E501
            "range 'a3000-5000': invalid uint16 value: 'a3000'",
        ),
        (
            "--exclude-outbound-ports-for-uids http:3000-5000:1",
            "parsing excluded outbound ports for uids failed: invalid or unsupported protocol: 'http'",
        ),
        (
            "--exclude-outbound-ports-for-uids 3000-5000:1:*",
            "parsing excluded outbound ports for uids failed: wildcard '*' is not allowed for UIDs",
        ),
        (
            "--exclude-outbound-ports-for-uids 3000-5000:1:1,2,3",
            "parsing excluded outbound ports for uids failed: invalid UID entry: '1,2,3'. It should either be a "  # noqa: E501
            "single item or a range",
        ),
        (
            "--exclude-outbound-ports-for-uids tcp,http:1:1",
            "parsing excluded outbound ports for uids failed: invalid or unsupported protocol: 'http'",
        ),
    ],
)
def test_kuma_error_messages(args: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config([], argv_to_flags(shlex.split(f"--kuma-dp-user root {args}")), {})
    assert str(exc.value) == message


def test_config_precedence_files_env_flags(tmp_path: Path) -> None:
    (tmp_path / "1.yaml").write_text("\nredirect:\n  dns:\n    enabled: false\n    port: 7777\n")
    (tmp_path / "2.json").write_text(
        '{"redirect": {"dns": {"enabled": true, "port": 8888}, "inbound": {"excludePorts": [10000, 20000]}}}'
    )
    import io

    stdin = io.StringIO("\nredirect:\n  inbound:\n    excludePorts: [4444, 55555]\n")
    cfg = load_config(
        [str(tmp_path / "1.yaml"), str(tmp_path / "2.json"), "-", " "],
        {},
        {"KUMA_TRANSPARENT_PROXY_WAIT": "9"},
        stdin=stdin,
    )
    assert (cfg.dns.enabled, cfg.dns.port, cfg.inbound.exclude_ports, cfg.wait) == (
        True,
        8888,
        (4444, 55555),
        9,
    )
    cfg = load_config(
        [str(tmp_path / "2.json")],
        {"redirect-dns-port": "10003"},
        {"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_PORT": "10002"},
    )
    assert cfg.dns.port == 10003
    cfg = load_config([str(tmp_path / "2.json")], {}, {"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_PORT": "10002"})
    assert cfg.dns.port == 10002
    # the conflict check looks at flags only: a config with both is capture-all
    (tmp_path / "3.yaml").write_text("redirect: {dns: {enabled: true, captureAll: true}}\n")
    assert load_config([str(tmp_path / "3.yaml")], {}, {}).dns.capture_all


def test_config_errors_name_the_input(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("redirect:\n  dns:\n    prot: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'redirect.dns.prot'"):
        load_config([str(tmp_path / "bad.yaml")], {}, {})
    with pytest.raises(ConfigError, match=r"redirect.inbound.port: port '70000' must be between 1 and 65535"):
        load_config([], {"redirect-inbound-port": "70000"}, {})
    with pytest.raises(ConfigError, match=r"cannot read config file /nonexistent/x.yaml"):
        load_config(["/nonexistent/x.yaml"], {}, {})
    with pytest.raises(ConfigError, match="ipFamilyMode"):
        load_config([], {}, {"KUMA_TRANSPARENT_PROXY_IP_FAMILY_MODE": "ipv5"})


def test_default_user_fallback_and_error() -> None:
    def nobody(_: object) -> object:
        raise KeyError("x")

    class Pw:
        pw_uid = 4242

    assert resolve_kuma_dp_uid("", getpwuid=lambda u: Pw(), getpwnam=nobody) == 5678
    assert resolve_kuma_dp_uid("", getpwuid=nobody, getpwnam=lambda n: Pw()) == 4242
    with pytest.raises(
        ConfigError, match=r"^no UID or username provided, and user with the default UID \('5678'\)"
    ):
        resolve_kuma_dp_uid("", getpwuid=nobody, getpwnam=nobody)
    assert resolve_kuma_dp_uid("", cni_mode=True, getpwuid=nobody, getpwnam=nobody) == 5678


def test_dataplane_config_matches_bootstrap_golden(conformance_dir: Path) -> None:
    import json

    golden = json.loads(
        (conformance_dir / "bootstrap/kuma-dp/bootstrap-request-transparent-proxy.golden.json").read_text()
    )
    cfg = load_config(
        [],
        {
            "ip-family-mode": "ipv4",
            "redirect-inbound": False,
            "redirect.outbound.enabled": False,
            "redirect-inbound-port": 1234,
            "redirect-outbound-port": 2345,
            "redirect-dns-port": 3456,
        },
        {},
    )
    assert cfg.dataplane_config() == golden["dataplaneConfig"]


def test_dns_per_nameserver_and_family_split() -> None:
    cfg = load_config([], {"redirect-dns": True, "exclude-inbound-ports": "22"}, {})
    facts = HostFacts(nameservers=parse_resolv_conf("nameserver 10.0.0.2\nnameserver fd00::53\n"), ipv6=True)
    v4, v6 = build_all(cfg, facts, 5678)
    text4 = render_dry_run([v4], comments=False)
    assert "-I OUTPUT 2 -d 10.0.0.2 -p udp --dport 53 -j REDIRECT --to-ports 15053" in text4
    assert "-A PREROUTING -s 10.0.0.2 -p udp --sport 53 -j CT --zone 1" in text4
    assert "fd00::53" not in text4
    text6 = render_dry_run([v6], comments=False)
    assert "-d fd00::53 -p udp --dport 53 -j REDIRECT --to-ports 15053" in text6
    assert "-s ::6/128 -o lo -j RETURN" in text6
    # no IPv6 name server: DNS redirection is off for IPv6 (kumahq/kuma#10799)
    facts = HostFacts(nameservers=("10.0.0.2",), ipv6=True)
    assert "--dport 53" not in render_dry_run([build_all(cfg, facts, 5678)[1]])
