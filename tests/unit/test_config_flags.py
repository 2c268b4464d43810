"""`kuma-dp run` flag parsing: pflag-style booleans, Go durations, repeatable vars, log flags after `run`."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from kuma_dp.commands import run as run_module
from kuma_dp.config import RunConfig

pytestmark = pytest.mark.unit


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Parse argv with the real click command, stopping before any side effect (execute)."""
    seen: list[RunConfig] = []

    def fake_execute(cfg: RunConfig) -> int:
        seen.append(cfg)
        return 0

    monkeypatch.setattr(run_module, "execute", fake_execute)
    monkeypatch.setattr(run_module, "_setup_logging", lambda cfg: None)

    def parse(*argv: str) -> tuple[int, str, RunConfig | None]:
        res = CliRunner().invoke(run_module.run, list(argv))
        return res.exit_code, res.output, (seen[-1] if seen else None)

    return parse


def test_defaults_match_runconfig(parsed: Any) -> None:
    code, _, cfg = parsed()
    assert code == 0 and cfg == RunConfig()


def test_go_style_flags(parsed: Any) -> None:
    code, out, cfg = parsed(
        "--dns-enabled=false", "--skip-verify", "--name", "dp-1", "--bind-outbounds=true",
        "--transparent-proxy", "--transparent-proxy-config", "a.yaml", "--transparent-proxy-config", "-",
        "-v", "a=1,b=2", "--dataplane-var", "c.d=3", "--drain-time", "1m30s", "--concurrency", "2",
        "-d", "dp.yaml", "--dataplane-token-file", "/t", "--work-dir", "/w", "--dns-proxy-port", "25053",
        "--log-level", "debug", "--log-format", "json", "--log-output-path", "/l", "--log-max-size", "5",
        "--bootstrap-source", "local", "--proxy-type", "ingress", "--envoy-log-level", "warn",
    )  # fmt: skip
    assert code == 0, out
    assert cfg.dns.enabled is False and cfg.control_plane.skip_verify is True
    rt = cfg.dataplane_runtime
    assert rt.bind_outbounds is True and rt.transparent_proxy is True
    assert rt.transparent_proxy_config == ["a.yaml", "-"]
    assert rt.resource_vars == {"a": "1", "b": "2", "c.d": "3"}
    assert cfg.dataplane.drain_time == 90.0 and rt.concurrency == 2
    assert (rt.resource_path, rt.token_path, rt.work_dir) == ("dp.yaml", "/t", "/w")
    assert cfg.dns.proxy_port == 25053
    assert (cfg.log.level, cfg.log.format, cfg.log.output_path, cfg.log.max_size) == (
        "debug",
        "json",
        "/l",
        5,
    )
    assert cfg.bootstrap_source == "local" and cfg.dataplane.proxy_type == "ingress"
    assert rt.envoy_log_level == "warn"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-v", "novalue"], "novalue must be formatted as key=value"),
        (["--bootstrap-source", "cp"], "'cp' is not one of 'remote', 'local'"),
    ],
)
def test_bad_flags_are_usage_errors(parsed: Any, argv: list[str], message: str) -> None:
    code, out, _ = parsed(*argv)
    assert code == 2
    assert message in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--dns-enabled=maybe"],
            'Error: invalid argument "maybe" for "--dns-enabled" flag: strconv.ParseBool: parsing "maybe": '
            "invalid syntax",
        ),
        (
            ["--drain-time", "30"],
            'Error: invalid argument "30" for "--drain-time" flag: time: missing unit in duration "30"',
        ),
    ],
)
def test_bad_go_values_are_pflag_errors(parsed: Any, argv: list[str], message: str) -> None:
    """spf13/pflag's text for a value its Value.Set refuses; cobra exits 1 (not a usage error)."""
    code, out, _ = parsed(*argv)
    assert code == 1
    assert out.strip() == message
