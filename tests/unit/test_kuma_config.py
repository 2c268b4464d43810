"""Kuma v2.14.3's `pkg/config/app/kuma-dp/config_test.go` and its testdata, case by case.

Inputs and expected outputs are Kuma's (the YAML inputs of `testdata/` are set field by field: `kuma-dp run`
reads no configuration file, in Kuma as here, only flags and `KUMA_*` variables). Where we differ on purpose
the test says so and checks our behaviour; docs/compatibility.md lists the differences.
"""

from __future__ import annotations

import dataclasses

import pytest

from kuma_dp.config import ConfigError, RunConfig, format_duration, load_config, validate, validation_errors

pytestmark = pytest.mark.unit


def _valid_config() -> RunConfig:
    """testdata/valid-config.input.yaml."""
    cfg = RunConfig()
    cfg.control_plane.url = "https://kuma-control-plane.internal:5682"
    cfg.control_plane.retry.backoff, cfg.control_plane.retry.max_duration = 1.0, 10.0
    cfg.dataplane.mesh, cfg.dataplane.name = "demo", "example"
    cfg.dataplane.drain_time = 60.0
    cfg.dataplane.proxy_type = "ingress"
    cfg.dataplane.readiness_port = 9902
    cfg.dataplane_runtime.binary_path = "envoy.sh"
    cfg.dataplane_runtime.config_dir = "/var/run/envoy"
    cfg.dataplane_runtime.envoy_log_level = "trace"
    return cfg


def _invalid_config(name: str, proxy_type: str) -> RunConfig:
    """testdata/invalid-config.input.yaml and invalid-dp-name-config.input.yaml (differing in name and type).

    Kuma's test loads them into a zero `Config{}` (DNS off); `dns.enabled = False` does the same here.
    """
    cfg = RunConfig()
    cfg.control_plane.url = "invalid-url"
    cfg.control_plane.retry.backoff, cfg.control_plane.retry.max_duration = 0.0, 0.0
    cfg.dataplane.mesh, cfg.dataplane.name = "", name
    cfg.dataplane.drain_time = 0.0
    cfg.dataplane.proxy_type = proxy_type
    cfg.dataplane.readiness_port = 0
    cfg.dataplane_runtime.binary_path = ""
    cfg.dns.enabled = False
    return cfg


def test_valid_config_input_validates_and_keeps_its_values() -> None:
    """ "should be loadable from configuration file": the URL and the drain time come through, no error."""
    cfg = load_config(_valid_config(), environ={})
    validate(cfg)
    assert cfg.control_plane.url == "https://kuma-control-plane.internal:5682"
    assert cfg.dataplane.drain_time == 60.0


