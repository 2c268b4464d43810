"""A missing ../shared (Kuma's goldens) skips the conformance tests on a developer's machine and fails the run
under CI=true, where a skip would let the run pass without them (tests/conftest.py `missing`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

ONE_CONFORMANCE_TEST = "tests/conformance/test_conformance_dns_generator.py::test_dns_payload_bytes_and_etag"
ABSENT = "/nonexistent"


def _pytest(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["KUMA_DP_SHARED_DIR"] = ABSENT
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsE", "-p", "no:cacheprovider", ONE_CONFORMANCE_TEST],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ci_fails_the_run_naming_the_path_and_the_variable() -> None:
    done = _pytest(ci="true")
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "1 error" in out and "skipped" not in out, out
    assert f"{ABSENT}/conformance/kuma-2.14.3" in out and "KUMA_DP_SHARED_DIR" in out, out


@pytest.mark.parametrize("ci", [None, "false"])
def test_without_ci_it_is_a_skip_with_the_reason(ci: str | None) -> None:
    done = _pytest(ci=ci)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "1 skipped" in out, out
    assert f"{ABSENT}/conformance/kuma-2.14.3" in out and "KUMA_DP_SHARED_DIR" in out, out
