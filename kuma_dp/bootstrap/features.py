"""The feature strings a data plane proxy announces, and the control plane reads, in the bootstrap request
(`features`) and in the Envoy node metadata.

The agent announces them (`client.compute_features`), the bootstrap renderer and the development control
plane act on them; a typo on either side would silently switch a behaviour off, so each string is defined
here once. Values are kumahq/kuma v2.14.3's `pkg/core/xds/types/features.go`.
"""

from __future__ import annotations

#: Envoy's TCP access logs go to the agent over a named pipe (always announced).
FEATURE_TCP_ACCESSLOG_VIA_NAMED_PIPE = "feature-tcp-accesslog-via-named-pipe"
#: OpenTelemetry signals go through the agent (`otel_pipe_enabled`).
FEATURE_OTEL_VIA_KUMA_DP = "feature-otel-via-kuma-dp"
#: The agent runs the embedded DNS proxy; the dev CP then adds no Envoy DNS-filter listener.
FEATURE_EMBEDDED_DNS = "feature-embedded-dns"
#: The transparent-proxy configuration travels in the node metadata (the dev CP reads it from there).
FEATURE_TRANSPARENT_PROXY_IN_DATAPLANE_METADATA = "feature-transparent-proxy-in-dataplane-metadata"
#: Outbound listeners are bound to 127.0.0.0/8 addresses.
FEATURE_BIND_OUTBOUNDS = "feature-bind-outbounds"
#: Envoy uses incremental xDS (ADS `DELTA_GRPC`): the bootstrap's `adsConfig.apiType`.
FEATURE_DELTA_GRPC = "feature-delta-grpc"
#: The proxy uses the unified naming of Envoy resources and stats (with a Mesh in `meshServices.mode:
#: Exclusive`, the bootstrap's cluster names become `system_ads` / `system_access_log_sink`).
FEATURE_UNIFIED_RESOURCE_NAMING = "feature-unified-resource-naming"
#: The Spire agent's socket is mounted, so the proxy can take its identity from SPIRE (`spire_supported`).
FEATURE_SPIRE = "feature-spire"
#: Inbound traffic on ports other than the declared ones is rejected (`strict_inbound_ports_enabled`).
FEATURE_STRICT_INBOUND_PORTS = "feature-strict-inbound-ports"
#: Listeners may use SO_REUSEPORT (`reuse_port_enabled`).
FEATURE_REUSE_PORT = "feature-reuse-port"

__all__ = [
    "FEATURE_BIND_OUTBOUNDS",
    "FEATURE_DELTA_GRPC",
    "FEATURE_EMBEDDED_DNS",
    "FEATURE_OTEL_VIA_KUMA_DP",
    "FEATURE_REUSE_PORT",
    "FEATURE_SPIRE",
    "FEATURE_STRICT_INBOUND_PORTS",
    "FEATURE_TCP_ACCESSLOG_VIA_NAMED_PIPE",
    "FEATURE_TRANSPARENT_PROXY_IN_DATAPLANE_METADATA",
    "FEATURE_UNIFIED_RESOURCE_NAMING",
]
