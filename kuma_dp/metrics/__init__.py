"""Prometheus metrics: the agent's own `kuma_dp_*` series and the merged-scrape endpoint (the "hijacker")."""

from typing import TYPE_CHECKING

from kuma_dp._lazy import lazy_exports

if TYPE_CHECKING:  # what the names are, for type checkers; at run time each loads on first use
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

#: Public name -> the submodule defining it, imported on first use (kuma_dp/_lazy.py).
_EXPORTS = {
    "PHASES": "_agent",
    "READINESS_STATES": "_agent",
    "AgentMetrics": "_agent",
    "agent_metrics": "_agent",
    "ContentFormat": "_hijacker",
    "MetricsHijacker": "_hijacker",
    "ScrapeTarget": "_hijacker",
    "merge_bodies": "_hijacker",
    "response_format": "_hijacker",
    "select_content_type": "_hijacker",
    "StartupObserver": "_wiring",
    "hijacker_component": "_wiring",
    "startup_observer_component": "_wiring",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
