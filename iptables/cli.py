"""`kuma-dp transparent-proxy install|uninstall|plan` and the `kuma-init` console script.

Flags and config keys are Kuma v2.14.3's (`app/kumactl/cmd/install/install_transparent_proxy.go` in
kumahq/kuma), so existing scripts, init-container specs and `--config` files work unchanged; the options
are generated from `iptables.settings.SETTINGS`, which declares each one. The command bodies are thin
sequences over the pure parts: config -> facts -> builder -> state transaction -> backend. Being the entry
point, this module is the one place that reads the process environment; everything below gets it passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from iptables import backend, builder, state
from iptables import install as install_mod
from iptables.config import ConfigError, TransparentProxyConfig, load_config
from iptables.settings import SETTINGS, Setting, setting_for_flag
from kuma_dp.commands.goflags import GoBool

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


# ----------------------------------------------------------------------------------------------------
# Boolean flags with Go's pflag semantics: `--x` is true, `--x=false` / `--x=true` / `--x=0` ... set it
# explicitly (strconv.ParseBool's spellings); `--x false` is not a value (pflag leaves "false" as a stray
# argument; click then rejects it, rather than silently reading `--x` as true). Kuma's injector passes
# `--redirect-inbound=false` to gateway pods (`app/kumactl/cmd/install/install_transparent_proxy.go` declares
# every boolean with `BoolVar`), so this is what `kumactl install transparent-proxy` accepts.


class GoBoolOption(click.Option):
    """A boolean flag: its help shows `--x[=BOOL]`; `GoFlagsCommand` turns a bare `--x` into `--x=true`."""

    def __init__(self, *args: Any, negatable: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("default", None)
        super().__init__(*args, type=GoBool(), metavar="[=BOOL]", **kwargs)
        #: also take `--no-x` (our spelling before pflag's; kept working) as `--x=false`
        self.negatable = negatable

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        names = f"{self.opts[0]}[=BOOL]" + (f", --no-{self.opts[0][2:]}" if self.negatable else "")
        return names, record[1]


class GoFlagsCommand(click.Command):
    """A command whose `GoBoolOption`s parse as pflag booleans (see `GoBool`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        bools = {o.opts[0]: o for o in self.params if isinstance(o, GoBoolOption)}
        negated = {f"--no-{name[2:]}": name for name, o in bools.items() if o.negatable}
        out: list[str] = []
        for i, arg in enumerate(args):
            if arg == "--":
                out += args[i:]
                break
            if arg in bools:
                arg += "=true"
            elif arg in negated:
                arg = negated[arg] + "=false"
            out.append(arg)
        return super().parse_args(ctx, out)


def _bool_option(name: str, help_: str, *, negatable: bool = False, dest: str | None = None) -> Decorator:
    decls = [name, dest] if dest else [name]
    return click.option(*decls, cls=GoBoolOption, negatable=negatable, help=help_)


def _default_note(s: Setting) -> str:
    """` (default 15006)` for options that take a value; bare flags are off unless given."""
    if s.shape not in ("value", "switch") or s.default in ("", [], {}):
        return ""
    shown = str(s.default).lower() if isinstance(s.default, bool) else s.default
    return f" (default {shown})"


def _option(flag: str, help_: str | None = None) -> Decorator:
    """The click option for one flag of a setting, shaped by its kind (see `Setting.shape`)."""
    s = setting_for_flag(flag)
    assert s is not None, flag
    if help_ is None:
        help_ = s.help + _default_note(s) if flag == s.flags[0] else f"deprecated: use --{s.flags[0]}"
    if s.shape in ("flag", "switch"):
        return _bool_option(f"--{flag}", help_, negatable=s.shape == "switch")
    if s.shape == "multi":
        return click.option(f"--{flag}", multiple=True, help=help_)
    return click.option(f"--{flag}", type=str, default=None, help=help_)


def _install_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Every setting's flags, in `SETTINGS` order, then `--config` and the deprecated `--config-file`."""
    for flag in reversed([flag for s in SETTINGS if s.shape != "command" for flag in s.flags]):
        f = _option(flag)(f)
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
    return _bool_option("--verbose", "long option names and section comments")(f)


def _install_command(f: Callable[..., Any]) -> Callable[..., Any]:
    """What `install` and `kuma-init` share: every setting's flag, `--config`, the common options, `--dry-run`."""  # noqa: E501
    f = click.pass_context(f)
    f = _bool_option("--dry-run", "print the iptables-restore input, change nothing")(f)
    return _install_options(_common_options(f))


def _flags(ctx: click.Context, params: dict[str, Any]) -> dict[str, Any]:
    """Only flags the user actually gave: defaults must not override config files or env."""
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    out: dict[str, Any] = {}
    for flag in (flag for s in SETTINGS for flag in s.flags):
        key = flag.replace("-", "_")
        if key not in params or ctx.get_parameter_source(key) not in given:
            continue
        if params[key] is not None and params[key] != ():
            out[flag] = params[key]
    return out


def _fail(msg: str) -> None:
    click.echo(f"Error: {msg}", err=True)
    sys.exit(1)


def _warn(msg: str) -> None:
    click.echo(f"# [WARNING] {msg}", err=True)


def _enter_netns(params: dict[str, Any]) -> None:
    if params.get("netns"):
        from iptables import netlink

        try:
            netlink.enter_netns(params["netns"])
        except RuntimeError as exc:
            _fail(str(exc))


def _load(ctx: click.Context, params: dict[str, Any]) -> TransparentProxyConfig:
    files = ([params["config_file"]] if params.get("config_file") else []) + list(params.get("configs", ()))
    try:
        return load_config(files, _flags(ctx, params), os.environ)
    except ConfigError as exc:
        _fail(str(exc))
        raise AssertionError from None


def _prepare(cfg: TransparentProxyConfig, *, dry_run: bool, native: bool = False) -> install_mod.Prepared:
    try:
        prep = install_mod.prepare(cfg, os.environ, dry_run=dry_run, native=native)
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
    _enter_netns(params)
    cfg = _load(ctx, params)
    dry_run = cfg.dry_run  # --dry-run[=BOOL] is a setting too: the flag, else KUMA_TRANSPARENT_PROXY_DRY_RUN
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
        res = install_mod.install_native(prep) if native else install_mod.install(prep)
    except backend.BackendError as exc:
        _fail(str(exc))  # the backend's text says, checked, what state the rules are in
        return
    families = ",".join(f"ipv{f}" for f in res.families)
    click.echo(
        f"transparent proxy installed: backend={res.backend} families={families} uid={res.uid} "
        f"attempts={res.attempts} dns_conntrack_flushed={res.dns_conntrack_flushed} "
        f"took_ms={(time.monotonic() - started) * 1000:.0f}"
    )


@transparent_proxy.command("install", cls=GoFlagsCommand)
@_install_command
def install(ctx: click.Context, **params: Any) -> None:
    """Install the transparent proxy rules (same flags and config keys as `kumactl install transparent-proxy`)."""  # noqa: E501
    _install(ctx, params)


@transparent_proxy.command("uninstall", cls=GoFlagsCommand)
@_common_options
@_bool_option("--dry-run", "print what would be removed, change nothing")
@_option("iptables-executables", "name:path,... as for install")
@_option("ebpf-enabled")
@_option("ebpf-bpffs-path", "eBPF bpffs path (not supported here)")
def uninstall(**params: Any) -> None:
    """Remove exactly our chains and rules (KUMA_MESH*, kuma/mesh/transparent/proxy comments); keep the rest.

    With iptables-nft, the tables our rules created and left empty are deleted too, so tables are left as
    they were found before the install.
    """
    _enter_netns(params)
    flags = (
        {"iptables-executables": params["iptables_executables"]} if params.get("iptables_executables") else {}
    )
    try:
        # Only --iptables-executables matters here, and only as a flag: uninstall reads no config or env.
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
        steps = install_mod.uninstall_plan(cfg, os.environ)
        if params.get("dry_run"):
            for exe, _, text in steps:
                click.echo(f"### IPv{exe.family} ###\n\n{text}")
            return
        install_mod.uninstall(cfg, os.environ)
    except backend.BackendError as exc:
        _fail(str(exc))
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
        env=exe.env,
    )
    if proc.returncode != 0:
        raise backend.BackendError(
            f"cannot canonicalise the desired rules: {backend.failing_line(proc.stderr, text)}"
        )
    return proc.stdout


