"""Prometheus families → OpenTelemetry metrics, as Kuma maps them before pushing over OTLP:
app/kuma-dp/pkg/dataplane/metrics/metrics_format_mapper.go (`FromPrometheusMetrics`).

Counters become monotonic cumulative sums, gauges stay gauges, untyped families are skipped (Kuma logs
"unsupported metric type"); histograms become explicit-bucket histograms with per-bucket (not cumulative)
counts; summaries become a gauge per quantile (attribute `quantile`) plus `_count` and `_sum` monotonic sums.
Labels `otel_scope_name`/`_version`/`_schema_url`/`otel_scope_*` choose the instrumentation scope; a sample
without any of them goes to the scope `kuma` at the agent's version. Extra labels from the policy are appended
to every data point; attributes are a set sorted by key (Go's `attribute.NewSet`).

The result is plain data (`ScopeMetrics`); `to_otlp_request` turns it into an `ExportMetricsServiceRequest`
(opentelemetry-proto, imported only when a backend is configured).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kuma_dp.metrics._text import Family, go_float

__all__ = ["Metric", "Point", "Scope", "from_prometheus", "to_golden_json", "to_otlp_request"]

Attrs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Scope:
    name: str = ""
    version: str = ""
    schema_url: str = ""
    attributes: Attrs = ()


@dataclass
class Point:
    attributes: Attrs
    time_ns: int
    value: float = 0.0
    count: int = 0
    total: float = 0.0
    bounds: list[float] = field(default_factory=list)
    bucket_counts: list[int] = field(default_factory=list)


@dataclass
class Metric:
    name: str
    description: str
    kind: str  # "gauge" | "sum" | "histogram"
    points: list[Point]


def _attrs(pairs: list[tuple[str, str]]) -> Attrs:
    # attribute.NewSet: sorted by key, the last value of a duplicate key wins
    return tuple(sorted(dict(pairs).items()))


def _scope(labels: Attrs, version: str) -> tuple[Scope, list[tuple[str, str]]]:
    attributes: list[tuple[str, str]] = []
    scope_attrs: list[tuple[str, str]] = []
    name = ver = schema = ""
    for k, v in labels:
        if not k.startswith("otel_scope_"):
            attributes.append((k, v))
        elif k == "otel_scope_name":
            name = v
        elif k == "otel_scope_version":
            ver = v
        elif k == "otel_scope_schema_url":
            schema = v
        else:
            scope_attrs.append((k.removeprefix("otel_scope_"), v))
    if len(attributes) == len(labels):
        name, ver = "kuma", version
    return Scope(name, ver, schema, _attrs(scope_attrs)), attributes


def _time(ts_ms: int | None, fallback_ns: int) -> int:
    return ts_ms * 1_000_000 if ts_ms is not None else fallback_ns


def from_prometheus(
    families: dict[str, Family], kuma_version: str, extra: list[tuple[str, str]], request_time_ns: int
) -> dict[Scope, list[Metric]]:
    """`FromPrometheusMetrics`: scope -> metrics, each family split by the scopes of its samples."""
    out: dict[Scope, list[Metric]] = {}

    def add(fam_name: str, desc: str, kind: str, per_scope: dict[Scope, list[Point]]) -> None:
        for scope, points in per_scope.items():
            out.setdefault(scope, []).append(Metric(fam_name, desc, kind, points))

    for fam in families.values():
        desc = fam.help or ""
        if fam.type not in ("counter", "gauge", "histogram", "summary"):
            continue  # Kuma: "got unsupported metric type"
        main: dict[Scope, list[Point]] = {}
        counts: dict[Scope, list[Point]] = {}
        sums: dict[Scope, list[Point]] = {}
        for s in fam.samples:
            scope, attributes = _scope(s.labels, kuma_version)
            attributes = attributes + list(extra)
            t = _time(s.timestamp_ms, request_time_ns)
            if fam.type in ("counter", "gauge"):
                main.setdefault(scope, []).append(Point(_attrs(attributes), t, value=s.value))
            elif fam.type == "histogram":
                bounds, buckets, prev = [], [], 0.0
                for i, (le, cum) in enumerate(s.buckets):
                    if not (math.isinf(le) and le > 0):
                        bounds.append(le)
                    buckets.append(int(cum - prev) if i > 0 else int(cum))
                    prev = cum
                main.setdefault(scope, []).append(
                    Point(
                        _attrs(attributes),
                        t,
                        count=int(s.sample_count),
                        total=s.sample_sum,
                        bounds=bounds,
                        bucket_counts=buckets,
                    )
                )
            else:
                for q, v in s.quantiles:
                    main.setdefault(scope, []).append(
                        Point(_attrs([*attributes, ("quantile", go_float(q))]), t, value=v)
                    )
                counts.setdefault(scope, []).append(Point(_attrs(attributes), t, value=float(s.sample_count)))
                sums.setdefault(scope, []).append(Point(_attrs(attributes), t, value=s.sample_sum))
        if fam.type == "summary":
            add(fam.name, desc, "gauge", main)
            add(fam.name + "_count", desc, "sum", counts)
            add(fam.name + "_sum", desc, "sum", sums)
        else:
            add(
                fam.name, desc, {"counter": "sum", "gauge": "gauge", "histogram": "histogram"}[fam.type], main
            )
    return out


# -- Go's JSON of metricdata (what Kuma's golden files hold) ---------------------------------------------
def _go_time(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return base + (f".{frac:09d}".rstrip("0") if frac else "") + "Z"


def _go_attrs(attrs: Attrs) -> list[dict[str, Any]] | None:
    return [{"Key": k, "Value": {"Type": "STRING", "Value": v}} for k, v in attrs] or None


def _go_number(v: float) -> Any:
    return int(v) if v == int(v) and abs(v) < 2**53 else v


def to_golden_json(scoped: dict[Scope, list[Metric]]) -> list[dict[str, Any]]:
    """The structure Kuma's mapper test marshals (metrics sorted by name, scopes by name)."""
    out = []
    for scope, metrics in sorted(scoped.items(), key=lambda kv: kv[0].name):
        ms = []
        for m in sorted(metrics, key=lambda m: m.name):
            points = []
            for p in m.points:
                d: dict[str, Any] = {
                    "Attributes": _go_attrs(p.attributes) or [],
                    "StartTime": "0001-01-01T00:00:00Z",
                    "Time": _go_time(p.time_ns),
                }
                if m.kind == "histogram":
                    d |= {
                        "Count": p.count,
                        "Bounds": [_go_number(b) for b in p.bounds],
                        "BucketCounts": p.bucket_counts,
                        "Min": None,
                        "Max": None,
                        "Sum": _go_number(p.total),
                    }
                else:
                    d["Value"] = _go_number(p.value)
                points.append(d)
            data: dict[str, Any] = {"DataPoints": points}
            if m.kind == "sum":
                data |= {"Temporality": "CumulativeTemporality", "IsMonotonic": True}
            elif m.kind == "histogram":
                data["Temporality"] = "CumulativeTemporality"
            ms.append({"Name": m.name, "Description": m.description, "Unit": "", "Data": data})
        out.append(
            {
                "scope": {
                    "Name": scope.name,
                    "Version": scope.version,
                    "SchemaURL": scope.schema_url,
                    "Attributes": _go_attrs(scope.attributes),
                },
                "metrics": ms,
            }
        )
    return out


