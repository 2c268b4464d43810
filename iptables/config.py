"""Transparent-proxy configuration: the validated config, and its sources merged in Kuma's precedence.

One loader serves `kuma-dp transparent-proxy install`, `kuma-init` and `kuma-dp run` (its
`--transparent-proxy-config`), so the three never disagree about what a config file means. The settings
themselves (keys, variables, flags, kinds, defaults) are declared once, in `iptables.settings.SETTINGS`;
everything here walks that table. Sources are merged as plain camelCase dicts first (defaults < `--config`
files in order < `KUMA_TRANSPARENT_PROXY_*` env < CLI flags; maps merge key by key, lists and scalars
replace, as in Kuma's `pkg/transparentproxy/config/config.go`) and only then validated into frozen
dataclasses, so a file's structural error names the file and a bad value names its config key.
"""

from __future__ import annotations

import copy
import operator
import pwd
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from iptables.settings import (
    ENV_PREFIX,
    SETTINGS,
    ConfigError,
    UIDExclusion,
    VNet,
    env_var_name,
    flag_path,
    parse_uid_exclusion,
    parse_vnet,
    setting_for_flag,
)

DEFAULT_UID = 5678
DEFAULT_USERNAME = "kuma-dp"


# ----------------------------------------------------------------------------------------------------
# The validated config. Build one with `load_config()`: the defaults live in `SETTINGS`, not here.


@dataclass(frozen=True)
class TrafficFlow:
    enabled: bool
    port: int
    include_ports: tuple[int, ...]
    exclude_ports: tuple[int, ...]
    #: flattened (comma lists split), validated IPs/CIDRs, in order
    exclude_ips: tuple[str, ...]
    #: the `excludePortsForUIDs` entries as given (validated), for display and round-trips
    exclude_uids_raw: tuple[str, ...]
    insert_redirect_instead_of_append: bool

    @property
    def exclude_uids(self) -> tuple[UIDExclusion, ...]:
        """One rule spec per entry and protocol (`tcp:53:106` -> tcp; `53:106` -> tcp and udp)."""
        return tuple(rule for entry in self.exclude_uids_raw for rule in parse_uid_exclusion(entry))


@dataclass(frozen=True)
class DNSConfig:
    enabled: bool
    port: int
    capture_all: bool
    skip_conntrack_zone_split: bool
    resolv_config_path: str


@dataclass(frozen=True)
class RetryConfig:
    max_retries: int
    sleep_between_retries: float  # seconds


@dataclass(frozen=True)
class EbpfConfig:
    """Accepted so Kuma configs load; `enabled: true` is refused (this installer only does iptables)."""

    enabled: bool
    instance_ip: str
    instance_ip_env_var_name: str
    bpffs_path: str
    cgroup_path: str
    programs_source_path: str
    tc_attach_iface: str


@dataclass(frozen=True)
class TransparentProxyConfig:
    kuma_dp_user: str
    ip_family_mode: str
    inbound: TrafficFlow
    outbound: TrafficFlow
    dns: DNSConfig
    vnets: tuple[VNet, ...]
    ebpf: EbpfConfig
    retry: RetryConfig
    #: name -> path, only the keys the user gave (all three per family are required when any is given)
    iptables_executables: Mapping[str, str]
    log_enabled: bool
    log_level: int
    comments_disabled: bool
    wait: int  # seconds, legacy xtables lock only
    wait_interval: int  # microseconds
    drop_invalid_packets: bool
    store_firewalld: bool
    cni_mode: bool
    dry_run: bool
    verbose: bool

    @property
    def ipv6_wanted(self) -> bool:
        return self.ip_family_mode != "ipv4"

    def dataplane_config(
        self, *, dns_enabled: bool | None = None, dns_port: int | None = None
    ) -> dict[str, Any]:
        """The bootstrap request's `dataplaneConfig`, keys in the order Kuma emits them.

        Kuma's `DataplaneConfig` in `pkg/transparentproxy/config/dataplane/config_dataplane.go`; `kuma-dp run`
        overrides the DNS part with its own DNS settings, hence the two keyword overrides.
        """
        vnet: dict[str, Any] = {}
        if self.vnets:
            vnet["networks"] = [v.spec for v in self.vnets]
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
        tree: dict[str, Any] = {}
        for s in SETTINGS:
            _set_path(tree, s.path, s.kind.dump(operator.attrgetter(s.attr)(self)))
        return tree


