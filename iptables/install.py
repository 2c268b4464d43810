"""Install / uninstall as library calls: the CLI, `kuma-init` and bench/tproxy all go through here.

Errors surface as `ConfigError` / `BackendError` with operator-facing text; warnings are returned, not
printed, so callers decide where they go (stderr for the CLI, a log line for an agent).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from iptables import backend, builder, state
from iptables.backend import BackendError
from iptables.config import ConfigError, TransparentProxyConfig, resolve_kuma_dp_uid

DRY_RUN_NO_EXECUTABLES = (
    "[dry-run]: no valid iptables executables found; the generated iptables rules may differ from those "
    "generated in an environment with valid iptables executables"
)


@dataclass
class Prepared:
    cfg: TransparentProxyConfig
    uid: int
    facts: builder.HostFacts
    detected: backend.Detected | None
    rulesets: list[builder.Ruleset]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class InstallResult:
    backend: str
    families: tuple[int, ...]
    uid: int
    attempts: int
    dns_conntrack_flushed: int
    seconds: float
    warnings: tuple[str, ...]


def prepare(
    cfg: TransparentProxyConfig, env: Mapping[str, str], *, dry_run: bool = False, native: bool = False
) -> Prepared:
    """Gather host facts (netlink, iptables probes), build each family's ruleset; changes nothing but ::6.

    `env` is the environment the iptables binaries are found in (PATH) and run with (XTABLES_LOCKFILE, ...).
    """
    from iptables import netlink

    uid = resolve_kuma_dp_uid(cfg.kuma_dp_user, cni_mode=cfg.cni_mode)
    warnings: list[str] = []
    if cfg.store_firewalld:
        warnings.append("--store-firewalld is not supported here; rules will not persist across reboots")
    if dry_run and os.geteuid() != 0:
        warnings.append(
            "[dry-run]: running this command as a non-root user may lead to unpredictable results"
        )
    if not dry_run and os.geteuid() != 0:
        raise BackendError(
            "installing the transparent proxy needs root (CAP_NET_ADMIN): run as root, or use --dry-run"
        )
    try:
        links = netlink.link_facts()
    except Exception:  # dry-run without netlink access
        links = netlink.LinkFacts("lo", 1, False)
    detected: backend.Detected | None = None
    try:
        if not native:
            detected = backend.detect(cfg, want_v6=cfg.ipv6_wanted and links.has_ipv6, env=env)
    except BackendError:
        if not dry_run:
            raise
        warnings.append(DRY_RUN_NO_EXECUTABLES)
    ipv6 = False
    if cfg.ipv6_wanted and links.has_ipv6 and (detected is None or detected.v6 is not None):
        ipv6 = True if dry_run else netlink.ensure_ipv6_passthrough(links.loopback_index)
    nameservers: tuple[str, ...] = ()
    if cfg.dns.enabled and not cfg.dns.capture_all:
        try:
            nameservers = builder.parse_resolv_conf(Path(cfg.dns.resolv_config_path).read_text())
        except OSError as exc:
            raise ConfigError(
                f"cannot read {cfg.dns.resolv_config_path} for --redirect-dns: {exc.strerror}; "
                "use --redirect-all-dns-traffic or set redirect.dns.resolvConfigPath"
            ) from exc
    docker: set[int] = set()
    if detected:
        for fam, saved in ((4, detected.saved4), (6, detected.saved6)):
            if saved and "nat" in saved and "DOCKER_OUTPUT" in saved["nat"].chain_names():
                docker.add(fam)
        warnings += detected.warnings
    modules = detected.modules if detected else frozenset(backend.MODULES if native else ())
    facts = builder.HostFacts(
        loopback=links.loopback,
        nameservers=nameservers,
        docker_output=frozenset(docker),
        ipv6=ipv6,
        comments="comment" in modules and not cfg.comments_disabled,
        conntrack={"conntrack", "udp", "owner"} <= modules,
    )
    warning = builder.conntrack_warning(cfg, facts)
    if warning:
        warnings.append(warning)
    return Prepared(cfg, uid, facts, detected, builder.build_all(cfg, facts, uid), warnings)


def _installed(prep: Prepared, backend_name: str, attempts: int, started: float) -> InstallResult:
    """The result of an applied install, once the DNS flows opened before it are flushed from conntrack."""
    flushed = 0
    if prep.cfg.dns.enabled:
        from iptables import netlink

        flushed = netlink.flush_dns_conntrack()
    return InstallResult(
        backend=backend_name,
        families=tuple(rs.family for rs in prep.rulesets),
        uid=prep.uid,
        attempts=attempts,
        dns_conntrack_flushed=flushed,
        seconds=time.monotonic() - started,
        warnings=tuple(prep.warnings),
    )


def install(prep: Prepared) -> InstallResult:
    """Swap our old rules for the new: one atomic restore per family, all families rolled back together."""
    started = time.monotonic()
    det = prep.detected
    assert det is not None
    steps = []
    for rs in prep.rulesets:
        exe, saved = det.family(rs.family)
        steps.append((exe, saved, state.install_transaction(saved, rs, comments=prep.facts.comments)))
    attempts = backend.apply_transactions(steps, prep.cfg)
    for (exe, _, text), rs in zip(steps, prep.rulesets, strict=True):
        # a reinstall without, say, DNS redirection empties our old `raw` rules: leave no bare table behind
        emptied = [name for name in state.tables_in(text) if rs.table(name) is None]
        backend.drop_bare_tables(exe, emptied)
    return _installed(prep, det.v4.mode, attempts, started)


def uninstall_plan(
    cfg: TransparentProxyConfig, env: Mapping[str, str]
) -> list[tuple[backend.Executables, dict[str, state.SavedTable], str]]:
    """Per family: the transaction that removes exactly our lines; refuses foreign KUMA_MESH chains."""
    det = backend.detect(cfg, want_v6=True, env=env)
    steps = []
    for exe, saved in ((det.v4, det.saved4), (det.v6, det.saved6)):
        if exe is None or saved is None:
            continue
        foreign = state.foreign_chains(saved)
        if foreign:
            raise BackendError(
                f"refusing to uninstall: chain(s) {', '.join(foreign)} exist without Kuma's comments "
                "(installed with --disable-comments or by someone else); "
                f"remove them with {exe.iptables} by hand"
            )
        steps.append((exe, saved, state.uninstall_transaction(saved)))
    return steps


def uninstall(cfg: TransparentProxyConfig, env: Mapping[str, str]) -> None:
    """Remove our lines; with iptables-nft also the tables they leave bare, so tables are left as found."""
    if os.geteuid() != 0:
        raise BackendError("uninstalling the transparent proxy needs root (CAP_NET_ADMIN): run as root")
    steps = uninstall_plan(cfg, env)
    backend.apply_transactions(steps, cfg, sleep=0.2, what="uninstall")
    for exe, _, text in steps:
        if text:
            backend.drop_bare_tables(exe, state.tables_in(text))


def install_native(prep: Prepared) -> InstallResult:
    """`--backend nft-native`: the same rules as one `table inet kuma_mesh`, replaced in one transaction.

    `prep` must come from `prepare(..., native=True)`.
    """
    from iptables import nftables

    cfg = prep.cfg
    started = time.monotonic()
    text = nftables.render(prep.rulesets, comments=prep.facts.comments)
    attempts = 0
    for attempt in range(cfg.retry.max_retries + 1):
        attempts = attempt + 1
        try:
            nftables.apply(text)
            break
        except nftables.NftError as exc:
            if attempt == cfg.retry.max_retries:
                # `nft -f` commits the whole input or nothing
                raise BackendError(f"{exc} (rules left as they were before this install)") from exc
            time.sleep(cfg.retry.sleep_between_retries)
    return _installed(prep, "nft-native", attempts, started)


def uninstall_native() -> None:
    from iptables import nftables

    if os.geteuid() != 0:
        raise BackendError("uninstalling the transparent proxy needs root (CAP_NET_ADMIN): run as root")
    try:
        nftables.apply(nftables.uninstall_text())
    except nftables.NftError as exc:
        raise BackendError(str(exc)) from exc
