"""MeshMetric in the agent: the `/meshmetric` dynamic-config handler, the scrape of the policy's applications
and of Envoy (profile-filtered), the page Envoy's Prometheus backends forward to, and the OTLP pushes.

Follows app/kuma-dp/pkg/dataplane/meshmetrics/component.go (`Manager`: `OnChange`, `stepScraping`,
`stepDirectOtelExport`, `stepOtelExport`) and metrics/metrics_producer.go (`AggregatedProducer`):

* the control plane sends `MeshMetricDpConfig` (pkg/plugins/policies/meshmetric/dpapi/api.go) as JSON;
  applications without an address use the dataplane's address; Envoy is always scraped (`/stats?format=
  prometheus&text_readouts=&usedonly=`) through the policy's sidecar profile; every data point carries the
  policy's `extraLabels`;
* Prometheus backends are Envoy listeners (port, path, TLS: the control plane's Envoy config) that forward to
  the hijacker's `/meshmetric`, which appends `render_prometheus()` to the agent's own registry;
* each OpenTelemetry backend (inline: Envoy's `kuma-otel-<name>.sock`; through the pipe: the receiver's
  socket) gets a pusher that exports the same data over OTLP gRPC every `refreshInterval`, together with the
  agent's own metrics (Kuma bridges its Prometheus registry the same way).

A new configuration replaces the old one at once (no restart); a pusher is restarted only when its target
or interval changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from kuma_dp import _http
from kuma_dp.component import Component
from kuma_dp.metrics._agent import AgentMetrics
from kuma_dp.metrics._hijacker import add_prometheus_format, add_sidecar_parameters, rewrite_metrics_target

if TYPE_CHECKING:  # the parsing and mapping modules load with the first policy, not at agent start
    from kuma_dp.meshmetric._mapping import Metric, Scope
    from kuma_dp.meshmetric._profiles import ProfileMutator
    from kuma_dp.metrics._text import Family

log = logging.getLogger(__name__)

__all__ = [
    "MESHMETRIC_PATH",
    "App",
    "ExportTarget",
    "MeshMetricConfig",
    "MeshMetricManager",
    "parse_meshmetric_config",
]

MESHMETRIC_PATH = "/meshmetric"
DEFAULT_REFRESH = 60.0
MIN_REFRESH = 1.0
SCRAPE_TIMEOUT = 5.0
MAX_APPLICATIONS = 64
BRIDGE_SCOPE = "go.opentelemetry.io/contrib/bridges/prometheus"
PASSTHROUGH = {4: "127.0.0.6", 6: "::6"}


class App(NamedTuple):
    """One endpoint to scrape (Kuma `ApplicationToScrape`)."""

    name: str
    address: str
    port: int
    path: str
    query: str = ""
    unix_path: str | None = None
    is_envoy: bool = False

    @property
    def ip_version(self) -> int:
        try:
            return ipaddress.ip_address(self.address.strip("[]")).version
        except ValueError:
            return 4


class ExportTarget(NamedTuple):
    """Where and how often to push (Kuma `OtelExportTarget`)."""

    name: str
    socket_path: str
    refresh_interval: float


class MeshMetricConfig:
    """`MeshMetricDpConfig.observability.metrics` (a plain class: no dataclass machinery at agent start)."""

    def __init__(
        self,
        applications: list[dict[str, Any]] | None = None,
        backends: list[dict[str, Any]] | None = None,
        sidecar: dict[str, Any] | None = None,
        extra_labels: dict[str, str] | None = None,
    ) -> None:
        self.applications = applications or []
        self.backends = backends or []
        self.sidecar = sidecar
        self.extra_labels = extra_labels or {}

    def otel_targets(self) -> list[ExportTarget]:
        out = []
        for b in self.backends:
            otel = b.get("openTelemetry")
            if b.get("type") != "OpenTelemetry" or not isinstance(otel, Mapping):
                continue
            out.append(
                ExportTarget(
                    str(b.get("name") or ""),
                    str(otel.get("endpoint") or ""),
                    _interval(otel.get("refreshInterval")),
                )
            )
        return out


def _interval(value: Any) -> float:
    from kuma_dp.goparse import parse_duration

    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            seconds = parse_duration(value)
            if seconds > 0:
                return max(MIN_REFRESH, seconds)
    return DEFAULT_REFRESH


def parse_meshmetric_config(body: bytes) -> MeshMetricConfig:
    """`MeshMetricDpConfig` JSON → config; ValueError (Kuma's wording first) when it cannot be used."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"mesh metric configuration decoding error: {exc}") from None
    metrics = ((doc or {}).get("observability") or {}).get("metrics") if isinstance(doc, Mapping) else None
    if metrics is None:
        metrics = {}
    if not isinstance(metrics, Mapping):
        raise ValueError("mesh metric configuration decoding error: observability.metrics must be an object")
    # null is Go's nil slice/map; any other type is a decoding error, as encoding/json says
    apps = metrics.get("applications")
    apps = [] if apps is None else apps
    backends = metrics.get("backends")
    backends = [] if backends is None else backends
    sidecar = metrics.get("sidecar")
    extra = metrics.get("extraLabels")
    extra = {} if extra is None else extra
    if not isinstance(apps, list) or not all(isinstance(a, Mapping) for a in apps):
        raise ValueError("mesh metric configuration decoding error: applications must be a list of objects")
    if len(apps) > MAX_APPLICATIONS:
        raise ValueError(f"mesh metric configuration: {len(apps)} applications, at most {MAX_APPLICATIONS}")
    for a in apps:
        port = a.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 0xFFFFFFFF:
            raise ValueError(f"mesh metric configuration decoding error: application port {port!r}")
    if not isinstance(backends, list) or not all(isinstance(b, Mapping) for b in backends):
        raise ValueError("mesh metric configuration decoding error: backends must be a list of objects")
    if sidecar is not None and not isinstance(sidecar, Mapping):
        raise ValueError("mesh metric configuration decoding error: sidecar must be an object")
    if not isinstance(extra, Mapping):
        raise ValueError("mesh metric configuration decoding error: extraLabels must be an object")
    return MeshMetricConfig(
        [dict(a) for a in apps],
        [dict(b) for b in backends],
        dict(sidecar) if sidecar else None,
        {str(k): str(v) for k, v in extra.items()},
    )


Collected = list[tuple[App, "dict[str, Family]"]]


class MeshMetricManager(Component):
    name = "mesh-metric-config-fetcher"

    def __init__(
        self,
        envoy_admin: Any,
        *,
        default_address: str = "127.0.0.1",
        transparent_proxy: bool = False,
        kuma_version: str = "0.0.0",
        metrics: AgentMetrics | None = None,
        own_registry_text: Callable[[], bytes] | None = None,
        drain_time: float = 5.0,
    ) -> None:
        super().__init__()
        self.envoy_admin = envoy_admin
        self.default_address = default_address or "127.0.0.1"
        self.transparent_proxy = transparent_proxy
        self.kuma_version = kuma_version
        self.metrics = metrics
        self.own_registry_text = own_registry_text
        self.drain_time = drain_time
        self.config: MeshMetricConfig | None = None
        self.apps: list[App] = []
        self._mutators: dict[str, ProfileMutator | None] = {}
        self._direct: dict[str, tuple[ExportTarget, asyncio.Task[None]]] = {}
        self._pipe: dict[str, tuple[ExportTarget, asyncio.Task[None]]] = {}
        self._pipe_targets: list[ExportTarget] = []
        self._running = False
        self.pushes = 0

    # -- configuration ------------------------------------------------------------------------------------
    def on_change(self, body: bytes, _etag: str | None = None) -> None:
        """The `/meshmetric` handler: applies the configuration at once."""
        cfg = parse_meshmetric_config(body)
        self.config = cfg
        self.apps = self._applications(cfg)
        from kuma_dp.meshmetric._profiles import profile_mutator

        mutator = profile_mutator(cfg.sidecar)
        self._mutators = {"envoy": mutator}
        log.info(
            "updating hijacker configuration",
            extra={
                "applications": [a.name for a in self.apps],
                "backends": [b.get("type") for b in cfg.backends],
            },
        )
        if self._running:
            self._reconcile(self._direct, {t.name: t for t in cfg.otel_targets()}, "direct")

    def on_pipe_targets(self, targets: list[ExportTarget]) -> None:
        """OpenTelemetry pipe backends whose metrics signal is usable (run.go `metricsTargetsForBackends`)."""
        self._pipe_targets = targets
        if self._running:
            self._reconcile(self._pipe, {t.name: t for t in targets}, "pipe")

    def _applications(self, cfg: MeshMetricConfig) -> list[App]:
        apps = []
        for a in cfg.applications:
            path = str(a.get("path") or "")
            apps.append(
                App(
                    str(a.get("name") or ""),
                    str(a.get("address") or self.default_address),
                    int(a["port"]),
                    path if path.startswith("/") else "/" + path,
                )
            )
        admin = self.envoy_admin
        if admin is not None:
            # Kuma: AddPrometheusFormat + AddSidecarParameters, which always sets usedonly (even with
            # includeUnused: EnvoyMetricsFilter's empty value is what Set receives).
            apps.append(
                App(
                    "envoy",
                    getattr(admin, "host", "127.0.0.1"),
                    int(getattr(admin, "port", 0) or 0),
                    "/stats",
                    rewrite_metrics_target("", "", add_prometheus_format, add_sidecar_parameters).lstrip("?"),
                    unix_path=getattr(admin, "socket_path", None),
                    is_envoy=True,
                )
            )
        return apps

    # -- scraping -----------------------------------------------------------------------------------------
    async def _fetch(self, app: App) -> bytes | None:
        target = app.path + (f"?{app.query}" if app.query else "")
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                if app.unix_path:
                    resp = await _http.get(target=target, unix_path=app.unix_path)
                else:
                    source = (
                        PASSTHROUGH[app.ip_version] if self.transparent_proxy and not app.is_envoy else None
                    )
                    host = app.address.strip("[]")
                    try:
                        resp = await _http.get(target=target, host=host, port=app.port, source_address=source)
                    except _http.HttpError as exc:
                        if source is None or exc.errno != errno.EADDRNOTAVAIL:
                            raise
                        resp = await _http.get(target=target, host=host, port=app.port)
        except (TimeoutError, _http.HttpError) as exc:
            if isinstance(exc, _http.BodyTooLarge) and self.metrics is not None:
                self.metrics.body_too_large("envoy" if app.is_envoy else "application")
            log.warning(
                "failed call", extra={"name": app.name, "path": app.path, "port": app.port, "error": str(exc)}
            )
            return None
        if resp.status != 200:
            log.info(
                "application returned non-200 status",
                extra={"name": app.name, "status": resp.status, "path": app.path, "port": app.port},
            )
            return None
        return resp.body

    async def _scrape(self, app: App) -> dict[str, Family]:
        from kuma_dp.metrics._text import TextParseError, parse_text

        body = await self._fetch(app)
        if body is None:
            return {}
        try:
            families = parse_text(body.decode("utf-8", "replace"))
        except TextParseError as exc:
            log.warning("failed to mutate metrics", extra={"name": app.name, "error": str(exc)})
            return {}
        mutator = self._mutators.get("envoy") if app.is_envoy else None
        if mutator is not None:
            mutator(families)
        return families

    async def collect(self) -> Collected:
        """Scrape every application and Envoy concurrently (a failed one contributes nothing)."""
        if self.config is None:
            return []
        apps = list(self.apps)
        results = await asyncio.gather(*(self._scrape(a) for a in apps))
        return list(zip(apps, results, strict=True))

    def to_scoped(
        self, collected: Collected, request_time_ns: int | None = None
    ) -> dict[Scope, list[Metric]]:
        from kuma_dp.meshmetric._mapping import from_prometheus

        t = request_time_ns if request_time_ns is not None else time.time_ns()
        extra = sorted((self.config.extra_labels if self.config else {}).items())
        out: dict[Scope, list[Metric]] = {}
        for _, families in collected:
            for scope, metrics in from_prometheus(families, self.kuma_version, extra, t).items():
                out.setdefault(scope, []).extend(metrics)
        return out

    # -- the Prometheus page (hijacker /meshmetric) ------------------------------------------------------
    async def prometheus_page(self) -> bytes:
        """What Kuma's OpenTelemetry→Prometheus exporter shows for the producer: each metric with its
        attributes and the `otel_scope_name`/`otel_scope_version` labels; counters without `_total`."""
        if self.config is None:
            return b""
        return render_prometheus(self.to_scoped(await self.collect())).encode()

    # -- OTLP pushes --------------------------------------------------------------------------------------
    async def export_request(self) -> Any:
        from kuma_dp.meshmetric._mapping import Scope, from_prometheus, to_otlp_request
        from kuma_dp.metrics._text import TextParseError, parse_text

        scoped = self.to_scoped(await self.collect())
        if self.own_registry_text is not None:
            with contextlib.suppress(TextParseError):
                own = parse_text(self.own_registry_text().decode())
                for scope, metrics in from_prometheus(own, self.kuma_version, [], time.time_ns()).items():
                    bridged = (
                        Scope(BRIDGE_SCOPE, self.kuma_version, "", ()) if scope.name == "kuma" else scope
                    )
                    scoped.setdefault(bridged, []).extend(metrics)
        return to_otlp_request(
            scoped, {"service.name": "unknown_service:kuma-dp", "telemetry.sdk.name": "opentelemetry"}
        )

    async def _push_loop(self, target: ExportTarget) -> None:
        from grpc import aio  # lazily: only with an OpenTelemetry backend

        log.info(
            "Starting OpenTelemetry exporter",
            extra={"backend": target.name, "socketPath": target.socket_path},
        )
        channel = aio.insecure_channel(f"unix:{target.socket_path}")
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            request_serializer=lambda m: m.SerializeToString(),
        )
        failing = False
        try:
            while True:
                await asyncio.sleep(
                    target.refresh_interval
                )  # a periodic reader's first export is one interval in
                try:
                    request = await self.export_request()
                    await export(request, timeout=max(1.0, min(30.0, target.refresh_interval)))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._count(target, "failure")
                    if not failing:
                        log.warning(
                            "OpenTelemetry export failed", extra={"backend": target.name, "error": str(exc)}
                        )
                    failing = True
                    continue
                if failing:
                    log.info("OpenTelemetry export recovered", extra={"backend": target.name})
                failing = False
                self.pushes += 1
                self._count(target, "success")
        finally:
            await channel.close()

    def _count(self, target: ExportTarget, result: str) -> None:
        if self.metrics is not None:
            self.metrics.meshmetric_pushes.labels(backend=target.name, result=result).inc()

    def _reconcile(
        self,
        running: dict[str, tuple[ExportTarget, asyncio.Task[None]]],
        desired: dict[str, ExportTarget],
        kind: str,
    ) -> None:
        for name in [n for n in running if n not in desired or running[n][0] != desired[n]]:
            running.pop(name)[1].cancel()
            log.info("Shutting down OpenTelemetry exporter", extra={"backend": name, "kind": kind})
        for name, target in desired.items():
            if name not in running and target.socket_path:
                running[name] = (
                    target,
                    asyncio.create_task(self._push_loop(target), name=f"meshmetric-{name}"),
                )

    async def run(self) -> None:
        self._running = True
        if self.config is not None:
            self._reconcile(self._direct, {t.name: t for t in self.config.otel_targets()}, "direct")
        self._reconcile(self._pipe, {t.name: t for t in self._pipe_targets}, "pipe")
        self.ready.set()
        try:
            await asyncio.Future()
        finally:
            self._running = False
            tasks = [t for _, t in (*self._direct.values(), *self._pipe.values())]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._direct.clear()
            self._pipe.clear()


