"""Getting the Envoy bootstrap: from the control plane (`client`) or rendered locally (`render`).

Attributes of `client` are re-exported lazily, so `import kuma_dp.bootstrap.render` (the dev CP) does not pay
for httpx, and `kuma-dp run` does not pay for the renderer unless `--bootstrap-source local` is used.
"""

from __future__ import annotations

from typing import Any

_CLIENT_NAMES = frozenset(
    {
        "BootstrapError",
        "BootstrapParams",
        "BootstrapResult",
        "FatalBootstrapError",
        "build_request",
        "compute_features",
        "fetch_bootstrap",
        "params_from_config",
        "parse_response",
        "write_bootstrap",
    }
)


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from kuma_dp.bootstrap import client

        return getattr(client, name)
    raise AttributeError(f"module 'kuma_dp.bootstrap' has no attribute {name!r}")
