"""DNS metrics with kuma-dp's names (`kuma_dp_dns_*`, Kuma's `app/kuma-dp/pkg/dataplane/dnsproxy/metrics.go`)
plus cache and table-age metrics.

The hot path must not take a lock per query, so counts live in plain ints and lists here and a
prometheus-client `Collector` turns them into metric families at scrape time. Like kuma-dp, the families
carry the payload's `extraLabels` as constant labels and appear once the first table is loaded.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import REGISTRY, CollectorRegistry

#: prometheus-client's default buckets, as Go's prometheus.DefBuckets used by kuma-dp.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
READY_WAIT_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 2, 5, 10, 30)

QTYPES = ("A", "AAAA", "other")
SOURCES = ("local", "upstream")
RCODES = {0: "noerror", 3: "nxdomain", 2: "servfail"}
#: rcode (0-15) -> label of kuma_dp_dns_response_codes_total, for indexing on the hot path.
RCODE_NAMES = tuple(RCODES.get(i, "other") for i in range(16))


class Histogram:
    """A lock-free histogram (single event loop writes it)."""

    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def observe_many(self, value: float, n: int) -> None:
        """`n` observations of the same value (a batch measured as a whole)."""
        self.counts[bisect.bisect_left(self.buckets, value)] += n
        self.sum += value * n

    def family(self, name: str, doc: str, labels: Mapping[str, str]) -> HistogramMetricFamily:
        cum = 0
        out: list[tuple[str, float]] = []
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            cum += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), cum))
        fam = HistogramMetricFamily(name, doc, labels=list(labels))
        fam.add_metric(list(labels.values()), out, self.sum)
        return fam


class DNSMetrics:
    """Counters the server, forwarder and cache bump; registered as one collector."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.created = clock()
        self.extra_labels: dict[str, str] | None = None  # None until the first table: nothing exported yet
        self.request_duration = Histogram(DEFAULT_BUCKETS)
        self.upstream_duration = Histogram(DEFAULT_BUCKETS)
        self.ready_wait = Histogram(READY_WAIT_BUCKETS)
        self.upstream_failures = 0
        # queries[(qtype_index, source_index)]
        self.queries = [[0, 0], [0, 0], [0, 0]]
        self.rcodes: dict[str, int] = {"noerror": 0, "nxdomain": 0, "servfail": 0, "other": 0}
        self.cache_hits = 0
        self.cache_misses = 0
        self.stale_served = 0
        self.malformed = 0
        self.malformed_replies = 0  # upstream replies that failed `_wire.valid_response`: SERVFAIL instead
        self.tcp_refused = 0  # TCP connections closed at accept: per-source or total cap, nothing to evict
        self.tcp_evicted = 0  # idle TCP connections closed to make room for a new one
        self.accept_errors = 0  # accept(2) failures (EMFILE...): the listener backs off
        self.pending_dropped = 0  # UDP queries to forward dropped: the outstanding-upstream cap was full
        #: Tables not loaded (a planted or unsafe file, a FIFO, too big, bad JSON): the store counts them.
        self.tables_rejected: Callable[[], int] = lambda: 0
        self.entries: Callable[[], int] = lambda: 0
        self.table_age: Callable[[], float | None] = lambda: None

    def config_loaded(self, extra_labels: Mapping[str, str]) -> None:
        """First table: fix the constant labels and record how long the proxy waited for it."""
        if self.extra_labels is None:
            self.extra_labels = dict(extra_labels)
            self.ready_wait.observe(self.clock() - self.created)

    def rcode(self, code: int) -> None:
        self.rcodes[RCODES.get(code, "other")] += 1

    def register(self, registry: CollectorRegistry | None = None) -> DNSMetrics:
        (registry or REGISTRY).register(self)  # type: ignore[arg-type]
        return self

    def describe(self) -> list[Metric]:
        return []  # families depend on labels known only after the first table

    def collect(self) -> Iterator[Metric]:
        if self.extra_labels is None:
            return
        lab = self.extra_labels
        keys = list(lab)
        vals = list(lab.values())
        yield self.request_duration.family(
            "kuma_dp_dns_request_duration_seconds", "Duration of DNS requests (local and upstream)", lab
        )
        yield self.upstream_duration.family(
            "kuma_dp_dns_upstream_request_duration_seconds", "Duration of forwarded DNS requests", lab
        )
        # Go exposes this counter under its exact name (no _total); an untyped family keeps that name.
        fail = Metric(
            "kuma_dp_dns_upstream_request_failure_count", "Failed upstream DNS exchanges", "unknown"
        )
        fail.add_sample(
            "kuma_dp_dns_upstream_request_failure_count", dict(lab), float(self.upstream_failures)
        )
        yield fail
        q = CounterMetricFamily(
            "kuma_dp_dns_queries", "DNS queries by type and source", labels=[*keys, "qtype", "source"]
        )
        for qi, qt in enumerate(QTYPES):
            for si, src in enumerate(SOURCES):
                q.add_metric([*vals, qt, src], self.queries[qi][si])
        yield q
        rc = CounterMetricFamily(
            "kuma_dp_dns_response_codes", "DNS responses by rcode", labels=[*keys, "rcode"]
        )
        for name, n in self.rcodes.items():
            rc.add_metric([*vals, name], n)
        yield rc
        ent = GaugeMetricFamily("kuma_dp_dns_entries_total", "Host names in the DNS map", labels=keys)
        ent.add_metric(vals, self.entries())
        yield ent
        yield self.ready_wait.family(
            "kuma_dp_dns_config_ready_wait_seconds", "Time from start to the first DNS configuration", lab
        )
        for name, doc, val in (
            ("kuma_dp_dns_cache_hits", "Forwarded queries answered from the cache", self.cache_hits),
            ("kuma_dp_dns_cache_misses", "Forwarded queries that went upstream", self.cache_misses),
            (
                "kuma_dp_dns_stale_answers",
                "Expired cache answers served because upstream failed",
                self.stale_served,
            ),
            ("kuma_dp_dns_malformed_queries", "Packets answered FORMERR or dropped", self.malformed),
            (
                "kuma_dp_dns_malformed_upstream_replies",
                "Upstream replies that did not parse (SERVFAIL or the next server instead)",
                self.malformed_replies,
            ),
            ("kuma_dp_dns_tcp_refused_connections", "TCP connections refused at a cap", self.tcp_refused),
            (
                "kuma_dp_dns_tcp_evicted_connections",
                "Idle TCP connections closed for new ones",
                self.tcp_evicted,
            ),
            ("kuma_dp_dns_accept_errors", "accept() failures such as EMFILE", self.accept_errors),
            (
                "kuma_dp_dns_upstream_dropped_queries",
                "UDP queries not forwarded: the outstanding upstream query cap was full",
                self.pending_dropped,
            ),
            (
                "kuma_dp_dns_tables_rejected",
                "Tables refused: unsafe file, not a regular file, bad",
                self.tables_rejected(),
            ),
        ):
            c = CounterMetricFamily(name, doc, labels=keys)
            c.add_metric(vals, val)
            yield c
        age = self.table_age()
        g = GaugeMetricFamily(
            "kuma_dp_dns_table_age_seconds",
            "Seconds since the control plane last confirmed the table",
            labels=keys,
        )
        g.add_metric(vals, -1.0 if age is None else age)
        yield g
