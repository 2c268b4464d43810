"""Lazy package exports (PEP 562): a package's public names load their submodule on first use.

`kuma-dp run` must reach Envoy's exec with as few imports as possible (bench/startup.py): a package whose
`__init__` imported every submodule would charge the start-up path for the admin client, the supervisor or
the OpenTelemetry receivers when it only needs, say, `find_envoy`. Importing a submodule always runs its
package's `__init__` first, so the packages on that path (`kuma_dp.envoy`, `kuma_dp.metrics`,
`kuma_dp.otel`) map each public name to the submodule defining it and import that only when the name is read.
"""

from __future__ import annotations

import importlib

#: `typing` costs ~10 ms to import and nothing on the start-up path needs it at run time; type checkers
#: read any constant named TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """The module `__getattr__` of `package`: `exports` maps a public name to its submodule (`"_admin"`)."""

    def __getattr__(name: str) -> Any:
        submodule = exports.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{submodule}"), name)

    return __getattr__
