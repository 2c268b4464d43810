"""Our version, as `kuma-dp version` prints it and the bootstrap request sends it (`version.kumaDp`).

Envoy's version is read by `kuma_dp.envoy.envoy_version` (B's module); this module only adds our build info.
A git checkout reports the commit it runs from, a wheel the version it was built as.
"""

from __future__ import annotations

import functools
from pathlib import Path

from kuma_dp import EXPECTED_ENVOY_VERSION, __version__

UNKNOWN = "unknown"


@functools.lru_cache(maxsize=1)
def _git_commit() -> str:
    """The checkout's HEAD commit, read from .git directly (no subprocess on the start-up path)."""
    git = Path(__file__).resolve().parent.parent / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head or UNKNOWN
        ref = head[5:]
        ref_file = git / ref
        if ref_file.is_file():
            return ref_file.read_text().strip() or UNKNOWN
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return UNKNOWN


def build_info() -> dict[str, str]:
    """`{"version", "gitTag", "gitCommit", "buildDate"}` in Kuma's shape."""
    return {
        "version": __version__,
        "gitTag": f"v{__version__}",
        "gitCommit": _git_commit(),
        "buildDate": UNKNOWN,
    }


def expected_envoy_version() -> str:
    return EXPECTED_ENVOY_VERSION