def test_loadable_from_environment_variables() -> None:
    """ "should be loadable from environment variables": Kuma's variables and its expected values."""
    env = {
        "KUMA_CONTROL_PLANE_URL": "https://kuma-control-plane.internal:5682",
        "KUMA_CONTROL_PLANE_RETRY_BACKOFF": "1s",
        "KUMA_CONTROL_PLANE_RETRY_MAX_DURATION": "10s",
        "KUMA_CONTROL_PLANE_BOOTSTRAP_SERVER_RETRY_BACKOFF": "2s",
        "KUMA_CONTROL_PLANE_BOOTSTRAP_SERVER_RETRY_MAX_DURATION": "11s",
        "KUMA_DATAPLANE_MESH": "demo",
        "KUMA_DATAPLANE_NAME": "example",
        "KUMA_DATAPLANE_DRAIN_TIME": "60s",
        "KUMA_DATAPLANE_PROXY_TYPE": "ingress",
        "KUMA_READINESS_PORT": "9902",
        "KUMA_DATAPLANE_RUNTIME_BINARY_PATH": "envoy.sh",
        "KUMA_DATAPLANE_RUNTIME_CONFIG_DIR": "/var/run/envoy",
        "KUMA_DATAPLANE_RUNTIME_SOCKET_DIR": "/var/run/envoy",
        "KUMA_DATAPLANE_RUNTIME_WORK_DIR": "/var/run/envoy",
        "KUMA_DATAPLANE_RUNTIME_TOKEN_PATH": "/tmp/token",
        "KUMA_DATAPLANE_RUNTIME_ENVOY_LOG_LEVEL": "trace",
        "KUMA_DATAPLANE_RUNTIME_DYNAMIC_CONFIGURATION_REFRESH_INTERVAL": "5s",
        "KUMA_DATAPLANE_RUNTIME_UNIFIED_RESOURCE_NAMING_ENABLED": "true",
        "KUMA_DNS_ENABLED": "true",
        "KUMA_DNS_CORE_DNS_PORT": "5300",
        "KUMA_DNS_ENVOY_DNS_PORT": "5302",
        "KUMA_DNS_CORE_DNS_BINARY_PATH": "/tmp/coredns",
        "KUMA_DNS_CORE_DNS_CONFIG_TEMPLATE_PATH": "/tmp/Corefile",
        "KUMA_DNS_CONFIG_DIR": "/var/run/dnsserver",
        "KUMA_DNS_PROMETHEUS_PORT": "6001",
        "KUMA_DNS_ENABLE_LOGGING": "true",
    }
    cfg = load_config(RunConfig(), environ=env)
    validate(cfg)
    rt = cfg.dataplane_runtime
    assert cfg.control_plane.url == "https://kuma-control-plane.internal:5682"
    assert (cfg.control_plane.retry.backoff, cfg.control_plane.retry.max_duration) == (1.0, 10.0)
    assert (cfg.dataplane.mesh, cfg.dataplane.name, cfg.dataplane.drain_time) == ("demo", "example", 60.0)
    assert rt.binary_path == "envoy.sh"
    assert (rt.config_dir, rt.socket_dir, rt.work_dir) == ("/var/run/envoy",) * 3
    assert rt.token_path == "/tmp/token"
    assert rt.envoy_log_level == "trace"
    assert rt.dynamic_configuration_refresh_interval == 5.0
    assert rt.unified_resource_naming_enabled is True
    dns = cfg.dns
    assert dns.enabled is True
    assert (dns.core_dns_port, dns.envoy_dns_port, dns.prometheus_port) == (5300, 5302, 6001)
    assert (dns.core_dns_binary_path, dns.core_dns_config_template_path) == ("/tmp/coredns", "/tmp/Corefile")
    assert dns.config_dir == "/var/run/dnsserver"
    assert dns.core_dns_logging is True


#: testdata/default-config.golden.yaml, as `dotted.path: value` (durations in Go's format).
DEFAULT_CONFIG_GOLDEN = {
    "control_plane.ca_cert": "",
    "control_plane.ca_cert_file": "",
    "control_plane.retry.backoff": "3s",
    "control_plane.retry.max_duration": "5m0s",
    "control_plane.skip_verify": False,
    "control_plane.url": "https://localhost:5678",
    "dataplane.drain_time": "30s",
    "dataplane.proxy_type": "dataplane",
    "dataplane.readiness_port": 9902,
    "dataplane.resilient_component_base_backoff": "5s",
    "dataplane.resilient_component_max_backoff": "1m0s",
    "dataplane.mesh": "",
    "dataplane.name": "",
    "dataplane_runtime.ipv6_enabled": True,
    "dataplane_runtime.binary_path": "envoy",
    "dataplane_runtime.dynamic_configuration_refresh_interval": "1s",
    "dataplane_runtime.otel_pipe_enabled": True,
    "dataplane_runtime.reuse_port_enabled": True,
    "dataplane_runtime.strict_inbound_ports_enabled": True,
    "dataplane_runtime.max_memory_bytes": 0,
    "dataplane_runtime.spire_supported": False,
    "dataplane_runtime.concurrency": 0,
    "dns.core_dns_binary_path": "coredns",
    "dns.core_dns_port": 15053,
    "dns.enabled": True,
    "dns.envoy_dns_port": 15054,
    "dns.prometheus_port": 19153,
    "application_probe_proxy_port": 0,
}


