"""Stopping what a test started, one way for every test: SIGTERM, then SIGKILL after a grace period."""

from __future__ import annotations

import signal
import subprocess


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; safe to call twice."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
