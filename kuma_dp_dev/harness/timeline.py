"""The start-up timeline the benchmarks print: when each phase finished, in ms after exec, for each side.

`kuma-dp run` writes its own marks (kuma_dp.starttrace, `KUMA_DP_STARTUP_TRACE=<file>`): CLOCK_MONOTONIC
seconds, the clock `time.monotonic()` reads in the benchmark too, so a mark minus the benchmark's exec time
is the phase's time since exec. The benchmark adds what it observes from the outside (Envoy LIVE on bare
Envoy, the first 200). `Timeline` keeps one dict per measured round and side and prints the medians.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["PACKAGES", "PHASES", "Timeline", "read_marks", "use_compiled_bytecode"]

#: The repository's packages a benchmark's child processes import.
PACKAGES = ("kuma_dp", "kuma_dns", "kuma_dp_dev", "iptables")

#: Every phase a side may report, in start-up order, with what it means.
PHASES: dict[str, str] = {
    "interpreter": "interpreter up, first line of kuma_dp runs",
    "imports": "imports done (flags parsed)",
    "settings": "settings loaded (flags + env)",
    "preloaded": "agent modules imported",  # before Envoy's spawn in earlier versions (--baseline)
    "envoy_version": "envoy --version answered",
    "config": "config loaded, request built",
    "bootstrap_sent": "bootstrap request sent",
    "bootstrap_answered": "bootstrap answered",
    "bootstrap_written": "bootstrap file written",
    "first_dns_answer": "first DNS answer (persisted table)",
    "envoy_spawned": "Envoy spawned",
    "agent_built": "agent built (components resolved)",
    "envoy_live": "Envoy LIVE (admin /ready 200)",
    "first_config": "first xDS (first LDS update)",
    "first_dns_table": "first DNS table loaded",
    "listener_200": "listeners ready: first 200",
    "ready_200": "/ready 200 (the timed end)",
    "mesh_200": "first 200 through the mesh (timed end)",
}


def use_compiled_bytecode(cache_dir: Path, repo: Path) -> None:
    """Make the child processes this benchmark starts (they inherit the environment) run from compiled
    byte code, as an installed agent does (pip compiles at install, the .deb/.rpm in their post-install
    script), and compile it now.

    Without this, a PYTHONDONTWRITEBYTECODE environment (a CI or development shell) makes every start of
    `kuma-dp run` compile the repository's modules from source: over 100 ms that no installed agent pays.
    The byte code goes to `cache_dir` (PYTHONPYCACHEPREFIX), not into the working tree.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(cache_dir)
    packages = [p for p in PACKAGES if (repo / p).is_dir()]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], cwd=repo, check=True)


def read_marks(path: str | Path, exec_at: float) -> dict[str, float]:
    """The marks of a `KUMA_DP_STARTUP_TRACE` file as seconds since `exec_at` ({} if none was written)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return {str(name): float(at) - exec_at for name, at in data.get("marks", [])}


class Timeline:
    """Per side, one {phase: seconds since exec} per measured round; `render()` gives the median table."""

    def __init__(self, sides: list[str]) -> None:
        self.sides = sides
        self.rounds: dict[str, list[dict[str, float]]] = {s: [] for s in sides}

    def add(self, side: str, phases: Mapping[str, float]) -> None:
        self.rounds[side].append(dict(phases))

    def median(self, side: str, phase: str) -> float | None:
        values = [r[phase] for r in self.rounds[side] if phase in r]
        return statistics.median(values) if values else None

    def render(self) -> str:
        """A table: one row per phase any side reported, the median ms after exec per side (and how many
        rounds reported it when not all did)."""
        head = f"  {'phase (median ms after exec)':<40}" + "".join(f"{s:>14}" for s in self.sides)
        lines = [head]
        for phase, label in PHASES.items():
            cells = []
            for side in self.sides:
                value = self.median(side, phase)
                seen = sum(phase in r for r in self.rounds[side])
                if value is None:
                    cells.append(f"{'':>14}")
                else:
                    note = "" if seen == len(self.rounds[side]) else f" ({seen})"
                    cells.append(f"{value * 1000:.1f}{note}".rjust(14))
            if any(c.strip() for c in cells):
                lines.append(f"  {label:<40}" + "".join(cells))
        return "\n".join(lines)
