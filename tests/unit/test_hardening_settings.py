"""The hardening limits as settings (issue: hardening): each has a `KUMA_*` variable that reaches the
configuration, a default equal to the bound the component applies when nobody configures it, and Kuma's
validation wording for a value that would refuse every client. What each variable changes at run time is
driven in tests/integration/test_hardening_metrics.py."""

from __future__ import annotations

import pytest

from kuma_dp.config import SETTINGS, ConfigError, EnvError, RunConfig, load_config, validate

#: variable -> (setting path, where the component's own default lives)
LIMITS = {
    "KUMA_READINESS_MAX_CONNECTIONS": (
        "dataplane.readiness_max_connections",
        "kuma_dp.readiness:MAX_CONNECTIONS",
    ),
    "KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS": (
        "dns.proxy_tcp_max_connections",
        "kuma_dns.server:MAX_TCP_CLIENTS",
    ),
    "KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS_PER_SOURCE": (
        "dns.proxy_tcp_max_connections_per_source",
        "kuma_dns.server:MAX_TCP_PER_SOURCE",
    ),
    "KUMA_DNS_PROXY_UPSTREAM_MAX_PENDING_QUERIES": (
        "dns.proxy_upstream_max_pending_queries",
        "kuma_dns.server:MAX_PENDING",
    ),
}


def _get(cfg: RunConfig, path: str) -> object:
    section, leaf = path.split(".")
    return getattr(getattr(cfg, section), leaf)


def _component_default(where: str) -> int:
    import importlib

    module, _, name = where.partition(":")
    value: int = getattr(importlib.import_module(module), name)
    return value


def _cfg(env: dict[str, str]) -> RunConfig:
    base = {"KUMA_DATAPLANE_NAME": "dp-1", "KUMA_DATAPLANE_MESH": "default"}
    return load_config(RunConfig(), {**base, **env})


@pytest.mark.parametrize("variable", sorted(LIMITS))
def test_each_limit_is_one_declared_setting_with_the_components_default(variable: str) -> None:
    path, where = LIMITS[variable]
    (row,) = [s for s in SETTINGS if s.env == variable]
    assert row.path == path and row.kind == "uint" and row.help
    assert row.default == _component_default(where)
    cfg = _cfg({})
    assert _get(cfg, path) == row.default
    validate(cfg)  # the defaults are valid


@pytest.mark.parametrize("variable", sorted(LIMITS))
def test_the_variable_sets_the_limit(variable: str) -> None:
    path, _ = LIMITS[variable]
    cfg = _cfg({variable: "3"})
    assert _get(cfg, path) == 3
    validate(cfg)


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        (
            "KUMA_READINESS_MAX_CONNECTIONS",
            ".Dataplane is not valid: .ReadinessMaxConnections must be positive",
        ),
        ("KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS", ".DNS is not valid: .ProxyTCPMaxConnections must be positive"),
        (
            "KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS_PER_SOURCE",
            ".DNS is not valid: .ProxyTCPMaxConnectionsPerSource must be positive",
        ),
        (
            "KUMA_DNS_PROXY_UPSTREAM_MAX_PENDING_QUERIES",
            ".DNS is not valid: .ProxyUpstreamMaxPendingQueries must be positive",
        ),
    ],
)
def test_zero_is_refused_with_kumas_validation_wording(variable: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(_cfg({variable: "0"}))
    assert str(info.value) == f"configuration validation failed: {message}"


@pytest.mark.parametrize("variable", sorted(LIMITS))
@pytest.mark.parametrize("value", ["-1", "many", "1.5"])
def test_a_value_that_is_not_a_count_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(EnvError) as info:
        _cfg({variable: value})
    assert str(info.value).startswith(f"invalid value {value!r} in environment variable {variable}: ")


def test_dns_limits_are_not_checked_when_dns_is_off() -> None:
    """Kuma validates the DNS section only when DNS is enabled; the new checks follow it."""
    validate(_cfg({"KUMA_DNS_ENABLED": "false", "KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS": "0"}))
