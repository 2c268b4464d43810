"""Work-dir unix socket and pipe paths that Envoy and the agent must agree on.

The bootstrap (and the control plane's xDS) tell Envoy where to write access logs, where to find the metrics
hijacker and where to serve dynamic configuration; the agent listens on, creates or polls the same paths. Each
side computing its own path is how access logs silently go nowhere, so every producer and consumer of these
paths calls the functions here: `kuma_dp.bootstrap.render`, the agent components (`kuma_dp.accesslog`,
`kuma_dp.metrics`, `kuma_dp.dynconf`) and the development control plane.

Naming and truncation follow kumahq/kuma v2.14.3 `pkg/core/xds/sockets.go`: `<workdir>/<stem>`, cut to 98
characters, then `.sock` appended, so the path fits the 104-byte `sun_path` of macOS/BSD (Linux allows 108).
The access-log FIFO keeps Kuma's `.sock` name although it is a named pipe.
"""

from __future__ import annotations

import os

__all__ = [
    "ACCESS_LOG_PREFIX",
    "ADMIN_STEM",
    "DYNCONF_STEM",
    "METRICS_HIJACKER_PREFIX",
    "OTEL_PREFIX",
    "SOCKET_STEM_MAX",
    "access_log_socket_path",
    "admin_socket_path",
    "dynconf_socket_path",
    "metrics_hijacker_socket_path",
    "otel_socket_path",
    "proxy_socket_path",
    "socket_path",
]

#: `<workdir>/<stem>` is cut to this many characters before ".sock": 98 + 5 + NUL stays within the 104-byte
#: `sun_path` (Kuma's `socketName`).
SOCKET_STEM_MAX = 98

#: The access-log FIFO Envoy writes to and the agent's streamer reads (Kuma `AccessLogSocketName`).
ACCESS_LOG_PREFIX = "kuma-al"
#: The metrics hijacker's socket Envoy's Prometheus listener forwards to (Kuma `MetricsHijackerSocketName`).
METRICS_HIJACKER_PREFIX = "kuma-mh"
#: Envoy's dynamic-configuration listener the agent polls (Kuma `MeshMetricsDynamicConfigurationSocketName`).
DYNCONF_STEM = "kuma-mesh-metric-config"
#: An OpenTelemetry backend's socket (Kuma `OpenTelemetrySocketName`).
OTEL_PREFIX = "kuma-otel"
#: Envoy's admin API on a unix socket (Kuma `AdminSocketName`, `envoyAdminUnixSocket`).
ADMIN_STEM = "kuma-envoy-admin"


def socket_path(workdir: str | os.PathLike[str], stem: str) -> str:
    """`<workdir>/<stem>` cut to `SOCKET_STEM_MAX` characters, plus ".sock".

    Trailing slashes of `workdir` are dropped (as Go's `filepath.Join` does); an empty `workdir` leaves the
    bare stem (kuma-cp renders an empty workdir that way).
    """
    base = os.fspath(workdir)
    joined = f"{base.rstrip('/')}/{stem}" if base else stem
    return joined[:SOCKET_STEM_MAX] + ".sock"


def proxy_socket_path(workdir: str | os.PathLike[str], prefix: str, name: str, mesh: str) -> str:
    """`<workdir>/<prefix>-<name>-<mesh>.sock`: a per-proxy socket (prefix `ACCESS_LOG_PREFIX` or
    `METRICS_HIJACKER_PREFIX`), so that several proxies can share one work dir."""
    return socket_path(workdir, f"{prefix}-{name}-{mesh}")


def access_log_socket_path(workdir: str | os.PathLike[str], name: str, mesh: str) -> str:
    """The access-log FIFO `<workdir>/kuma-al-<name>-<mesh>.sock` (bootstrap `access_log_path`)."""
    return proxy_socket_path(workdir, ACCESS_LOG_PREFIX, name, mesh)


def metrics_hijacker_socket_path(workdir: str | os.PathLike[str], name: str, mesh: str) -> str:
    """The metrics hijacker's socket `<workdir>/kuma-mh-<name>-<mesh>.sock`."""
    return proxy_socket_path(workdir, METRICS_HIJACKER_PREFIX, name, mesh)


def dynconf_socket_path(workdir: str | os.PathLike[str]) -> str:
    """Envoy's dynamic-configuration socket `<workdir>/kuma-mesh-metric-config.sock`."""
    return socket_path(workdir, DYNCONF_STEM)


def otel_socket_path(workdir: str | os.PathLike[str], backend_name: str) -> str:
    """An OpenTelemetry backend's socket `<workdir>/kuma-otel-<backend>.sock` (Kuma
    `OpenTelemetrySocketName`): Envoy's inline MeshMetric listener, or the agent's OTLP receiver for the
    OpenTelemetry pipe."""
    return socket_path(workdir, f"{OTEL_PREFIX}-{backend_name}")


def admin_socket_path(workdir: str | os.PathLike[str]) -> str:
    """Envoy's admin API socket `<workdir>/kuma-envoy-admin.sock`."""
    return socket_path(workdir, ADMIN_STEM)
