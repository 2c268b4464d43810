"""kuma_dp.config: Kuma's defaults, env-over-flag precedence and validation messages
(`pkg/config/app/kuma-dp/config.go`, `app/kuma-dp/cmd/run.go`)."""

from __future__ import annotations

import pytest

from kuma_dp.config import (
    ConfigError,
    EnvError,
    RunConfig,
    effective_config,
    format_duration,
    load_config,
    parse_duration,
    validate,
    validation_errors,
)

pytestmark = pytest.mark.unit


def test_defaults_are_kumas() -> None:
    cfg = RunConfig()
    assert cfg.control_plane.url == "https://localhost:5678"
    assert (cfg.control_plane.retry.backoff, cfg.control_plane.retry.max_duration) == (3.0, 300.0)
    assert cfg.dataplane.proxy_type == "dataplane"
    assert cfg.dataplane.drain_time == 30.0
    assert cfg.dataplane.readiness_port == 9902
    assert cfg.dataplane_runtime.binary_path == "envoy"
    assert cfg.dataplane_runtime.ipv6_enabled is True
    assert cfg.dns.enabled is True
    assert (cfg.dns.proxy_port, cfg.dns.envoy_dns_port, cfg.dns.core_dns_port) == (15053, 15054, 15053)
    assert cfg.log.level == "info"
    assert cfg.bootstrap_source == "remote"


def test_set_env_var_overrides_the_flag() -> None:
    cfg = RunConfig()
    cfg.dataplane.name = "from-flag"
    cfg.control_plane.url = "https://flag:5678"
    load_config(
        cfg,
        environ={
            "KUMA_DATAPLANE_NAME": "from-env",
            "KUMA_CONTROL_PLANE_URL": "https://env:5678",
            "KUMA_CONTROL_PLANE_RETRY_BACKOFF": "100ms",
            "KUMA_CONTROL_PLANE_RETRY_MAX_DURATION": "1m30s",
            "KUMA_DATAPLANE_DRAIN_TIME": "5s",
            "KUMA_READINESS_PORT": "19902",
            "KUMA_DNS_ENABLED": "false",
            "KUMA_DNS_PROXY_PORT": "25053",
            "KUMA_DATAPLANE_RUNTIME_TOKEN_PATH": "/t",
        },
    )
    assert cfg.dataplane.name == "from-env"
    assert cfg.control_plane.url == "https://env:5678"
    assert cfg.control_plane.retry.backoff == pytest.approx(0.1)
    assert cfg.control_plane.retry.max_duration == 90.0
    assert cfg.dataplane.drain_time == 5.0
    assert cfg.dataplane.readiness_port == 19902
    assert cfg.dns.enabled is False
    assert cfg.dns.proxy_port == 25053
    assert cfg.dataplane_runtime.token_path == "/t"


def test_unset_env_keeps_the_flag_and_empty_string_env_sets_strings_only() -> None:
    cfg = RunConfig()
    cfg.dataplane.mesh = "flag-mesh"
    cfg.dns.enabled = False
    load_config(cfg, environ={"KUMA_DNS_ENABLED": "", "KUMA_DATAPLANE_NAME": ""})
    assert cfg.dataplane.mesh == "flag-mesh"
    assert cfg.dns.enabled is False  # empty bool env ignored
    assert cfg.dataplane.name == ""


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(EnvError, match="KUMA_READINESS_PORT"):
        load_config(RunConfig(), environ={"KUMA_READINESS_PORT": "abc"})
    with pytest.raises(EnvError, match=r"KUMA_DATAPLANE_DRAIN_TIME.*missing unit"):
        load_config(RunConfig(), environ={"KUMA_DATAPLANE_DRAIN_TIME": "30"})


def test_pod_name_and_namespace_give_the_name_on_kubernetes() -> None:
    cfg = load_config(RunConfig(), environ={"POD_NAME": "web-1", "POD_NAMESPACE": "shop"})
    assert cfg.dataplane.name == "web-1.shop"
    cfg = RunConfig()
    cfg.dataplane.name = "given"
    assert load_config(cfg, environ={"POD_NAME": "web-1", "POD_NAMESPACE": "shop"}).dataplane.name == "given"


def test_config_dir_is_the_deprecated_alias_of_work_dir() -> None:
    cfg = RunConfig()
    cfg.dataplane_runtime.config_dir = "/var/run/kuma"
    assert load_config(cfg, environ={}).dataplane_runtime.work_dir == "/var/run/kuma"


