"""A whole `kuma-dp run` (real CLI, real Envoy, a stand-in CP) as an operator sees it: the merged metrics
page on the work-dir socket has Envoy's, the healthy application's and the agent's series while a hanging
application is skipped and counted; the JSON log at debug parses line by line and never contains the
dataplane token, even when the control plane echoes it in an error."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kuma_dp._http import get
from kuma_dp_dev.harness.ports import free_port
from tests.helpers.agent_proc import kuma_dp_run
from tests.helpers.fake_cp import FakeCP, Reply, make_token, minimal_bootstrap_yaml
from tests.integration.test_obs_envoy import hanging_app, healthy_app

pytestmark = pytest.mark.integration


def test_run_metrics_and_json_logs_without_the_token(envoy_binary: str, short_tmp: Path) -> None:
    with healthy_app() as app, hanging_app() as hanging_port:
        _scenario(envoy_binary, short_tmp, app.port, hanging_port)


def _scrape(sock: str) -> dict[str, object]:
    async def go() -> bytes:
        resp = await get(
            target="/metrics", unix_path=sock, headers={"X-Prometheus-Scrape-Timeout-Seconds": "1"}
        )
        assert resp.status == 200
        return resp.body

    return {f.name: f for f in text_string_to_metric_families(asyncio.run(go()).decode())}


def _scenario(envoy_binary: str, short_tmp: Path, app_port: int, hanging_port: int) -> None:
    token = make_token({"Name": "dp-1", "Mesh": "default", "Tags": {}, "secret": "x" * 40})
    log_file = short_tmp / "logs" / "kuma-dp.log"
    admin_port = free_port()
    replies = [
        # A CP that echoes the credential in its error body: the retry log line must not carry it.
        Reply.status_only(500, f"rejected Authorization: Bearer {token}"),
        Reply.bootstrap(
            minimal_bootstrap_yaml(admin_port),
            sidecar={
                "networking": {"corefileTemplate": None, "address": "127.0.0.1"},
                "metrics": {
                    "aggregate": [
                        {"name": "app", "address": "127.0.0.1", "port": app_port, "path": "/metrics"},
                        {"name": "stuck", "address": "127.0.0.1", "port": hanging_port, "path": "/m"},
                    ]
                },
            },
        ),
    ]
    env = {"KUMA_CONTROL_PLANE_RETRY_BACKOFF": "100ms", "KUMA_DNS_ENABLED": "false"}
    with FakeCP(replies) as cp:
        args = ["--cp-address", cp.url, "--name", "dp-1", "--mesh", "default", "--dataplane-token", token,
                "--binary-path", envoy_binary, "--work-dir", str(short_tmp / "wd"),
                "--drain-time", "1s", "--concurrency", "1",
                "--log-level", "debug", "--log-format", "json",
                "--log-output-path", str(log_file)]  # fmt: skip
        with kuma_dp_run(args, short_tmp / "kuma-dp.out", env=env) as agent:
            agent.wait_for(
                lambda: log_file.exists() and "all components started" in log_file.read_text(),
                60,
                "the agent to start",
            )
            assert len(cp.requests) >= 2  # the failed attempt was retried
            # "all components started" can precede Envoy's admin answering; scrape until Envoy's page shows.
            sock = str(short_tmp / "wd" / "kuma-mh-dp-1-default.sock")

            def with_envoy() -> dict[str, object] | None:
                page = _scrape(sock)
                return page if "envoy_server_live" in page else None

            families = agent.wait_for(with_envoy, 20, "Envoy's series on the merged page")
            assert "envoy_server_live" in families  # Envoy's page
            assert families["app_orders"].samples[0].value == 7  # type: ignore[attr-defined]
            failures = families["kuma_dp_metrics_scrape_failures"].samples  # type: ignore[attr-defined]
            counted = {
                (s.labels["endpoint"], s.labels["reason"]) for s in failures if s.name.endswith("_total")
            }
            # The hanging app is skipped and counted; the healthy app never is. (An early scrape may also have
            # counted Envoy's admin as not answering yet.)
            assert ("stuck", "timeout") in counted
            attempts = {
                s.labels["result"]: s.value
                for s in families["kuma_dp_bootstrap_attempts"].samples  # type: ignore[attr-defined]
                if s.name.endswith("_total")
            }
            assert attempts == {"failure": len(cp.requests) - 1, "success": 1}
            phases = families["kuma_dp_startup_phase_duration_seconds"].samples  # type: ignore[attr-defined]
            assert "bootstrap" in {s.labels["phase"] for s in phases}
            assert families["kuma_dp_control_plane_reachable"].samples[0].value == 1  # type: ignore[attr-defined]
            assert counted <= {("stuck", "timeout"), ("envoy", "error")}
            agent.stop_draining()
        out = agent.output()  # stdout and stderr
    text = log_file.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert len(records) > 5
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    assert any(r["level"] == "debug" for r in records)
    whole = text + out
    assert token not in whole
    for part in token.split("."):
        assert part not in whole
