"""The agent's own Prometheus metrics (`kuma_dp_*`).

Go kuma-dp exports only the DNS series; an operator debugging a slow or flapping sidecar also wants to know
how often bootstrap was retried, whether the control plane is reachable, what readiness says and where
start-up time went. Every series lives in one `CollectorRegistry` so the hijacker can serve it under
`/meshmetric` (Kuma's path for kuma-dp's own registry) next to the DNS metrics that kuma_dns
registers in the same registry.

Components receive the `AgentMetrics` object (or call `agent_metrics()` for the process-wide one) and call the
small methods below; they never touch prometheus_client objects directly, so names stay in one place.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Enum, Gauge, Histogram

from kuma_dp import starttrace

__all__ = ["PHASES", "READINESS_STATES", "AgentMetrics", "agent_metrics"]

#: Start-up phases, in the order they normally complete.
PHASES = ("bootstrap", "envoy_live", "first_config", "first_dns_table")
#: The readiness reporter's states, named as in Kuma's `app/kuma-dp/pkg/dataplane/readiness/component.go`.
READINESS_STATES = ["NOT_READY", "READY", "TERMINATING"]
_BOOTSTRAP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class AgentMetrics:
    """All `kuma_dp_*` series the agent itself produces (DNS metrics are kuma_dns's)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, started_at: float | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        #: "Agent start" for the phases that count from it: the process's start when the start-up timeline
        #: saw it (kuma_dp.starttrace), else now.
        self.started_at = started_at if started_at is not None else starttrace.origin() or time.monotonic()
        self._phase_values: dict[str, float] = {}
        self._lock = threading.Lock()

        self.envoy_starts = Counter("kuma_dp_envoy_starts", "Envoy processes spawned.", registry=r)
        self.envoy_restarts = Counter(
            "kuma_dp_envoy_restarts", "Envoy processes spawned after the first one.", registry=r
        )
        self.envoy_exits = Counter(
            "kuma_dp_envoy_exits", "Envoy process exits, by exit code or signal.", ["code"], registry=r
        )
        self.bootstrap_attempts = Counter(
            "kuma_dp_bootstrap_attempts", "POST /bootstrap attempts, by result.", ["result"], registry=r
        )
        self.bootstrap_duration = Histogram(
            "kuma_dp_bootstrap_duration_seconds",
            "Duration of one POST /bootstrap attempt.",
            buckets=_BOOTSTRAP_BUCKETS,
            registry=r,
        )
        self.cp_reachable = Gauge(
            "kuma_dp_control_plane_reachable",
            "1 when the last exchange with the control plane succeeded, else 0.",
            registry=r,
        )
        self.readiness = Enum(
            "kuma_dp_readiness_state", "What /ready answers.", states=READINESS_STATES, registry=r
        )
        self.phase_seconds = Gauge(
            "kuma_dp_startup_phase_duration_seconds",
            "Seconds each start-up phase took (bootstrap; Envoy spawn to LIVE; agent start to first config "
            "and to first DNS table).",
            ["phase"],
            registry=r,
        )
        self.scrapes = Counter("kuma_dp_metrics_scrapes", "Merged metrics scrapes served.", registry=r)
        self.scrape_failures = Counter(
            "kuma_dp_metrics_scrape_failures",
            "Endpoints skipped in a merged scrape (timeout, error, bad status).",
            ["endpoint", "reason"],
            registry=r,
        )
        self.access_log_lines = Counter(
            "kuma_dp_access_log_lines", "Access-log lines sent to a collector.", ["address"], registry=r
        )
        self.access_log_dropped = Counter(
            "kuma_dp_access_log_dropped_lines",
            "Access-log lines dropped (buffer full, malformed line).",
            ["address", "reason"],
            registry=r,
        )
        self.access_log_connected = Gauge(
            "kuma_dp_access_log_connected", "1 while the TCP sender is connected.", ["address"], registry=r
        )
        self.otel_forwarded = Counter(
            "kuma_dp_otel_forwarded_requests",
            "OTLP export requests forwarded from the OpenTelemetry pipe to the collector.",
            ["backend", "signal"],
            registry=r,
        )
        self.otel_dropped = Counter(
            "kuma_dp_otel_dropped_requests",
            "OTLP export requests dropped by the OpenTelemetry pipe (buffer_full, retries_exhausted, "
            "rejected, signal_disabled, shutdown).",
            ["backend", "signal", "reason"],
            registry=r,
        )
        self.otel_retries = Counter(
            "kuma_dp_otel_export_retries",
            "Retried OTLP exports to the collector.",
            ["backend", "signal"],
            registry=r,
        )
        self.otel_buffered_bytes = Gauge(
            "kuma_dp_otel_buffered_bytes",
            "OTLP payload bytes waiting for the collector.",
            ["backend", "signal"],
            registry=r,
        )
        self.meshmetric_pushes = Counter(
            "kuma_dp_meshmetric_otlp_pushes",
            "MeshMetric pushes to OpenTelemetry backends, by result.",
            ["backend", "result"],
            registry=r,
        )
        self._init_rejections(r)

    # -- Envoy -------------------------------------------------------------------------------------
    def envoy_started(self) -> None:
        with self._lock:
            if self.envoy_starts._value.get() >= 1:  # no public getter in prometheus_client
                self.envoy_restarts.inc()
            self.envoy_starts.inc()

    def envoy_exited(self, returncode: int) -> None:
        """Popen-style code: negative is the signal number."""
        code = f"signal:{-returncode}" if returncode < 0 else str(returncode)
        self.envoy_exits.labels(code=code).inc()

    # -- Bootstrap and control plane ---------------------------------------------------------------
    def bootstrap_attempt(self, ok: bool, seconds: float) -> None:
        self.bootstrap_attempts.labels(result="success" if ok else "failure").inc()
        self.bootstrap_duration.observe(seconds)
        self.cp_reachable.set(1 if ok else 0)

    def control_plane_reachable(self, reachable: bool) -> None:
        self.cp_reachable.set(1 if reachable else 0)

    # -- Readiness ---------------------------------------------------------------------------------
    def readiness_state(self, state: str) -> None:
        self.readiness.state(state)

    # -- Start-up phases ---------------------------------------------------------------------------
    def phase_done(self, phase: str, since: float | None = None, until: float | None = None) -> float:
        """Record a phase's duration, from `since` (a time.monotonic() value) or from agent start, to `until`
        or now (a phase that ended before the metrics existed: the bootstrap fetch, kuma_dp.commands.run).

        Only the first completion counts: a later config or DNS table is not "first" any more.
        """
        if phase not in PHASES:
            raise ValueError(f"unknown start-up phase {phase!r}: use one of {', '.join(PHASES)}")
        with self._lock:
            if phase in self._phase_values:
                return self._phase_values[phase]
            now = time.monotonic() if until is None else until
            value = now - (self.started_at if since is None else since)
            self._phase_values[phase] = value
        self.phase_seconds.labels(phase=phase).set(value)
        if phase != "bootstrap":  # the timeline has the bootstrap's own marks (sent, answered, written)
            starttrace.mark(phase, at=now)
        return value

    @contextmanager
    def phase(self, phase: str) -> Iterator[None]:
        """Time a block as a phase (e.g. the whole bootstrap retry loop)."""
        start = time.monotonic()
        yield
        self.phase_done(phase, since=start)

    def phases(self) -> dict[str, float]:
        """Completed phases and their seconds, for a readiness/debug report."""
        with self._lock:
            return dict(self._phase_values)

    # -- Rejected input --------------------------------------------------------------------------------
    # Every bound the agent enforces against a peer or a local user (a body over its cap, a connection shed
    # or refused, a planted file at the access-log FIFO path, a bootstrap refused) logs one line and counts
    # here, so an operator sees an attack, or a limit set too low, on the same page as everything else.
    # The label values are the few fixed words each help text lists, never a peer address.
    def _init_rejections(self, r: CollectorRegistry) -> None:
        self.http_body_too_large = Counter(
            "kuma_dp_http_body_too_large",
            "HTTP bodies refused while streaming because they exceed the reader's cap, by who sent them "
            "(control_plane: POST /bootstrap; application or envoy: a metrics scrape; dynamic_config: "
            "Envoy's dynamic-config socket).",
            ["source"],
            registry=r,
        )
        self.connections_rejected = Counter(
            "kuma_dp_connections_rejected",
            "Connections the agent's own servers closed to stay within their bounds (shed_idle: the oldest "
            "idle one made room; full: every slot busy, the new one closed; fd_exhausted: accept() found no "
            "descriptor and accepting backed off).",
            ["server", "reason"],
            registry=r,
        )
        self.access_log_fifo_rejections = Counter(
            "kuma_dp_access_log_fifo_rejections",
            "Foreign objects found at the access-log FIFO path (replaced: removed and replaced by our "
            "private FIFO; unremovable: it could not be removed; changed: swapped while we opened it).",
            ["reason"],
            registry=r,
        )
        self.bootstrap_rejections = Counter(
            "kuma_dp_bootstrap_rejections",
            "Bootstrap responses from the control plane refused (too_large: over the body cap; malformed: "
            "not parseable JSON, base64 or Envoy bootstrap).",
            ["reason"],
            registry=r,
        )

    def body_too_large(self, source: str) -> None:
        self.http_body_too_large.labels(source=source).inc()

    def connection_rejected(self, server: str, reason: str) -> None:
        self.connections_rejected.labels(server=server, reason=reason).inc()

    def access_log_fifo_rejected(self, reason: str) -> None:
        self.access_log_fifo_rejections.labels(reason=reason).inc()

    def bootstrap_rejected(self, reason: str) -> None:
        self.bootstrap_rejections.labels(reason=reason).inc()


_default: AgentMetrics | None = None
_default_lock = threading.Lock()


def agent_metrics() -> AgentMetrics:
    """The process-wide instance, in prometheus_client's default REGISTRY (beside the DNS metrics)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = AgentMetrics(REGISTRY)
        return _default
