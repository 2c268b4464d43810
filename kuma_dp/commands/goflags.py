"""Click options that behave like Kuma's Go flags (spf13/pflag), built from the settings table.

Kuma's commands (`app/kuma-dp/cmd/*.go` in kumahq/kuma v2.14.3) parse flags with pflag: a boolean is `--x`,
`--x=true` or `--x=false`; a duration is a Go duration (`30s`, `1m30s`); a bad value is reported as
`invalid argument "<value>": <Go's error>`. `setting_option` turns one row of `kuma_dp.config.SETTINGS` into
such an option, so `kuma-dp run` and the root command's log flags take their names, defaults, types and help
from the one declaration of each setting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from kuma_dp.goparse import format_duration, parse_bool, parse_duration

if TYPE_CHECKING:  # the installer (kuma-init) imports GoBool from here without the agent's settings table
    from kuma_dp.config import Setting

F = TypeVar("F", bound=Callable[..., Any])


class PflagError(click.ClickException):
    """A flag value pflag refuses: cobra prints `Error: <message>` and the command exits 1."""

    exit_code = 1


def pflag_invalid(value: Any, param: click.Parameter | None, exc: Exception) -> NoReturn:
    """pflag's `invalid argument "<value>" for "<-s, --long>" flag: <Go's error>` (spf13/pflag flag.go)."""
    opts = list(getattr(param, "opts", None) or [])
    long = next((o for o in opts if o.startswith("--")), "")
    short = next((o for o in opts if not o.startswith("--")), "")
    name = f"{short}, {long}" if short and long else long or short
    raise PflagError(f'invalid argument "{value}" for "{name}" flag: {exc}')


class GoBool(click.ParamType):
    """Go's strconv.ParseBool (`1 t T TRUE true True`, `0 f F FALSE false False`), errors in pflag's words."""

    name = "bool"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bool:
        if isinstance(value, bool):
            return value
        try:
            return parse_bool(str(value))
        except ValueError as exc:
            pflag_invalid(value, param, exc)


class GoDuration(click.ParamType):
    """A Go duration (`500ms`, `1s`, `3m0s`); the value is float seconds.

    `positive` rejects zero and negative durations (intervals such as `kuma-dp wait --timeout`). `pflag`
    reports a bad value the way pflag and cobra do (`invalid argument "30" for "--drain-time" flag: time:
    missing unit ...`, exit 1: `kuma-dp run`); without it the message is Go's alone (`kuma-dp wait`).
    """

    name = "duration"

    def __init__(self, *, positive: bool = False, pflag: bool = True) -> None:
        self.positive = positive
        self.pflag = pflag

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            seconds = parse_duration(str(value))
        except ValueError as exc:
            if self.pflag:
                pflag_invalid(value, param, exc)
            self.fail(str(exc), param, ctx)
        if self.positive and seconds <= 0:
            self.fail(f"{value!r} must be a positive duration", param, ctx)
        return seconds


GO_BOOL = GoBool()
GO_DURATION = GoDuration()


def setting_option(s: Setting, *, root: bool = False) -> Callable[[F], F]:
    """The click option of a setting that has a flag.

    `root`: the option as the root command declares it (Kuma's persistent flags): no default, so that only
    a value actually given before the sub-command is passed down as the sub-command's default.
    """
    kw: dict[str, Any] = {"help": s.help, "hidden": s.hidden}
    if s.kind == "bool":
        # pflag-style: `--x` alone means true, `--x=false` is accepted too (click's optional-value option).
        kw.update(type=GO_BOOL, is_flag=False, flag_value="true", default=s.default)
    elif s.kind in ("list", "vars"):
        kw.update(multiple=True)
    else:
        kw["default"] = format_duration(s.default) if s.kind == "duration" else s.default
        if s.kind == "duration":
            kw["type"] = GO_DURATION
        elif s.kind == "uint":
            kw["type"] = click.IntRange(min=0 if s.minimum is None else s.minimum, max=s.maximum)
        elif s.choices:
            kw["type"] = click.Choice(list(s.choices))
        if s.default and not s.hidden:
            kw["show_default"] = True
    if root:
        kw["default"] = None
        kw.pop("show_default", None)
    return click.option(*s.flags, **kw)


@dataclasses.dataclass
class _BoolNames:
    """The names under which `cmd` has pflag-style booleans (see `go_bool_args`)."""

    long: set[str] = dataclasses.field(default_factory=set)
    short: set[str] = dataclasses.field(default_factory=set)
    #: `--x` -> `--no-x` of a click `--x/--no-x` pair.
    switches: dict[str, str] = dataclasses.field(default_factory=dict)


def _go_bool_names(cmd: click.Command) -> _BoolNames:
    names = _BoolNames()
    for p in cmd.params:
        if not isinstance(p, click.Option):
            continue
        if isinstance(p.type, GoBool) and p._flag_needs_value:
            for name in p.opts:
                (names.long if name.startswith("--") else names.short).add(name)
        elif p.is_bool_flag and p.secondary_opts:
            for on, off in zip(p.opts, p.secondary_opts, strict=False):
                names.switches[on] = off
    return names


def go_bool_args(args: list[str], names: _BoolNames) -> list[str]:
    """pflag's reading of a boolean flag: `--x` is `--x=true` and never takes the next argument as its value
    (`--x false` is true plus a positional `false`); `-x=v` is `-x` with value v; for a click `--x/--no-x`
    pair, `--x=false` is `--no-x`."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        name, eq, value = arg.partition("=")
        if arg in names.long:
            arg += "=true"
        elif arg in names.short:
            arg += "true"
        elif eq and name in names.short:
            arg = name + value
        elif eq and name in names.switches:
            try:
                arg = name if parse_bool(value) else names.switches[name]
            except ValueError as exc:
                raise PflagError(f'invalid argument "{value}" for "{name}" flag: {exc}') from None
        out.append(arg)
    return out


class GoCommand(click.Command):
    """A click command whose boolean flags parse as Go's pflag does (see `go_bool_args`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, go_bool_args(args, _go_bool_names(self)))


def _pflag_bool(opt: click.Option) -> click.Option:
    """The pflag-style twin of a plain click boolean flag: same names, default, help and callback."""
    return click.Option(
        [opt.name or "", *opt.opts],
        type=GO_BOOL,
        is_flag=False,
        flag_value="true",
        default=opt.default,
        help=opt.help,
        hidden=opt.hidden,
        show_default=opt.show_default,
        envvar=opt.envvar,
        callback=opt.callback,
        expose_value=opt.expose_value,
        is_eager=opt.is_eager,
    )


def adopt_go_flags(cmd: click.Command) -> click.Command:
    """Give `cmd` (and, for a group, its sub-commands) Go's boolean flags: `--x`, `--x=true`, `--x=false`.

    Every sub-command of `kuma-dp` goes through this (kuma_dp/commands/root.py), so a flag declared with
    click's `is_flag=True` anywhere accepts the `--flag=false` that Kuma's cobra commands, and operators'
    scripts, use; a `--x/--no-x` pair keeps its names and takes `--x=true|false` too. Idempotent.
    """
    if getattr(cmd, "_go_flags", False):
        return cmd
    cmd.params = [
        _pflag_bool(p)
        if isinstance(p, click.Option) and p.is_bool_flag and not p.secondary_opts and p.name != "help"
        else p
        for p in cmd.params
    ]
    if not isinstance(cmd, GoCommand):
        original = cmd.parse_args

        def parse_args(ctx: click.Context, args: list[str]) -> list[str]:
            return original(ctx, go_bool_args(args, _go_bool_names(cmd)))

        cmd.parse_args = parse_args  # type: ignore[method-assign]
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            adopt_go_flags(sub)
    cmd._go_flags = True  # type: ignore[attr-defined]
    return cmd
