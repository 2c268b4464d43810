"""Kuma v2.14.3's tables for app/kuma-dp/pkg/dataplane/otelenv (discovery_test.go, runtime_test.go), ported
case by case: the `otelEnv` inventory the bootstrap request carries, and how a `/otel` backend merges with
the `OTEL_EXPORTER_OTLP_*` environment."""

from __future__ import annotations

from typing import Any

import pytest

from kuma_dp.otel import discover, resolve_backend
from kuma_dp.otel._env import _parse_headers, _resolve_endpoint_address

pytestmark = pytest.mark.unit

P = "OTEL_EXPORTER_OTLP"


# -- discovery_test.go --------------------------------------------------------------------------------------
def test_should_build_inventory() -> None:
    inv = discover(
        True,
        {
            f"{P}_ENDPOINT": "https://otel-gateway.observability:4318",
            f"{P}_PROTOCOL": "http/protobuf",
            f"{P}_HEADERS": "authorization=token",
            f"{P}_TRACES_ENDPOINT": "https://tempo.observability:4318",
            f"{P}_LOGS_ENDPOINT": "https://otel-gateway.observability:4318",
            f"{P}_METRICS_PROTOCOL": "grpc",
        },
    ).inventory
    assert inv["pipeEnabled"] is True
    assert inv["shared"]["endpointPresent"] and inv["shared"]["endpointParsedAsURL"]
    assert inv["shared"]["effectiveProtocol"] == "http/protobuf"
    assert inv["shared"]["effectiveAuthMode"] == "headers"
    assert inv["traces"]["overrideKinds"] == ["endpoint"] and inv["traces"]["endpointParsedAsURL"]
    assert "overrideKinds" not in inv["logs"]  # same as shared: no override (omitempty)
    assert inv["metrics"]["overrideKinds"] == ["protocol"]
    # Go's JSON: omitempty fields are absent, and the key order is the struct's
    assert list(inv) == ["pipeEnabled", "shared", "traces", "logs", "metrics"]
    assert list(inv["shared"]) == [
        "signal",
        "endpointPresent",
        "endpointParsedAsURL",
        "protocolPresent",
        "headersPresent",
        "effectiveProtocol",
        "effectiveAuthMode",
    ]


def test_should_report_validation_errors() -> None:
    inv = discover(
        False,
        {
            f"{P}_PROTOCOL": "binary",
            f"{P}_TIMEOUT": "later",
            f"{P}_COMPRESSION": "brotli",
            f"{P}_TRACES_CLIENT_CERTIFICATE": "/cert",
        },
    ).inventory
    assert sorted(inv["validationErrors"]) == sorted(
        ["shared.protocol", "shared.timeout", "shared.compression", "traces.mtls"]
    )
    assert "pipeEnabled" not in inv  # false is omitted
    assert inv["shared"]["effectiveProtocol"] == "unknown"
    assert inv["traces"]["effectiveAuthMode"] == "none"


def test_should_not_report_validation_error_for_compression_none() -> None:
    inv = discover(False, {f"{P}_COMPRESSION": "none"}).inventory
    assert "validationErrors" not in inv
    assert inv["shared"]["compressionPresent"] is True


def test_should_treat_empty_env_values_as_unset() -> None:
    inv = discover(False, {f"{P}_ENDPOINT": "   "}).inventory
    assert inv == {}  # what goes on the wire as "otelEnv": {}


def test_shared_pathful_endpoint_is_invalid_when_protocol_defaults_to_grpc() -> None:
    inv = discover(False, {f"{P}_ENDPOINT": "https://collector.example:4317/custom"}).inventory
    assert "shared.endpoint" in inv["validationErrors"]


def test_signal_pathful_endpoint_is_invalid_when_it_inherits_grpc() -> None:
    env = {f"{P}_PROTOCOL": "grpc", f"{P}_TRACES_ENDPOINT": "https://collector.example:4317/traces"}
    assert "traces.endpoint" in discover(False, env).inventory["validationErrors"]


