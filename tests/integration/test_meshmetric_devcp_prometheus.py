"""MeshMetric's Prometheus backends end to end: the dev control plane reads a MeshMetric policy with two
Prometheus backends (one with `tls.mode: ProvidedTLS`), `kuma-dp run` announces its metrics certificate,
Envoy serves each backend on its own port and path, and a scraper gets the agent's `/meshmetric` page: the
policy's application and Envoy's stats through the profile, with the policy's extra labels."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from kuma_dp_dev.harness.ports import free_port
from tests.helpers.agent_proc import Agents, kuma_dp_run, start_dev_cp

pytestmark = pytest.mark.integration

DATAPLANE = """\
type: Dataplane
mesh: default
name: shop-1
networking:
  address: 127.0.0.1
  inbound:
    - port: {inbound}
      servicePort: {app}
      tags: {{kuma.io/service: shop, kuma.io/protocol: http}}
"""

POLICY = """\
type: MeshMetric
name: shop-metrics
mesh: default
spec:
  targetRef: {{kind: MeshService, name: shop}}
  default:
    sidecar: {{profiles: {{appendProfiles: [{{name: Basic}}]}}}}
    applications: [{{name: shop, port: {app}, path: /metrics}}]
    backends:
      - type: Prometheus
        prometheus: {{clientId: secure, port: {tls_port}, path: /secure-metrics, tls: {{mode: ProvidedTLS}}}}
      - type: Prometheus
        prometheus: {{clientId: plain, port: {plain_port}, path: /metrics}}
"""


@pytest.fixture
def app() -> Iterator[int]:
    page = b"# TYPE orders counter\norders 7\n"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_each_prometheus_backend_on_its_port_and_path_tls_where_asked(
    envoy_binary: str, short_tmp: Path, agents: Agents, app: int
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = short_tmp / "metrics.crt", short_tmp / "metrics.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)
    tls_port, plain_port = free_port(), free_port()
    policies = short_tmp / "policies.yaml"
    policies.write_text(POLICY.format(app=app, tls_port=tls_port, plain_port=plain_port))
    dataplane = short_tmp / "dp.yaml"
    dataplane.write_text(DATAPLANE.format(inbound=free_port(), app=app))
    _, info = start_dev_cp(agents, short_tmp / "cp.log", "--policies", str(policies))
    args = ["--cp-address", info["url"], "--dataplane-file", str(dataplane), "--binary-path", envoy_binary,
            "--work-dir", str(short_tmp / "wd"), "--drain-time", "1s", "--concurrency", "1",
            "--metrics-cert-path", str(cert_path), "--metrics-key-path", str(key_path)]  # fmt: skip
    agent = agents.add(kuma_dp_run(args, short_tmp / "run.log", env={"KUMA_DNS_ENABLED": "false"}))
    agent.start()
    agent.wait_ready()

    context = ssl.create_default_context()
    ca.configure_trust(context)

    def scrape(url: str, **kw: Any) -> str | None:
        resp = httpx.get(url, timeout=5, **kw)
        return resp.text if resp.status_code == 200 and "orders{" in resp.text else None

    secure = agent.wait_for(
        lambda: scrape(f"https://127.0.0.1:{tls_port}/secure-metrics", verify=context), 30, "the TLS backend"
    )
    plain = agent.wait_for(lambda: scrape(f"http://127.0.0.1:{plain_port}/metrics"), 30, "the plain backend")
    for page in (secure, plain):
        # the application, with the policy's extra labels; Envoy's stats through the Basic profile
        assert 'orders{dataplane="shop-1",kuma.proxy_role="sidecar",mesh="default",service="shop"' in page
        assert "envoy_server_live" in page
        assert "# TYPE kuma_dp_" in page  # the agent's own registry, as Kuma's DefaultGatherer
    with pytest.raises(httpx.HTTPError):  # plain text on the TLS backend's port is not served
        httpx.get(f"http://127.0.0.1:{tls_port}/secure-metrics", timeout=5).raise_for_status()
    assert agent.stop_draining() == 0
