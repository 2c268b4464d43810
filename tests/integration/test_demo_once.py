"""`kuma-dp demo` as a user runs it: the checks pass, and nothing is left running afterwards."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _leftovers(workdir: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if workdir in cmdline:
            found.append(f"{proc.info['pid']}: {cmdline}")
    return found


def test_demo_once_passes_and_cleans_up(envoy_binary: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kuma_dp", "demo", "--once"], capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"\[ok\] backend\.mesh -> 240\.0\.0\.\d+", out), out
    assert "backend response header  server: envoy" in out
    assert "x-envoy-upstream-service-time:" in out
    assert "all demo processes stopped" in out
    workdir = re.search(r"work dir (/tmp/kdp-demo-\S+)\)", out).group(1)
    assert _leftovers(workdir) == []


def test_demo_stops_cleanly_on_ctrl_c(envoy_binary: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kuma_dp", "demo", "--keep-workdir"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 100
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        assert any("Press Ctrl-C" in line for line in lines), "".join(lines)
        workdir = re.search(r"work dir (/tmp/kdp-demo-\S+)\)", lines[0]).group(1)
        assert _leftovers(workdir)  # the mesh is up: CP, apps, kuma-dp runs (Envoys)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + rest
    assert "all demo processes stopped" in rest
    assert _leftovers(workdir) == []
    shutil.rmtree(workdir, ignore_errors=True)