def test_should_trim_protocol_values_before_validation() -> None:
    inv = discover(False, {f"{P}_PROTOCOL": " http/protobuf "}).inventory
    assert "validationErrors" not in inv
    assert inv["shared"]["effectiveProtocol"] == "http/protobuf"


# -- runtime_test.go ----------------------------------------------------------------------------------------
def _backend(**kw: Any) -> dict[str, Any]:
    return {"endpoint": "collector.example:4317", **kw}


OPTIONAL_ENV_FIRST = {"mode": "Optional", "precedence": "EnvFirst"}


def test_should_merge_explicit_config_with_shared_and_signal_env_overrides() -> None:
    cfg = discover(
        True,
        {
            f"{P}_PROTOCOL": "http/protobuf",
            f"{P}_HEADERS": "authorization=token",
            f"{P}_COMPRESSION": "gzip",
            f"{P}_TIMEOUT": "5000",
            f"{P}_LOGS_ENDPOINT": "https://logs.example:4318/v1/logs",
        },
    )
    rt = resolve_backend(
        cfg,
        _backend(
            envPolicy={**OPTIONAL_ENV_FIRST, "allowSignalOverrides": True},
            traces={"enabled": True},
            logs={"enabled": True, "envInputPresent": True, "overrideKinds": ["endpoint"]},
        ),
    )
    t = rt.traces
    assert t.enabled and t.transport.protocol == "http/protobuf"
    assert t.transport.endpoint == "collector.example:4317"
    assert dict(t.transport.headers) == {"authorization": "token"}
    assert t.transport.compression == "gzip" and t.transport.timeout == 5.0
    assert t.http_path == "/v1/traces"
    lg = rt.logs
    assert lg.enabled and lg.transport.protocol == "http/protobuf"
    assert lg.transport.endpoint == "logs.example:4318" and lg.transport.use_tls is True
    assert lg.http_path == "/v1/logs"


def test_should_keep_explicit_config_when_env_is_blocked_by_policy() -> None:
    cfg = discover(True, {f"{P}_ENDPOINT": "https://env.example:4318", f"{P}_PROTOCOL": "http/protobuf"})
    rt = resolve_backend(
        cfg,
        _backend(
            envPolicy={"mode": "Disabled", "precedence": "EnvFirst"},
            traces={"enabled": True, "blockedReasons": ["EnvDisabledByPolicy"]},
        ),
    )
    assert rt.traces.transport.protocol == "grpc"
    assert rt.traces.transport.endpoint == "collector.example:4317"
    assert rt.traces.http_path == ""


def test_should_leave_blocked_signals_without_a_transport() -> None:
    cfg = discover(True, {f"{P}_ENDPOINT": "https://env.example:4318"})
    rt = resolve_backend(cfg, _backend(traces={"enabled": True, "blockedReasons": ["RequiredEnvMissing"]}))
    assert rt.traces.enabled and "RequiredEnvMissing" in rt.traces.blocked_reasons
    assert rt.traces.transport.endpoint == "" and rt.traces.transport.protocol == ""
    assert not rt.traces.usable


def test_should_ignore_incomplete_optional_mtls_env_overrides() -> None:
    cfg = discover(
        True,
        {
            f"{P}_ENDPOINT": "https://env.example:4318",
            f"{P}_PROTOCOL": "http/protobuf",
            f"{P}_CLIENT_CERTIFICATE": "/tmp/client.crt",
        },
    )
    rt = resolve_backend(
        cfg, _backend(envPolicy=OPTIONAL_ENV_FIRST, traces={"enabled": True, "envInputPresent": True})
    )
    t = rt.traces.transport
    assert t.protocol == "http/protobuf" and t.endpoint == "env.example:4318" and t.use_tls is True
    assert t.client_certificate == "" and t.client_key == ""


