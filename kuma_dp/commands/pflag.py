"""A well-formed `kuma-dp run` command line read straight from the settings table, without click.

`parse_run_args(argv)` returns the keyword arguments the click command `kuma-dp run` would pass to its
callback (kuma_dp.commands.run), or None whenever it is not certain to read the line exactly as click
with the pflag-style options of kuma_dp.commands.goflags does: help, an unknown flag, a value click would
convert or refuse in its own way, a positional argument, a short flag glued to its value. None costs nothing
but time: kuma_dp/cli.py then hands the line to click, which parses it or gives Kuma's error. So this reader
only has to be right about what it accepts; tests/unit/test_pflag.py holds it to click on random command
lines built from every flag.

Accepted, as pflag (spf13/pflag) and the click options agree on them: `--name value`, `--name=value`, a
boolean as `--name` or `--name=<Go bool>`, a repeated list flag (`--dataplane-var`), a short alias as
`-d value`, and Kuma's root log flags before the sub-command (`kuma-dp --log-level debug run ...`), which
the same flags after it override.
"""

from __future__ import annotations

#: `typing` costs ~10 ms to import and nothing on the start-up path needs it at run time; type checkers
#: read any constant named TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from kuma_dp.config import Setting

__all__ = ["guess_binary_path", "parse_run_args", "run_command_at"]

#: Envoy's path: `--binary-path` / KUMA_DATAPLANE_RUNTIME_BINARY_PATH (kuma_dp.config), default `envoy`.
_BINARY_FLAG = "--binary-path"
_BINARY_ENV = "KUMA_DATAPLANE_RUNTIME_BINARY_PATH"


def run_command_at(argv: list[str]) -> int | None:
    """The index of the `run` sub-command in `kuma-dp [root flags] run ...`, or None when the sub-command is
    another one (`kuma-dp dns --port run` is not a run). The root flags (the `log.*` settings) all take a
    value, so a word right after a `--flag` without `=` is that flag's value, never the sub-command."""
    value_next = False
    for i, arg in enumerate(argv):
        if value_next:
            value_next = False
            continue
        if arg.startswith("-"):
            value_next = arg.startswith("--") and "=" not in arg
            continue
        return i if arg == "run" else None
    return None


def guess_binary_path(argv: list[str], environ: Mapping[str, str]) -> str:
    """Envoy's `--binary-path` as the configuration will most likely resolve it, read without loading the
    configuration: for the early `envoy --version` (kuma_dp.envoy._binary.start_early_probe), which is
    discarded if the guess turns out wrong. The variable wins over the flag, as every setting's does."""
    if _BINARY_ENV in environ:
        return environ[_BINARY_ENV]
    guess = "envoy"
    for i, arg in enumerate(argv):
        if arg == _BINARY_FLAG and i + 1 < len(argv):
            guess = argv[i + 1]
        elif arg.startswith(_BINARY_FLAG + "="):
            guess = arg.partition("=")[2]
    return guess


def _convert(s: Setting, text: str) -> tuple[bool, Any]:
    """(True, value) as the click option of `s` converts `text`; (False, None) when unsure or refused."""
    from kuma_dp.goparse import parse_bool, parse_duration

    try:
        if s.kind == "bool":
            return True, parse_bool(text)
        if s.kind == "duration":
            return True, parse_duration(text)
    except ValueError:
        return False, None
    if s.kind == "uint":
        # click.IntRange: int() accepts signs, blanks and underscores; only plain digits are taken here.
        if not (text.isascii() and text.isdigit()):
            return False, None
        value = int(text)
        low = 0 if s.minimum is None else s.minimum
        if value < low or (s.maximum is not None and value > s.maximum):
            return False, None
        return True, value
    if s.choices and text not in s.choices:
        return False, None
    return True, text


def _default(s: Setting) -> Any:
    """The value click passes for an absent option of `s` (its default, through the option's type)."""
    if s.kind in ("list", "vars"):
        return ()
    if s.kind == "duration":
        from kuma_dp.goparse import format_duration, parse_duration

        return parse_duration(format_duration(s.default))
    return s.default


def _read(args: list[str], flags: dict[str, Setting], kw: dict[str, Any]) -> bool:
    """Read `args` (flags only) into `kw`; False when any of it is not for this reader."""
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--", "-h", "--help"):
            return False
        name, eq, text = arg.partition("=")
        s = flags.get(name)
        if s is None:
            return False
        if not name.startswith("--") and eq:
            return False  # `-d=x`: click keeps the `=`, pflag does not; let click decide
        if s.kind == "bool" and not eq:
            text = "true"
        elif not eq:
            if i >= len(args) or args[i].startswith("-"):
                return False  # no value, or one that looks like a flag: click's rules, not ours
            text = args[i]
            i += 1
        ok, value = _convert(s, text)
        if not ok:
            return False
        if s.kind in ("list", "vars"):
            kw[s.param] = (*kw[s.param], value)
        else:
            kw[s.param] = value
    return True


def parse_run_args(argv: list[str]) -> dict[str, Any] | None:
    """`kuma-dp [root log flags] run [flags]` -> the run callback's keyword arguments, or None (see above)."""
    at = run_command_at(argv)
    if at is None:
        return None
    from kuma_dp.config import SETTINGS

    run_settings = [s for s in SETTINGS if s.flags]
    root_settings = [s for s in run_settings if s.path.startswith("log.")]
    kw = {s.param: _default(s) for s in run_settings}
    if not _read(argv[:at], {f: s for s in root_settings for f in s.flags}, kw):
        return None
    if not _read(argv[at + 1 :], {f: s for s in run_settings for f in s.flags}, kw):
        return None
    return kw