@transparent_proxy.command("plan", cls=GoFlagsCommand)
@_install_options
@_common_options
@_bool_option("--diff", "show a unified diff of live vs desired rules of our chains", dest="show_diff")
@_bool_option("--json", "machine-readable result", dest="as_json")
@click.pass_context
def plan(ctx: click.Context, show_diff: bool, as_json: bool, **params: Any) -> None:
    """Compare the desired rules with the live ones: exit 0 when equal, 2 when they differ."""
    _enter_netns(params)
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
        exe, saved = det.family(rs.family)
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


@click.command("kuma-init", cls=GoFlagsCommand, context_settings={"help_option_names": ["-h", "--help"]})
@_install_command
def kuma_init(ctx: click.Context, **params: Any) -> None:
    """Init-container entry point: `kumactl install transparent-proxy` flags and KUMA_TRANSPARENT_PROXY_* env."""  # noqa: E501
    _install(ctx, params)


def kuma_init_main() -> None:
    kuma_init(prog_name="kuma-init")


def _run(command: click.Command, argv: Sequence[str], prog_name: str) -> int:
    try:
        command.main(args=list(argv), prog_name=prog_name)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def run_install(argv: Sequence[str], prog_name: str = "kumactl install transparent-proxy") -> int:
    """`install` on `argv` (its flags, without the command words), as a console script runs it.

    For entry points that spell the command differently (`kumactl install transparent-proxy ARGS` in
    Kuma's init container): messages, usage and exit codes are exactly those of `kuma-dp transparent-proxy
    install`. Returns the exit code instead of exiting.
    """
    return _run(install, argv, prog_name)


def run_uninstall(argv: Sequence[str], prog_name: str = "kumactl uninstall transparent-proxy") -> int:
    """`uninstall` on `argv`, as `run_install` does for install."""
    return _run(uninstall, argv, prog_name)


__all__ = [
    "GoBool",
    "GoBoolOption",
    "GoFlagsCommand",
    "canonical",
    "install",
    "kuma_init_main",
    "plan",
    "run_install",
    "run_uninstall",
    "transparent_proxy",
    "uninstall",
]