# -- OTLP protobuf ------------------------------------------------------------------------------------------
def to_otlp_request(scoped: dict[Scope, list[Metric]], resource: dict[str, str] | None = None) -> Any:
    """An `ExportMetricsServiceRequest` carrying `scoped` (opentelemetry-proto, imported here: lazily)."""
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as svc
    from opentelemetry.proto.common.v1 import common_pb2 as common
    from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb
    from opentelemetry.proto.resource.v1 import resource_pb2

    def kvs(attrs: Attrs | list[tuple[str, str]]) -> list[Any]:
        return [common.KeyValue(key=k, value=common.AnyValue(string_value=v)) for k, v in attrs]

    cumulative = pb.AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    scope_metrics = []
    for scope, metrics in scoped.items():
        pbm = []
        for m in metrics:
            if m.kind == "histogram":
                data = pb.Histogram(
                    aggregation_temporality=cumulative,
                    data_points=[
                        pb.HistogramDataPoint(
                            attributes=kvs(p.attributes),
                            time_unix_nano=p.time_ns,
                            count=p.count,
                            sum=p.total,
                            bucket_counts=p.bucket_counts,
                            explicit_bounds=p.bounds,
                        )
                        for p in m.points
                    ],
                )
                pbm.append(pb.Metric(name=m.name, description=m.description, histogram=data))
                continue
            points = [
                pb.NumberDataPoint(attributes=kvs(p.attributes), time_unix_nano=p.time_ns, as_double=p.value)
                for p in m.points
            ]
            if m.kind == "sum":
                pbm.append(
                    pb.Metric(
                        name=m.name,
                        description=m.description,
                        sum=pb.Sum(data_points=points, aggregation_temporality=cumulative, is_monotonic=True),
                    )
                )
            else:
                pbm.append(
                    pb.Metric(name=m.name, description=m.description, gauge=pb.Gauge(data_points=points))
                )
        scope_metrics.append(
            pb.ScopeMetrics(
                scope=common.InstrumentationScope(
                    name=scope.name, version=scope.version, attributes=kvs(scope.attributes)
                ),
                schema_url=scope.schema_url,
                metrics=pbm,
            )
        )
    res = resource_pb2.Resource(attributes=kvs(sorted((resource or {}).items())))
    return svc.ExportMetricsServiceRequest(
        resource_metrics=[pb.ResourceMetrics(resource=res, scope_metrics=scope_metrics)]
    )
