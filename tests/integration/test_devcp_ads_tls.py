"""The dev CP over TLS, as kuma-cp's DP server.

`kuma-dp run --cp-address https://... --ca-cert-file` fetches the bootstrap over HTTPS, and its Envoy reaches
ADS over TLS on the same port (SNI and SAN checked by Envoy).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kuma_dp_dev.harness.localmesh import dynconf_get
from kuma_dp_dev.harness.poll import wait_until
from kuma_dp_dev.harness.ports import free_port
from tests.helpers.agent_proc import Agents, kuma_dp_run, start_dev_cp
from tests.helpers.resources import dataplane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_kuma_dp_run_over_tls(short_tmp: Path, envoy_binary: str, agents: Agents) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key, ca_file = short_tmp / "chain.pem", short_tmp / "key.pem", short_tmp / "ca.pem"
    cert.private_key_pem.write_to_path(str(key))
    cert.cert_chain_pems[0].write_to_path(str(chain))
    ca.cert_pem.write_to_path(str(ca_file))
    cp, info = start_dev_cp(
        agents, short_tmp / "cp.log", "--tls-cert-file", str(chain), "--tls-key-file", str(key)
    )
    url = info["url"]
    assert url.startswith("https://127.0.0.1:")
    resource = dataplane("tls-1", "secure", free_port(), admin_port=free_port())
    workdir = short_tmp / "w"
    args = ["--cp-address", url, "--ca-cert-file", str(ca_file), "--dataplane", json.dumps(resource),
            "--binary-path", envoy_binary, "--work-dir", str(workdir), "--drain-time", "1s"]  # fmt: skip
    run = kuma_dp_run(args, short_tmp / "run.log", env={"KUMA_DNS_PROXY_PORT": str(free_port())})
    agents.add(run).start()
    cp.wait_log("dataplane registered node=default.tls-1", 40)
    bootstrap = (workdir / "bootstrap.yaml").read_text()
    assert "envoy.transport_sockets.tls" in bootstrap and "cp_validation_ctx" in bootstrap
    sock = str(workdir / "kuma-mesh-metric-config.sock")
    payload = wait_until(lambda: dynconf_get(sock).json(), 20, what="/dns from the TLS-fed Envoy")
    assert payload["records"] == [{"name": "secure.mesh", "ips": ["240.0.0.0"]}]
