"""Kuma's `MergeClustersForPrometheus` for Envoy's Prometheus page, as a line-oriented pass.

kuma-cp names clusters for one destination `<service>-<16 hex digits>` (one per config variant), which splits
each destination's series across names no dashboard knows. Kuma merges them before serving: the suffix is cut,
series that become identical are summed (counters, gauges, untyped, histogram buckets/sum/count, summary
quantiles/sum/count: Kuma sums those too), and mesh traffic is marked with `kuma_io_mesh_traffic="true"`
(clusters other than Kuma's own bootstrap/admin ones; HTTP connection managers other than the admin and
Prometheus listeners).

Envoy's page can be tens of thousands of lines per scrape; a full parse into objects and back would cost more
than the scrape itself, so we work on lines: only samples carrying `envoy_cluster_name` or
`envoy_http_conn_manager_prefix` are touched, everything else is copied through.
"""

from __future__ import annotations

import re

__all__ = ["merge_envoy_clusters"]

CLUSTER_LABEL = "envoy_cluster_name"
HTTP_PREFIX_LABEL = "envoy_http_conn_manager_prefix"
MESH_TRAFFIC_LABEL = "kuma_io_mesh_traffic"
#: Clusters of the bootstrap and of the agent itself: not mesh traffic (Kuma's BootstrapClusters + two).
NON_MESH_CLUSTERS = frozenset(
    {
        "access_log_sink",
        "ads_cluster",
        "_kuma_access_log_sink",
        "_kuma_ads",
        "system_access_log_sink",
        "system_ads",
        "kuma_envoy_admin",
        "kuma_metrics_hijacker",
    }
)
NON_MESH_HTTP_PREFIXES = frozenset({"admin", "kuma_envoy_admin", "kuma_metrics_prometheus"})

_MERGEABLE = re.compile(r"^(?P<prefix>.*)-[0-9A-Fa-f]{16}$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')

Labels = tuple[tuple[str, str], ...]


def _parse_sample(line: str) -> tuple[str, Labels, str, str] | None:
    """`name{labels} value [ts]` → (name, labels, value, timestamp); None if not a sample we understand."""
    brace = line.find("{")
    space = line.find(" ")
    if brace == -1 or (space != -1 and space < brace):
        return None
    name = line[:brace]
    labels: list[tuple[str, str]] = []
    pos = brace + 1
    while True:
        if pos < len(line) and line[pos] == "}":
            break
        m = _LABEL.match(line, pos)
        if not m:
            return None
        labels.append((m.group(1), m.group(2)))
        pos = m.end()
    rest = line[pos + 1 :].split()
    if not rest:
        return None
    return name, tuple(labels), rest[0], rest[1] if len(rest) > 1 else ""


def _format_number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _render(name: str, labels: Labels, value: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return f"{name}{{{inner}}} {value}"


class _Family:
    """Samples of one metric family that need merging, in first-seen order."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, Labels], float] = {}
        self.raw: dict[tuple[str, Labels], str] = {}

    def add(self, name: str, labels: Labels, value: str) -> None:
        key = (name, labels)
        try:
            number = float(value)
        except ValueError:
            self.raw[key] = value  # NaN-like text we cannot sum: keep the last one
            self.sums.setdefault(key, 0.0)
            return
        self.sums[key] = self.sums.get(key, 0.0) + number

    def lines(self) -> list[str]:
        out = []
        for (name, labels), total in self.sums.items():
            value = self.raw.get((name, labels)) or _format_number(total)
            out.append(_render(name, labels, value))
        return out


def _rewrite(labels: Labels) -> tuple[Labels, bool]:
    """Cut the cluster hash, add the mesh-traffic label; returns (labels, whether it needs merging)."""
    out = []
    mesh = False
    touched = False
    for key, value in labels:
        if key == CLUSTER_LABEL:
            touched = True
            m = _MERGEABLE.match(value)
            if m:
                value = m.group("prefix")
            mesh = value not in NON_MESH_CLUSTERS
        elif key == HTTP_PREFIX_LABEL:
            touched = True
            mesh = value not in NON_MESH_HTTP_PREFIXES
        out.append((key, value))
    if mesh and not any(k == MESH_TRAFFIC_LABEL for k, _ in out):
        out.append((MESH_TRAFFIC_LABEL, "true"))
    return tuple(out), touched


def merge_envoy_clusters(page: str) -> str:
    """Envoy's `/stats?format=prometheus` text with Kuma's cluster merging and mesh-traffic marking."""
    out: list[str] = []
    family: _Family | None = None

    def flush() -> None:
        nonlocal family
        if family is not None:
            out.extend(family.lines())
            family = None

    for line in page.splitlines():
        if not line or line.startswith("#"):
            flush()
            out.append(line)
            continue
        parsed = _parse_sample(line)
        if parsed is None:
            flush()
            out.append(line)
            continue
        name, labels, value, timestamp = parsed
        new_labels, touched = _rewrite(labels)
        if not touched or timestamp:
            flush()
            out.append(line if not touched else _render(name, new_labels, value) + f" {timestamp}")
            continue
        if family is None:
            family = _Family()
        family.add(name, new_labels, value)
    flush()
    return "\n".join(out) + ("\n" if out else "")