# ----------------------------------------------------------------------------------------------------
# Loading


#: config files match keys case-insensitively, as Go's encoding/json does for Kuma
_BY_LOWER_PATH = {s.path.lower(): s for s in SETTINGS}


def _defaults() -> dict[str, Any]:
    """The camelCase tree of every setting's default: the bottom layer of the merge."""
    tree: dict[str, Any] = {}
    for s in SETTINGS:
        _set_path(tree, s.path, copy.deepcopy(s.default))
    return tree


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


def _keys_under(prefix: str) -> str:
    """The keys a config file may use at `prefix` (`redirect.dns.` -> `captureAll, enabled, ...`)."""
    paths = [s.path for s in SETTINGS if s.path.lower().startswith(prefix.lower())]
    return ", ".join(dict.fromkeys(p[len(prefix) :].split(".")[0] for p in paths))


def _merge(base: dict[str, Any], over: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Maps merge key by key; scalars and lists replace (Kuma: lists are never concatenated)."""
    for key, value in over.items():
        path = f"{prefix}{key}"
        setting = _BY_LOWER_PATH.get(path.lower())
        if setting is not None:
            _set_path(base, setting.path, value)
            continue
        if not any(s.path.lower().startswith(path.lower() + ".") for s in SETTINGS):
            where = f"under {prefix[:-1]}" if prefix else "at the top level"
            raise ConfigError(
                f"{source}: unknown config key '{path}' (the keys {where} are: {_keys_under(prefix)})"
            )
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
    """Merge defaults < `files` (YAML/JSON, `-` = stdin) < `KUMA_TRANSPARENT_PROXY_*` in `env` < flags.

    `flags` maps CLI flag names (`redirect-dns-port`, `--vnet`, `exclude_inbound_ips`) or config paths
    (`redirect.dns.port`) to values; None or an empty tuple means "not given". Values may be typed or the raw
    strings a command line carries (`"4444,55555"`, `"true"`).
    """
    given = {k: v for k, v in (flags or {}).items() if v is not None and v != () and v != []}
    flag_set = {flag_path(k) or k for k, v in given.items() if v is not False}
    # Kuma checks this on the CLI flags only, before any config source loads.
    if "redirect.dns.enabled" in flag_set and "redirect.dns.captureAll" in flag_set:
        raise ConfigError("only one of '--redirect-dns' or '--redirect-all-dns-traffic' should be specified")

    tree = _defaults()
    for name in files:
        if not name or not name.strip():
            continue
        source, text = _read_source(name, stdin)
        import yaml  # only when a config file is given: the init container's start-up does without it

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML or JSON: {exc}") from exc
        if data is None:
            continue
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
        _merge(tree, data, source)

    for s in SETTINGS:
        raw = (env or {}).get(s.env_var)
        if raw:
            _set_path(tree, s.path, s.kind.from_env(raw))

    for key, value in given.items():
        setting = setting_for_flag(key) or _BY_LOWER_PATH.get(key.lower())
        if setting is None:
            raise ConfigError(f"unknown transparent-proxy flag '{key}'")
        _set_path(tree, setting.path, list(value) if isinstance(value, tuple) else value)

    return _build(tree)


def _build(tree: Mapping[str, Any]) -> TransparentProxyConfig:
    """Validate the merged tree into the dataclasses, each value by its kind, in `SETTINGS` order."""
    values = {s.attr: s.kind.parse(s, _get_path(tree, s.path)) for s in SETTINGS}
    # Capturing all DNS traffic turns DNS redirection on, as Kuma's
    # `app/kumactl/cmd/install/install_transparent_proxy.go` does after its flag check.
    values["dns.enabled"] = values["dns.enabled"] or values["dns.capture_all"]

    def group(name: str) -> dict[str, Any]:
        return {attr.partition(".")[2]: v for attr, v in values.items() if attr.startswith(name + ".")}

    return TransparentProxyConfig(
        **{attr: v for attr, v in values.items() if "." not in attr},
        inbound=TrafficFlow(**group("inbound")),
        outbound=TrafficFlow(**group("outbound")),
        dns=DNSConfig(**group("dns")),
        ebpf=EbpfConfig(**group("ebpf")),
        retry=RetryConfig(**group("retry")),
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
    "ENV_PREFIX",
    "SETTINGS",
    "ConfigError",
    "DNSConfig",
    "EbpfConfig",
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
    "setting_for_flag",
]
