"""Kuma v2.14.3's unit-test tables for app/kuma-dp/pkg/dataplane/metrics, ported case by case:
`server_test.go` (content negotiation, response formats, processMetrics), `merge_test.go` (cluster
merging), `profiles_test.go` (MeshMetric profiles) and `metrics_format_mapper_test.go` (Prometheus →
OpenTelemetry). The data files are Kuma's, copied unchanged under tests/kuma_testdata/ with its licence."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuma_dp.meshmetric._mapping import from_prometheus, to_golden_json
from kuma_dp.meshmetric._profiles import profile_mutator
from kuma_dp.metrics import ContentFormat, merge_bodies, response_format, select_content_type
from kuma_dp.metrics._hijacker import (
    add_prometheus_format,
    add_sidecar_parameters,
    negotiate_content_type,
    remove_query_parameters,
    rewrite_metrics_target,
)
from kuma_dp.metrics._merge import merge_envoy_clusters
from kuma_dp.metrics._text import go_float, parse_text, render_families

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "kuma_testdata" / "metrics"
PROM_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
FMT_TEXT_NEGOTIATED = "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"


# -- server_test.go ----------------------------------------------------------------------------------------
def test_should_honor_app_content_type() -> None:
    received = [ContentFormat.OPENMETRICS_0_0_1, ContentFormat.UNKNOWN, ContentFormat.TEXT]
    assert select_content_type(received, PROM_ACCEPT) is ContentFormat.OPENMETRICS_0_0_1


@pytest.mark.parametrize("accept", [PROM_ACCEPT, "*/*"])
def test_should_negotiate_content_type_based_on_accept_header(accept: str) -> None:
    # expfmt.Negotiate never answers OpenMetrics, whatever the scraper prefers.
    assert select_content_type([ContentFormat.UNKNOWN], accept) is ContentFormat.TEXT
    assert negotiate_content_type(accept) == FMT_TEXT_NEGOTIATED


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, FMT_TEXT_NEGOTIATED),
        (
            "text/plain;version=0.0.4;escaping=allow-utf-8",
            "text/plain; version=0.0.4; charset=utf-8; escaping=allow-utf-8",
        ),
        ("text/plain;escaping=bogus", FMT_TEXT_NEGOTIATED),
        # protobuf is negotiated by expfmt, but we only write text: announced as text (deliberate difference)
        (
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited",
            FMT_TEXT_NEGOTIATED,
        ),
    ],
)
def test_negotiate_escaping_and_protobuf(accept: str | None, expected: str) -> None:
    assert negotiate_content_type(accept) == expected


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited",
            ContentFormat.UNKNOWN,
        ),  # Kuma: FmtProtoDelim, which is outside its priority list: same selection
        (
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=text",
            ContentFormat.UNKNOWN,
        ),
        ("text/plain; charset=UTF-8", ContentFormat.TEXT),
        ("application/openmetrics-text; version=1.0.0", ContentFormat.OPENMETRICS_1_0_0),
        ("application/openmetrics-text; version=0.0.1", ContentFormat.OPENMETRICS_0_0_1),
        ("application/invalid", ContentFormat.UNKNOWN),
        ("application/openmetrics-text", ContentFormat.OPENMETRICS_0_0_1),
        ("application/openmetrics-text; version=2.0.0", ContentFormat.UNKNOWN),
    ],
)
def test_response_format(content_type: str, expected: ContentFormat) -> None:
    assert response_format(content_type) is expected


@pytest.mark.parametrize(
    ("inputs", "fmt", "expected"),
    [
        (
            ["openmetrics_0_1_1.in", "counter.out"],
            ContentFormat.OPENMETRICS_0_0_1,
            "openmetrics_0_0_1-counter.out",
        ),
        (
            ["openmetrics_0_1_1.in", "openmetrics_0_1_1.in", "counter.out"],
            ContentFormat.OPENMETRICS_0_0_1,
            "multi-openmetrics-counter.out",
        ),
        (["prom-text.in", "counter.out"], ContentFormat.TEXT, "prom-text-counter.out"),
    ],
)
def test_process_metrics(inputs: list[str], fmt: ContentFormat, expected: str) -> None:
    bodies = [(DATA / name).read_bytes() for name in inputs]
    merged = merge_bodies(bodies, fmt)
    assert merged == (DATA / expected).read_bytes()
    assert b"\n\n" not in merged  # an OpenMetrics parser rejects blank lines


def test_merged_openmetrics_page_parses_with_an_openmetrics_parser() -> None:
    """Issue 14: blank lines between families (Envoy's text page has them) made the merged page invalid."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    app = b"# TYPE app_requests counter\napp_requests_total 3\n# EOF\n"
    envoy = b"# TYPE envoy_a gauge\nenvoy_a 1\n\n# TYPE envoy_b gauge\nenvoy_b 2\n\n"
    merged = merge_bodies([app, envoy], ContentFormat.OPENMETRICS_1_0_0)
    names = [f.name for f in text_string_to_metric_families(merged.decode())]
    assert names == ["app_requests", "envoy_a", "envoy_b"]


@pytest.mark.parametrize(
    ("query", "modifiers", "expected"),
    [
        ("", [add_prometheus_format], "/stats?format=prometheus&text_readouts="),
        (
            "one=two&three=four&filter=test_.*&usedonly",
            [add_prometheus_format],
            "/stats?filter=test_.%2A&format=prometheus&one=two&text_readouts=&three=four&usedonly=",
        ),
        ("one=two&three=four", [remove_query_parameters], "/stats"),
        ("one=two&three=four", [add_sidecar_parameters], "/stats?one=two&three=four&usedonly="),
        ("one=two&three=four", [add_sidecar_parameters], "/stats?one=two&three=four&usedonly="),
    ],
    ids=[
        "use the admin port",
        "preserve query parameters",
        "remove query parameters",
        "add usedonly and filter parameters",
        "add default usedonly parameter",
    ],
)
def test_rewriting_the_metrics_url(query: str, modifiers: list[Any], expected: str) -> None:
    assert rewrite_metrics_target("/stats", query, *modifiers) == expected


# -- merge_test.go ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "counter",
        "gauge",
        "histogram",
        "summary",
        "untyped",
        "counter-and-noncluster-metrics",
        "counter-with-labels",
        "counter-sparse",
        "counter-status-codes",
    ],
)
def test_should_merge_clusters(name: str) -> None:
    merged = merge_envoy_clusters((DATA / f"{name}.in").read_text())
    got = render_families(parse_text(merged))
    assert sorted(got.splitlines()) == sorted((DATA / f"{name}.out").read_text().splitlines())


