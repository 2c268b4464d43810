"""Click options that behave like Kuma's Go flags (spf13/pflag), built from the settings table.

Kuma's commands (`app/kuma-dp/cmd/*.go` in kumahq/kuma v2.14.3) parse flags with pflag: a boolean is `--x`,
`--x=true` or `--x=false`; a duration is a Go duration (`30s`, `1m30s`); a bad value is reported as
`invalid argument "<value>": <Go's error>`. `setting_option` turns one row of `kuma_dp.config.SETTINGS` into
such an option, so `kuma-dp run` and the root command's log flags take their names, defaults, types and help
from the one declaration of each setting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from kuma_dp.config import Setting
from kuma_dp.goparse import format_duration, parse_bool, parse_duration

F = TypeVar("F", bound=Callable[..., Any])


class GoBool(click.ParamType):
    """Go's strconv.ParseBool (`1 t T TRUE true True`, `0 f F FALSE false False`), errors in pflag's words."""

    name = "bool"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bool:
        if isinstance(value, bool):
            return value
        try:
            return parse_bool(str(value))
        except ValueError as exc:
            self.fail(f'invalid argument "{value}": {exc}', param, ctx)


class GoDuration(click.ParamType):
    """A Go duration (`500ms`, `1s`, `3m0s`); the value is float seconds.

    `positive` rejects zero and negative durations (intervals such as `kuma-dp wait --timeout`). `pflag`
    reports a bad value the way pflag does (`invalid argument "30": time: missing unit ...`, `kuma-dp run`);
    without it the message is Go's alone (`kuma-dp wait`).
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
            self.fail(f'invalid argument "{value}": {exc}' if self.pflag else str(exc), param, ctx)
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
