"""The log file handler (lumberjack's rotation) and the JSON formatter (zap's field names).

Split from kuma_dp.logs so that the common case, text lines on stderr, loads neither logging.handlers nor
python-json-logger on `kuma-dp run`'s start-up path; `kuma_dp.logs.setup_logging` imports this module only
when `--log-output-path` or `--log-format json` asks for them.
"""

from __future__ import annotations

import datetime as _dt
import logging
import logging.handlers
import os
import time
from pathlib import Path
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from kuma_dp.logs import _utc_iso, redact


class RedactingJsonFormatter(JsonFormatter):
    """python-json-logger with zap's field names; the serialised line is redacted as a whole."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger", "message": "msg", "exc_info": "error"},
            json_default=str,
            json_ensure_ascii=False,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["ts"] = _utc_iso(record.created)
        super().add_fields(log_data, record, message_dict)
        log_data["level"] = record.levelname.lower()

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class AgeAndCountRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Size rotation with lumberjack's retention rules.

    lumberjack renames the full file to `<name>-<UTC timestamp><ext>` and then prunes backups beyond
    `max_retained` (0 = keep all) and older than `max_age_days` (0 = keep forever). The standard handler's
    numbered backups cannot express "keep all" (backupCount=0 truncates), so we rename and prune ourselves.
    The file is created 0600: logs are operator data and need not be world-readable.
    """

    def __init__(self, filename: str, max_bytes: int, max_retained: int, max_age_days: int) -> None:
        self.max_retained = max(0, max_retained)
        self.max_age_seconds = max(0, max_age_days) * 86400
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(filename, mode="a", maxBytes=max(0, max_bytes), backupCount=0, encoding="utf-8")

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)

    def backup_name(self, when: float) -> str:
        base, ext = os.path.splitext(self.baseFilename)
        stamp = _dt.datetime.fromtimestamp(when, tz=_dt.UTC).strftime("%Y-%m-%dT%H-%M-%S.%f")[:-3]
        name = f"{base}-{stamp}{ext}"
        n = 1
        while os.path.exists(name):  # two rotations in one millisecond
            name = f"{base}-{stamp}.{n}{ext}"
            n += 1
        return name

    def backups(self) -> list[Path]:
        """Rotated files of this log, oldest first."""
        path = Path(self.baseFilename)
        stem, ext = os.path.splitext(path.name)
        found = [p for p in path.parent.glob(f"{stem}-*{ext}") if p.name != path.name]
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    def doRollover(self) -> None:
        if self.stream:
            self.stream.close()
            self.stream = None  # type: ignore[assignment]
        if os.path.exists(self.baseFilename):
            os.rename(self.baseFilename, self.backup_name(time.time()))
        self.prune()
        if not self.delay:
            self.stream = self._open()

    def prune(self) -> None:
        backups = self.backups()
        now = time.time()
        doomed: list[Path] = []
        if self.max_age_seconds:
            doomed += [p for p in backups if now - p.stat().st_mtime > self.max_age_seconds]
        keep = [p for p in backups if p not in doomed]
        if self.max_retained and len(keep) > self.max_retained:
            doomed += keep[: len(keep) - self.max_retained]
        for p in doomed:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
