"""Envoy (told by the bootstrap and the dev CP's xDS) and the agent's components use the same work-dir
socket and pipe paths for the same (workdir, name, mesh), including names long enough to be truncated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kuma_dp import paths
from kuma_dp.accesslog import streamer_component
from kuma_dp.agent import AgentContext
from kuma_dp.bootstrap.render import RenderParams, render_bootstrap
from kuma_dp.config import RunConfig
from kuma_dp.dynconf import from_agent as dynconf_from_agent
from kuma_dp.envoy import AdminAddress, AdminClient, admin_address_from_bootstrap
from kuma_dp.metrics import hijacker_component
from kuma_dp.readiness import ReadinessState
from kuma_dp_dev.devcp import xds

pytestmark = pytest.mark.unit

CASES = [
    pytest.param("/tmp/kuma-dp-w", "dp-1", "default", id="short"),
    pytest.param("/tmp/kuma-dp-w", "web-" + "x" * 120, "default", id="long-name"),
    pytest.param("/" + "w" * 90, "dp-1", "m" * 40, id="long-workdir"),
    pytest.param("/" + "w" * 120, "dp-1", "default", id="workdir-alone-too-long"),
]


def _context(workdir: Path, name: str, mesh: str) -> AgentContext:
    cfg = RunConfig()
    cfg.dataplane.name = name
    cfg.dataplane.mesh = mesh
    ctx = AgentContext(
        cfg=cfg,
        bootstrap_path=workdir / "bootstrap.yaml",
        work_dir=workdir,
        admin=AdminClient(AdminAddress()),
        readiness=ReadinessState(),
    )
    ctx.dynconf_handlers["/dns"] = lambda body, etag: None
    return ctx


def _bootstrap(workdir: str, name: str, mesh: str, **params: Any) -> dict[str, Any]:
    """What kuma-cp (and `kuma-dp run --bootstrap-source=local`) gives Envoy for this proxy."""
    resource = {
        "type": "Dataplane",
        "mesh": mesh,
        "name": name,
        "networking": {"address": "127.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "w"}}]},
    }
    request = {"mesh": mesh, "name": name, "workdir": workdir, "dataplaneResource": json.dumps(resource)}
    return render_bootstrap(request, RenderParams(xds_tls=False, **params))


def _pipe(cluster: dict[str, Any]) -> str:
    endpoint = cluster["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]
    return str(endpoint["address"]["pipe"]["path"])


@pytest.mark.parametrize(("workdir", "name", "mesh"), CASES)
def test_access_log_pipe_is_where_the_bootstrap_sends_the_logs(workdir: str, name: str, mesh: str) -> None:
    # `kuma-dp run` renders/requests with str(work_dir) and gives the agent Path(work_dir).
    bootstrap = _bootstrap(workdir, name, mesh)
    clusters = {c["name"]: c for c in bootstrap["staticResources"]["clusters"]}
    told_envoy = _pipe(clusters["access_log_sink"])
    agent = streamer_component(_context(Path(workdir), name, mesh)).fifo_path
    assert told_envoy == agent == paths.access_log_socket_path(workdir, name, mesh)
    assert len(agent) <= paths.SOCKET_STEM_MAX + len(".sock")


@pytest.mark.parametrize(("workdir", "name", "mesh"), CASES)
def test_dynconf_socket_is_where_the_dev_cp_puts_the_listener(workdir: str, name: str, mesh: str) -> None:
    # The dev CP learns the workdir from the bootstrap's node metadata, as kuma-cp does.
    node_workdir = _bootstrap(workdir, name, mesh)["node"]["metadata"]["workdir"]
    listener = xds.dynconf_listener(node_workdir, {"/dns": b"{}"})
    fetcher = dynconf_from_agent(_context(Path(workdir), name, mesh))
    assert fetcher is not None
    assert listener["address"]["pipe"]["path"] == fetcher.socket == paths.dynconf_socket_path(workdir)


@pytest.mark.parametrize(("workdir", "name", "mesh"), CASES)
def test_admin_socket_is_where_the_agent_finds_the_admin_api(workdir: str, name: str, mesh: str) -> None:
    bootstrap = _bootstrap(workdir, name, mesh, admin_unix_socket=True)
    address = admin_address_from_bootstrap(bootstrap)
    assert address.socket_path == paths.admin_socket_path(Path(workdir))
    assert bootstrap["node"]["metadata"]["dataplane.admin.socketPath"] == address.socket_path


@pytest.mark.parametrize(("workdir", "name", "mesh"), CASES)
def test_metrics_hijacker_socket(workdir: str, name: str, mesh: str) -> None:
    agent = hijacker_component(_context(Path(workdir), name, mesh), aggregate=()).socket_path
    assert agent == paths.metrics_hijacker_socket_path(workdir, name, mesh)
    assert len(agent) <= paths.SOCKET_STEM_MAX + len(".sock")


def test_names_and_truncation_follow_kuma_sockets_go() -> None:
    """kumahq/kuma `pkg/core/xds/sockets.go`: `socketName(filepath.Join(dir, stem))` keeps 98 characters."""
    assert paths.access_log_socket_path("/tmp", "dp-1", "default") == "/tmp/kuma-al-dp-1-default.sock"
    assert paths.metrics_hijacker_socket_path("/tmp", "dp-1", "default") == "/tmp/kuma-mh-dp-1-default.sock"
    assert paths.dynconf_socket_path("/tmp/") == "/tmp/kuma-mesh-metric-config.sock"
    assert paths.admin_socket_path(Path("/tmp")) == "/tmp/kuma-envoy-admin.sock"
    assert paths.dynconf_socket_path("") == "kuma-mesh-metric-config.sock"
    long = paths.access_log_socket_path("/tmp", "x" * 200, "mesh")
    assert long == ("/tmp/kuma-al-" + "x" * 200)[:98] + ".sock"
    assert len(long.encode()) + 1 <= 104  # with the NUL, inside the smallest (BSD/macOS) sun_path
