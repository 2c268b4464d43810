"""`kuma-dp wait` against the real Envoy admin API, over TCP and over its unix socket, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kuma_dp_dev.harness.ports import free_port
from kuma_dp_dev.harness.procs import stop
from tests.conftest import REPO

pytestmark = pytest.mark.integration

KUMA_DP = [sys.executable, "-m", "kuma_dp"]


def write_bootstrap(path: Path, **kwargs: object) -> Path:
    args = [sys.executable, "-m", "kuma_dp_dev.harness.static_agent", "write-bootstrap", str(path)]
    for key, value in kwargs.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    subprocess.run(args, check=True)
    return path


@pytest.fixture
def envoys(envoy_binary: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        stop(p, grace=10)


def start_envoy(envoys: list[subprocess.Popen[bytes]], binary: str, bootstrap: Path) -> None:
    cmd = [binary, "--config-path", str(bootstrap), "--disable-hot-restart", "--log-level", "error"]
    envoys.append(subprocess.Popen([*cmd, "--concurrency", "1"], stdout=subprocess.DEVNULL))


def test_wait_started_before_envoy_succeeds_once_envoy_is_live(
    short_tmp: Path, envoy_binary: str, envoys: list[subprocess.Popen[bytes]]
) -> None:
    admin_port = free_port()
    bootstrap = write_bootstrap(short_tmp / "b.yaml", admin_port=admin_port)
    waiter = subprocess.Popen(
        [
            *KUMA_DP,
            "wait",
            "--url",
            f"http://127.0.0.1:{admin_port}/ready",
            "--timeout",
            "60s",
            "--check-frequency",
            "100ms",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # kept: the point is that nothing happens for a while (no Envoy, no answer)
    assert waiter.poll() is None, "wait returned before Envoy existed"
    start_envoy(envoys, envoy_binary, bootstrap)
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert out.splitlines() == ["Waiting 1m0s for Dataplane to be ready", "Dataplane is ready!"]
    assert "Dataplane not ready yet" in err


def test_wait_on_admin_unix_socket(
    short_tmp: Path, envoy_binary: str, envoys: list[subprocess.Popen[bytes]]
) -> None:
    sock = short_tmp / "kuma-envoy-admin.sock"
    start_envoy(envoys, envoy_binary, write_bootstrap(short_tmp / "b.yaml", admin_socket=sock))
    done = subprocess.run(
        [
            *KUMA_DP,
            "wait",
            "--unix-socket",
            str(sock),
            "--url",
            "http://10.0.0.1/ignored",
            "--timeout",
            "60s",
            "--check-frequency",
            "100ms",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("Dataplane is ready!\n")


def test_wait_times_out_with_kumas_message() -> None:
    port = free_port()
    done = subprocess.run(
        [
            *KUMA_DP,
            "wait",
            "--url",
            f"http://localhost:{port}/ready",
            "--timeout",
            "1s",
            "--check-frequency",
            "200ms",
            "--request-timeout",
            "100ms",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "Error: timeout occurred while waiting for Dataplane to be ready" in done.stderr
    assert "connection refused" in done.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://192.0.2.10:9901/ready", "is not a loopback address"),
        ("https://127.0.0.1:9901/ready", "only http:// URLs are supported"),
    ],
)
def test_wait_refuses_non_local_urls(url: str, message: str) -> None:
    done = subprocess.run(
        [*KUMA_DP, "wait", "--url", url], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert message in done.stderr and "--url" in done.stderr
