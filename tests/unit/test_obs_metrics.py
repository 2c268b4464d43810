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
)
from kuma_dp.metrics._hijacker import negotiate
from kuma_dp.paths import proxy_socket_path as socket_path

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
    # Nothing usable from the apps: expfmt.Negotiate decides, and it never picks OpenMetrics (Kuma's
    # "should negotiate content-type based on Accept header").
    assert select_content_type([ContentFormat.UNKNOWN], PROM_ACCEPT) is TEXT
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


ENVOY_PAGE = """\
# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="ads_cluster"} 4
envoy_cluster_upstream_rq_total{envoy_cluster_name="backend-0123456789abcdef"} 10
envoy_cluster_upstream_rq_total{envoy_cluster_name="backend-fedcba9876543210"} 5
envoy_cluster_upstream_rq_total{envoy_cluster_name="backend-not-a-hash"} 1
envoy_cluster_upstream_rq_total{envoy_cluster_name="kuma_envoy_admin"} 2
# TYPE envoy_cluster_upstream_cx_connect_ms histogram
envoy_cluster_upstream_cx_connect_ms_bucket{envoy_cluster_name="db-aaaaaaaaaaaaaaaa",le="0.5"} 1
envoy_cluster_upstream_cx_connect_ms_bucket{envoy_cluster_name="db-aaaaaaaaaaaaaaaa",le="+Inf"} 2
envoy_cluster_upstream_cx_connect_ms_bucket{envoy_cluster_name="db-bbbbbbbbbbbbbbbb",le="0.5"} 3
envoy_cluster_upstream_cx_connect_ms_bucket{envoy_cluster_name="db-bbbbbbbbbbbbbbbb",le="+Inf"} 3
envoy_cluster_upstream_cx_connect_ms_sum{envoy_cluster_name="db-aaaaaaaaaaaaaaaa"} 0.25
envoy_cluster_upstream_cx_connect_ms_sum{envoy_cluster_name="db-bbbbbbbbbbbbbbbb"} 1.5
envoy_cluster_upstream_cx_connect_ms_count{envoy_cluster_name="db-aaaaaaaaaaaaaaaa"} 2
envoy_cluster_upstream_cx_connect_ms_count{envoy_cluster_name="db-bbbbbbbbbbbbbbbb"} 3
# TYPE envoy_http_downstream_rq_total counter
envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="admin"} 7
envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="inbound_10.0.0.1_8080"} 9
# TYPE envoy_server_live gauge
envoy_server_live{} 1
envoy_server_uptime 12
"""


def test_merge_envoy_clusters_like_kuma() -> None:
    from kuma_dp.metrics._merge import merge_envoy_clusters

    merged = merge_envoy_clusters(ENVOY_PAGE)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(merged)
        for s in f.samples
    }
    mesh = ("kuma_io_mesh_traffic", "true")
    rq = "envoy_cluster_upstream_rq_total"
    assert samples[(rq, (("envoy_cluster_name", "backend"), mesh))] == 15
    assert samples[(rq, (("envoy_cluster_name", "backend-not-a-hash"), mesh))] == 1
    assert samples[(rq, (("envoy_cluster_name", "ads_cluster"),))] == 4  # bootstrap cluster: not mesh traffic
    assert samples[(rq, (("envoy_cluster_name", "kuma_envoy_admin"),))] == 2
    h = "envoy_cluster_upstream_cx_connect_ms"
    assert samples[(h + "_bucket", (("envoy_cluster_name", "db"), mesh, ("le", "0.5")))] == 4
    assert samples[(h + "_bucket", (("envoy_cluster_name", "db"), mesh, ("le", "+Inf")))] == 5
    assert samples[(h + "_sum", (("envoy_cluster_name", "db"), mesh))] == 1.75
    assert samples[(h + "_count", (("envoy_cluster_name", "db"), mesh))] == 5
    http = "envoy_http_downstream_rq_total"
    assert samples[(http, (("envoy_http_conn_manager_prefix", "admin"),))] == 7
    assert samples[(http, (("envoy_http_conn_manager_prefix", "inbound_10.0.0.1_8080"), mesh))] == 9
    assert samples[("envoy_server_live", ())] == 1 and samples[("envoy_server_uptime", ())] == 12
    assert len([k for k in samples if k[0] == rq]) == 4  # the two hashed clusters became one series
    assert merged.count("# TYPE") == ENVOY_PAGE.count("# TYPE")
