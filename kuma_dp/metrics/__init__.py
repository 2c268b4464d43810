"""Prometheus metrics: the agent's own `kuma_dp_*` series and the merged-scrape endpoint (the "hijacker")."""

from kuma_dp.metrics._agent import PHASES, READINESS_STATES, AgentMetrics, agent_metrics
from kuma_dp.metrics._hijacker import (
    ContentFormat,
    MetricsHijacker,
    ScrapeTarget,
    merge_bodies,
    response_format,
    select_content_type,
)
from kuma_dp.metrics._wiring import StartupObserver, hijacker_component, startup_observer_component

__all__ = [
    "PHASES",
    "READINESS_STATES",
    "AgentMetrics",
    "ContentFormat",
    "MetricsHijacker",
    "ScrapeTarget",
    "StartupObserver",
    "agent_metrics",
    "hijacker_component",
    "merge_bodies",
    "response_format",
    "select_content_type",
    "startup_observer_component",
]
