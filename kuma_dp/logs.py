"""Logging for the agent: Kuma's flags, one line per event, and no secret ever reaches a log line.

Kuma's kuma-dp uses zap with three levels (`off`, `info`, `debug`), writes to stderr or to a file rotated
by lumberjack (`--log-output-path`, `--log-max-size` MB, `--log-max-retained-files`, `--log-max-age` days).
We keep those flags and their meaning on top of the standard library `logging`, so every module just calls
`logging.getLogger(__name__)`. `--log-format json` uses python-json-logger (maintained, not hand-rolled) with
zap's field names (`ts`, `level`, `logger`, `msg`) so existing log pipelines keep their parsers.

Secrets: dataplane tokens are JWTs and travel in `Authorization: Bearer ...` headers. Code must not log them,
but one careless `log.debug("%s", config)` or a traceback carrying a request would leak one, so every handler
we install redacts JWT-shaped strings, bearer credentials and any value registered with `add_secret` as the
last step before bytes are written.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import logging
import re
import sys
import threading
import time
from typing import Any

__all__ = [
    "LEVELS",
    "EventLimiter",
    "RedactingFilter",
    "add_secret",
    "quiet_loop_errors",
    "redact",
    "setup_logging",
]


def __getattr__(name: str) -> Any:
    """The file handler and JSON formatter, from kuma_dp._logsinks (loaded only when configured)."""
    if name in ("AgeAndCountRotatingFileHandler", "RedactingJsonFormatter"):
        from kuma_dp import _logsinks

        return getattr(_logsinks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Kuma's level names. `off` silences the agent entirely; `debug` is everything.
LEVELS: dict[str, int] = {"off": logging.CRITICAL + 10, "info": logging.INFO, "debug": logging.DEBUG}
FORMATS = ("text", "json")
REDACTED = "[REDACTED]"

# A JWT: three base64url parts, the header always starts with `eyJ` (`{"`). Signature may be empty (alg none).
_JWT = r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"
# `Bearer <credential>` and `authorization: <credential>` in headers, reprs and dict dumps.
_BEARER = r"(?i)(?<=bearer )[A-Za-z0-9._~+/=-]{8,}"
_AUTH_HEADER = r"""(?i)(?<=authorization['"]: ['"])(?!bearer )[^'"\s]{8,}"""
_PATTERNS = [re.compile(_JWT), re.compile(_BEARER), re.compile(_AUTH_HEADER)]

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secret_re: re.Pattern[str] | None = None
#: handlers installed by setup_logging, removed again by the next call (tests and re-configuration).
_installed: list[logging.Handler] = []


def add_secret(value: str | bytes | None) -> None:
    """Register a secret (token file content, a key) so it is redacted wherever it shows up, JWT or not."""
    global _secret_re
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = (value or "").strip()
    if len(value) < 6:  # shorter values would redact ordinary words
        return
    with _secrets_lock:
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_re = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str) -> str:
    """Replace every token-looking substring of `text`; cheap when there is nothing to replace."""
    secret_re = _secret_re
    if secret_re is not None:
        text = secret_re.sub(REDACTED, text)
    if "eyJ" in text:
        text = _PATTERNS[0].sub(REDACTED, text)
    lowered = text.lower()
    if "bearer " in lowered:
        text = _PATTERNS[1].sub(REDACTED, text)
    if "authorization" in lowered:
        text = _PATTERNS[2].sub(REDACTED, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message and traceback text before any formatter sees them.

    The formatters below also redact their final output (extras, JSON fields); this filter exists so that any
    other handler someone attaches (a test's caplog, a syslog handler) gets a clean record too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not kill logging; show it raw
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _utc_iso(created: float) -> str:
    stamp = _dt.datetime.fromtimestamp(created, tz=_dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


class TextFormatter(logging.Formatter):
    """zap's console layout (`ts<TAB>LEVEL<TAB>logger<TAB>msg`) followed by `key=value` for extras."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        parts = [_utc_iso(record.created), record.levelname, record.name, message]
        extras = [
            f"{key}={_render(value)}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD_ATTRS and not key.startswith("_")
        ]
        line = "\t".join(parts)
        if extras:
            line += "\t" + " ".join(extras)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return redact(line)


def _render(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' \t"='):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def parse_level(level: str) -> int:
    """Kuma's `--log-level` value to a logging level. The error starts with Kuma's text (`ParseLogLevel` in
    pkg/log/logger.go) and adds the choices. Deliberately lenient about case and spaces (`INFO` works), where
    Kuma takes only the exact lower-case words."""
    key = (level or "").strip().lower()
    if key not in LEVELS:
        raise ValueError(f"unknown log level {json.dumps(level)}: use one of off, info, debug (--log-level)")
    return LEVELS[key]


def setup_logging(
    level: str,
    output_path: str | None,
    max_size_mb: int,
    max_retained: int,
    max_age_days: int,
    fmt: str = "text",
) -> logging.Handler:
    """Configure the root logger once for the whole process; returns the handler (tests flush and inspect it).

    Calling it again replaces what the previous call installed, so a command can configure early (stderr,
    info) and again once flags and env are merged.
    """
    numeric = parse_level(level)
    if fmt not in FORMATS:
        raise ValueError(f"invalid --log-format {fmt!r}: use text or json")
    if output_path:
        # lumberjack treats a max size of 0 as its default, 100 MB (never "no limit").
        size_mb = max_size_mb if max_size_mb > 0 else 100
        from kuma_dp._logsinks import AgeAndCountRotatingFileHandler

        handler: logging.Handler = AgeAndCountRotatingFileHandler(
            output_path, size_mb * 1024 * 1024, max_retained, max_age_days
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from kuma_dp._logsinks import RedactingJsonFormatter

        handler.setFormatter(RedactingJsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    handler.addFilter(RedactingFilter())

    root = logging.getLogger()
    for old in _installed:
        root.removeHandler(old)
        old.close()
    _installed.clear()
    root.addHandler(handler)
    _installed.append(handler)
    root.setLevel(numeric)
    handler.setLevel(numeric)
    logging.captureWarnings(True)
    # Third-party loggers (outside our kuma_dp, kuma_dns and iptables hierarchy) are chatty: only their
    # warnings and errors, unless the operator asked for debug.
    for noisy in ("httpx", "httpcore", "asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING)
    return handler


class EventLimiter:
    """One log line per kind of event per `interval` seconds; repeats in between are counted and the count
    rides on the next line. For events a peer can trigger at will (a refused connection, an oversized body,
    descriptor exhaustion), so an attack costs a few lines a minute, never a flood. Thread-safe."""

    def __init__(self, logger: logging.Logger, interval: float = 30.0) -> None:
        self.logger = logger
        self.interval = interval
        self.counts: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, kind: str) -> int | None:
        """Count one `kind` event; None when it must stay silent, else how many went unlogged before it."""
        now = time.monotonic()
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
                return None
            self._last[kind] = now
            return self._unlogged.pop(kind, 0)

    def log(self, kind: str, level: int, msg: str, *args: Any) -> bool:
        """Log `msg % args` unless a `kind` line went out within `interval`; True when logged."""
        more = self.allow(kind)
        if more is None:
            return False
        if more:
            msg += " (%d more since the last report)"
            args = (*args, more)
        self.logger.log(level, msg, *args)
        return True


#: accept()/socket errors that mean the process is out of descriptors or buffers.
_EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def quiet_loop_errors(loop: Any, interval: float = 30.0) -> EventLimiter:
    """Replace the asyncio loop's exception handler with a rate-limited one.

    asyncio's default logs a full traceback for every failed accept() (each paused 1 s) and every unhandled
    callback error; under descriptor exhaustion that is thousands of tracebacks. Here descriptor exhaustion
    is one line naming the cause and the fix, and any other kind of error keeps its traceback but at most
    once per `interval` seconds per kind.
    """
    limiter = EventLimiter(logging.getLogger("kuma_dp.loop"), interval)

    def handler(lp: Any, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message") or "unhandled error in the event loop")
        if isinstance(exc, OSError) and exc.errno in _EXHAUSTION_ERRNOS:
            limiter.log(
                f"exhausted:{message}",
                logging.WARNING,
                "%s: %s; raise the open-file limit (LimitNOFILE, ulimit -n) if this is not an attack",
                message,
                exc.strerror or exc,
            )
            return
        if limiter.allow(f"{message}:{type(exc).__name__}") is not None:
            lp.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return limiter
