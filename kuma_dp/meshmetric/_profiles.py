"""MeshMetric sidecar profiles applied to Envoy's stats: Kuma's profile mutator,
app/kuma-dp/pkg/dataplane/metrics/profiles.go (`ProfileMutatorGenerator`), selector for selector.

Families are kept when a profile selector matches the family name, then `exclude` drops and `include` re-adds
by name; under the Basic profile (the default) every sample whose cluster, HTTP-prefix or listener label names
a Kuma-internal entity is removed, and a family left without samples goes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kuma_dp.metrics._text import Family

__all__ = ["ENTITY_LABELS", "ProfileMutator", "profile_mutator", "selector"]

Selector = Callable[[str], bool]

#: Labels that may name an entity (Kuma `EntityLabels`, metrics/merge.go).
ENTITY_LABELS = frozenset({"envoy_cluster_name", "envoy_http_conn_manager_prefix", "envoy_listener_address"})


def _never(_: str) -> bool:
    return False


def _always(_: str) -> bool:
    return True


def selector(kind: str, match: str) -> Selector:
    """Kuma's `selectorToFilterFunction`: Contains, Prefix, Regex (unanchored, like Go's MatchString), Exact;
    an unknown type or a regex that does not compile never selects."""
    if kind == "Contains":
        return lambda v: match in v
    if kind == "Prefix":
        return lambda v: v.startswith(match)
    if kind == "Regex":
        try:
            compiled = re.compile(match)
        except re.error:
            return _never
        return lambda v: compiled.search(v) is not None
    if kind == "Exact":
        return lambda v: v == match
    return _never


_C, _P, _E = "Contains", "Prefix", "Exact"
#: The Basic profile (golden signals, dashboards, DNS), in Kuma's order.
BASIC_PROFILE: tuple[Selector, ...] = tuple(
    selector(k, m)
    for k, m in [
        (_C, "rq_time"),
        (_C, "cx_length_ms"),
        (_C, "cx_count"),
        (_C, "_rq"),
        (_C, "bytes"),
        (_C, "timeout"),
        (_C, "health_check"),
        (_C, "lb_healthy_panic"),
        (_C, "cx_destroy"),
        (_E, "envoy_cluster_membership_degraded"),
        (_E, "envoy_cluster_membership_healthy"),
        (_C, "error"),
        (_C, "fail"),
        (_C, "reset"),
        (_C, "eject"),
        (_C, "overflow"),
        (_C, "cancelled"),
        (_C, "max_duration_reached"),
        (_C, "no_cluster"),
        (_C, "no_route"),
        (_C, "no_filter_chain"),
        (_C, "reject"),
        (_C, "denied"),
        (_C, "days_until_first_cert_expiring"),
        (_P, "envoy_server"),
        (_P, "envoy_control_plane"),
        (_C, "rbac"),
        (_C, "cx_active"),
        (_C, "cx_connect"),
        (_E, "envoy_cluster_ssl_handshake"),
        (_E, "envoy_cluster_membership_total"),
        (_C, "circuit_breakers"),
        (_C, "cx_total"),
        (_C, "ssl_handshake"),
        (_C, "ssl_context_update_by_sds"),
        (_P, "envoy_dns_filter"),
        (_P, "envoy_dns_cares"),
        (_P, "kuma_dp_dns"),
    ]
)
#: Label values naming Kuma-internal entities under Basic (system_ prefix, "_" internal clusters, ADS, access
#: log sink, admin, hijacker, OpenTelemetry and tracing clusters; pkg/xds/envoy/names).
BASIC_PROFILE_LABELS: tuple[Selector, ...] = tuple(
    selector(k, m)
    for k, m in [
        (_P, "system_"),
        (_P, "_"),
        (_E, "ads_cluster"),
        (_E, "access_log_sink"),
        (_E, "kuma_envoy_admin"),
        (_E, "kuma_metrics_hijacker"),
        (_P, "_kuma_metrics_opentelemetry"),
        (_P, "tracing"),
    ]
)
_PROFILE_ORDER = {"All": 0, "Basic": 1, "None": 2}

ProfileMutator = Callable[[dict[str, Family]], None]


def _selectors(items: Sequence[Mapping[str, Any]] | None) -> list[Selector]:
    return [selector(str(i.get("type", "")), str(i.get("match", ""))) for i in items or ()]


def profile_mutator(sidecar: Mapping[str, Any] | None) -> ProfileMutator:
    """The mutator for a MeshMetric `sidecar` section (None: the Basic default)."""
    effective: list[Selector] = list(BASIC_PROFILE)
    label_selectors: list[Selector] = list(BASIC_PROFILE_LABELS)
    effective_profile = "Basic"
    profiles_cfg = (sidecar or {}).get("profiles") or {}
    append = profiles_cfg.get("appendProfiles")
    if append:
        effective, label_selectors = [], []
        names = sorted((str(p.get("name", "")) for p in append), key=lambda n: _PROFILE_ORDER.get(n, 0))
        for name in names:
            if name == "All":
                effective.append(_always)
            elif name == "None":
                effective.append(_never)
            elif name == "Basic":
                effective.extend(BASIC_PROFILE)
                label_selectors.extend(BASIC_PROFILE_LABELS)
        # Profiles nest (All ⊃ Basic ⊃ None), so the broadest one decides the label filtering.
        effective_profile = names[0]
    exclude = _selectors(profiles_cfg.get("exclude"))
    include = _selectors(profiles_cfg.get("include"))

    def internal(labels: tuple[tuple[str, str], ...]) -> bool:
        return any(k in ENTITY_LABELS and any(s(v) for s in label_selectors) for k, v in labels)

    def mutate(families: dict[str, Family]) -> None:
        for name in list(families):
            fam = families[name]
            keep = any(s(name) for s in effective)
            if any(s(name) for s in exclude):
                keep = False
            if any(s(name) for s in include):
                keep = True
            if effective_profile == "Basic":
                samples = [s for s in fam.samples if not internal(s.labels)]
                if not samples:
                    keep = False
                else:
                    fam.samples = samples
            if not keep:
                del families[name]

    return mutate
