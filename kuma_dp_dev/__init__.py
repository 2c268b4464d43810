"""Development tools for kuma-dp: the development control plane, the demos and the test/bench harnesses.

Nothing here runs in a sidecar, on a VM or in an init container, and the agent packages (`kuma_dp`,
`kuma_dns`, `iptables`) never import it: `kuma-dp dev-cp` and `kuma-dp demo` reach it by name only, and
the .deb/.rpm leave it out. Its third-party dependencies come with the `dev` extra
(`pip install 'kuma-dp-py[dev]'`).
"""

from __future__ import annotations

import importlib.util

#: Top-level modules of the `dev` extra's distributions (pyproject.toml), checked before a dev command runs
#: so a missing one gives a one-line hint instead of a traceback half-way through a demo.
REQUIRED_MODULES = ("httpx", "psutil", "dnslib", "grpc", "cryptography", "envoy.service")


def missing_requirement() -> str:
    """The first required module that cannot be imported, or "" when the development tools are complete."""
    for name in REQUIRED_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ModuleNotFoundError:
            return name
    return ""
