"""The OpenTelemetry pipe (`feature-otel-via-kuma-dp`): `OTEL_EXPORTER_OTLP_*` discovery (the bootstrap's
`otelEnv`), and the receivers that forward Envoy's and the agent's OTLP signals to the real collector.

Importing this package costs no gRPC: the receivers (`_receiver`, grpcio) load only when a backend exists.
"""

from typing import TYPE_CHECKING

from kuma_dp._lazy import lazy_exports

if TYPE_CHECKING:  # what the names are, for type checkers; at run time each loads on first use
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

#: Public name -> the submodule defining it, imported on first use (kuma_dp/_lazy.py).
_EXPORTS = {
    "BackendRuntime": "_env",
    "EnvConfig": "_env",
    "SignalRuntime": "_env",
    "discover": "_env",
    "resolve_backend": "_env",
    "OTEL_PATH": "_manager",
    "OtelPipeManager": "_manager",
    "parse_otel_config": "_manager",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
