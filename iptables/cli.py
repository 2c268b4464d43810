"""`kuma-dp transparent-proxy install|uninstall|plan` and the `kuma-init` console script.

Flags and config keys are Kuma v2.14's (`kumactl install transparent-proxy`, KUMA-DP.md §13.4), so existing
scripts, init-container specs and `--config` files work unchanged. The command body is a thin sequence over
the pure parts: config -> facts -> builder -> state transaction -> backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from iptables import backend, builder, state
from iptables import install as install_mod
from iptables.config import ConfigError, TransparentProxyConfig, load_config

# (flag, kind, help); kind: "flag" (bool, given = True), "bool" (--x/--no-x), "multi", or a click type
_OPTIONS: list[tuple[str, Any, str]] = [
    ("kuma-dp-user", str, "name or UID of the user running kuma-dp (default: UID 5678, then user kuma-dp)"),
    ("kuma-dp-uid", str, "deprecated: use --kuma-dp-user"),
    ("redirect-inbound", "bool", "redirect inbound traffic (default true)"),
    ("redirect-inbound-port", str, "inbound redirect port (default 15006)"),
    ("redirect-outbound-port", str, "outbound redirect port (default 15001)"),
    ("exclude-inbound-ports", str, "comma list of inbound ports not redirected (tip: 22)"),
    ("exclude-outbound-ports", str, "comma list of outbound ports not redirected"),
    (
        "exclude-inbound-ips",
        "multi",
        "IPs/CIDRs (comma lists, repeatable) whose inbound traffic is not redirected",
    ),
    ("exclude-outbound-ips", "multi", "destination IPs/CIDRs (comma lists, repeatable) not redirected"),
    (
        "exclude-outbound-ports-for-uids",
        "multi",
        "[tcp|udp|*:][ports|*:]uids, repeatable, e.g. 53,3000-5000:106-108",
    ),
    (
        "redirect-inbound-insert-instead-of-append",
        "flag",
        "insert the PREROUTING jump instead of appending it",
    ),
    ("redirect-outbound-insert-instead-of-append", "flag", "insert the OUTPUT jump instead of appending it"),
    ("redirect-dns", "flag", "redirect DNS to resolv.conf name servers to the kuma-dp DNS proxy"),
    ("redirect-all-dns-traffic", "flag", "redirect all DNS traffic to the kuma-dp DNS proxy"),
    ("redirect-dns-port", str, "DNS proxy port (default 15053)"),
    ("skip-dns-conntrack-zone-split", "flag", "do not split DNS conntrack zones"),
    (
        "vnet",
        "multi",
        "ifaceRegex:CIDR of a virtual network to redirect, repeatable, e.g. docker0:172.17.0.0/16",
    ),
    ("ip-family-mode", str, "dualstack or ipv4 (default dualstack)"),
    ("drop-invalid-packets", "flag", "drop packets in conntrack state INVALID (mangle)"),
    ("iptables-logs", "flag", "add LOG rules"),
    ("disable-comments", "flag", "do not tag rules with comments"),
    ("wait", str, "seconds to wait for the xtables lock (legacy only, default 5)"),
    ("wait-interval", str, "microseconds between xtables lock attempts (legacy only)"),
    ("max-retries", str, "retries after a failed apply (default 4)"),
    ("sleep-between-retries", str, "pause between retries (default 2s)"),
    (
        "iptables-executables",
        str,
        "name:path,... for all of iptables, iptables-save, iptables-restore (+ ip6tables*)",
    ),
    ("store-firewalld", "flag", "also write /etc/firewalld/direct.xml (not supported here)"),
    ("ebpf-enabled", "flag", "eBPF mode (not supported here)"),
    ("ebpf-instance-ip", str, "eBPF instance IP (not supported here)"),
    ("ebpf-bpffs-path", str, "eBPF bpffs path (not supported here)"),
    ("ebpf-cgroup-path", str, "eBPF cgroup path (not supported here)"),
    ("ebpf-programs-source-path", str, "eBPF programs path (not supported here)"),
    ("ebpf-tc-attach-iface", str, "eBPF tc interface (not supported here)"),
]


def _install_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for name, kind, help_ in reversed(_OPTIONS):
        if kind == "flag":
            f = click.option(f"--{name}", is_flag=True, default=None, help=help_)(f)
        elif kind == "bool":
            f = click.option(f"--{name}/--no-{name}", default=None, help=help_)(f)
        elif kind == "multi":
            f = click.option(f"--{name}", multiple=True, help=help_)(f)
        else:
            f = click.option(f"--{name}", type=kind, default=None, help=help_)(f)
    f = click.option(
        "--config", "configs", multiple=True, help="YAML/JSON config file, repeatable; - = stdin"
    )(f)
    f = click.option("--config-file", default=None, help="deprecated: use --config")(f)
    return f


def _common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--netns", default=None, help="network namespace (name or path) to work in")(f)
    f = click.option(
        "--backend",
        type=click.Choice(["auto", "nft-native"]),
        default="auto",
        show_default=True,
        help="auto: iptables-nft or iptables-legacy, chosen as Kuma does; nft-native: one nftables table",
    )(f)
    f = click.option("--verbose", is_flag=True, default=None, help="long option names and section comments")(
        f
    )
    return f


def _flags(ctx: click.Context, params: dict[str, Any]) -> dict[str, Any]:
    """Only flags the user actually gave: defaults must not override config files or env."""
    out: dict[str, Any] = {}
    for name, _, _ in [*_OPTIONS, ("dry-run", None, ""), ("verbose", None, "")]:
        key = name.replace("-", "_")
        if key not in params:
            continue
        src = ctx.get_parameter_source(key)
        if src in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
            value = params[key]
            if value is None or value == ():
                continue
            out[name] = value
    return out


def _fail(msg: str) -> None:
    click.echo(f"Error: {msg}", err=True)
    sys.exit(1)


def _warn(msg: str) -> None:
    click.echo(f"# [WARNING] {msg}", err=True)


def _load(ctx: click.Context, params: dict[str, Any]) -> TransparentProxyConfig:
    files = ([params["config_file"]] if params.get("config_file") else []) + list(params.get("configs", ()))
    try:
        return load_config(files, _flags(ctx, params), os.environ)
    except ConfigError as exc:
        _fail(str(exc))
        raise AssertionError from None


def _prepare(cfg: TransparentProxyConfig, *, dry_run: bool, native: bool = False) -> install_mod.Prepared:
    try:
        prep = install_mod.prepare(cfg, dry_run=dry_run, native=native)
    except (ConfigError, backend.BackendError) as exc:
        _fail(str(exc))
        raise AssertionError from None
    for w in prep.warnings:
        _warn(w)
    return prep


@click.group("transparent-proxy", context_settings={"help_option_names": ["-h", "--help"]})
def transparent_proxy() -> None:
    """Install, remove or check the iptables rules that send an app's traffic through Envoy (Kuma-compatible)."""  # noqa: E501


