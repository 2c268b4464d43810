"""Bootstrap client: request layout, features, response handling and the retry policy
(`app/kuma-dp/pkg/dataplane/envoy/remote_bootstrap.go`)."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
from pathlib import Path

import pytest
import trustme

from kuma_dp.bootstrap.client import (
    API_PORT_HINT,
    DP_NOT_FOUND,
    BootstrapError,
    BootstrapParams,
    BootstrapResult,
    FatalBootstrapError,
    bootstrap_url,
    build_request,
    compute_features,
    detect_max_heap_bytes,
    fetch_bootstrap,
    host_has_ipv6,
    parse_response,
    request_body,
    transparent_proxy_dataplane_config,
    write_bootstrap,
)
from kuma_dp.config import RunConfig
from tests.helpers.fake_cp import FakeCP, Reply, minimal_bootstrap_yaml

pytestmark = pytest.mark.unit

KEY_ORDER = [
    "mesh", "name", "proxyType", "dataplaneToken", "dataplaneTokenPath", "dataplaneResource", "version",
    "caCert", "dynamicMetadata", "otelEnv", "dnsPort", "readinessPort", "appProbeProxyDisabled",
    "operatingSystem", "features", "resources", "workdir", "metricsResources", "systemCaPath",
    "dataplaneConfig", "ipv6Enabled", "spireResources",
]  # fmt: skip


def test_every_key_in_kumas_order() -> None:
    p = BootstrapParams(
        mesh="m", name="n", token="t", token_path="/t", resource_json="{}", otel_env={"pipeEnabled": True},
        dns_port=15054, readiness_port=9902, app_probe_proxy_enabled=True, dynamic_metadata={"HOST_IP": "1"},
        dataplane_config={"ipFamilyMode": "ipv4"},
    )  # fmt: skip
    assert list(build_request(p)) == KEY_ORDER


def test_omitempty_keys_are_left_out_and_nullable_metadata_is_null() -> None:
    req = build_request(BootstrapParams(mesh="m", name="n"))
    for key in ("dataplaneToken", "dataplaneTokenPath", "dataplaneResource", "otelEnv", "dnsPort",
                "readinessPort", "appProbeProxyDisabled", "dataplaneConfig"):  # fmt: skip
        assert key not in req
    assert req["dynamicMetadata"] is None
    assert req["resources"] == {"maxHeapSizeBytes": 0}
    assert req["spireResources"] == {"socketPath": ""}


def test_body_is_one_space_indented_json() -> None:
    body = request_body(build_request(BootstrapParams(mesh="m", name="n")))
    assert body.startswith(b'{\n "mesh": "m",\n "name": "n",\n')


def test_features_in_kumas_order() -> None:
    cfg = RunConfig()
    assert compute_features(cfg, transparent_proxy=False) == [
        "feature-tcp-accesslog-via-named-pipe",
        "feature-otel-via-kuma-dp",
        "feature-embedded-dns",
        "feature-strict-inbound-ports",
        "feature-reuse-port",
    ]
    rt = cfg.dataplane_runtime
    rt.bind_outbounds = rt.unified_resource_naming_enabled = rt.spire_supported = True
    rt.envoy_xds_transport_protocol_variant = "DELTA_GRPC"
    rt.otel_pipe_enabled = rt.strict_inbound_ports_enabled = rt.reuse_port_enabled = False
    cfg.dns.enabled = False
    assert compute_features(cfg, transparent_proxy=True) == [
        "feature-tcp-accesslog-via-named-pipe",
        "feature-transparent-proxy-in-dataplane-metadata",
        "feature-bind-outbounds",
        "feature-delta-grpc",
        "feature-unified-resource-naming",
        "feature-spire",
    ]


def test_transparent_proxy_config_file_becomes_dataplane_config(tmp_path: Path) -> None:
    cfg = RunConfig()
    assert transparent_proxy_dataplane_config(cfg) is None
    f = tmp_path / "tp.yaml"
    f.write_text(
        "ipFamilyMode: ipv4\nredirect:\n  inbound: {port: 1234}\n"
        "  vnet: {networks: ['docker0:172.17.0.0/16']}\n"
    )
    cfg.dataplane_runtime.transparent_proxy_config = [str(f)]
    cfg.dns.proxy_port = 25053
    got = transparent_proxy_dataplane_config(cfg)
    assert got == {
        "ipFamilyMode": "ipv4",
        "redirect": {
            "inbound": {"enabled": True, "port": 1234},
            "outbound": {"enabled": True, "port": 15001},
            "dns": {"enabled": True, "port": 25053},
            "vnet": {"networks": ["docker0:172.17.0.0/16"]},
        },
    }
    cfg2 = RunConfig()
    cfg2.dataplane_runtime.transparent_proxy = True
    d = transparent_proxy_dataplane_config(cfg2)
    assert d is not None and d["redirect"]["vnet"] == {} and d["ipFamilyMode"] == "dualstack"


def test_cgroup_limit_detection(tmp_path: Path) -> None:
    assert detect_max_heap_bytes(str(tmp_path)) == 0
    (tmp_path / "memory.max").write_text("max\n")
    assert detect_max_heap_bytes(str(tmp_path)) == 0
    (tmp_path / "memory.max").write_text("2147483648\n")
    assert detect_max_heap_bytes(str(tmp_path)) == 2147483648
    (tmp_path / "memory.limit_in_bytes").write_text("1000\n")
    assert detect_max_heap_bytes(str(tmp_path)) == 1000


def test_ipv6_probe(tmp_path: Path) -> None:
    f = tmp_path / "if_inet6"
    f.write_text("00000000000000000000000000000001 01 80 10 80       lo\n")
    assert host_has_ipv6(str(f)) is False
    f.write_text(f.read_text() + "fe800000000000000000000000000001 02 40 20 80     eth0\n")
    assert host_has_ipv6(str(f)) is True
    assert host_has_ipv6(str(tmp_path / "absent")) is False


def test_url_path_is_forced_and_scheme_checked() -> None:
    assert bootstrap_url("https://cp.example:5678/some/path?x=1") == "https://cp.example:5678/bootstrap"
    with pytest.raises(FatalBootstrapError, match='unsupported scheme "grpc"'):
        bootstrap_url("grpc://cp:5678")


# -- responses ------------------------------------------------------------------------------------------


def test_json_response() -> None:
    yaml_text = minimal_bootstrap_yaml(9901)
    aggregate = [
        {"name": "my-app", "address": "127.0.0.1", "port": 123, "path": "/stats"},
        {"name": "my-app-2", "address": "1.2.3.4", "port": 12345, "path": "/stats/2"},
    ]
    body = json.dumps(
        {
            "bootstrap": base64.b64encode(yaml_text.encode()).decode(),
            "kumaSidecarConfiguration": {
                "networking": {"address": "1.2.3.4"},
                "metrics": {"aggregate": aggregate},
            },
        }
    ).encode()
    res = parse_response(200, "application/json", body)
    assert res.bootstrap_yaml == yaml_text.encode()
    assert res.metrics_aggregate == aggregate


def test_legacy_yaml_response() -> None:
    res = parse_response(200, "text/x-yaml", minimal_bootstrap_yaml(9901).encode())
    assert res.sidecar_config == {} and b"portValue: 9901" in res.bootstrap_yaml


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (404, b"", BootstrapError, DP_NOT_FOUND),
        (404, b"404: Page Not Found", BootstrapError, API_PORT_HINT),
        (
            422,
            b'mesh: mesh "x" does not exist',
            FatalBootstrapError,
            'Invalid request: mesh: mesh "x" does not exist',
        ),
        (400, b"", FatalBootstrapError, "Invalid request: "),
        (500, b"boom", BootstrapError, "unexpected status code: 500"),
        (503, b"", BootstrapError, "unexpected status code: 503"),
    ],
)
def test_status_handling(status: int, body: bytes, kind: type, message: str) -> None:
    with pytest.raises(kind) as exc:
        parse_response(status, "text/plain", body)
    assert str(exc.value) == message
    assert (type(exc.value) is FatalBootstrapError) == (kind is FatalBootstrapError)


def test_garbage_bootstrap_is_an_error() -> None:
    with pytest.raises(BootstrapError, match="could not parse"):
        parse_response(200, "application/json", b'{"bootstrap": "!!!notbase64"}')
    with pytest.raises(BootstrapError, match="not a YAML mapping"):
        parse_response(200, "text/x-yaml", b"- a list")


def test_bootstrap_written_0600_atomically(tmp_path: Path) -> None:
    p = write_bootstrap(tmp_path, BootstrapResult(b"admin: {}\n"))
    assert p == tmp_path / "bootstrap.yaml" and p.read_bytes() == b"admin: {}\n"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert [x.name for x in tmp_path.iterdir()] == ["bootstrap.yaml"]


# -- retry policy (real HTTP to a local server; the clock and sleep are simulated) ------------------------


class SimClock:
    """A clock that only moves when the client sleeps, so budgets of minutes run in milliseconds."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _cfg(url: str, backoff: float = 3.0, budget: float = 10.0) -> RunConfig:
    cfg = RunConfig()
    cfg.control_plane.url = url
    cfg.control_plane.retry.backoff = backoff
    cfg.control_plane.retry.max_duration = budget
    return cfg


