"""The readiness decision table (`app/kuma-dp/pkg/dataplane/readiness/component.go`) and the DNS gate's 15 s
rule, as pure functions."""

from __future__ import annotations

import pytest

from kuma_dp.component import backoff_delay
from kuma_dp.envoy import AdminAddress
from kuma_dp.readiness import ReadinessState, decide, readiness_bind_host

pytestmark = pytest.mark.unit


def test_terminating_wins_over_everything() -> None:
    a = decide(terminating=True, dns_gate_open=False, envoy_status=200, envoy_body="LIVE", admin_unix=True)
    assert (a.status, a.body) == (503, "TERMINATING")


def test_closed_dns_gate_is_not_ready() -> None:
    a = decide(terminating=False, dns_gate_open=False, envoy_status=200, envoy_body="LIVE", admin_unix=False)
    assert (a.status, a.body) == (503, "NOT_READY")


def test_unix_admin_proxies_envoy_and_tcp_admin_says_ready() -> None:
    a = decide(
        terminating=False,
        dns_gate_open=True,
        envoy_status=503,
        envoy_body="PRE_INITIALIZING",
        admin_unix=True,
    )
    assert (a.status, a.body) == (503, "PRE_INITIALIZING")
    a = decide(terminating=False, dns_gate_open=True, envoy_status=200, envoy_body="LIVE", admin_unix=True)
    assert (a.status, a.body) == (200, "LIVE")
    a = decide(terminating=False, dns_gate_open=True, envoy_status=200, envoy_body="LIVE", admin_unix=False)
    assert (a.status, a.body) == (200, "READY")
    a = decide(terminating=False, dns_gate_open=True, envoy_status=503, envoy_body="INIT", admin_unix=False)
    assert (a.status, a.body) == (503, "envoy not ready\n")
    a = decide(terminating=False, dns_gate_open=True, envoy_status=None, envoy_body="", admin_unix=True)
    assert (a.status, a.body) == (503, "envoy not ready\n")


def test_dns_gate_opens_on_first_records_or_after_15_seconds() -> None:
    state = ReadinessState(started_at=100.0)
    assert state.dns_gate_open(now=100.0)  # no DNS component: no gate
    state.dns_gate = True
    assert not state.dns_gate_open(now=114.9)
    assert state.dns_gate_open(now=115.0)
    state.dns_ready.set()
    assert state.dns_gate_open(now=100.0)


def test_bind_host_follows_kuma() -> None:
    assert readiness_bind_host(AdminAddress("127.0.0.2", 9901), on_kubernetes=True) == "127.0.0.2"
    uds = AdminAddress(socket_path="/w/a.sock")
    assert readiness_bind_host(uds, on_kubernetes=False) == "127.0.0.1"
    assert readiness_bind_host(uds, on_kubernetes=True) == "0.0.0.0"


@pytest.mark.parametrize("r", [0.0, 0.5, 0.999])
def test_backoff_is_exponential_jittered_and_capped(r: float) -> None:
    delays = [backoff_delay(n, 5.0, 60.0, rand=lambda: r) for n in range(8)]
    factor = 0.8 + 0.4 * r
    assert delays[:4] == pytest.approx([5 * factor, 10 * factor, 20 * factor, 40 * factor])
    assert all(d <= 60.0 for d in delays)
    assert delays[-1] == pytest.approx(min(60.0, 60.0 * factor))
