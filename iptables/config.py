"""Transparent-proxy configuration: Kuma v2.14's installer schema, sources and precedence (KUMA-DP.md §13.4).

One loader serves `kuma-dp transparent-proxy install`, `kuma-init` and
`kuma-dp run --transparent-proxy-config`, so the three never disagree about what a config file means.
Sources are merged as plain camelCase dicts first (defaults < `--config` files in order <
`KUMA_TRANSPARENT_PROXY_*` env < CLI flags; maps merge key by key, lists and scalars replace) and only then
validated into frozen dataclasses: an error names the source it came from.
"""

from __future__ import annotations

import ipaddress
import pwd
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

DEFAULT_UID = 5678
DEFAULT_USERNAME = "kuma-dp"
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


# ----------------------------------------------------------------------------------------------------
# Parsed value types


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


@dataclass(frozen=True)
class TrafficFlow:
    enabled: bool = True
    port: int = 15006
    include_ports: tuple[int, ...] = ()
    exclude_ports: tuple[int, ...] = ()
    #: flattened (comma lists split), validated IPs/CIDRs, in order
    exclude_ips: tuple[str, ...] = ()
    exclude_uids: tuple[UIDExclusion, ...] = ()
    #: the raw `excludePortsForUIDs` entries, for display and round-trips
    exclude_uids_raw: tuple[str, ...] = ()
    insert_redirect_instead_of_append: bool = False


@dataclass(frozen=True)
class DNSConfig:
    enabled: bool = False
    port: int = 15053
    capture_all: bool = False
    skip_conntrack_zone_split: bool = False
    resolv_config_path: str = "/etc/resolv.conf"


@dataclass(frozen=True)
class RetryConfig:
    max_retries: int = 4
    sleep_between_retries: float = 2.0  # seconds


@dataclass(frozen=True)
class EbpfConfig:
    enabled: bool = False
    instance_ip: str = ""
    instance_ip_env_var_name: str = ""
    bpffs_path: str = "/run/kuma/bpf"
    cgroup_path: str = "/sys/fs/cgroup"
    programs_source_path: str = "/tmp/kuma-ebpf"
    tc_attach_iface: str = ""


