"""The injector's probe rewrite (`kuma_dp.probes.convert`), ported case by case from kumahq/kuma v2.14.3
`pkg/plugins/runtime/k8s/probes/probe_converter_test.go`, `probe_test.go` and
`pod_probe_overrider_test.go`, then checked against the injector goldens (inject.13, inject.14,
inject.sidecar-feature.13): the input Pod's probes, rewritten, are the golden's probes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kuma_dp.probes.convert import (
    HEADER_GRPC_SERVICE,
    HEADER_HOST,
    HEADER_SCHEME,
    HEADER_TIMEOUT,
    ProbeConversionError,
    application_probe_proxy_port,
    overriding_supported,
    real_to_virtual,
    setup_app_probe_proxies,
    to_virtual,
    virtual_to_real,
)

pytestmark = pytest.mark.unit

RESERVED_9000 = (
    "cannot override Pod's probes. Port for probe cannot be set "
    "to 9000. It is reserved for the dataplane that will serve pods without mTLS."
)


def _probe(text: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def _header(probe: dict[str, Any], name: str) -> str:
    for h in probe["httpGet"].get("httpHeaders") or []:
        if h["name"] == name:
            return str(h["value"])
    return ""


# -- probe_converter_test.go ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probe", "supported"),
    [
        ({"httpGet": {}}, True),  # Entry("HTTP")
        ({"tcpSocket": {}}, True),  # Entry("TCPSocket")
        ({"grpc": {}}, True),  # Entry("gRPC")
        ({"exec": {}}, False),  # Entry("exec")
    ],
)
def test_overriding_supported(probe: dict[str, Any], supported: bool) -> None:
    assert overriding_supported(probe) is supported


def test_http_pod_probe_to_virtual() -> None:
    virtual = to_virtual(_probe("httpGet: {path: /c1/health/liveness, port: 8080}"), 9000)
    assert virtual["httpGet"]["path"] == "/8080/c1/health/liveness"
    assert virtual["httpGet"]["port"] == 9000


def test_http_probe_with_custom_headers_and_timeout() -> None:
    probe = _probe(
        """
        timeoutSeconds: 15
        httpGet:
          scheme: HTTPS
          path: /c1/healthz
          port: 8080
          httpHeaders:
          - name: Host
            value: example.com
          - name: X-Custom-Header
            value: custom-value
        """
    )
    virtual = to_virtual(probe, 9000)
    assert virtual["httpGet"]["path"] == "/8080/c1/healthz"
    assert virtual["httpGet"]["port"] == 9000
    assert _header(virtual, HEADER_HOST) == "example.com"
    assert _header(virtual, HEADER_SCHEME) == "HTTPS"
    assert _header(virtual, HEADER_TIMEOUT) == "15"
    assert _header(virtual, "X-Custom-Header") == "custom-value"
    # Ours, on top of the Go test: the order Kuma builds the list in, and no plain Host left.
    assert [h["name"] for h in virtual["httpGet"]["httpHeaders"]] == [
        HEADER_HOST, "X-Custom-Header", HEADER_SCHEME, HEADER_TIMEOUT,
    ]  # fmt: skip


def test_http_probe_on_the_virtual_port_is_refused() -> None:
    with pytest.raises(ProbeConversionError, match="^" + RESERVED_9000):
        to_virtual(_probe("httpGet: {path: /c1/health/liveness, port: 9000}"), 9000)


def test_tcp_socket_probe() -> None:
    virtual = to_virtual(_probe("{timeoutSeconds: 10, tcpSocket: {port: 6379}}"), 9000)
    assert "tcpSocket" not in virtual
    assert virtual["httpGet"]["path"] == "/tcp/6379"
    assert virtual["httpGet"]["port"] == 9000
    assert _header(virtual, HEADER_TIMEOUT) == "10"


def test_grpc_probe() -> None:
    virtual = to_virtual(_probe("{timeoutSeconds: 10, grpc: {port: 6379, service: liveness}}"), 9000)
    assert "grpc" not in virtual
    assert virtual["httpGet"]["path"] == "/grpc/6379"
    assert virtual["httpGet"]["port"] == 9000
    assert _header(virtual, HEADER_TIMEOUT) == "10"
    assert _header(virtual, HEADER_GRPC_SERVICE) == "liveness"


def test_converter_prepends_slash() -> None:
    virtual = to_virtual(_probe("httpGet: {path: c1/hc, port: 8080}"), 9000)
    assert virtual["httpGet"]["path"] == "/8080/c1/hc"
    assert virtual["httpGet"]["port"] == 9000


def test_timeout_of_one_second_adds_no_header() -> None:
    """Ours: `TimeoutSeconds > 1` only; the proxy's default is 1 s anyway."""
    virtual = to_virtual(_probe("{timeoutSeconds: 1, tcpSocket: {port: 6379}}"), 9000)
    assert "httpHeaders" not in virtual["httpGet"]


# -- probe_test.go (virtual probes) -----------------------------------------------------------------------


def test_virtual_probe_to_real() -> None:
    real = virtual_to_real(_probe("httpGet: {path: /8080/c1/health/liveness, port: 9000}"), 9000)
    assert real["httpGet"]["path"] == "/c1/health/liveness"
    assert real["httpGet"]["port"] == 8080


def test_inbound_probe_to_virtual() -> None:
    virtual = real_to_virtual(_probe("httpGet: {path: /c1/health/liveness, port: 8080}"), 9000)
    assert virtual["httpGet"]["path"] == "/8080/c1/health/liveness"
    assert virtual["httpGet"]["port"] == 9000


