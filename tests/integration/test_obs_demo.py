"""`kuma-dp demo --once` shows observability as a user of Kuma's policies sees it: one trace of the
web -> backend request (spans of both Envoys, through each agent's OpenTelemetry pipe) at the demo's OTLP
collector, MeshMetric's OTLP pushes, and each sidecar's MeshMetric Prometheus backend answering."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


def test_demo_shows_a_trace_pushed_metrics_and_prometheus_backends(envoy_binary: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kuma_dp", "demo", "--once"], capture_output=True, text=True, timeout=140
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    trace = re.search(r"\[ok\] trace ([0-9a-f]{32}) reached the OTLP collector", out)
    assert trace, out
    spans = re.findall(r"span  service=(\w+)\s+(.+)", out)
    assert ("web", "ingress") in spans and ("backend", "ingress") in spans
    assert any(svc == "web" and name.startswith("egress") for svc, name in spans)
    assert re.search(r"\[ok\] MeshMetric pushed \d+ Envoy metrics over OTLP", out)
    assert len(re.findall(r"\[ok\] MeshMetric Prometheus backend of (web|backend)-1", out)) == 2
    assert "all demo processes stopped" in out