def render_prometheus(scoped: dict[Scope, list[Metric]]) -> str:
    """The mapped metrics as Prometheus text, one family per name (scopes become labels)."""
    from kuma_dp.metrics._text import Family, Sample, render_family

    families: dict[str, Family] = {}
    kinds = {"sum": "counter", "gauge": "gauge", "histogram": "histogram"}
    for scope, metrics in scoped.items():
        scope_labels = (("otel_scope_name", scope.name), ("otel_scope_version", scope.version))
        for m in metrics:
            fam = families.get(m.name)
            if fam is None:
                fam = families[m.name] = Family(m.name, kinds[m.kind], m.description or None)
            elif fam.type != kinds[m.kind]:
                continue  # a clashing type would make Prometheus reject the whole page
            for p in m.points:
                labels = tuple(p.attributes) + scope_labels
                if m.kind == "histogram":
                    cumulative, buckets = 0, []
                    for bound, count in zip([*p.bounds, float("inf")], p.bucket_counts, strict=False):
                        cumulative += count
                        buckets.append((bound, float(cumulative)))
                    fam.samples.append(
                        Sample(labels, buckets=buckets, sample_sum=p.total, sample_count=p.count)
                    )
                else:
                    fam.samples.append(Sample(labels, value=p.value))
    return "".join(render_family(f) for f in families.values())