def test_inbound_probe_on_the_virtual_port_is_refused() -> None:
    with pytest.raises(ProbeConversionError, match="^" + RESERVED_9000):
        real_to_virtual(_probe("httpGet: {path: /c1/health/liveness, port: 9000}"), 9000)


def test_virtual_probe_prepends_slash() -> None:
    virtual = real_to_virtual(_probe("httpGet: {path: c1/hc, port: 8080}"), 9000)
    assert virtual["httpGet"]["path"] == "/8080/c1/hc"


# -- pod_probe_overrider_test.go --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "default", "expected", "error"),
    [
        pytest.param(
            {"kuma.io/application-probe-proxy-port": "9000", "kuma.io/gateway": "enabled"}, 10001, 0,
            "application probe proxies probes can't be enabled in gateway mode",
            id="gateway mode with proxy port set",
        ),
        pytest.param({"kuma.io/gateway": "enabled"}, 10001, 0, "", id="gateway mode without proxy"),
        pytest.param({"kuma.io/virtual-probes": "false"}, 10001, 0, "",
                     id="virtual probes disabled and no proxy port"),
        pytest.param({"kuma.io/application-probe-proxy-port": "9001"}, 10001, 9001, "", id="proxy port set"),
        pytest.param({}, 10001, 10001, "", id="default port fallback"),
    ],
)  # fmt: skip
def test_application_probe_proxy_port(
    annotations: dict[str, str], default: int, expected: int, error: str
) -> None:
    if error:
        with pytest.raises(ProbeConversionError, match=error):
            application_probe_proxy_port(annotations, default)
    else:
        assert application_probe_proxy_port(annotations, default) == expected


# -- ours: named ports, native sidecars, the goldens ---------------------------------------------------------


def _pod(containers: list[dict[str, Any]], init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": containers}
    if init is not None:
        spec["initContainers"] = init
    return {"metadata": {"annotations": {"kuma.io/application-probe-proxy-port": "9000"}}, "spec": spec}


def test_named_ports_resolve_to_the_container_port_and_unknown_names_to_zero() -> None:
    app = {
        "name": "app",
        "ports": [{"name": "http", "containerPort": 8080}, {"name": "redis", "containerPort": 6379}],
        "livenessProbe": {"httpGet": {"path": "/live", "port": "http"}},
        "readinessProbe": {"tcpSocket": {"port": "redis"}},
        "startupProbe": {"httpGet": {"path": "/start", "port": "nope"}},
    }
    out = setup_app_probe_proxies(_pod([app]))["spec"]["containers"][0]
    assert out["livenessProbe"] == {"httpGet": {"port": 9000, "path": "/8080/live"}}
    assert out["readinessProbe"] == {"httpGet": {"port": 9000, "path": "/tcp/6379"}}
    assert out["startupProbe"] == {"httpGet": {"port": 9000, "path": "/0/start"}}
    assert app["livenessProbe"]["httpGet"]["port"] == "http", "the input is left alone"


def test_native_sidecars_after_kuma_sidecar_are_rewritten_and_kuma_sidecar_is_not() -> None:
    def probe(port: int = 7000, path: str = "/h") -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": port}}

    init = [
        {"name": "before", "restartPolicy": "Always", "readinessProbe": probe()},
        {"name": "kuma-sidecar", "restartPolicy": "Always", "readinessProbe": probe(9901, "/ready")},
        {"name": "after", "restartPolicy": "Always", "readinessProbe": probe()},
        {"name": "plain-init", "readinessProbe": probe()},
    ]
    out = setup_app_probe_proxies(_pod([], init))["spec"]["initContainers"]
    assert [c["readinessProbe"]["httpGet"]["path"] for c in out] == ["/h", "/ready", "/7000/h", "/h"]


def test_exec_probes_and_port_zero_leave_the_pod_alone() -> None:
    app = {"name": "app", "livenessProbe": {"exec": {"command": ["true"]}}}
    assert setup_app_probe_proxies(_pod([app]))["spec"]["containers"][0] == app
    off = _pod([{"name": "app", "livenessProbe": {"httpGet": {"path": "/h", "port": 1}}}])
    off["metadata"]["annotations"]["kuma.io/application-probe-proxy-port"] = "0"
    assert setup_app_probe_proxies(off) == off


def _probes(pod: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    spec = pod["spec"]
    for c in [*(spec.get("initContainers") or []), *spec["containers"]]:
        if c["name"] in ("kuma-sidecar", "kuma-init"):
            continue
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            if c.get(kind) is not None:
                out[f"{c['name']}.{kind}"] = c[kind]
    return out


@pytest.mark.conformance
@pytest.mark.parametrize(
    ("input_name", "golden_name"),
    [
        ("inject.13.input.yaml", "inject.13.golden.yaml"),
        ("inject.14.input.yaml", "inject.14.golden.yaml"),
        ("inject.13.input.yaml", "inject.sidecar-feature.13.golden.yaml"),
    ],
)
def test_rewrite_matches_the_injector_goldens(
    conformance_dir: Path, input_name: str, golden_name: str
) -> None:
    folder = conformance_dir / "k8s-injector"
    pod = yaml.safe_load((folder / input_name).read_text())
    golden = yaml.safe_load((folder / golden_name).read_text())
    # The annotation the injector sets (GetApplicationProbeProxyPort, config port 9000) drives the rewrite.
    port = application_probe_proxy_port((pod["metadata"].get("annotations") or {}), 9000)
    assert str(port) == golden["metadata"]["annotations"]["kuma.io/application-probe-proxy-port"]
    pod["metadata"].setdefault("annotations", {})["kuma.io/application-probe-proxy-port"] = str(port)
    expected = _probes(golden)
    assert expected, "the golden has application probes"
    assert _probes(setup_app_probe_proxies(pod)) == expected
