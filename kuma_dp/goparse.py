"""Go-compatible parsing of the scalar values Kuma's flags, `KUMA_*` variables and config files carry.

Kuma is written in Go: its booleans go through `strconv.ParseBool`, its durations through
`time.ParseDuration`, its unsigned numbers through `strconv.ParseUint`. Operators copy values from Kuma's
docs and Helm charts, so the agent and the transparent-proxy installer accept exactly those grammars, and
the error texts keep Go's wording (callers prefix them with the setting's name). Every module that parses
such a value uses this one, so `--drain-time`, `KUMA_CONTROL_PLANE_RETRY_BACKOFF` and the installer's
`sleepBetweenRetries` can never disagree about what `1m30s` means.
"""

from __future__ import annotations

import re

_TRUE = frozenset(("1", "t", "T", "TRUE", "true", "True"))
_FALSE = frozenset(("0", "f", "F", "FALSE", "false", "False"))


def parse_bool(text: str) -> bool:
    """Go's `strconv.ParseBool`: exactly `1 t T TRUE true True` and `0 f F FALSE false False`."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f'strconv.ParseBool: parsing "{text}": invalid syntax')


def parse_uint(text: str) -> int:
    """Go's `strconv.ParseUint(text, 10, 64)` (surrounding blanks tolerated, as env files often have them)."""
    s = text.strip()
    if not s.isdigit():
        raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    return int(s, 10)


_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_NUMBER = re.compile(r"(\d+(?:\.\d*)?|\.\d+)$")


def parse_duration(text: str) -> float:
    """Seconds in a Go `time.Duration` string (`3s`, `1m30s`, `500ms`, `-1.5h`, `0`).

    ValueError with Go's wording (`time: invalid duration "x"`, `time: missing unit in duration "5"`).
    """
    s = text.strip()
    orig = s
    sign = 1.0
    if s[:1] in ("-", "+"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f'time: invalid duration "{orig}"')
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            if _NUMBER.match(s[pos:]):
                raise ValueError(f'time: missing unit in duration "{orig}"')
            raise ValueError(f'time: invalid duration "{orig}"')
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """A Go-style rendering (`30s`, `5m0s`, `500ms`) for logs and the effective-config dump."""
    if seconds == 0:
        return "0s"
    neg = seconds < 0
    s = abs(seconds)
    if s < 1:
        out = f"{s * 1000:g}ms"
    else:
        h, rem = divmod(s, 3600)
        m, sec = divmod(rem, 60)
        out = ""
        if h:
            out += f"{int(h)}h"
        if h or m:
            out += f"{int(m)}m"
        out += f"{sec:g}s"
    return ("-" if neg else "") + out


__all__ = ["format_duration", "parse_bool", "parse_duration", "parse_uint"]
