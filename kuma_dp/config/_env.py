"""The environment applied over the flags.

Kuma parses flags first and then applies the environment (`pkg/config/app/kuma-dp/config.go` in kumahq/kuma
v2.14.3, via envconfig), so **a set variable overrides the same flag**. A variable counts as set when it is
present, even empty, like Go's envconfig; an empty value for a number, bool or duration is ignored rather than
turned into an error. Which variable reaches which field, and with which parser, is the settings table
(`SETTINGS`, declared in `_model.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kuma_dp.config._model import SETTINGS, RunConfig
from kuma_dp.config._settings import Setting, set_path


class EnvError(ValueError):
    """An environment variable whose value cannot be converted; the message names the variable."""


#: env name -> (dotted attribute path in RunConfig, converter), derived from SETTINGS.
ENV_VARS: dict[str, tuple[str, Callable[[str], Any]]] = {s.env: (s.path, s.parse) for s in SETTINGS if s.env}


def _parse(s: Setting, raw: str) -> Any:
    try:
        return s.parse(raw)
    except ValueError as exc:
        reason = str(exc)
        if s.secret:
            # Never echo the value of a secret-bearing variable, not even inside the parser's message.
            shown, reason = "<hidden>", reason.replace(raw, "<hidden>")
        else:
            shown = repr(raw)
        raise EnvError(f"invalid value {shown} in environment variable {s.env}: {reason}") from None


#: What `_read` returns for a variable that is unset, or set but empty where emptiness means "not given".
_UNSET: Any = object()


def _read(s: Setting, environ: Mapping[str, str]) -> Any:
    """The setting's value from `environ`, or `_UNSET`; EnvError names the variable of a bad value."""
    if not s.env or s.env not in environ:
        return _UNSET
    raw = environ[s.env]
    if raw == "" and s.skip_empty:
        return _UNSET
    return _parse(s, raw)


def apply_env(
    cfg: RunConfig, environ: Mapping[str, str], settings: Iterable[Setting] = SETTINGS
) -> RunConfig:
    """Override `cfg` in place with every set variable of the table; EnvError names the bad variable."""
    for s in settings:
        value = _read(s, environ)
        if value is not _UNSET:
            set_path(cfg, s.path, value)
    return cfg


def env_value(path: str, environ: Mapping[str, str]) -> Any:
    """One setting as the environment gives it (its default when unset), for a command that has no RunConfig.

    `kuma-dp dns` uses it for the DNS settings it shares with `kuma-dp run`.
    """
    (s,) = [s for s in SETTINGS if s.path == path]
    value = _read(s, environ)
    return s.default if value is _UNSET else value