@dataclass(frozen=True)
class TransparentProxyConfig:
    kuma_dp_user: str = ""
    ip_family_mode: str = "dualstack"
    inbound: TrafficFlow = field(default_factory=lambda: TrafficFlow(port=15006))
    outbound: TrafficFlow = field(default_factory=lambda: TrafficFlow(port=15001))
    dns: DNSConfig = field(default_factory=DNSConfig)
    vnets: tuple[VNet, ...] = ()
    ebpf: EbpfConfig = field(default_factory=EbpfConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    #: name -> path, only the keys the user gave (all three per family are required when any is given)
    iptables_executables: Mapping[str, str] = field(default_factory=dict)
    log_enabled: bool = False
    log_level: int = 7
    comments_disabled: bool = False
    wait: int = 5  # seconds, legacy xtables lock only
    wait_interval: int = 0  # microseconds
    drop_invalid_packets: bool = False
    store_firewalld: bool = False
    cni_mode: bool = False
    dry_run: bool = False
    verbose: bool = False

    @property
    def ipv6_wanted(self) -> bool:
        return self.ip_family_mode != "ipv4"

    def dataplane_config(
        self, *, dns_enabled: bool | None = None, dns_port: int | None = None
    ) -> dict[str, Any]:
        """The bootstrap request's `dataplaneConfig` (KUMA-DP.md §3.4), key order as Kuma emits it.

        `kuma-dp run` overrides the DNS part with its own DNS settings, hence the two keyword overrides.
        """
        vnet: dict[str, Any] = {}
        if self.vnets:
            vnet["networks"] = [f"{v.interface}:{v.cidr}" for v in self.vnets]
        return {
            "ipFamilyMode": self.ip_family_mode,
            "redirect": {
                "inbound": {"enabled": self.inbound.enabled, "port": self.inbound.port},
                "outbound": {"enabled": self.outbound.enabled, "port": self.outbound.port},
                "dns": {
                    "enabled": self.dns.enabled if dns_enabled is None else dns_enabled,
                    "port": self.dns.port if dns_port is None else dns_port,
                },
                "vnet": vnet,
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """The effective config in Kuma's camelCase schema (what `--config` would need to reproduce it)."""

        def flow(f: TrafficFlow) -> dict[str, Any]:
            return {
                "enabled": f.enabled,
                "port": f.port,
                "includePorts": list(f.include_ports),
                "excludePorts": list(f.exclude_ports),
                "excludePortsForIPs": list(f.exclude_ips),
                "excludePortsForUIDs": list(f.exclude_uids_raw),
                "insertRedirectInsteadOfAppend": f.insert_redirect_instead_of_append,
            }

        return {
            "kumaDPUser": self.kuma_dp_user,
            "ipFamilyMode": self.ip_family_mode,
            "redirect": {
                "inbound": flow(self.inbound),
                "outbound": flow(self.outbound),
                "dns": {
                    "enabled": self.dns.enabled,
                    "port": self.dns.port,
                    "captureAll": self.dns.capture_all,
                    "skipConntrackZoneSplit": self.dns.skip_conntrack_zone_split,
                    "resolvConfigPath": self.dns.resolv_config_path,
                },
                "vnet": {"networks": [f"{v.interface}:{v.cidr}" for v in self.vnets]},
            },
            "retry": {
                "maxRetries": self.retry.max_retries,
                "sleepBetweenRetries": f"{self.retry.sleep_between_retries:g}s",
            },
            "iptablesExecutables": dict(self.iptables_executables),
            "log": {"enabled": self.log_enabled, "level": self.log_level},
            "comments": {"disabled": self.comments_disabled},
            "wait": self.wait,
            "waitInterval": self.wait_interval,
            "dropInvalidPackets": self.drop_invalid_packets,
            "storeFirewalld": self.store_firewalld,
            "cniMode": self.cni_mode,
            "dryRun": self.dry_run,
            "verbose": self.verbose,
        }


# ----------------------------------------------------------------------------------------------------
# Schema: config path -> (kind, env var suffix, CLI flag names)

_FIELDS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "kumaDPUser": ("str", "KUMA_DP_USER", ("kuma-dp-user", "kuma-dp-uid")),
    "ipFamilyMode": ("family", "IP_FAMILY_MODE", ("ip-family-mode",)),
    "redirect.inbound.enabled": ("bool", "REDIRECT_INBOUND_ENABLED", ("redirect-inbound",)),
    "redirect.inbound.port": ("port", "REDIRECT_INBOUND_PORT", ("redirect-inbound-port",)),
    "redirect.inbound.includePorts": ("ports", "REDIRECT_INBOUND_INCLUDE_PORTS", ()),
    "redirect.inbound.excludePorts": ("ports", "REDIRECT_INBOUND_EXCLUDE_PORTS", ("exclude-inbound-ports",)),
    "redirect.inbound.excludePortsForIPs": (
        "strs",
        "REDIRECT_INBOUND_EXCLUDE_PORTS_FOR_IPS",
        ("exclude-inbound-ips",),
    ),
    "redirect.inbound.excludePortsForUIDs": ("uids", "REDIRECT_INBOUND_EXCLUDE_PORTS_FOR_UIDS", ()),
    "redirect.inbound.insertRedirectInsteadOfAppend": (
        "bool",
        "REDIRECT_INBOUND_INSERT_REDIRECT_INSTEAD_OF_APPEND",
        ("redirect-inbound-insert-instead-of-append",),
    ),
    "redirect.outbound.enabled": ("bool", "REDIRECT_OUTBOUND_ENABLED", ()),
    "redirect.outbound.port": ("port", "REDIRECT_OUTBOUND_PORT", ("redirect-outbound-port",)),
    "redirect.outbound.includePorts": ("ports", "REDIRECT_OUTBOUND_INCLUDE_PORTS", ()),
    "redirect.outbound.excludePorts": (
        "ports",
        "REDIRECT_OUTBOUND_EXCLUDE_PORTS",
        ("exclude-outbound-ports",),
    ),
    "redirect.outbound.excludePortsForIPs": (
        "strs",
        "REDIRECT_OUTBOUND_EXCLUDE_PORTS_FOR_IPS",
        ("exclude-outbound-ips",),
    ),
    "redirect.outbound.excludePortsForUIDs": (
        "uids",
        "REDIRECT_OUTBOUND_EXCLUDE_PORTS_FOR_UIDS",
        ("exclude-outbound-ports-for-uids",),
    ),
    "redirect.outbound.insertRedirectInsteadOfAppend": (
        "bool",
        "REDIRECT_OUTBOUND_INSERT_REDIRECT_INSTEAD_OF_APPEND",
        ("redirect-outbound-insert-instead-of-append",),
    ),
    "redirect.dns.enabled": ("bool", "REDIRECT_DNS_ENABLED", ("redirect-dns",)),
    "redirect.dns.port": ("port", "REDIRECT_DNS_PORT", ("redirect-dns-port",)),
    "redirect.dns.captureAll": ("bool", "REDIRECT_DNS_CAPTURE_ALL", ("redirect-all-dns-traffic",)),
    "redirect.dns.skipConntrackZoneSplit": (
        "bool",
        "REDIRECT_DNS_SKIP_CONNTRACK_ZONE_SPLIT",
        ("skip-dns-conntrack-zone-split",),
    ),
    "redirect.dns.resolvConfigPath": ("str", "REDIRECT_DNS_RESOLV_CONFIG_PATH", ()),
    "redirect.vnet.networks": ("strs", "REDIRECT_VNET_NETWORKS", ("vnet",)),
    "ebpf.enabled": ("bool", "EBPF_ENABLED", ("ebpf-enabled",)),
    "ebpf.instanceIP": ("str", "EBPF_INSTANCE_IP", ("ebpf-instance-ip",)),
    "ebpf.instanceIPEnvVarName": ("str", "EBPF_INSTANCE_IP_ENV_VAR_NAME", ()),
    "ebpf.bpffsPath": ("str", "EBPF_BPFFS_PATH", ("ebpf-bpffs-path",)),
    "ebpf.cgroupPath": ("str", "EBPF_CGROUP_PATH", ("ebpf-cgroup-path",)),
    "ebpf.programsSourcePath": ("str", "EBPF_PROGRAMS_SOURCE_PATH", ("ebpf-programs-source-path",)),
    "ebpf.tcAttachIface": ("str", "EBPF_TC_ATTACH_IFACE", ("ebpf-tc-attach-iface",)),
    "retry.maxRetries": ("uint", "RETRY_MAX_RETRIES", ("max-retries",)),
    "retry.sleepBetweenRetries": ("duration", "RETRY_SLEEP_BETWEEN_RETRIES", ("sleep-between-retries",)),
    "iptablesExecutables": ("executables", "IPTABLES_EXECUTABLES", ("iptables-executables",)),
    "log.enabled": ("bool", "LOG_ENABLED", ("iptables-logs",)),
    "log.level": ("uint", "LOG_LEVEL", ()),
    "comments.disabled": ("bool", "COMMENTS_DISABLED", ("disable-comments",)),
    "wait": ("uint", "WAIT", ("wait",)),
    "waitInterval": ("uint", "WAIT_INTERVAL", ("wait-interval",)),
    "dropInvalidPackets": ("bool", "DROP_INVALID_PACKETS", ("drop-invalid-packets",)),
    "storeFirewalld": ("bool", "STORE_FIREWALLD", ("store-firewalld",)),
    "cniMode": ("bool", "CNI_MODE", ()),
    "dryRun": ("bool", "DRY_RUN", ("dry-run",)),
    "verbose": ("bool", "VERBOSE", ("verbose",)),
}

_FLAG_TO_PATH: dict[str, str] = {flag: path for path, (_, _, flags) in _FIELDS.items() for flag in flags}
_LOWER_PATHS: dict[str, str] = {p.lower(): p for p in _FIELDS}


def env_var_name(path: str) -> str:
    """`redirect.dns.port` -> `KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_PORT`."""
    return ENV_PREFIX + (_FIELDS[path][1] or "")


def flag_path(flag: str) -> str | None:
    """The config path a CLI flag (`--redirect-dns-port`, `redirect_dns_port`) sets, or None."""
    name = flag.lstrip("-").replace("_", "-")
    return _FLAG_TO_PATH.get(name)


# ----------------------------------------------------------------------------------------------------
# Loading


def _defaults() -> dict[str, Any]:
    return {
        "kumaDPUser": "",
        "ipFamilyMode": "dualstack",
        "redirect": {
            "inbound": {
                "enabled": True,
                "port": 15006,
                "includePorts": [],
                "excludePorts": [],
                "excludePortsForIPs": [],
                "excludePortsForUIDs": [],
                "insertRedirectInsteadOfAppend": False,
            },
            "outbound": {
                "enabled": True,
                "port": 15001,
                "includePorts": [],
                "excludePorts": [],
                "excludePortsForIPs": [],
                "excludePortsForUIDs": [],
                "insertRedirectInsteadOfAppend": False,
            },
            "dns": {
                "enabled": False,
                "port": 15053,
                "captureAll": False,
                "skipConntrackZoneSplit": False,
                "resolvConfigPath": "/etc/resolv.conf",
            },
            "vnet": {"networks": []},
        },
        "ebpf": {
            "enabled": False,
            "instanceIP": "",
            "instanceIPEnvVarName": "",
            "bpffsPath": "/run/kuma/bpf",
            "cgroupPath": "/sys/fs/cgroup",
            "programsSourcePath": "/tmp/kuma-ebpf",
            "tcAttachIface": "",
        },
        "retry": {"maxRetries": 4, "sleepBetweenRetries": "2s"},
        "iptablesExecutables": {},
        "log": {"enabled": False, "level": 7},
        "comments": {"disabled": False},
        "wait": 5,
        "waitInterval": 0,
        "dropInvalidPackets": False,
        "storeFirewalld": False,
        "cniMode": False,
        "dryRun": False,
        "verbose": False,
    }


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _get_path(tree: Mapping[str, Any], path: str) -> Any:
    node: Any = tree
    for p in path.split("."):
        node = node[p]
    return node


def _merge(base: dict[str, Any], over: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Maps merge key by key; scalars and lists replace (Kuma: lists are never concatenated)."""
    for key, value in over.items():
        key = str(key)
        path = f"{prefix}{key}"
        canonical = _LOWER_PATHS.get(path.lower())
        if canonical is None and not any(p.lower().startswith(path.lower() + ".") for p in _FIELDS):
            raise ConfigError(f"{source}: unknown config key '{path}' (see KUMA-DP.md §13.4 for the schema)")
        if canonical is not None:
            _set_path(base, canonical, value)
            continue
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{path}' must be a mapping, got {type(value).__name__}")
        _merge(base, value, source, path + ".")


def _read_source(name: str, stdin: TextIO | None) -> tuple[str, str]:
    if name == "-":
        stream = stdin if stdin is not None else sys.stdin
        return "config from stdin", stream.read()
    try:
        return f"config file {name}", Path(name).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {name}: {exc.strerror or exc}") from exc


def load_config(
    files: Iterable[str] = (),
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    stdin: TextIO | None = None,
) -> TransparentProxyConfig:
    """Merge defaults < `files` (YAML/JSON, `-` = stdin) < `KUMA_TRANSPARENT_PROXY_*` < flags.

    `flags` maps CLI flag names (`redirect-dns-port`, `--vnet`, `exclude_inbound_ips`) or config paths
    (`redirect.dns.port`) to values; None or an empty tuple means "not given". Values may be typed or the raw
    strings a command line carries (`"4444,55555"`, `"true"`).
    """
    flags = dict(flags or {})
    env = env or {}
    given = {k: v for k, v in flags.items() if v is not None and v != () and v != []}
    flag_set = {flag_path(k) or k for k, v in given.items() if v is not False}
    # Kuma checks this on the CLI flags only, before any config source loads.
    if "redirect.dns.enabled" in flag_set and "redirect.dns.captureAll" in flag_set:
        raise ConfigError("only one of '--redirect-dns' or '--redirect-all-dns-traffic' should be specified")

    tree = _defaults()
    for name in files:
        if not name or not name.strip():
            continue
        source, text = _read_source(name, stdin)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML or JSON: {exc}") from exc
        if data is None:
            continue
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
        _merge(tree, data, source)

    for path, (kind, suffix, _) in _FIELDS.items():
        var = ENV_PREFIX + (suffix or "")
        if var in env and env[var] != "":
            _set_path(tree, path, _from_env(kind, env[var]))

    for key, value in given.items():
        path = flag_path(key) or _LOWER_PATHS.get(key.lower())
        if path is None:
            raise ConfigError(f"unknown transparent-proxy flag '{key}'")
        if path == "redirect.dns.captureAll" and _truthy(value):
            _set_path(tree, "redirect.dns.enabled", True)
        if isinstance(value, tuple):
            value = list(value)
        _set_path(tree, path, value)

    return _build(tree)


def _from_env(kind: str, raw: str) -> Any:
    if kind == "uids":
        return [s for s in raw.split(";") if s.strip()]
    if kind in ("ports", "strs"):
        # IP lists are flattened later anyway; vnets and ports never contain commas.
        return [s.strip() for s in raw.split(",") if s.strip()]
    return raw


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "t", "true")


# ----------------------------------------------------------------------------------------------------
# Validation into dataclasses


def _bool(path: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip()
    if s in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if s in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ConfigError(f"invalid value for {path}: '{v}' is not a boolean (use true or false)")


def _uint(path: str, v: Any) -> int:
    if isinstance(v, bool):
        raise ConfigError(f"invalid value for {path}: '{v}' is not a non-negative integer")
    try:
        n = int(str(v).strip())
    except ValueError:
        raise ConfigError(f"invalid value for {path}: '{v}' is not a non-negative integer") from None
    if n < 0:
        raise ConfigError(f"invalid value for {path}: '{v}' is not a non-negative integer")
    return n


def _port(path: str, v: Any) -> int:
    try:
        n = int(str(v).strip())
    except ValueError:
        raise ConfigError(f"invalid value for {path}: '{v}' is not a port (1-65535)") from None
    if not 0 < n <= 65535:
        raise ConfigError(f"invalid value for {path}: port '{v}' must be between 1 and 65535")
    return n


def _as_list(path: str, v: Any) -> list[Any]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if isinstance(v, int):
        return [v]
    if isinstance(v, list | tuple):
        return list(v)
    raise ConfigError(f"invalid value for {path}: expected a list, got {type(v).__name__}")


def _ports(path: str, v: Any) -> tuple[int, ...]:
    out: list[int] = []
    for item in _as_list(path, v):
        for part in str(item).split(","):
            if part.strip():
                out.append(_port(path, part))
    return tuple(out)


def _ips(path: str, v: Any, what: str) -> tuple[str, ...]:
    out: list[str] = []
    for item in _as_list(path, v):
        for part in str(item).split(","):
            s = part.strip()
            if not s:
                continue
            try:
                if "/" in s:
                    ipaddress.ip_network(s, strict=False)
                else:
                    ipaddress.ip_address(s)
            except ValueError:
                raise ConfigError(
                    f"parsing excluded {what} ports for IPs failed: invalid IP or CIDR: '{s}' ({path})"
                ) from None
            out.append(s)
    return tuple(out)


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(path: str, v: Any) -> float:
    """Go's time.ParseDuration subset (`2s`, `500ms`, `1m30s`); a bare number is seconds."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    s = str(v).strip()
    if s in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ConfigError(f"invalid value for {path}: '{v}' is not a duration (e.g. 2s, 500ms)")
    return total


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


def _executables(v: Any) -> dict[str, str]:
    if v in (None, "", {}):
        return {}
    items: list[tuple[str, str]] = []
    if isinstance(v, Mapping):
        items = [(str(k), str(p)) for k, p in v.items() if p]
    else:
        for part in ",".join(str(x) for x in _as_list("iptablesExecutables", v)).split(","):
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


def _flow(tree: Mapping[str, Any], which: str) -> TrafficFlow:
    base = f"redirect.{which}"

    def g(key: str) -> Any:
        return _get_path(tree, f"{base}.{key}")

    raw_uids = tuple(str(x) for x in _as_list(f"{base}.excludePortsForUIDs", g("excludePortsForUIDs")))
    uids: list[UIDExclusion] = []
    for entry in raw_uids:
        uids.extend(parse_uid_exclusion(entry))
    return TrafficFlow(
        enabled=_bool(f"{base}.enabled", g("enabled")),
        port=_port(f"{base}.port", g("port")),
        include_ports=_ports(f"{base}.includePorts", g("includePorts")),
        exclude_ports=_ports(f"{base}.excludePorts", g("excludePorts")),
        exclude_ips=_ips(f"{base}.excludePortsForIPs", g("excludePortsForIPs"), which),
        exclude_uids=tuple(uids),
        exclude_uids_raw=raw_uids,
        insert_redirect_instead_of_append=_bool(
            f"{base}.insertRedirectInsteadOfAppend", g("insertRedirectInsteadOfAppend")
        ),
    )


def _build(tree: Mapping[str, Any]) -> TransparentProxyConfig:
    family = str(_get_path(tree, "ipFamilyMode")).strip().lower()
    if family not in IP_FAMILY_MODES:
        raise ConfigError(
            f"invalid value for ipFamilyMode (--ip-family-mode): '{family}' "
            f"(allowed: {', '.join(IP_FAMILY_MODES)})"
        )
    dns_tree = _get_path(tree, "redirect.dns")
    capture_all = _bool("redirect.dns.captureAll", dns_tree["captureAll"])
    dns = DNSConfig(
        enabled=_bool("redirect.dns.enabled", dns_tree["enabled"]) or capture_all,
        port=_port("redirect.dns.port", dns_tree["port"]),
        capture_all=capture_all,
        skip_conntrack_zone_split=_bool(
            "redirect.dns.skipConntrackZoneSplit", dns_tree["skipConntrackZoneSplit"]
        ),
        resolv_config_path=str(dns_tree["resolvConfigPath"] or "/etc/resolv.conf"),
    )
    vnets = tuple(
        parse_vnet(str(x))
        for x in _as_list("redirect.vnet.networks", _get_path(tree, "redirect.vnet.networks"))
    )
    e = _get_path(tree, "ebpf")
    ebpf = EbpfConfig(
        enabled=_bool("ebpf.enabled", e["enabled"]),
        instance_ip=str(e["instanceIP"] or ""),
        instance_ip_env_var_name=str(e["instanceIPEnvVarName"] or ""),
        bpffs_path=str(e["bpffsPath"]),
        cgroup_path=str(e["cgroupPath"]),
        programs_source_path=str(e["programsSourcePath"]),
        tc_attach_iface=str(e["tcAttachIface"] or ""),
    )
    if ebpf.enabled:
        raise ConfigError(
            "--ebpf-enabled: the eBPF mode is not supported by this implementation; use iptables"
        )
    user = _get_path(tree, "kumaDPUser")
    return TransparentProxyConfig(
        kuma_dp_user="" if user is None else str(user).strip(),
        ip_family_mode=family,
        inbound=_flow(tree, "inbound"),
        outbound=_flow(tree, "outbound"),
        dns=dns,
        vnets=vnets,
        ebpf=ebpf,
        retry=RetryConfig(
            max_retries=_uint("retry.maxRetries", _get_path(tree, "retry.maxRetries")),
            sleep_between_retries=parse_duration(
                "retry.sleepBetweenRetries", _get_path(tree, "retry.sleepBetweenRetries")
            ),
        ),
        iptables_executables=_executables(_get_path(tree, "iptablesExecutables")),
        log_enabled=_bool("log.enabled", _get_path(tree, "log.enabled")),
        log_level=_uint("log.level", _get_path(tree, "log.level")),
        comments_disabled=_bool("comments.disabled", _get_path(tree, "comments.disabled")),
        wait=_uint("wait", _get_path(tree, "wait")),
        wait_interval=_uint("waitInterval", _get_path(tree, "waitInterval")),
        drop_invalid_packets=_bool("dropInvalidPackets", _get_path(tree, "dropInvalidPackets")),
        store_firewalld=_bool("storeFirewalld", _get_path(tree, "storeFirewalld")),
        cni_mode=_bool("cniMode", _get_path(tree, "cniMode")),
        dry_run=_bool("dryRun", _get_path(tree, "dryRun")),
        verbose=_bool("verbose", _get_path(tree, "verbose")),
    )


# ----------------------------------------------------------------------------------------------------
# kuma-dp user


def resolve_kuma_dp_uid(
    user: str,
    *,
    cni_mode: bool = False,
    getpwnam: Callable[[str], Any] = pwd.getpwnam,
    getpwuid: Callable[[int], Any] = pwd.getpwuid,
) -> int:
    """Kuma's rule: the given name or UID; else UID 5678 if it exists, else user `kuma-dp`; else Kuma's error.

    A numeric UID is taken as is even without a passwd entry: the owner match works on numbers, and containers
    often run the proxy under a UID that has no name.
    """
    if cni_mode and not user:
        return DEFAULT_UID
    if user:
        if user.isdigit():
            return int(user)
        try:
            return int(getpwnam(user).pw_uid)
        except KeyError:
            raise ConfigError(
                f"user '{user}' not found: give an existing user name or a numeric UID with --kuma-dp-user"
            ) from None
    try:
        getpwuid(DEFAULT_UID)
        return DEFAULT_UID
    except KeyError:
        pass
    try:
        return int(getpwnam(DEFAULT_USERNAME).pw_uid)
    except KeyError:
        raise ConfigError(
            "no UID or username provided, and user with the default UID ('5678') or username "
            "('kuma-dp') could not be found"
        ) from None


__all__ = [
    "ConfigError",
    "DNSConfig",
    "RetryConfig",
    "TrafficFlow",
    "TransparentProxyConfig",
    "UIDExclusion",
    "VNet",
    "env_var_name",
    "flag_path",
    "load_config",
    "parse_uid_exclusion",
    "parse_vnet",
    "resolve_kuma_dp_uid",
]