def _install(ctx: click.Context, params: dict[str, Any]) -> None:
    if params.get("netns"):
        from iptables import netlink

        try:
            netlink.enter_netns(params["netns"])
        except RuntimeError as exc:
            _fail(str(exc))
    cfg = _load(ctx, params)
    dry_run = bool(params.get("dry_run")) or cfg.dry_run
    native = params.get("backend") == "nft-native"
    started = time.monotonic()
    prep = _prepare(cfg, dry_run=dry_run, native=native)
    if dry_run:
        if native:
            from iptables import nftables

            click.echo(nftables.render(prep.rulesets, comments=prep.facts.comments), nl=False)
            return
        click.echo(
            builder.render_dry_run(prep.rulesets, comments=prep.facts.comments, verbose=cfg.verbose), nl=False
        )
        return
    try:
        res = install_mod.install_native(cfg, prep) if native else install_mod.install(cfg, prep)
    except backend.BackendError as exc:
        _fail(f"{exc} (rules left as they were before this install)")
        return
    families = ",".join(f"ipv{f}" for f in res.families)
    click.echo(
        f"transparent proxy installed: backend={res.backend} families={families} uid={res.uid} "
        f"attempts={res.attempts} dns_conntrack_flushed={res.dns_conntrack_flushed} "
        f"took_ms={(time.monotonic() - started) * 1000:.0f}"
    )


@transparent_proxy.command("install")
@_install_options
@_common_options
@click.option(
    "--dry-run", is_flag=True, default=None, help="print the iptables-restore input, change nothing"
)
@click.pass_context
def install(ctx: click.Context, **params: Any) -> None:
    """Install the transparent proxy rules (same flags and config keys as `kumactl install transparent-proxy`)."""  # noqa: E501
    _install(ctx, params)


