"""Every transparent-proxy setting, declared once, and how each value is read.

A row of `SETTINGS` gives a setting's camelCase key in `--config` files, its `KUMA_TRANSPARENT_PROXY_*`
variable, its CLI flags, its kind (parser), its default and its help. The names are Kuma v2.14.3's (config
keys and variables from `pkg/transparentproxy/config/config.go`, flags from
`app/kumactl/cmd/install/install_transparent_proxy.go` in kumahq/kuma), so existing `--config` files,
init-container specs and scripts work unchanged. `iptables.config` merges the sources and validates them
into its dataclasses by walking this table, and `iptables.cli` builds its click options from it: adding a
setting is one row here plus its field on the dataclass.

Values are read with Go's grammars (`kuma_dp.goparse`) and bad ones are reported with the setting's key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kuma_dp import goparse

ENV_PREFIX = "KUMA_TRANSPARENT_PROXY_"
EXECUTABLE_NAMES = (
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
)
IP_FAMILY_MODES = ("dualstack", "ipv4")


class ConfigError(ValueError):
    """A bad setting: the message names the input and, where it can, the fix."""


@dataclass(frozen=True)
class UIDExclusion:
    """One `[proto:][ports:]uids` entry for one protocol, in iptables syntax (`1000:2000`, `106:108`)."""

    protocol: str  # "tcp" | "udp"
    ports: str  # multiport list, e.g. "53,3000:5000" or "1:65535"
    uids: str  # "106:108" or "0"


@dataclass(frozen=True)
class VNet:
    """`iface:CIDR`; `cidr` keeps the user's spelling because Kuma's rule comment shows it unnormalised."""

    interface: str
    cidr: str

    @property
    def ipv6(self) -> bool:
        return ipaddress.ip_network(self.cidr, strict=False).version == 6

    @property
    def spec(self) -> str:
        """The `iface:CIDR` form of the flag, the config file and the bootstrap request."""
        return f"{self.interface}:{self.cidr}"


# ----------------------------------------------------------------------------------------------------
# Kinds: how one type of value is parsed, written back and read from an env var


@dataclass(frozen=True)
class Kind:
    #: (setting, merged raw value) -> the dataclass value; raises ConfigError naming `setting.path`
    parse: Callable[[Setting, Any], Any]
    #: the dataclass value -> its config-file form (for `to_dict()`)
    dump: Callable[[Any], Any] = lambda value: value
    #: an env var's text -> the config-file form (env vars write lists as separated strings)
    from_env: Callable[[str], Any] = lambda raw: raw
    #: how the CLI takes it: "flag" (bare `--x`), "multi" (repeatable `--x v`) or "value" (`--x v`)
    option: str = "value"


def _invalid(s: Setting, v: Any, what: str) -> ConfigError:
    return ConfigError(f"invalid value for {s.path}: '{v}' {what}")


def _text(s: Setting, v: Any) -> str:
    """Unset or empty means the default, as in Kuma's `MergeConfigWithDefaults` (`config.go`)."""
    return str(v or s.default)


def _user(s: Setting, v: Any) -> str:
    return "" if v is None else str(v).strip()  # YAML `kumaDPUser: 0` is UID 0, not "unset"


def _family(s: Setting, v: Any) -> str:
    family = str(v).strip().lower()
    if family not in IP_FAMILY_MODES:
        allowed = ", ".join(IP_FAMILY_MODES)
        raise ConfigError(f"invalid value for {s.path} (--ip-family-mode): '{family}' (allowed: {allowed})")
    return family