def _fetch(cfg: RunConfig, clock: SimClock) -> BootstrapResult:
    return asyncio.run(fetch_bootstrap(cfg, {"mesh": "m", "name": "n"}, sleep=clock.sleep, clock=clock))


def test_constant_backoff_within_the_budget_then_the_last_error() -> None:
    clock = SimClock()
    with FakeCP([Reply.status_only(503)]) as cp:
        with pytest.raises(BootstrapError) as exc:
            _fetch(_cfg(cp.url, backoff=3.0, budget=10.0), clock)
        # attempts at 0, 3, 6, 9, 10 (the last wait is cut to what is left of the budget)
        assert clock.sleeps == [3.0, 3.0, 3.0, 1.0]
        assert len(cp.requests) == 5
    assert str(exc.value) == "unexpected status code: 503"


def test_404_not_found_retried_until_the_dataplane_exists() -> None:
    clock = SimClock()
    ok = Reply.bootstrap(minimal_bootstrap_yaml(9901))
    with FakeCP([Reply.status_only(404), Reply.status_only(404), ok]) as cp:
        res = _fetch(_cfg(cp.url, backoff=0.01, budget=300), clock)
        assert len(cp.requests) == 3
    assert res.bootstrap_yaml == minimal_bootstrap_yaml(9901).encode()


