"""The bootstrap request equals Kuma 2.14.3's goldens for the same inputs (the
`bootstrap-request-*.golden.json` files of `app/kuma-dp/pkg/dataplane/envoy/testdata/`, copied to
bootstrap/kuma-dp/ in the conformance directory).

Inputs follow Kuma's `app/kuma-dp/pkg/dataplane/envoy/remote_bootstrap_test.go`: default config plus mesh
`demo`, name `sample`, token `token`, a mock Envoy whose `--version` prints Kuma's fixed build string (read
through our real version probe), socketDir `/tmp`, forced kuma-dp build info and explicit features. The one
host-dependent field is masked: `maxHeapSizeBytes` is passed as 0 (what the goldens hold, a host without an
integer cgroup memory limit) instead of reading this host's cgroup limit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iptables.config import load_config as load_tproxy_config
from kuma_dp.bootstrap.client import build_request, compute_features, params_from_config, request_body
from kuma_dp.config import RunConfig
from kuma_dp.dataplane import DataplaneResource
from kuma_dp.envoy import envoy_version

pytestmark = pytest.mark.conformance

KUMA_DP_VERSION = {
    "version": "0.0.1",
    "gitTag": "v0.0.1",
    "gitCommit": "91ce236824a9d875601679aa80c63783fb0e8725",
    "buildDate": "2019-08-07T11:26:06Z",
}
ENVOY_BUILD = "50ef0945fa2c5da4bff7627c3abf41fdd3b7cffd/1.15.0/clean-getenvoy-2aa564b-envoy/RELEASE/BoringSSL"


@pytest.fixture
def mock_envoy(tmp_path: Path) -> Path:
    script = tmp_path / "envoy-mock.sh"
    script.write_text(f"#!/bin/sh\necho\necho 'envoy  version: {ENVOY_BUILD}'\necho\n")
    script.chmod(0o755)
    return script


def _request(
    mock_envoy: Path,
    *,
    configure: Any = None,
    token: str = "token",
    token_path: str = "",
    metadata: dict[str, str] | None = None,
    features: list[str],
    dataplane_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cfg = RunConfig()
    cfg.dataplane.mesh, cfg.dataplane.name = "demo", "sample"
    cfg.dataplane_runtime.binary_path = str(mock_envoy)
    cfg.dataplane_runtime.socket_dir = "/tmp"
    if configure:
        configure(cfg)
    ev = envoy_version(cfg.dataplane_runtime.binary_path)
    params = params_from_config(
        cfg,
        dataplane=DataplaneResource(type="Dataplane", mesh="demo", name="sample"),
        token=token,
        token_path=token_path,
        envoy_version={"version": ev.version, "build": ev.build, "kumaDpCompatible": ev.kuma_dp_compatible},
        workdir="/var/run/kuma-dp-ignored",
        features=features,
        dynamic_metadata=metadata,
        dataplane_config=dataplane_config,
        kuma_dp_version=KUMA_DP_VERSION,
        operating_system="linux",
        max_heap_size_bytes=0,
    )
    return build_request(params)


def _check(request: dict[str, Any], golden: Path) -> None:
    want = json.loads(golden.read_text())
    got = json.loads(request_body(request))  # what goes on the wire
    assert got == want
    assert list(got) == list(want), "key order differs from Kuma's"


def test_metrics_metadata(conformance_dir: Path, mock_envoy: Path) -> None:
    def configure(cfg: RunConfig) -> None:
        cfg.dataplane_runtime.metrics.cert_path = "/tmp/cert.pem"
        cfg.dataplane_runtime.metrics.key_path = "/tmp/key.pem"

    req = _request(
        mock_envoy,
        configure=configure,
        metadata={"test": "value"},
        features=["feature-tcp-accesslog-via-named-pipe"],
    )
    _check(req, conformance_dir / "bootstrap" / "kuma-dp" / "bootstrap-request-metrics-metadata.golden.json")


def test_token_path(conformance_dir: Path, mock_envoy: Path) -> None:
    token_file = conformance_dir / "bootstrap" / "kuma-dp" / "token"
    req = _request(
        mock_envoy,
        token=token_file.read_text().strip(),
        token_path="testdata/token",
        features=["feature-tcp-accesslog-via-named-pipe"],
    )
    _check(req, conformance_dir / "bootstrap" / "kuma-dp" / "bootstrap-request-token-path.golden.json")


def test_transparent_proxy(conformance_dir: Path, mock_envoy: Path, tmp_path: Path) -> None:
    tp_file = tmp_path / "tproxy.yaml"
    tp_file.write_text(
        "ipFamilyMode: ipv4\n"
        "redirect:\n"
        "  inbound: {enabled: false, port: 1234}\n"
        "  outbound: {enabled: false, port: 2345}\n"
        "  dns: {enabled: false, port: 3456}\n"
    )
    tp = load_tproxy_config([str(tp_file)], env={})
    req = _request(
        mock_envoy,
        features=["feature-tcp-accesslog-via-named-pipe", "feature-transparent-proxy-in-dataplane-metadata"],
        dataplane_config=tp.dataplane_config(),
    )
    _check(req, conformance_dir / "bootstrap" / "kuma-dp" / "bootstrap-request-transparent-proxy.golden.json")


def test_run_computes_the_goldens_feature_list(conformance_dir: Path) -> None:
    """With the optional features off, `kuma-dp run`'s own list equals the transparent-proxy golden's."""
    cfg = RunConfig()
    cfg.dns.enabled = False
    rt = cfg.dataplane_runtime
    rt.otel_pipe_enabled = rt.strict_inbound_ports_enabled = rt.reuse_port_enabled = False
    golden = conformance_dir / "bootstrap" / "kuma-dp" / "bootstrap-request-transparent-proxy.golden.json"
    assert compute_features(cfg, transparent_proxy=True) == json.loads(golden.read_text())["features"]
