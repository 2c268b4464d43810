"""Pure parts of the metrics hijacker and the access-log line format, checked against Kuma's behaviour."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kuma_dp.accesslog import parse_line
from kuma_dp.metrics import (
    AgentMetrics,
    ContentFormat,
    ScrapeTarget,
    merge_bodies,
    response_format,
    select_content_type,
    socket_path,
)
from kuma_dp.metrics._hijacker import negotiate

pytestmark = pytest.mark.unit

PROM_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
OM = ContentFormat.OPENMETRICS_1_0_0
OM001 = ContentFormat.OPENMETRICS_0_0_1
TEXT = ContentFormat.TEXT


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/plain; charset=UTF-8", TEXT),
        ("text/plain; version=0.0.4", TEXT),
        ("application/openmetrics-text; version=1.0.0", OM),
        ("application/openmetrics-text; version=0.0.1", OM001),
        ("application/openmetrics-text", OM001),
        ("application/openmetrics-text; version=2.0.0", ContentFormat.UNKNOWN),
        (
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=text",
            ContentFormat.UNKNOWN,
        ),
        ("application/invalid", ContentFormat.UNKNOWN),
        (None, ContentFormat.UNKNOWN),
    ],
)
def test_response_format_like_kuma(content_type: str | None, expected: ContentFormat) -> None:
    assert response_format(content_type) is expected


def test_select_content_type_prefers_what_apps_sent_then_negotiates() -> None:
    # Kuma's "should honor app content-type": 0.0.1 beats text even when the scraper prefers 1.0.0.
    assert select_content_type([OM001, ContentFormat.UNKNOWN, TEXT], PROM_ACCEPT) is OM001
    assert select_content_type([TEXT, OM, OM001], None) is OM
    assert select_content_type([TEXT], PROM_ACCEPT) is TEXT
    # Nothing usable from the apps: the scraper's Accept decides, text when it says nothing we make.
    assert select_content_type([ContentFormat.UNKNOWN], PROM_ACCEPT) is OM
    assert select_content_type([], "*/*") is TEXT
    assert select_content_type([], "application/json") is TEXT
    assert negotiate("text/plain;q=0.9, application/openmetrics-text;version=0.0.1;q=0.3") is TEXT


def test_merge_bodies_drops_eof_and_ends_openmetrics_with_one() -> None:
    om = b"# TYPE a counter\na_total 1.0\n# EOF\n"
    text = b"# TYPE envoy_x counter\nenvoy_x 2\n"
    merged = merge_bodies([om, om, b"", text], OM001)
    assert merged.count(b"# EOF") == 1 and merged.endswith(b"envoy_x 2\n# EOF\n")
    merged_text = merge_bodies([om, b"no_newline 3"], TEXT)
    assert b"# EOF" not in merged_text
    assert merged_text == b"# TYPE a counter\na_total 1.0\nno_newline 3\n"
    samples = {
        s.name: s.value for f in text_string_to_metric_families(merged_text.decode()) for s in f.samples
    }
    assert samples == {"a_total": 1.0, "no_newline": 3.0}


def test_socket_path_cut_to_98_before_sock() -> None:
    assert socket_path("/tmp", "kuma-mh", "dp-1", "default") == "/tmp/kuma-mh-dp-1-default.sock"
    long = socket_path("/tmp", "kuma-al", "x" * 200, "mesh")
    assert len(long) == 98 + len(".sock") and long.startswith("/tmp/kuma-al-xxx") and long.endswith("x.sock")


def test_scrape_target_from_aggregate() -> None:
    t = ScrapeTarget.from_aggregate({"name": "app", "address": "fd00::1", "port": 8080, "path": "/m"})
    assert (t.name, t.port, t.path, t.is_ipv6) == ("app", 8080, "/m", True)
    assert ScrapeTarget.from_aggregate({"port": "9000"}).address == "127.0.0.1"
    with pytest.raises(ValueError, match="needs an address and a port"):
        ScrapeTarget.from_aggregate({"name": "x"})


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"127.0.0.1:5000;GET / 200\n", ("127.0.0.1:5000", b"GET / 200")),
        (b"logs.example:514;a;b;c\n", ("logs.example:514", b"a;b;c")),
        (b'{"address":"127.0.0.1:5000","message":"plain"}\n', ("127.0.0.1:5000", b"plain")),
        (b'{"address":"[::1]:5000","message":{"code":200}}\n', ("[::1]:5000", b'{"code":200}')),
        (b"no separator\n", None),
        (b"127.0.0.1;missing port\n", None),
        (b'{"message":"no address"}\n', None),
        (b"{broken json\n", None),
        (b"\n", None),
    ],
)
def test_access_log_line_forms(line: bytes, expected: tuple[str, bytes] | None) -> None:
    assert parse_line(line) == expected


def test_agent_metrics_names_and_phases() -> None:
    m = AgentMetrics(started_at=0.0)
    m.envoy_started()
    m.envoy_started()
    m.envoy_exited(-9)
    m.envoy_exited(1)
    m.bootstrap_attempt(False, 0.2)
    m.bootstrap_attempt(True, 0.1)
    m.readiness_state("READY")
    first = m.phase_done("first_dns_table", since=10.0)
    assert m.phase_done("first_dns_table", since=0.0) == first  # only the first completion counts
    with m.phase("bootstrap"):
        pass
    with pytest.raises(ValueError, match="unknown start-up phase 'warmup'"):
        m.phase_done("warmup")
    from prometheus_client import generate_latest

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(generate_latest(m.registry).decode())
        for s in f.samples
    }
    assert samples[("kuma_dp_envoy_starts_total", ())] == 2
    assert samples[("kuma_dp_envoy_restarts_total", ())] == 1
    assert samples[("kuma_dp_envoy_exits_total", (("code", "signal:9"),))] == 1
    assert samples[("kuma_dp_envoy_exits_total", (("code", "1"),))] == 1
    assert samples[("kuma_dp_bootstrap_attempts_total", (("result", "failure"),))] == 1
    assert samples[("kuma_dp_bootstrap_duration_seconds_count", ())] == 2
    assert samples[("kuma_dp_control_plane_reachable", ())] == 1
    assert samples[("kuma_dp_readiness_state", (("kuma_dp_readiness_state", "READY"),))] == 1
    assert ("kuma_dp_startup_phase_duration_seconds", (("phase", "bootstrap"),)) in samples
    assert set(m.phases()) == {"bootstrap", "first_dns_table"}
