"""MeshMetric, the 2.x metrics policy, in the agent: `/meshmetric` from Envoy's dynamic-config socket, the
sidecar profiles, the Prometheus page behind the policy's Prometheus backends and the OTLP pushes to its
OpenTelemetry backends. Nothing here imports gRPC or protobuf until an OpenTelemetry backend is configured,
and the parsing and mapping modules load with the first policy (the manager runs in every agent).
"""

from __future__ import annotations

from typing import Any

from kuma_dp.meshmetric._manager import (
    MESHMETRIC_PATH,
    App,
    ExportTarget,
    MeshMetricConfig,
    MeshMetricManager,
    parse_meshmetric_config,
    render_prometheus,
)

_LAZY = {
    "from_prometheus": "kuma_dp.meshmetric._mapping",
    "to_golden_json": "kuma_dp.meshmetric._mapping",
    "to_otlp_request": "kuma_dp.meshmetric._mapping",
    "profile_mutator": "kuma_dp.meshmetric._profiles",
}

__all__ = [
    "MESHMETRIC_PATH",
    "App",
    "ExportTarget",
    "MeshMetricConfig",
    "MeshMetricManager",
    "from_prometheus",
    "parse_meshmetric_config",
    "profile_mutator",
    "render_prometheus",
    "to_golden_json",
    "to_otlp_request",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