def test_404_only_exhausts_with_kumas_not_found_error() -> None:
    clock = SimClock()
    with FakeCP([Reply.status_only(404)]) as cp, pytest.raises(BootstrapError) as exc:
        _fetch(_cfg(cp.url, backoff=0.01, budget=0.1), clock)
    assert str(exc.value) == DP_NOT_FOUND


def test_other_4xx_is_not_retried() -> None:
    clock = SimClock()
    msg = (
        "Dataplane Token is required. Generate token using "
        "'kumactl generate dataplane-token > /path/file' and provide it via "
        "--dataplane-token-file=/path/file argument to Kuma DP"
    )
    with FakeCP([Reply.status_only(422, msg)]) as cp:
        with pytest.raises(FatalBootstrapError) as exc:
            _fetch(_cfg(cp.url), clock)
        assert len(cp.requests) == 1 and clock.sleeps == []
    assert str(exc.value) == f"Invalid request: {msg}"


def test_headers_and_body_on_the_wire() -> None:
    clock = SimClock()
    with FakeCP() as cp:
        _fetch(_cfg(cp.url + "/ignored"), clock)
        req = cp.requests[0]
    assert (req.method, req.path) == ("POST", "/bootstrap")
    assert req.headers["accept"] == "application/json"
    assert req.headers["content-type"] == "application/json"
    assert req.json == {"mesh": "m", "name": "n"}


def test_network_error_is_retried() -> None:
    from kuma_dp_dev.harness.ports import free_port

    clock = SimClock()
    with pytest.raises(BootstrapError, match=r"^request to bootstrap server failed: "):
        _fetch(_cfg(f"http://127.0.0.1:{free_port()}", backoff=1, budget=2), clock)
    assert clock.sleeps == [1, 1]


def test_tls_ca_is_the_only_root(tmp_path: Path) -> None:
    ca, other = trustme.CA(), trustme.CA()
    clock = SimClock()
    with FakeCP(tls_ca=ca) as cp:
        cfg = _cfg(cp.url, backoff=1, budget=1)
        cfg.control_plane.ca_cert = ca.cert_pem.bytes().decode()
        assert _fetch(cfg, clock).bootstrap_yaml
        cfg.control_plane.ca_cert = other.cert_pem.bytes().decode()
        with pytest.raises(BootstrapError, match=r"certificate verify failed.*pass the right CA"):
            _fetch(cfg, clock)
        cfg.control_plane.ca_cert = ""
        with pytest.raises(BootstrapError, match="not trusted by the system CAs"):
            _fetch(cfg, clock)
        cfg.control_plane.skip_verify = True
        assert _fetch(cfg, clock).bootstrap_yaml


def test_bad_ca_pem_is_fatal() -> None:
    cfg = _cfg("https://127.0.0.1:1")
    cfg.control_plane.ca_cert = "not a pem"
    cfg.control_plane.ca_cert_file = "/etc/ca.pem"
    with pytest.raises(FatalBootstrapError, match=r"--ca-cert-file /etc/ca\.pem"):
        _fetch(cfg, SimClock())