def test_defaults_are_kumas_golden() -> None:
    """ "should have consistent defaults": every value of Kuma's default-config golden."""
    flat: dict[str, object] = {}

    def walk(obj: object, prefix: str) -> None:
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                flat[prefix + f.name] = value

    walk(RunConfig(), "")
    for key, expected in DEFAULT_CONFIG_GOLDEN.items():
        value = flat[key]
        got = format_duration(value) if isinstance(value, float) else value
        assert got == expected, key


def test_default_dns_proxy_port_differs_on_purpose() -> None:
    """Kuma 2.14.3 defaults `dns.proxyPort` to 0 (CoreDNS); we ship no CoreDNS and default the embedded DNS
    proxy to 15053, the port Kuma's CoreDNS listened on, so transparent-proxy redirects keep working."""
    assert RunConfig().dns.proxy_port == 15053


#: testdata/invalid-config.golden.txt, after `parsing configuration from file '...' failed: `.
INVALID_CONFIG_GOLDEN = (
    "configuration validation failed: .ControlPlane is not valid: .Retry is not valid: .Backoff must be a "
    "positive duration; .Dataplane is not valid: .ProxyType is not valid: not-a-proxy is not a valid proxy "
    "type; .Mesh must be non-empty; .Name must be non-empty; .DrainTime must be positive; .ReadinessPort has "
    "to be in (0, 65535] range; .DataplaneRuntime is not valid: .BinaryPath must be non-empty"
)
#: testdata/invalid-dp-name-config.golden.txt, after the same prefix.
INVALID_DP_NAME_GOLDEN = (
    "configuration validation failed: .ControlPlane is not valid: .Retry is not valid: .Backoff must be a "
    "positive duration; .Dataplane is not valid: .Mesh must be non-empty; .DrainTime must be positive; "
    ".ReadinessPort has to be in (0, 65535] range; .DataplaneRuntime is not valid: .BinaryPath must be "
    "non-empty"
)
#: Our one deliberate difference in both goldens: readiness port 0 picks a free port (kumahq/kuma#11769).
READINESS_ZERO = " .ReadinessPort has to be in (0, 65535] range;"


@pytest.mark.parametrize(
    ("name", "proxy_type", "golden"),
    [
        ("", "not-a-proxy", INVALID_CONFIG_GOLDEN),
        ("$(POD_NAME).$(POD_NAMESPACE)", "dataplane", INVALID_DP_NAME_GOLDEN),
    ],
    ids=["should have validators", "valid DP proxyType, invalid DP name"],
)
def test_invalid_config_goldens(name: str, proxy_type: str, golden: str) -> None:
    """Kuma's two golden messages; with readiness port 0 allowed, the rest is Kuma's to the character."""
    cfg = _invalid_config(name, proxy_type)
    with pytest.raises(ConfigError) as exc:
        validate(cfg)
    assert str(exc.value) == golden.replace(READINESS_ZERO, "")
    cfg.dataplane.readiness_port = 70000  # out of range: Kuma's clause, in Kuma's place
    with pytest.raises(ConfigError) as exc:
        validate(cfg)
    assert str(exc.value) == golden


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda c: setattr(c.dataplane, "proxy_type", "gateway"),
            ".Dataplane is not valid: .ProxyType is not valid: gateway is not a valid proxy type",
        ),
        (
            lambda c: setattr(c.control_plane, "url", ":333"),
            '.ControlPlane is not valid: .Url is not valid: parse ":333": missing protocol scheme',
        ),
    ],
    ids=["unsupported proxy type", "invalid cp url"],
)
def test_bad_validation_table(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    """ "bad validation": valid-config.input.yaml plus one change fails (with Kuma's message)."""
    cfg = load_config(_valid_config(), environ={})
    mutate(cfg)
    assert validation_errors(cfg) == [message]


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("invalid-url", None),
        ("grpcs://cp:5678", None),  # a scheme is the bootstrap request's concern, as in Kuma
        ("https://", None),
        ("https://[::1]:5678", None),
        (":333", 'parse ":333": missing protocol scheme'),
        ("https://cp:port", 'parse "https://cp:port": invalid port ":port" after host'),
        ("https://::1:5678", 'parse "https://::1:5678": invalid port "::1:5678" after host'),
        ("https://c p", 'parse "https://c p": invalid character " " in host name'),
        ("https://[::1", "parse \"https://[::1\": missing ']' in host"),
        ("https://[10.0.0.1]:5678", 'parse "https://[10.0.0.1]:5678": invalid IP-literal'),
        ("https://cp/%zz", 'parse "https://cp/%zz": invalid URL escape "%zz"'),
        ("cp:5678/x", None),  # opaque
        ("a/b:c", None),
        ("b:c/", None),
        ("./b:c", None),
        ("1b:c", 'parse "1b:c": first path segment in URL cannot contain colon'),
        ("https://cp\t", 'parse "https://cp\\t": net/url: invalid control character in URL'),
    ],
)
def test_cp_url_goes_through_go_url_parse_only(url: str, error: str | None) -> None:
    """ControlPlane.Validate runs Go's url.Parse (Go 1.26: strict colons, bracketed IPv6 only) and nothing
    else: no scheme or host check (kuma-dp reports those when it asks for the bootstrap)."""
    cfg = load_config(_valid_config(), environ={})
    cfg.control_plane.url = url
    expected = [] if error is None else [f".ControlPlane is not valid: .Url is not valid: {error}"]
    assert validation_errors(cfg) == expected


