"""The metrics "hijacker": one Prometheus endpoint for Envoy, the application and the agent.

Kuma's control plane points an Envoy Prometheus listener (Mesh metrics backend, default `:5670/metrics`) at
the unix socket `<workdir>/kuma-mh-<name>-<mesh>.sock`. Per scrape we fetch Envoy's `/stats?format=prometheus`
and every `kumaSidecarConfiguration.metrics.aggregate` endpoint concurrently and return the bodies
concatenated, trailing `# EOF` markers removed, with Kuma's content negotiation (OpenMetrics 1.0.0 > 0.0.1 >
text/plain, then the scraper's Accept). Paths starting with `/meshmetric` serve the agent's own registry
(Kuma: DNS metrics).

Where we differ from Go kuma-dp, on purpose: every endpoint has a timeout (derived from Prometheus'
`X-Prometheus-Scrape-Timeout-Seconds` when present), so a hanging application costs its own part only and is
counted in `kuma_dp_metrics_scrape_failures_total`; the agent's `kuma_dp_*` series are appended to the merged
page (operators with the legacy Mesh backend would otherwise never see them); a live socket of another agent
is detected by connecting to it instead of by renaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import ipaddress
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode

from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest as generate_text
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from kuma_dp import _http
from kuma_dp.component import Component
from kuma_dp.metrics._agent import AgentMetrics
from kuma_dp.metrics._merge import merge_envoy_clusters

log = logging.getLogger(__name__)

__all__ = [
    "ContentFormat",
    "MetricsHijacker",
    "ScrapeTarget",
    "merge_bodies",
    "response_format",
    "select_content_type",
]

#: Headers Prometheus sends that the scraped endpoints may use (Kuma's list minus accept-encoding: a gzip body
#: cannot be concatenated).
PASSED_HEADERS = ("accept", "user-agent", "x-prometheus-scrape-timeout-seconds")
DEFAULT_ENDPOINT_TIMEOUT = 5.0
#: What of the agent's registry is appended to the merged page (everything is under /meshmetric).
AGENT_PREFIX = "kuma_dp_"
PASSTHROUGH_V4 = "127.0.0.6"
PASSTHROUGH_V6 = "::6"


class ContentFormat(enum.Enum):
    OPENMETRICS_1_0_0 = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    OPENMETRICS_0_0_1 = "application/openmetrics-text; version=0.0.1; charset=utf-8"
    TEXT = "text/plain; version=0.0.4; charset=utf-8"
    UNKNOWN = ""


def _media(value: str) -> tuple[str, dict[str, str]]:
    kind, *params = (p.strip() for p in value.split(";"))
    parsed = {}
    for p in params:
        k, _, v = p.partition("=")
        parsed[k.strip().lower()] = v.strip().strip('"')
    return kind.lower(), parsed


def response_format(content_type: str | None) -> ContentFormat:
    """The exposition format an endpoint answered in (Kuma's `responseFormat`)."""
    if not content_type:
        return ContentFormat.UNKNOWN
    kind, params = _media(content_type)
    if kind == "text/plain":
        return ContentFormat.TEXT
    if kind == "application/openmetrics-text":
        version = params.get("version", "")
        if version in ("", "0.0.1"):
            return ContentFormat.OPENMETRICS_0_0_1
        if version == "1.0.0":
            return ContentFormat.OPENMETRICS_1_0_0
    return ContentFormat.UNKNOWN


#: prometheus/common's default `model.NameEscapingScheme` (underscores), echoed in the negotiated type.
_ESCAPINGS = ("allow-utf-8", "underscores", "dots", "values")
_PROTO_TYPE = "application/vnd.google.protobuf"
_PROTO_PROTOCOL = "io.prometheus.client.MetricFamily"


def _parse_accept(header: str | None) -> list[tuple[str, str, dict[str, str]]]:
    """goautoneg.ParseAccept: (type, subtype, params) by q descending, specific types before wildcards."""
    items: list[tuple[float, int, int, int, tuple[str, str, dict[str, str]]]] = []
    for index, part in enumerate((header or "").split(",")):
        media, *params = part.strip().split(";")
        kind, _, sub = media.partition("/")
        kind, sub = kind.strip(), sub.strip()
        if not _:
            if kind != "*":
                continue
            sub = "*"
        q = 1.0
        parsed: dict[str, str] = {}
        for param in params:
            key, eq, value = param.partition("=")
            if not eq:
                continue
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            else:
                parsed[key.strip()] = value.strip()
        items.append((-q, kind == "*", sub == "*", index, (kind, sub, parsed)))
    items.sort(key=lambda t: t[:4])
    return [t[4] for t in items]


def negotiate_content_type(accept: str | None) -> str:
    """prometheus/common `expfmt.Negotiate` (what Kuma answers for its own pages): the text format unless the
    scraper asks for protobuf; never OpenMetrics. The escaping scheme is echoed as expfmt does."""
    escaping = "underscores"
    for kind, sub, params in _parse_accept(accept):
        if params.get("escaping") in _ESCAPINGS:
            escaping = params["escaping"]
        version = params.get("version", "")
        if f"{kind}/{sub}" == _PROTO_TYPE and params.get("proto") == _PROTO_PROTOCOL:
            encoding = params.get("encoding")
            if encoding in ("delimited", "text", "compact-text"):
                # We only write the text format: answering a protobuf type with a text body (as Kuma's
                # hijacker does) would break the scraper, so the text type is announced instead.
                break
        if kind == "text" and sub == "plain" and version in ("0.0.4", ""):
            break
    return f"{ContentFormat.TEXT.value}; escaping={escaping}"


def negotiate(accept: str | None) -> ContentFormat:
    """The format `expfmt.Negotiate` picks among those we write: always the text format."""
    negotiate_content_type(accept)
    return ContentFormat.TEXT


def select_content_type(received: Iterable[ContentFormat], accept: str | None) -> ContentFormat:
    """Kuma's `selectContentType`: the richest format any endpoint used, else negotiate with the scraper."""
    seen = set(received)
    for fmt in (ContentFormat.OPENMETRICS_1_0_0, ContentFormat.OPENMETRICS_0_0_1, ContentFormat.TEXT):
        if fmt in seen:
            return fmt
    return negotiate(accept)


def merge_bodies(bodies: Iterable[bytes], fmt: ContentFormat) -> bytes:
    """Kuma's `processMetrics`: strip each body's trailing `# EOF`, concatenate, drop every blank line (an
    OpenMetrics parser rejects them), and end with one `# EOF` when the result is OpenMetrics."""
    buf = bytearray()
    for body in bodies:
        body = body.rstrip(b"\n")
        body = body.removesuffix(b"# EOF").rstrip(b"\n")
        buf += body + b"\n"
    # processNewlineChars: collapse runs of newlines, then trim surrounding whitespace
    out = b"\n".join(line for line in bytes(buf).split(b"\n") if line).strip() + b"\n"
    if fmt in (ContentFormat.OPENMETRICS_1_0_0, ContentFormat.OPENMETRICS_0_0_1):
        out += b"# EOF\n"
    return out


Query = list[tuple[str, str]]


def add_prometheus_format(query: Query) -> Query:
    """Kuma's `AddPrometheusFormat` (url.Values.Add: appended)."""
    return [*query, ("format", "prometheus"), ("text_readouts", "")]


def add_sidecar_parameters(query: Query) -> Query:
    """Kuma's `AddSidecarParameters`: `usedonly` set to EnvoyMetricsFilter's value, which is "" whether or
    not the policy asks for unused metrics (Set replaces earlier values)."""
    return [*((k, v) for k, v in query if k != "usedonly"), ("usedonly", "")]


def remove_query_parameters(_: Query) -> Query:
    """Kuma's `RemoveQueryParameters` (what applications get)."""
    return []


def rewrite_metrics_target(path: str, raw_query: str, *modifiers: Callable[[Query], Query]) -> str:
    """Kuma's `rewriteMetricsURL` path and query: the scraper's query through the modifiers, encoded as Go's
    `url.Values.Encode` (sorted by key, values in order, `*` escaped)."""
    query = parse_qsl(raw_query, keep_blank_values=True)
    for modifier in modifiers:
        query = modifier(query)
    query.sort(key=lambda kv: kv[0])
    return f"{path}?{urlencode(query)}" if query else path


@dataclass(frozen=True)
class ScrapeTarget:
    """One `aggregate` entry of kumaSidecarConfiguration.metrics."""

    name: str
    address: str
    port: int
    path: str = "/metrics"

    @classmethod
    def from_aggregate(cls, entry: Mapping[str, Any]) -> ScrapeTarget:
        try:
            port = int(entry["port"])
            address = str(entry.get("address") or "127.0.0.1")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"metrics aggregate entry {dict(entry)!r} needs an address and a port") from exc
        path = str(entry.get("path") or "/metrics")
        return cls(str(entry.get("name") or f"{address}:{port}"), address, port, path)

    @property
    def is_ipv6(self) -> bool:
        try:
            return ipaddress.ip_address(self.address.strip("[]")).version == 6
        except ValueError:
            return False