def _bool(s: Setting, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    try:
        return goparse.parse_bool(str(v).strip())
    except ValueError:
        raise _invalid(s, v, "is not a boolean (use true or false)") from None


def _ebpf_enabled(s: Setting, v: Any) -> bool:
    if _bool(s, v):
        raise ConfigError(
            "--ebpf-enabled: the eBPF mode is not supported by this implementation; use iptables"
        )
    return False


def _uint(s: Setting, v: Any) -> int:
    try:
        if isinstance(v, bool):
            raise ValueError(v)
        return goparse.parse_uint(str(v))
    except ValueError:
        raise _invalid(s, v, "is not a non-negative integer") from None


def _duration(s: Setting, v: Any) -> float:
    """A Go duration (`2s`, `500ms`, `1m30s`) in seconds; a bare YAML number is seconds, "" is 0."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    text = str(v).strip()
    try:
        seconds = goparse.parse_duration(text) if text else 0.0
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        raise _invalid(s, v, "is not a duration (e.g. 2s, 500ms)")
    return seconds


def _port(s: Setting, v: Any) -> int:
    try:
        n = int(str(v).strip())
    except ValueError:
        raise _invalid(s, v, "is not a port (1-65535)") from None
    if not 0 < n <= 65535:
        raise ConfigError(f"invalid value for {s.path}: port '{v}' must be between 1 and 65535")
    return n


def _as_list(s: Setting, v: Any) -> list[Any]:
    if v is None:
        return []
    if isinstance(v, str | int):
        return [v]
    if isinstance(v, list | tuple):
        return list(v)
    raise ConfigError(f"invalid value for {s.path}: expected a list, got {type(v).__name__}")


def _items(s: Setting, v: Any) -> list[str]:
    """List entries with their comma lists split: `["22,80", 443]` -> `["22", "80", "443"]`."""
    return [p for item in _as_list(s, v) for p in str(item).split(",") if p.strip()]


def _ips(s: Setting, v: Any) -> tuple[str, ...]:
    direction = s.path.split(".")[1]  # redirect.<inbound|outbound>.excludePortsForIPs
    ips = tuple(item.strip() for item in _items(s, v))
    for ip in ips:
        try:
            ipaddress.ip_network(ip, strict=False) if "/" in ip else ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(
                f"parsing excluded {direction} ports for IPs failed: invalid IP or CIDR: '{ip}' ({s.path})"
            ) from None
    return ips


def _uid_entries(s: Setting, v: Any) -> tuple[str, ...]:
    """The entries as given, each checked; `TrafficFlow.exclude_uids` turns them into rule specs."""
    entries = tuple(str(x) for x in _as_list(s, v))
    for entry in entries:
        parse_uid_exclusion(entry)
    return entries


def _executables(s: Setting, v: Any) -> dict[str, str]:
    if v in (None, "", {}):
        return {}
    items: list[tuple[str, str]] = []
    if isinstance(v, Mapping):
        items = [(str(k), str(p)) for k, p in v.items() if p]
    else:
        for part in ",".join(str(x) for x in _as_list(s, v)).split(","):
            if not part.strip():
                continue
            name, sep, path = part.partition(":")
            if not sep or not path:
                raise ConfigError(
                    f"invalid --iptables-executables entry '{part}': "
                    "expected name:path, e.g. iptables:/sbin/iptables-nft"
                )
            items.append((name.strip(), path.strip()))
    out: dict[str, str] = {}
    for name, path in items:
        if name not in EXECUTABLE_NAMES:
            raise ConfigError(
                f"invalid --iptables-executables name '{name}': use one of {', '.join(EXECUTABLE_NAMES)}"
            )
        out[name] = path
    for fam in ("iptables", "ip6tables"):
        names = [fam, f"{fam}-save", f"{fam}-restore"]
        have = [n for n in names if n in out]
        if have and len(have) != 3:
            missing = ", ".join(n for n in names if n not in out)
            raise ConfigError(
                f"--iptables-executables: {fam} needs all three of {', '.join(names)} (missing {missing})"
            )
    return out


def _comma_list(raw: str) -> list[str]:
    return [s.strip() for s in raw.split(",") if s.strip()]


def _semicolon_list(raw: str) -> list[str]:
    """UID exclusions contain commas themselves (`tcp:53,80:106`), so their env var separates with `;`."""
    return [s for s in raw.split(";") if s.strip()]


TEXT = Kind(_text)
USER = Kind(_user)
FAMILY = Kind(_family)
BOOL = Kind(_bool, option="flag")
EBPF_SWITCH = Kind(_ebpf_enabled, option="flag")
UINT = Kind(_uint)
DURATION = Kind(_duration, dump=lambda seconds: f"{seconds:g}s")
PORT = Kind(_port)
PORTS = Kind(lambda s, v: tuple(_port(s, p) for p in _items(s, v)), dump=list, from_env=_comma_list)
IPS = Kind(_ips, dump=list, from_env=_comma_list, option="multi")
UIDS = Kind(_uid_entries, dump=list, from_env=_semicolon_list, option="multi")
VNETS = Kind(
    lambda s, v: tuple(parse_vnet(str(x)) for x in _as_list(s, v)),
    dump=lambda vnets: [v.spec for v in vnets],
    from_env=_comma_list,
    option="multi",
)
EXECUTABLES = Kind(_executables, dump=dict)


# ----------------------------------------------------------------------------------------------------
# The settings


@dataclass(frozen=True)
class Setting:
    #: the camelCase key path in a `--config` file
    path: str
    #: the attribute path on `iptables.config.TransparentProxyConfig` (`inbound.port`)
    attr: str
    kind: Kind
    #: in config-file form: what `to_dict()` of the defaults shows
    default: Any
    #: the env var name after `KUMA_TRANSPARENT_PROXY_`
    env: str
    #: CLI flag names without `--`; any after the first are deprecated aliases of it
    flags: tuple[str, ...]
    help: str
    #: the CLI shape when it is not the kind's: "switch" (`--x/--no-x`), or "command" for the flags every
    #: command declares itself, each with its own help (`--dry-run`, `--verbose`)
    option: str = ""

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.env

    @property
    def shape(self) -> str:
        """How the CLI takes it: "flag", "switch", "multi", "value" or "command" (see `option`)."""
        return self.option or self.kind.option


#: Rows are in validation order, which decides the error reported when several values are bad (DNS, vnet
#: and eBPF before the traffic flows, a flow's UID exclusions before its other keys); `--help` lists the
#: flags in this order too. Each row reads `Setting(path, attr, kind, default, env, flags, help[, option])`;
#: `fmt: skip` keeps the formatter from spreading a row over seven lines.
SETTINGS: tuple[Setting, ...] = (
    Setting("kumaDPUser", "kuma_dp_user", USER, "", "KUMA_DP_USER", ("kuma-dp-user", "kuma-dp-uid"),
            "name or UID of the user running kuma-dp (default: UID 5678, then user kuma-dp)"),
    Setting("ipFamilyMode", "ip_family_mode", FAMILY, "dualstack", "IP_FAMILY_MODE", ("ip-family-mode",),
            "dualstack or ipv4"),
    Setting("redirect.dns.captureAll", "dns.capture_all", BOOL, False, "REDIRECT_DNS_CAPTURE_ALL",
            ("redirect-all-dns-traffic",), "redirect all DNS traffic to the kuma-dp DNS proxy"),
    Setting("redirect.dns.enabled", "dns.enabled", BOOL, False, "REDIRECT_DNS_ENABLED", ("redirect-dns",),
            "redirect DNS to resolv.conf name servers to the kuma-dp DNS proxy"),
    Setting("redirect.dns.port", "dns.port", PORT, 15053, "REDIRECT_DNS_PORT", ("redirect-dns-port",),
            "DNS proxy port"),
    Setting("redirect.dns.skipConntrackZoneSplit", "dns.skip_conntrack_zone_split", BOOL, False,
            "REDIRECT_DNS_SKIP_CONNTRACK_ZONE_SPLIT", ("skip-dns-conntrack-zone-split",),
            "do not split DNS conntrack zones"),
    Setting("redirect.dns.resolvConfigPath", "dns.resolv_config_path", TEXT, "/etc/resolv.conf",
            "REDIRECT_DNS_RESOLV_CONFIG_PATH", (),
            "the resolv.conf whose name servers --redirect-dns redirects"),
    Setting("redirect.vnet.networks", "vnets", VNETS, [], "REDIRECT_VNET_NETWORKS", ("vnet",),
            "ifaceRegex:CIDR of a virtual network to redirect, repeatable, e.g. docker0:172.17.0.0/16"),
    Setting("ebpf.enabled", "ebpf.enabled", EBPF_SWITCH, False, "EBPF_ENABLED", ("ebpf-enabled",),
            "eBPF mode (not supported here)"),
    Setting("ebpf.instanceIP", "ebpf.instance_ip", TEXT, "", "EBPF_INSTANCE_IP", ("ebpf-instance-ip",),
            "eBPF instance IP (not supported here)"),
    Setting("ebpf.instanceIPEnvVarName", "ebpf.instance_ip_env_var_name", TEXT, "",
            "EBPF_INSTANCE_IP_ENV_VAR_NAME", (), "env var holding the eBPF instance IP (not supported here)"),
    Setting("ebpf.bpffsPath", "ebpf.bpffs_path", TEXT, "/run/kuma/bpf", "EBPF_BPFFS_PATH",
            ("ebpf-bpffs-path",), "eBPF bpffs path (not supported here)"),
    Setting("ebpf.cgroupPath", "ebpf.cgroup_path", TEXT, "/sys/fs/cgroup", "EBPF_CGROUP_PATH",
            ("ebpf-cgroup-path",), "eBPF cgroup path (not supported here)"),
    Setting("ebpf.programsSourcePath", "ebpf.programs_source_path", TEXT, "/tmp/kuma-ebpf",
            "EBPF_PROGRAMS_SOURCE_PATH", ("ebpf-programs-source-path",),
            "eBPF programs path (not supported here)"),
    Setting("ebpf.tcAttachIface", "ebpf.tc_attach_iface", TEXT, "", "EBPF_TC_ATTACH_IFACE",
            ("ebpf-tc-attach-iface",), "eBPF tc interface (not supported here)"),
    Setting("redirect.inbound.excludePortsForUIDs", "inbound.exclude_uids_raw", UIDS, [],
            "REDIRECT_INBOUND_EXCLUDE_PORTS_FOR_UIDS", (),
            "[tcp|udp|*:][ports|*:]uids whose inbound traffic is not redirected"),
    Setting("redirect.inbound.enabled", "inbound.enabled", BOOL, True, "REDIRECT_INBOUND_ENABLED",
            ("redirect-inbound",), "redirect inbound traffic", option="switch"),
    Setting("redirect.inbound.port", "inbound.port", PORT, 15006, "REDIRECT_INBOUND_PORT",
            ("redirect-inbound-port",), "inbound redirect port"),
    Setting("redirect.inbound.includePorts", "inbound.include_ports", PORTS, [],
            "REDIRECT_INBOUND_INCLUDE_PORTS", (), "inbound ports to redirect (all when empty)"),
    Setting("redirect.inbound.excludePorts", "inbound.exclude_ports", PORTS, [],
            "REDIRECT_INBOUND_EXCLUDE_PORTS", ("exclude-inbound-ports",),
            "comma list of inbound ports not redirected (tip: 22)"),
    Setting("redirect.inbound.excludePortsForIPs", "inbound.exclude_ips", IPS, [],
            "REDIRECT_INBOUND_EXCLUDE_PORTS_FOR_IPS", ("exclude-inbound-ips",),
            "IPs/CIDRs (comma lists, repeatable) whose inbound traffic is not redirected"),
    Setting("redirect.inbound.insertRedirectInsteadOfAppend", "inbound.insert_redirect_instead_of_append",
            BOOL, False, "REDIRECT_INBOUND_INSERT_REDIRECT_INSTEAD_OF_APPEND",
            ("redirect-inbound-insert-instead-of-append",),
            "insert the PREROUTING jump instead of appending it"),
    Setting("redirect.outbound.excludePortsForUIDs", "outbound.exclude_uids_raw", UIDS, [],
            "REDIRECT_OUTBOUND_EXCLUDE_PORTS_FOR_UIDS", ("exclude-outbound-ports-for-uids",),
            "[tcp|udp|*:][ports|*:]uids, repeatable, e.g. 53,3000-5000:106-108"),
    Setting("redirect.outbound.enabled", "outbound.enabled", BOOL, True, "REDIRECT_OUTBOUND_ENABLED", (),
            "redirect outbound traffic"),
    Setting("redirect.outbound.port", "outbound.port", PORT, 15001, "REDIRECT_OUTBOUND_PORT",
            ("redirect-outbound-port",), "outbound redirect port"),
    Setting("redirect.outbound.includePorts", "outbound.include_ports", PORTS, [],
            "REDIRECT_OUTBOUND_INCLUDE_PORTS", (), "outbound ports to redirect (all when empty)"),
    Setting("redirect.outbound.excludePorts", "outbound.exclude_ports", PORTS, [],
            "REDIRECT_OUTBOUND_EXCLUDE_PORTS", ("exclude-outbound-ports",),
            "comma list of outbound ports not redirected"),
    Setting("redirect.outbound.excludePortsForIPs", "outbound.exclude_ips", IPS, [],
            "REDIRECT_OUTBOUND_EXCLUDE_PORTS_FOR_IPS", ("exclude-outbound-ips",),
            "destination IPs/CIDRs (comma lists, repeatable) not redirected"),
    Setting("redirect.outbound.insertRedirectInsteadOfAppend", "outbound.insert_redirect_instead_of_append",
            BOOL, False, "REDIRECT_OUTBOUND_INSERT_REDIRECT_INSTEAD_OF_APPEND",
            ("redirect-outbound-insert-instead-of-append",),
            "insert the OUTPUT jump instead of appending it"),
    Setting("retry.maxRetries", "retry.max_retries", UINT, 4, "RETRY_MAX_RETRIES", ("max-retries",),
            "retries after a failed apply"),
    Setting("retry.sleepBetweenRetries", "retry.sleep_between_retries", DURATION, "2s",
            "RETRY_SLEEP_BETWEEN_RETRIES", ("sleep-between-retries",), "pause between retries"),
    Setting("iptablesExecutables", "iptables_executables", EXECUTABLES, {}, "IPTABLES_EXECUTABLES",
            ("iptables-executables",),
            "name:path,... for all of iptables, iptables-save, iptables-restore (+ ip6tables*)"),
    Setting("log.enabled", "log_enabled", BOOL, False, "LOG_ENABLED", ("iptables-logs",), "add LOG rules"),
    Setting("log.level", "log_level", UINT, 7, "LOG_LEVEL", (), "syslog level of the LOG rules"),
    Setting("comments.disabled", "comments_disabled", BOOL, False, "COMMENTS_DISABLED", ("disable-comments",),
            "do not tag rules with comments"),
    Setting("wait", "wait", UINT, 5, "WAIT", ("wait",),
            "seconds to wait for the xtables lock (legacy iptables only)"),
    Setting("waitInterval", "wait_interval", UINT, 0, "WAIT_INTERVAL", ("wait-interval",),
            "microseconds between xtables lock attempts (legacy iptables only)"),
    Setting("dropInvalidPackets", "drop_invalid_packets", BOOL, False, "DROP_INVALID_PACKETS",
            ("drop-invalid-packets",), "drop packets in conntrack state INVALID (mangle)"),
    Setting("storeFirewalld", "store_firewalld", BOOL, False, "STORE_FIREWALLD", ("store-firewalld",),
            "also write /etc/firewalld/direct.xml (not supported here)"),
    Setting("cniMode", "cni_mode", BOOL, False, "CNI_MODE", (),
            "running under the Kuma CNI: an empty kumaDPUser means UID 5678 without a passwd lookup"),
    Setting("dryRun", "dry_run", BOOL, False, "DRY_RUN", ("dry-run",), "print the rules, change nothing",
            option="command"),
    Setting("verbose", "verbose", BOOL, False, "VERBOSE", ("verbose",),
            "long option names and section comments", option="command"),
)  # fmt: skip

_BY_PATH: dict[str, Setting] = {s.path: s for s in SETTINGS}
_BY_FLAG: dict[str, Setting] = {flag: s for s in SETTINGS for flag in s.flags}


def env_var_name(path: str) -> str:
    """`redirect.dns.port` -> `KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_PORT`."""
    return _BY_PATH[path].env_var


def setting_for_flag(flag: str) -> Setting | None:
    """The setting a CLI flag (`--redirect-dns-port`, `redirect_dns_port`) sets, or None."""
    return _BY_FLAG.get(flag.lstrip("-").replace("_", "-"))


def flag_path(flag: str) -> str | None:
    """The config path a CLI flag (`--redirect-dns-port`, `redirect_dns_port`) sets, or None."""
    s = setting_for_flag(flag)
    return s.path if s else None


# ----------------------------------------------------------------------------------------------------
# Kuma's entry grammars, with Kuma's error texts


def _uint16(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535 or not value.isdigit():
        raise ConfigError(f"invalid uint16 value: '{value}'")
    return n


def _port_list(spec: str) -> str:
    """`1900,1902,1000-2000` -> `1900,1902,1000:2000`; `*`/empty -> `1:65535` (Kuma's messages)."""
    if spec.strip() in ("", "*"):
        return "1:65535"
    parts = []
    for item in spec.split(","):
        lo, sep, hi = item.partition("-")
        try:
            _uint16(lo)
            if sep:
                _uint16(hi)
        except ConfigError as exc:
            raise ConfigError(
                f"invalid port range: validation failed for value or range '{item}': {exc}"
            ) from None
        parts.append(f"{lo}:{hi}" if sep else lo)
    return ",".join(parts)


def parse_uid_exclusion(entry: str) -> list[UIDExclusion]:
    """`[tcp|udp|*[,..]:][ports|*:]uids` -> one rule spec per protocol; errors worded as Kuma's."""
    prefix = "parsing excluded outbound ports for uids failed: "
    parts = entry.split(":")
    if len(parts) > 3:
        raise ConfigError(
            prefix + f"invalid entry: '{entry}'. Use [protocol:][ports:]uids, e.g. 53,3000-5000:106-108"
        )
    uids = parts[-1]
    ports = parts[-2] if len(parts) >= 2 else ""
    protos = parts[-3] if len(parts) == 3 else ""
    if uids.strip() == "*":
        raise ConfigError(prefix + "wildcard '*' is not allowed for UIDs")
    lo, sep, hi = uids.partition("-")
    if "," in uids or not lo.isdigit() or (sep and not hi.isdigit()):
        raise ConfigError(
            prefix + f"invalid UID entry: '{uids}'. It should either be a single item or a range"
        )
    uid_spec = f"{lo}:{hi}" if sep else lo
    try:
        port_spec = _port_list(ports)
    except ConfigError as exc:
        raise ConfigError(prefix + str(exc)) from None
    if protos.strip() in ("", "*"):
        proto_list = ["tcp", "udp"]
    else:
        proto_list = []
        for p in protos.split(","):
            p = p.strip().lower()
            if p not in ("tcp", "udp"):
                raise ConfigError(prefix + f"invalid or unsupported protocol: '{p}'")
            proto_list.append(p)
    return [UIDExclusion(protocol=p, ports=port_spec, uids=uid_spec) for p in proto_list]


def parse_vnet(entry: str) -> VNet:
    iface, sep, cidr = str(entry).partition(":")
    if not sep or not iface or not cidr:
        raise ConfigError(
            f"invalid --vnet value '{entry}': expected <interface>:<CIDR>, e.g. docker0:172.17.0.0/16"
        )
    try:
        ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ConfigError(
            f"invalid --vnet value '{entry}': '{cidr}' is not a CIDR, expected e.g. docker0:172.17.0.0/16"
        ) from None
    return VNet(interface=iface, cidr=cidr)


__all__ = [
    "ENV_PREFIX",
    "SETTINGS",
    "ConfigError",
    "Kind",
    "Setting",
    "UIDExclusion",
    "VNet",
    "env_var_name",
    "flag_path",
    "parse_uid_exclusion",
    "parse_vnet",
    "setting_for_flag",
]
