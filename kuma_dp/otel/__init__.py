"""The OpenTelemetry pipe (`feature-otel-via-kuma-dp`): `OTEL_EXPORTER_OTLP_*` discovery (the bootstrap's
`otelEnv`), and the receivers that forward Envoy's and the agent's OTLP signals to the real collector.

Importing this package costs no gRPC: the receivers (`_receiver`, grpcio) load only when a backend exists.
"""

from kuma_dp.otel._env import BackendRuntime, EnvConfig, SignalRuntime, discover, resolve_backend
from kuma_dp.otel._manager import OTEL_PATH, OtelPipeManager, parse_otel_config

__all__ = [
    "OTEL_PATH",
    "BackendRuntime",
    "EnvConfig",
    "OtelPipeManager",
    "SignalRuntime",
    "discover",
    "parse_otel_config",
    "resolve_backend",
]
