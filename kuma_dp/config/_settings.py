"""One declaration per `kuma-dp run` setting, and the table derived from the declarations.

Kuma spreads a setting over two files: `pkg/config/app/kuma-dp/config.go` (kumahq/kuma v2.14.3) holds the
field, its default and its `envconfig:"kuma_..."` variable, and `app/kuma-dp/cmd/run.go` holds the flag and
its help. Here each leaf field of the configuration dataclasses is declared once with `setting(...)`, and
`collect_settings(RunConfig)` walks the dataclasses into `Setting` rows keyed by dotted path. The environment
loader, the click options of `kuma-dp run` and of the root command, the flag -> config mapping and
docs/settings.md are all derived from those rows, so a default or a variable name cannot disagree with
itself.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

from kuma_dp.goparse import format_duration, parse_bool, parse_duration, parse_uint

#: dataclasses.field metadata key under which `setting` stores its declaration.
_META = "kuma_dp.setting"

#: Field type -> kind. A kind decides the default parser, the click type and how docs show the default.
_KIND_OF_TYPE: dict[type, str] = {str: "str", int: "uint", float: "duration", bool: "bool"}
_KIND_OF_ORIGIN: dict[type, str] = {dict: "vars", list: "list"}


def _text(text: str) -> str:
    return text


def _comma_list(text: str) -> list[str]:
    """`a, b,,c` -> ["a", "b", "c"]: a list-valued variable is comma-separated, blanks and empties dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


#: Kind -> parser of a variable's text (Go semantics: strconv.ParseUint/ParseBool, time.ParseDuration).
_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": _text,
    "uint": parse_uint,
    "duration": parse_duration,
    "bool": parse_bool,
    "list": _comma_list,
}


@dataclasses.dataclass(frozen=True)
class _Declaration:
    """What `setting()` records on a field: the row's own keyword arguments, and the parts that default from
    the field's type (resolved by `collect_settings`)."""

    row: dict[str, Any]
    parse: Callable[[str], Any] | None
    kind: str
    skip_empty: bool | None


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of the settings table: a leaf of RunConfig with everything that reaches it from outside.

    `kind` is `str`, `uint` (Go ParseUint; a click IntRange), `duration` (float seconds from a Go duration),
    `bool` (Go ParseBool; a pflag-style `--x` / `--x=false` flag), `list` (repeatable flag; a comma-separated
    variable), `vars` (the `key=value` pairs of `--dataplane-var`), or a name given by the declaration when
    the value is read with a parser of its own (`parse`).
    """

    path: str
    kind: str
    default: Any
    help: str
    #: Long flag first, then its one-letter alias; empty for a variable-only setting.
    flags: tuple[str, ...] = ()
    #: The environment variable; "" for a flag-only setting.
    env: str = ""
    parse: Callable[[str], Any] = _text
    hidden: bool = False
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    #: Never echoed: not in repr(), not in error messages.
    secret: bool = False
    #: Shown instead of a non-empty value in the effective-configuration log line.
    redact: str = ""
    #: A set but empty variable is ignored (Kuma: envconfig leaves numbers, bools and durations alone).
    skip_empty: bool = True

    @property
    def flag(self) -> str:
        """The long flag (`--cp-address`), or "" when the setting has none."""
        return self.flags[0] if self.flags else ""

    @property
    def param(self) -> str:
        """The click parameter name of the flag (`cp_address`): its key in the parsed keyword arguments."""
        return self.flag.lstrip("-").replace("-", "_")

    def default_text(self) -> str:
        """The default as an operator would write it on the command line or in the variable."""
        value = self.default
        if value is None or value == [] or value == {}:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if self.kind == "duration":
            return format_duration(value)
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)


def setting(
    default: Any,
    *,
    help: str,
    flag: str = "",
    alias: str = "",
    env: str = "",
    hidden: bool = False,
    parse: Callable[[str], Any] | None = None,
    kind: str = "",
    minimum: int | None = None,
    maximum: int | None = None,
    choices: tuple[str, ...] = (),
    secret: bool = False,
    redact: str = "",
    skip_empty: bool | None = None,
) -> Any:
    """Declare a configuration field: its default, flag (`alias` is the one-letter form), variable and help.

    Returns a `dataclasses.field`; an empty list or dict default becomes a default factory. `parse` replaces
    the parser implied by the field type (for a value read with a grammar of its own), `kind` names it for
    the docs, and `skip_empty` overrides whether a set-but-empty variable is ignored (default: for every kind
    but `str`).
    """
    # Everything but what the field itself supplies (path, type, default), kept as the keyword arguments of
    # the `Setting` row `collect_settings` makes; `parse`, `kind` and `skip_empty` may still depend on the
    # field's type, so they stay apart until then.
    decl = _Declaration(
        row={
            "flags": tuple(f for f in (flag, alias) if f),
            "env": env,
            "help": help,
            "hidden": hidden,
            "minimum": minimum,
            "maximum": maximum,
            "choices": choices,
            "secret": secret,
            "redact": redact,
        },
        parse=parse,
        kind=kind,
        skip_empty=skip_empty,
    )
    metadata = {_META: decl}
    if isinstance(default, list | dict):
        if default:
            raise ValueError("a list or dict setting must default to empty")
        return dataclasses.field(default_factory=type(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


def _kind_of(tp: Any) -> str:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        (tp,) = [arg for arg in typing.get_args(tp) if arg is not type(None)]
    origin = typing.get_origin(tp)
    if origin is not None:
        return _KIND_OF_ORIGIN[origin]
    return _KIND_OF_TYPE[tp]


def _row(path: str, tp: Any, fld: dataclasses.Field[Any], decl: _Declaration) -> Setting:
    type_kind = _kind_of(tp)
    parse = decl.parse or _PARSERS.get(type_kind)
    if parse is None:
        if decl.row["env"]:
            raise TypeError(f"setting {path}: a {type_kind} field needs an explicit parser for its variable")
        parse = _text  # never called: nothing but a flag reaches this setting
    default = fld.default_factory() if fld.default_factory is not dataclasses.MISSING else fld.default
    return Setting(
        path=path,
        kind=decl.kind or type_kind,
        default=default,
        parse=parse,
        skip_empty=type_kind != "str" if decl.skip_empty is None else decl.skip_empty,
        **decl.row,
    )


def collect_settings(cls: type, prefix: str = "") -> tuple[Setting, ...]:
    """Every `setting()` field of the dataclass `cls` and of its nested dataclasses, in declaration order."""
    hints = typing.get_type_hints(cls)
    rows: list[Setting] = []
    for fld in dataclasses.fields(cls):
        path = prefix + fld.name
        decl = fld.metadata.get(_META)
        if decl is not None:
            rows.append(_row(path, hints[fld.name], fld, decl))
        elif dataclasses.is_dataclass(hints[fld.name]):
            rows.extend(collect_settings(hints[fld.name], path + "."))
        else:
            raise TypeError(f"{cls.__name__}.{fld.name} is neither a setting() nor a nested section")
    return tuple(rows)


def get_path(obj: Any, path: str) -> Any:
    """The value at a dotted path (`control_plane.retry.backoff`)."""
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def set_path(obj: Any, path: str, value: Any) -> None:
    """Set the value at a dotted path in place."""
    *parents, leaf = path.split(".")
    setattr(get_path(obj, ".".join(parents)) if parents else obj, leaf, value)
