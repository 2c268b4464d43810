"""Prometheus metrics: the agent's own `kuma_dp_*` series and the merged-scrape endpoint (the "hijacker")."""

from kuma_dp.metrics._agent import PHASES, READINESS_STATES, AgentMetrics, agent_metrics
from kuma_dp.metrics._hijacker import (
    ContentFormat,
    MetricsHijacker,
    ScrapeTarget,
    merge_bodies,
    response_format,
    select_content_type,
    socket_path,
)

__all__ = [
    "PHASES",
    "READINESS_STATES",
    "AgentMetrics",
    "ContentFormat",
    "MetricsHijacker",
    "ScrapeTarget",
    "agent_metrics",
    "merge_bodies",
    "response_format",
    "select_content_type",
    "socket_path",
]