def test_kumas_invalid_config_golden_message() -> None:
    """Upstream pkg/config/app/kuma-dp/testdata/invalid-config.golden.txt, same inputs."""
    cfg = RunConfig()
    cfg.control_plane.retry.backoff = 0
    cfg.dataplane.proxy_type = "not-a-proxy"
    cfg.dataplane.drain_time = 0
    cfg.dataplane_runtime.binary_path = ""
    with pytest.raises(ConfigError) as exc:
        validate(cfg)
    assert str(exc.value) == (
        "configuration validation failed: "
        ".ControlPlane is not valid: .Retry is not valid: .Backoff must be a positive duration; "
        ".Dataplane is not valid: .ProxyType is not valid: not-a-proxy is not a valid proxy type; "
        ".Mesh must be non-empty; .Name must be non-empty; .DrainTime must be positive; "
        ".DataplaneRuntime is not valid: .BinaryPath must be non-empty"
    )


def test_template_mode_checks_only_the_drain_time() -> None:
    cfg = RunConfig()
    cfg.dataplane_runtime.resource = "type: Dataplane"
    assert validation_errors(cfg) == []
    cfg.dataplane.drain_time = 0
    assert validation_errors(cfg) == [".Dataplane is not valid: .DrainTime must be positive"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda c: setattr(c.dataplane, "proxy_type", "gateway"),
            ".ProxyType is not valid: gateway is not a valid proxy type",
        ),
        (
            lambda c: setattr(c.dataplane, "readiness_port", 70000),
            ".ReadinessPort has to be in (0, 65535] range",
        ),
        (
            lambda c: setattr(c.control_plane.retry, "max_duration", 0),
            ".MaxDuration must be a positive duration",
        ),
        (
            lambda c: setattr(c.dns, "proxy_port", 70000),
            ".DNS is not valid: .ProxyPort has to be in [0, 65535] range",
        ),
        (
            lambda c: setattr(c.dns, "envoy_dns_port", 65354),
            ".DNS is not valid: .EnvoyDNSPort has to be in [0, 65353] range",
        ),
        (
            lambda c: setattr(c.dataplane_runtime, "envoy_xds_transport_protocol_variant", "X"),
            ".EnvoyXdsTransportProtocolVariant invalid value: X . "
            "Must be one of: DELTA_GRPC or GRPC when defined",
        ),
        (
            lambda c: setattr(c.control_plane, "url", ":333"),
            '.Url is not valid: parse ":333": missing protocol scheme',
        ),
    ],
)
def test_single_messages(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    cfg = RunConfig()
    cfg.dataplane.name, cfg.dataplane.mesh = "dp-1", "default"
    mutate(cfg)
    joined = "; ".join(validation_errors(cfg))
    assert message in joined


def test_readiness_port_zero_is_accepted_to_pick_a_free_port() -> None:
    cfg = RunConfig()
    cfg.dataplane.name, cfg.dataplane.mesh = "dp-1", "default"
    cfg.dataplane.readiness_port = 0
    assert validation_errors(cfg) == []


def test_ingress_needs_no_mesh() -> None:
    cfg = RunConfig()
    cfg.dataplane.proxy_type = "ingress"
    cfg.dataplane.name = "zi-1"
    assert validation_errors(cfg) == []


def test_dns_disabled_skips_dns_checks() -> None:
    cfg = RunConfig()
    cfg.dataplane.name, cfg.dataplane.mesh = "dp-1", "default"
    cfg.dns.enabled = False
    cfg.dns.proxy_port = 0
    assert validation_errors(cfg) == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("0", 0.0),
        ("1.5s", 1.5),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "30", "abc", "5x", "s"])
def test_bad_go_durations(bad: str) -> None:
    with pytest.raises(ValueError, match="time:"):
        parse_duration(bad)


def test_format_duration_round_trips() -> None:
    for s in (30.0, 300.0, 0.5, 90.0):
        assert parse_duration(format_duration(s)) == pytest.approx(s)


def test_effective_config_redacts_the_token() -> None:
    cfg = RunConfig()
    cfg.dataplane_runtime.token = "eyJhbGciOi.secret.sig"
    assert "secret" not in repr(effective_config(cfg))
    assert "secret" not in repr(cfg)
