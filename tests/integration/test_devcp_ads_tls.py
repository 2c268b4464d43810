"""The dev CP over TLS, as kuma-cp's DP server.

`kuma-dp run --cp-address https://... --ca-cert-file` fetches the bootstrap over HTTPS, and its Envoy reaches
ADS over TLS on the same port (SNI and SAN checked by Envoy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kuma_dp_dev.harness.localmesh import dynconf_get, wait_until
from kuma_dp_dev.harness.ports import free_port
from kuma_dp_dev.harness.procs import stop

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_kuma_dp_run_over_tls(short_tmp: Path, envoy_binary: str) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key, ca_file = short_tmp / "chain.pem", short_tmp / "key.pem", short_tmp / "ca.pem"
    cert.private_key_pem.write_to_path(str(key))
    cert.cert_chain_pems[0].write_to_path(str(chain))
    ca.cert_pem.write_to_path(str(ca_file))
    ready = short_tmp / "ready.json"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(short_tmp / "cp.log", "wb") as log:
            cp = subprocess.Popen(
                [sys.executable, "-m", "kuma_dp", "dev-cp", "--port", "0", "--ready-file", str(ready),
                 "--tls-cert-file", str(chain), "--tls-key-file", str(key)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        procs.append(cp)
        url = wait_until(lambda: ready.exists() and json.loads(ready.read_text()), 20, what="dev-cp")["url"]
        assert url.startswith("https://127.0.0.1:")
        resource = {
            "type": "Dataplane", "mesh": "default", "name": "tls-1",
            "networking": {"address": "127.0.0.1", "admin": {"port": free_port()},
                           "inbound": [{"port": free_port(), "tags": {"kuma.io/service": "secure"}}]},
        }  # fmt: skip
        workdir = short_tmp / "w"
        env = {**os.environ, "KUMA_READINESS_PORT": str(free_port()), "KUMA_DNS_PROXY_PORT": str(free_port())}
        with open(short_tmp / "run.log", "wb") as log:
            run = subprocess.Popen(
                [sys.executable, "-m", "kuma_dp", "run", "--cp-address", url, "--ca-cert-file", str(ca_file),
                 "--dataplane", json.dumps(resource), "--binary-path", envoy_binary,
                 "--work-dir", str(workdir), "--drain-time", "1s"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        procs.append(run)
        cp_log = short_tmp / "cp.log"
        wait_until(
            lambda: "dataplane registered node=default.tls-1" in cp_log.read_text(), 40, what="ADS over TLS"
        )
        bootstrap = (workdir / "bootstrap.yaml").read_text()
        assert "envoy.transport_sockets.tls" in bootstrap and "cp_validation_ctx" in bootstrap
        sock = str(workdir / "kuma-mesh-metric-config.sock")
        payload = wait_until(lambda: dynconf_get(sock).json(), 20, what="/dns from the TLS-fed Envoy")
        assert payload["records"] == [{"name": "secure.mesh", "ips": ["240.0.0.0"]}]
    finally:
        for proc in reversed(procs):
            stop(proc, grace=15)