def test_should_prefer_explicit_endpoint_and_protocol_in_explicit_first_mode() -> None:
    cfg = discover(True, {f"{P}_ENDPOINT": "https://env.example:4318", f"{P}_PROTOCOL": "http/protobuf"})
    rt = resolve_backend(
        cfg,
        _backend(
            envPolicy={"mode": "Optional", "precedence": "ExplicitFirst"},
            traces={"enabled": True, "envInputPresent": True},
        ),
    )
    assert rt.traces.transport.protocol == "grpc"
    assert rt.traces.transport.endpoint == "collector.example:4317"


def test_should_preserve_explicit_tls_false_in_explicit_first_mode() -> None:
    cfg = discover(True, {f"{P}_ENDPOINT": "https://env.example:4318"})
    rt = resolve_backend(
        cfg,
        _backend(
            useHTTPS=False,
            useHTTP=True,
            envPolicy={"mode": "Optional", "precedence": "ExplicitFirst"},
            traces={"enabled": True, "envInputPresent": True},
        ),
    )
    assert rt.traces.transport.use_tls is False


def test_should_handle_bare_host_port_endpoint_without_scheme() -> None:
    cfg = discover(True, {f"{P}_ENDPOINT": "collector:4317"})
    rt = resolve_backend(
        cfg,
        _backend(
            endpoint="explicit.example:4317",
            envPolicy=OPTIONAL_ENV_FIRST,
            traces={"enabled": True, "envInputPresent": True},
        ),
    )
    assert rt.traces.transport.endpoint == "collector:4317"


def test_should_accept_compression_none() -> None:
    cfg = discover(True, {f"{P}_COMPRESSION": "none"})
    rt = resolve_backend(
        cfg, _backend(envPolicy=OPTIONAL_ENV_FIRST, traces={"enabled": True, "envInputPresent": True})
    )
    assert rt.traces.transport.compression == ""


def test_should_ignore_a_grpc_url_endpoint_with_a_path() -> None:
    cfg = discover(True, {f"{P}_ENDPOINT": "https://collector.example:4317/custom"})
    rt = resolve_backend(cfg, _backend(envPolicy=OPTIONAL_ENV_FIRST, traces={"enabled": True}))
    assert rt.traces.transport.protocol == "grpc"
    assert rt.traces.transport.endpoint == "collector.example:4317"


def test_should_keep_shared_headers_when_signal_headers_are_malformed() -> None:
    cfg = discover(True, {f"{P}_HEADERS": "authorization=token", f"{P}_TRACES_HEADERS": "authorization"})
    rt = resolve_backend(
        cfg,
        _backend(
            envPolicy={**OPTIONAL_ENV_FIRST, "allowSignalOverrides": True},
            traces={"enabled": True, "envInputPresent": True, "overrideKinds": ["headers"]},
        ),
    )
    assert dict(rt.traces.transport.headers) == {"authorization": "token"}


def test_should_keep_tls_for_https_endpoint_even_with_insecure_true() -> None:
    cfg = discover(
        True,
        {
            f"{P}_ENDPOINT": "https://collector.example:4318",
            f"{P}_INSECURE": "true",
            f"{P}_PROTOCOL": "http/protobuf",
        },
    )
    rt = resolve_backend(cfg, _backend(envPolicy=OPTIONAL_ENV_FIRST, traces={"enabled": True}))
    assert rt.traces.transport.endpoint == "collector.example:4318"
    assert rt.traces.transport.use_tls is True


@pytest.mark.parametrize(
    ("endpoint", "host_ip", "expected"),
    [
        (":4317", "10.0.0.5", "10.0.0.5:4317"),
        (":4317", None, "127.0.0.1:4317"),
        ("collector:4317", None, "collector:4317"),
        ("collector", None, "collector"),
    ],
)
def test_resolve_endpoint_address(endpoint: str, host_ip: str | None, expected: str) -> None:
    assert _resolve_endpoint_address(endpoint, host_ip) == expected


def test_parse_headers() -> None:
    assert dict(_parse_headers("user=id%20token,key2=value2,invalid-entry")) == {
        "user": "id token",
        "key2": "value2",
    }
    assert dict(_parse_headers("Authorization=Bearer mytoken")) == {"Authorization": "Bearer mytoken"}
    assert _parse_headers("") == ()