def test_dataplane_name_is_only_required_non_empty() -> None:
    """Dataplane.Validate checks `d.Name == ""` only: `$(...)` is not refused at validation."""
    cfg = load_config(_valid_config(), environ={})
    cfg.dataplane.name = "web-$(HOSTNAME){1}"
    assert validation_errors(cfg) == []


def test_post_process_pod_name_fallback_and_its_error() -> None:
    """Dataplane.PostProcess: an unset or unexpanded name becomes POD_NAME.POD_NAMESPACE; if that is still
    invalid, Kuma's loader fails with `configuration post-processing failed: ...` (%+q quoting)."""
    env = {"POD_NAME": "web-1", "POD_NAMESPACE": "kuma-demo"}
    cfg = _valid_config()
    cfg.dataplane.name = "$(POD_NAME).$(POD_NAMESPACE)"
    assert load_config(cfg, environ=env).dataplane.name == "web-1.kuma-demo"
    cfg = _valid_config()
    cfg.dataplane.name = ""
    with pytest.raises(ConfigError) as exc:
        load_config(cfg, environ={"POD_NAME": "$(X)", "POD_NAMESPACE": "ñs"})
    assert str(exc.value) == (
        "configuration post-processing failed: Dataplane configuration post processing failed: "
        '.Name "$(X).\\u00f1s" contains invalid characters'
    )
    cfg = _valid_config()
    cfg.dataplane.name = ""
    assert load_config(cfg, environ={"POD_NAME": "web-1"}).dataplane.name == ""  # no namespace: unchanged


def test_dns_port_checks_are_kumas_plus_one_of_ours() -> None:
    """DNS.Validate returns its first error only; ours adds `.ProxyPort` > 65535 last (Kuma would fail at
    bind time) and accepts 0 (the embedded proxy off), as Kuma does."""
    cfg = load_config(_valid_config(), environ={})
    cfg.dns.proxy_port = 0
    assert validation_errors(cfg) == []
    cfg.dns.core_dns_port, cfg.dns.prometheus_port, cfg.dns.proxy_port = 65354, 65354, 70000
    assert validation_errors(cfg) == [".DNS is not valid: .CoreDNSPort has to be in [0, 65353] range"]
    cfg.dns.core_dns_port = cfg.dns.prometheus_port = 0
    assert validation_errors(cfg) == [".DNS is not valid: .ProxyPort has to be in [0, 65535] range"]