# -- profiles_test.go -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "all",
        "basic",
        "basic_and_none",
        "all_merged",
        "none",
        "include",
        "exclude",
        "mixed",
        "basic_user_labels",
    ],
)
def test_should_filter_according_to_profiles_data(name: str) -> None:
    spec = yaml.safe_load((DATA / "profiles" / f"{name}.yaml").read_text())
    families = parse_text((DATA / "profiles" / f"{name}.in").read_text())
    profile_mutator((spec.get("default") or {}).get("sidecar"))(families)
    got = render_families(families).splitlines()
    assert sorted(got) == sorted((DATA / "profiles" / f"{name}.golden").read_text().splitlines())


# -- metrics_format_mapper_test.go ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["counter", "gauge", "histogram", "summary"])
def test_should_convert_from_prometheus_to_opentelemetry(name: str) -> None:
    t = int(datetime(2024, 1, 1, 1, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000_000 + 1
    families = parse_text((DATA / "otel" / f"{name}.in").read_text())
    got = to_golden_json(from_prometheus(families, "0.0.0", [("extraLabel", "test-label")], t))
    assert got == json.loads((DATA / "otel" / f"{name}.golden.json").read_text())


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (0.0, "0"),
        (-0.0, "0"),
        (0.5, "0.5"),
        (1e6, "1e+06"),
        (123456.0, "123456"),
        (1234567.0, "1.234567e+06"),
        (1e-5, "1e-05"),
        (0.0001, "0.0001"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_numbers_are_written_as_go_writes_them(value: float, text: str) -> None:
    assert go_float(value) == text