@transparent_proxy.command("uninstall")
@_common_options
@click.option("--dry-run", is_flag=True, default=None, help="print what would be removed, change nothing")
@click.option("--iptables-executables", default=None, help="name:path,... as for install")
@click.option("--ebpf-enabled", is_flag=True, default=None, help="eBPF mode (not supported here)")
@click.option("--ebpf-bpffs-path", default=None, help="eBPF bpffs path (not supported here)")
def uninstall(**params: Any) -> None:
    """Remove exactly our chains and rules (KUMA_MESH* and kuma/mesh/transparent/proxy comments); keep the rest."""  # noqa: E501
    if params.get("netns"):
        from iptables import netlink

        try:
            netlink.enter_netns(params["netns"])
        except RuntimeError as exc:
            _fail(str(exc))
    flags = (
        {"iptables-executables": params["iptables_executables"]} if params.get("iptables_executables") else {}
    )
    try:
        cfg = load_config([], flags, {})
    except ConfigError as exc:
        _fail(str(exc))
        return
    try:
        if params.get("backend") == "nft-native":
            from iptables import nftables

            if params.get("dry_run"):
                click.echo(nftables.uninstall_text(), nl=False)
                return
            install_mod.uninstall_native()
            click.echo("transparent proxy uninstalled")
            return
        steps = install_mod.uninstall_plan(cfg)
        if params.get("dry_run"):
            for exe, _, text in steps:
                click.echo(f"### IPv{exe.family} ###\n\n{text}")
            return
        install_mod.uninstall(cfg)
    except backend.BackendError as exc:
        _fail(f"{exc} (rules left as they were)")
    click.echo("transparent proxy uninstalled")


def canonical(exe: backend.Executables, ruleset: builder.Ruleset, *, comments: bool, docker: bool) -> str:
    """The desired ruleset as iptables-save prints it, via a throw-away netns (see iptables.canon)."""
    text = builder.render(ruleset, comments=comments)
    if docker:
        text = text.replace("* nat\n", "* nat\n-N DOCKER_OUTPUT\n", 1)
    proc = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-m", "iptables.canon", exe.restore, exe.save],
        input=text + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    if proc.returncode != 0:
        raise backend.BackendError(
            f"cannot canonicalise the desired rules: {backend.failing_line(proc.stderr, text)}"
        )
    return proc.stdout


@transparent_proxy.command("plan")
@_install_options
@_common_options
@click.option(
    "--diff", "show_diff", is_flag=True, help="show a unified diff of live vs desired rules of our chains"
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable result")
@click.pass_context
def plan(ctx: click.Context, show_diff: bool, as_json: bool, **params: Any) -> None:
    """Compare the desired rules with the live ones: exit 0 when equal, 2 when they differ."""
    if params.get("netns"):
        from iptables import netlink

        try:
            netlink.enter_netns(params["netns"])
        except RuntimeError as exc:
            _fail(str(exc))
    if params.get("backend") == "nft-native":
        _fail(
            "plan compares iptables rules; for --backend nft-native inspect `nft list table inet kuma_mesh`"
        )
    cfg = _load(ctx, params)
    prep = _prepare(cfg, dry_run=False)
    det = prep.detected
    assert det is not None
    plans = []
    for rs in prep.rulesets:
        exe, saved = (det.v4, det.saved4) if rs.family == 4 else (det.v6, det.saved6)
        assert exe is not None and saved is not None
        try:
            desired = canonical(
                exe, rs, comments=prep.facts.comments, docker=rs.family in prep.facts.docker_output
            )
        except backend.BackendError as exc:
            _fail(str(exc))
            return
        plans.append(
            state.Plan(rs.family, state.our_lines(state.parse_save(desired)), state.our_lines(saved))
        )
    if as_json:
        click.echo(state.plans_json(plans))
    else:
        for p in plans:
            if show_diff and not p.equal:
                click.echo(p.diff(), nl=False)
            click.echo(
                f"IPv{p.family}: {'up to date' if p.equal else 'differs'} "
                f"({len(p.desired)} desired, {len(p.live)} live lines of ours)"
            )
    sys.exit(0 if all(p.equal for p in plans) else 2)


@click.command("kuma-init", context_settings={"help_option_names": ["-h", "--help"]})
@_install_options
@_common_options
@click.option(
    "--dry-run", is_flag=True, default=None, help="print the iptables-restore input, change nothing"
)
@click.pass_context
def kuma_init(ctx: click.Context, **params: Any) -> None:
    """Init-container entry point: `kumactl install transparent-proxy` flags and KUMA_TRANSPARENT_PROXY_* env."""  # noqa: E501
    _install(ctx, params)


def kuma_init_main() -> None:
    kuma_init(prog_name="kuma-init")


__all__ = ["canonical", "install", "kuma_init_main", "plan", "transparent_proxy", "uninstall"]
