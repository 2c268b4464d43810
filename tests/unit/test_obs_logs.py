"""Logging: Kuma's levels, rotation rules, JSON lines, and no token in any line."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kuma_dp import logs

pytestmark = pytest.mark.unit

# A real-looking dataplane token (header.payload.signature, base64url).
TOKEN = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEiLCJ0eXAiOiJKV1QifQ."
    "eyJOYW1lIjoiZHAtMSIsIk1lc2giOiJkZWZhdWx0IiwiVGFncyI6e319."
    "c2lnbmF0dXJlLWJ5dGVzLW9mLXRoZS1jb250cm9sLXBsYW5lLWtleQ"
)
PLAIN_SECRET = "s3cr3t-not-a-jwt-value"


@dataclasses.dataclass
class FakeConfig:
    """Shaped like the run command's config: the token sits in an ordinary field."""

    name: str
    mesh: str
    dataplane_token: str
    headers: dict[str, str]


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    logs._installed.clear()


def _log_everything(log: logging.Logger) -> None:
    cfg = FakeConfig("dp-1", "default", TOKEN, {"Authorization": f"Bearer {TOKEN}"})
    log.info("starting with config %s", cfg)
    log.info("config as extra", extra={"config": dataclasses.asdict(cfg)})
    log.debug("request headers %r", {"authorization": PLAIN_SECRET + "-header"})
    log.info("plain secret registered: %s", PLAIN_SECRET)
    try:
        raise RuntimeError(f"bootstrap rejected token {TOKEN}")
    except RuntimeError:
        log.exception("bootstrap failed")
    log.warning("Bearer %s", "abcdefghijklmnop.qrstuvwxyz")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_token_in_any_line(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "agent.log"
    handler = logs.setup_logging("debug", str(out), 100, 3, 30, fmt)
    logs.add_secret(PLAIN_SECRET)
    _log_everything(logging.getLogger("kuma_dp.test"))
    handler.flush()
    text = out.read_text()
    assert "bootstrap failed" in text and "RuntimeError" in text  # the events themselves are there
    assert "dp-1" in text
    for secret in (TOKEN, TOKEN.split(".")[1], PLAIN_SECRET, "abcdefghijklmnop.qrstuvwxyz"):
        assert secret not in text
    assert logs.REDACTED in text
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def test_json_lines_parse_with_zap_field_names(tmp_path: Path) -> None:
    out = tmp_path / "agent.json.log"
    handler = logs.setup_logging("info", str(out), 100, 3, 30, "json")
    log = logging.getLogger("kuma_dp.envoy")
    log.info("envoy started", extra={"pid": 42, "argv": ["--config-path", "x"]})
    log.debug("not shown at info")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("boom")
    handler.flush()
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2
    first, second = records
    assert first["msg"] == "envoy started" and first["level"] == "info" and first["logger"] == "kuma_dp.envoy"
    assert first["pid"] == 42 and first["argv"] == ["--config-path", "x"]
    assert first["ts"].endswith("Z")
    assert second["level"] == "error" and "ZeroDivisionError" in second["error"]


def test_levels_off_and_bad_values(tmp_path: Path) -> None:
    out = tmp_path / "off.log"
    handler = logs.setup_logging("off", str(out), 100, 3, 30)
    logging.getLogger("x").error("must not appear")
    handler.flush()
    assert out.read_text() == ""
    with pytest.raises(ValueError, match='unknown log level "trace"'):
        logs.setup_logging("trace", None, 100, 3, 30)
    with pytest.raises(ValueError, match="--log-format 'xml'"):
        logs.setup_logging("info", None, 100, 3, 30, "xml")


def test_rotation_keeps_count_and_age(tmp_path: Path) -> None:
    out = tmp_path / "rot.log"
    handler = logs.setup_logging("info", str(out), 1, 2, 1)  # 1 MB, keep 2, 1 day
    assert isinstance(handler, logs.AgeAndCountRotatingFileHandler)
    handler.maxBytes = 2000  # a small size so the test writes little; the flag's unit is tested below
    old = tmp_path / "rot-2000-01-01T00-00-00.000.log"
    old.write_text("ancient\n")
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    log = logging.getLogger("rot")
    for i in range(200):
        log.info("line %d %s", i, "x" * 50)
    handler.flush()
    backups = handler.backups()
    assert len(backups) == 2  # pruned by count
    assert old not in backups  # pruned by age
    assert all(b.stat().st_size <= 2100 for b in backups)
    assert "line 199" in out.read_text()
    assert logs.setup_logging("info", str(out), 7, 0, 0).maxBytes == 7 * 1024 * 1024
    assert logs.setup_logging("info", str(out), 0, 0, 0).maxBytes == 100 * 1024 * 1024  # lumberjack default


def test_stderr_default_text_layout() -> None:
    code = (
        "import logging; from kuma_dp.logs import setup_logging;"
        "setup_logging('info', None, 100, 1000, 30);"
        f"logging.getLogger('kuma_dp').info('hello %s', 'world', extra={{'mesh': 'default'}});"
        f"logging.getLogger('kuma_dp').info('token={TOKEN}')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert proc.stdout == ""
    first, second = proc.stderr.splitlines()
    ts, level, logger, message, extras = first.split("\t")
    assert (level, logger, message, extras) == ("INFO", "kuma_dp", "hello world", "mesh=default")
    assert ts.endswith("Z")
    assert TOKEN not in second and logs.REDACTED in second