class AdminLike(Protocol):
    """kuma_dp.envoy's AdminAddress: admin over TCP (`host`, `port`) or a unix socket (`socket_path`)."""

    host: str
    port: int
    socket_path: str | None


class _PrefixView:
    """Only the families whose name starts with `prefix`: the merged page gets `kuma_dp_*` but not the
    registry's process_*/python_* collectors, which would clash with the same families from a Go or Python
    application (a second `# TYPE process_cpu_seconds_total` makes Prometheus reject the whole scrape)."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.registry, self.prefix = registry, prefix

    def collect(self) -> Iterator[Any]:
        return (f for f in self.registry.collect() if f.name.startswith(self.prefix))


@dataclass
class _Part:
    name: str
    body: bytes
    fmt: ContentFormat


class MetricsHijacker(Component):
    """Serves the merged page on `socket_path`; construct with everything it needs, then `run()`.

    Direct use: ``MetricsHijacker(kuma_dp.paths.metrics_hijacker_socket_path(workdir, name, mesh), admin,
    result.metrics_aggregate, transparent_proxy=tp_enabled, registry=prometheus_client.REGISTRY,
    metrics=agent_metrics())``; inside the agent, `hijacker_component` builds exactly that from its context.
    `envoy_admin=None` scrapes only the applications.
    """

    name = "metrics-hijacker"

    def __init__(
        self,
        socket_path: str,
        envoy_admin: AdminLike | None,
        aggregate: Sequence[ScrapeTarget | Mapping[str, Any]] = (),
        *,
        transparent_proxy: bool = False,
        registry: CollectorRegistry | None = None,
        metrics: AgentMetrics | None = None,
        endpoint_timeout: float = DEFAULT_ENDPOINT_TIMEOUT,
        include_agent_metrics: bool = True,
        readiness_state: Callable[[], Awaitable[str]] | None = None,
        merge_clusters: bool = True,
    ) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.envoy_admin = envoy_admin
        self.targets = [
            t if isinstance(t, ScrapeTarget) else ScrapeTarget.from_aggregate(t) for t in aggregate
        ]
        self.transparent_proxy = transparent_proxy
        self.metrics = metrics
        if registry is None:
            registry = metrics.registry if metrics is not None else CollectorRegistry()
        self.registry = registry
        self.endpoint_timeout = endpoint_timeout
        self.include_agent_metrics = include_agent_metrics
        #: Called per scrape to refresh `kuma_dp_readiness_state` (what /ready would answer right now).
        self.readiness_state = readiness_state
        #: Kuma's MergeClustersForPrometheus on Envoy's page (cut `-<16 hex>` suffixes, sum, mark mesh).
        self.merge_clusters = merge_clusters
        self._connections: set[asyncio.Task[None]] = set()
        self._warned_sources: set[str] = set()
        #: Set by the MeshMetric manager: the policy's scraped applications and filtered Envoy stats as text,
        #: appended under /meshmetric (what Envoy's MeshMetric Prometheus listeners forward to).
        self.meshmetric_source: Callable[[], Awaitable[bytes]] | None = None

    # -- serving -----------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            _claim_socket_path(self.socket_path)
        except PathBlocked as exc:
            log.error("%s", exc)
            self.ready.set()  # the rest of the agent is unaffected; only this endpoint is missing
            await asyncio.Future()
        server = await asyncio.start_unix_server(self._on_connection, path=self.socket_path)
        try:
            os.chmod(self.socket_path, 0o600)  # Envoy runs as our user; nobody else needs the page
            log.info("starting metrics hijacker", extra={"socketPath": f"unix://{self.socket_path}"})
            self.ready.set()
            await asyncio.Future()
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()
            if self._connections:
                await asyncio.gather(*self._connections, return_exceptions=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            log.info("stopped metrics hijacker")

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await _http.serve_connection(reader, writer, self.handle)
        finally:
            self._connections.discard(task)

    async def handle(self, request: _http.Request) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request: `/meshmetric*` from our registry (and the MeshMetric producer, when a policy
        applies), anything else the merged page."""
        accept = request.headers.get("accept")
        if request.path.startswith("/meshmetric"):
            # Kuma: promhttp.HandlerFor(DefaultGatherer), which negotiates with expfmt.Negotiate (text).
            await self._refresh_readiness()
            bodies = [self._render_registry(ContentFormat.TEXT)]
            if self.meshmetric_source is not None:
                bodies.append(await self.meshmetric_source())
            page = merge_bodies(bodies, ContentFormat.TEXT)
            return 200, {"content-type": negotiate_content_type(accept)}, page
        parts, _ = await asyncio.gather(self.scrape(request), self._refresh_readiness())
        received = [p.fmt for p in parts]
        fmt = select_content_type(received, accept)
        negotiated = not any(
            f in (ContentFormat.OPENMETRICS_1_0_0, ContentFormat.OPENMETRICS_0_0_1, ContentFormat.TEXT)
            for f in received
        )
        bodies = [p.body for p in parts]
        if self.include_agent_metrics:
            bodies.append(self._render_registry(fmt, only_prefix=AGENT_PREFIX))
        if self.metrics is not None:
            self.metrics.scrapes.inc()
        content_type = negotiate_content_type(accept) if negotiated else fmt.value
        return 200, {"content-type": content_type}, merge_bodies(bodies, fmt)

    async def _refresh_readiness(self) -> None:
        if self.readiness_state is None or self.metrics is None:
            return
        try:
            async with asyncio.timeout(1.0):
                self.metrics.readiness_state(await self.readiness_state())
        except Exception as exc:  # a stale gauge beats a failed scrape
            log.debug("readiness state unavailable", extra={"error": str(exc)})

    def _render_registry(self, fmt: ContentFormat, only_prefix: str = "") -> bytes:
        source: Any = self.registry if not only_prefix else _PrefixView(self.registry, only_prefix)
        if fmt in (ContentFormat.OPENMETRICS_1_0_0, ContentFormat.OPENMETRICS_0_0_1):
            return generate_openmetrics(source)
        return generate_text(source)

    # -- scraping ----------------------------------------------------------------------------------
    def _timeout(self, request: _http.Request) -> float:
        timeout = self.endpoint_timeout
        header = request.headers.get("x-prometheus-scrape-timeout-seconds")
        if header:
            with contextlib.suppress(ValueError):
                # Leave Prometheus time to receive what we did get.
                timeout = min(timeout, max(0.1, float(header) * 0.8))
        return timeout

    async def scrape(self, request: _http.Request) -> list[_Part]:
        """Fetch Envoy and every app endpoint concurrently; failed or slow ones are left out and counted."""
        headers = {k: request.headers[k] for k in PASSED_HEADERS if request.headers.get(k)}
        timeout = self._timeout(request)
        jobs = []
        if self.envoy_admin is not None:
            jobs.append(self._fetch_envoy(request, headers, timeout))
        jobs += [self._fetch_app(t, headers, timeout) for t in self.targets]
        results = await asyncio.gather(*jobs)
        return [r for r in results if r is not None]

    async def _fetch_envoy(
        self, request: _http.Request, headers: dict[str, str], timeout: float
    ) -> _Part | None:
        admin = self.envoy_admin
        assert admin is not None
        target = rewrite_metrics_target("/stats", request.query, add_prometheus_format)
        if admin.socket_path:
            coro = _http.get(target=target, unix_path=admin.socket_path, headers=headers)
        else:
            coro = _http.get(target=target, host=admin.host, port=admin.port, headers=headers)
        return await self._fetch(
            "envoy", coro, timeout, mutate=merge_envoy_clusters if self.merge_clusters else None
        )

    async def _fetch_app(self, t: ScrapeTarget, headers: dict[str, str], timeout: float) -> _Part | None:
        source = None
        if self.transparent_proxy:
            # Inbound redirection skips these sources, so the scrape reaches the app, not Envoy's inbound.
            source = PASSTHROUGH_V6 if t.is_ipv6 else PASSTHROUGH_V4
        path = t.path if t.path.startswith("/") else "/" + t.path  # the scraper's query string is dropped
        host = t.address.strip("[]")

        async def fetch() -> _http.Response:
            try:
                return await _http.get(
                    target=path, host=host, port=t.port, headers=headers, source_address=source
                )
            except _http.HttpError as exc:
                # ::6 exists only where the transparent-proxy installer added it to `lo`; without it,
                # scrape from the default source rather than not at all.
                if source is None or exc.errno != errno.EADDRNOTAVAIL:
                    raise
                if source not in self._warned_sources:
                    self._warned_sources.add(source)
                    log.warning(
                        "passthrough source address is not configured; scraping without it",
                        extra={"source": source, "endpoint": t.name},
                    )
                return await _http.get(target=path, host=host, port=t.port, headers=headers)

        return await self._fetch(t.name, fetch(), timeout)

    async def _fetch(
        self, name: str, coro: Any, timeout: float, mutate: Callable[[str], str] | None = None
    ) -> _Part | None:
        start = time.monotonic()
        reason = ""
        try:
            async with asyncio.timeout(timeout):
                resp = await coro
        except TimeoutError:
            reason = "timeout"
            log.warning(
                "metrics endpoint did not answer in time; skipped",
                extra={"endpoint": name, "timeout": timeout},
            )
        except _http.HttpError as exc:
            reason = "error"
            if isinstance(exc, _http.BodyTooLarge):
                reason = "too_large"
                if self.metrics is not None:
                    self.metrics.body_too_large("envoy" if name == "envoy" else "application")
            log.warning("metrics endpoint failed; skipped", extra={"endpoint": name, "error": str(exc)})
        else:
            if 200 <= resp.status < 300:
                log.debug("scraped", extra={"endpoint": name, "seconds": round(time.monotonic() - start, 4)})
                body = resp.body
                if mutate is not None:
                    body = mutate(body.decode("utf-8", "replace")).encode()
                return _Part(name, body, response_format(resp.headers.get("content-type")))
            reason = "status"
            log.warning(
                "metrics endpoint answered an error; skipped", extra={"endpoint": name, "status": resp.status}
            )
        if self.metrics is not None:
            self.metrics.scrape_failures.labels(endpoint=name, reason=reason).inc()
        return None


class PathBlocked(Exception):
    """Something that is not a socket, and that we may not move, occupies the socket path."""


def _claim_socket_path(path: str) -> None:
    """Make `path` bindable: remove a stale socket left by a crashed agent; refuse one another live agent is
    serving on (RuntimeError).

    A non-socket at the path (a planted or leftover file) is never deleted: when it is a regular file of our
    own uid it is renamed to `<path>.not-a-socket` (its content kept) and the path is used; anything else
    (another user's file, a directory, a symlink) raises `PathBlocked`, which the hijacker turns into one log
    line and a disabled endpoint instead of stopping the agent (Kuma renames and deletes whatever is there).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = p.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
            aside = path + ".not-a-socket"
            os.replace(path, aside)
            log.warning(
                "a regular file occupied the metrics socket path; moved it aside",
                extra={"path": path, "movedTo": aside},
            )
            return
        raise PathBlocked(
            f"{path} exists, is not a socket and is not ours to move (uid {st.st_uid}); metrics are not"
            " served: remove it or choose another --work-dir"
        )
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except OSError:
            p.unlink(missing_ok=True)
            return
    raise RuntimeError(
        f"{path} is in use by another kuma-dp (same --name and --mesh?); stop it or use another --work-dir"
    )
