"""Kuma v2.14.3's `app/kuma-dp/cmd/root_test.go` and the failure cases of `run_test.go`, plus Go's flag
grammar (spf13/pflag) for every boolean flag of every `kuma-dp` sub-command.

The start-up table of run_test.go ("should be possible to start dataplane (Envoy) using `kuma-dp run`") needs
processes and a control plane: tests/integration/test_kuma_run_cmd.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kuma_dp.cli import SUBCOMMANDS, cli
from kuma_dp.commands.goflags import GoBool
from kuma_dp.config import SETTINGS
from tests.conftest import REPO

pytestmark = pytest.mark.unit

#: app/kuma-dp/cmd/testdata/dataplane_template.yaml (Kuma, Apache-2.0).
DATAPLANE_TEMPLATE = """type: Dataplane
mesh: default
name: {{ name }}
networking:
  address: {{ address }}
  inbound:
    - port: 11011
      servicePort: 11012
      tags:
        kuma.io/service: backend
        kuma.io/protocol: http
  outbound:
    - port: 33033
      tags:
        kuma.io/service: redis
  admin:
    port: 9901
"""


def _kuma_dp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KUMA_")}
    return subprocess.run(
        [sys.executable, "-m", "kuma_dp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={**clean, **(env or {})},
    )


def test_kuma_dp_without_a_sub_command_prints_the_help_and_succeeds() -> None:
    """root_test.go: "should be possible to run `kuma-dp` without a sub-command" (cobra: help, exit 0)."""
    out = _kuma_dp()
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: kuma-dp ")
    for name in ("run", "version", "wait"):
        assert f"\n  {name} " in out.stdout


@pytest.fixture
def template(tmp_path: Path) -> Path:
    path = tmp_path / "dataplane_template.yaml"
    path.write_text(DATAPLANE_TEMPLATE)
    return path


def test_fails_when_name_and_mesh_are_given_with_a_dataplane_definition(template: Path) -> None:
    """run_test.go: "should fail when name and mesh is provided with dataplane definition"."""
    out = _kuma_dp(
        "run", "--cp-address", "http://localhost:1234", "--binary-path", "testdata/envoy-mock.sleep.sh",
        "--dataplane-file", str(template), "--dataplane-var", "name=example", "--dataplane-var",
        "address=127.0.0.1", "--name=xyz", "--mesh=xyz",
        "--dns-coredns-path", "testdata/coredns-mock.sleep.sh",
    )  # fmt: skip
    assert out.returncode == 1
    assert "--name and --mesh cannot be specified" in out.stderr.splitlines()[-1]


def test_fails_when_the_proxy_type_is_unknown(template: Path) -> None:
    """run_test.go: "should fail when the proxy type is unknown" (a template skips Dataplane.Validate, so the
    run command's own check answers)."""
    out = _kuma_dp(
        "run", "--cp-address", "http://localhost:1234", "--binary-path", "testdata/envoy-mock.sleep.sh",
        "--dataplane-file", str(template), "--dns-coredns-path", "testdata/coredns-mock.sleep.sh",
        "--proxy-type", "phoney",
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == 'Error: invalid proxy type "phoney"'


def test_invalid_configuration_is_kumas_loader_text() -> None:
    """`kuma-dp run` prints what Kuma's config.Load returns: `configuration validation failed: ...`."""
    out = _kuma_dp("run", "--proxy-type", "not-a-proxy", "--drain-time", "0s", "--cp-address", ":333")
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == (
        "Error: configuration validation failed: .ControlPlane is not valid: .Url is not valid: "
        'parse ":333": missing protocol scheme; .Dataplane is not valid: .ProxyType is not valid: '
        "not-a-proxy is not a valid proxy type; .Mesh must be non-empty; .Name must be non-empty; "
        ".DrainTime must be positive"
    )


def _commands(cmd: click.Command, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None:
                yield from _commands(sub, (*path, name))


def _bool_flags() -> list[tuple[tuple[str, ...], str, str]]:
    """(command path, long flag, parameter name) of every boolean flag of every `kuma-dp` sub-command."""
    found = []
    root_ctx = click.Context(cli)
    for name in SUBCOMMANDS:
        top = cli.get_command(root_ctx, name)
        if top is None or (top.help or "").startswith("(not installed"):
            continue
        for path, cmd in _commands(top, (name,)):
            for p in cmd.params:
                if not isinstance(p, click.Option) or p.name == "help":
                    continue
                # GoBool here or the installer's own pflag boolean type (iptables/cli.py) of the same name.
                if isinstance(p.type, GoBool) or type(p.type).__name__ == "GoBool" or p.is_bool_flag:
                    long = next(o for o in p.opts if o.startswith("--"))
                    found.append((path, long, p.name or ""))
    return found


BOOL_FLAGS = _bool_flags()


def test_every_run_boolean_setting_is_among_them() -> None:
    run_flags = {flag for path, flag, _ in BOOL_FLAGS if path == ("run",)}
    assert run_flags >= {s.flag for s in SETTINGS if s.kind == "bool" and s.flag}
    assert len(BOOL_FLAGS) > len(run_flags)  # other sub-commands have some too


@pytest.mark.parametrize(
    ("path", "flag", "param"), BOOL_FLAGS, ids=[f"{' '.join(p)} {f}" for p, f, _ in BOOL_FLAGS]
)
def test_every_boolean_flag_takes_pflag_values(path: tuple[str, ...], flag: str, param: str) -> None:
    """pflag: `--x` and `--x=true|1|t|T|TRUE|True` are true, `--x=false|0|f|F|FALSE|False` false, anything
    else is `invalid argument "<v>" ...: strconv.ParseBool: parsing "<v>": invalid syntax`."""
    root_ctx = click.Context(cli)
    cmd = cli.get_command(root_ctx, path[0])
    for name in path[1:]:
        assert isinstance(cmd, click.Group)
        cmd = cmd.get_command(click.Context(cmd), name)
    assert cmd is not None
    cases = [("", True), ("=true", True), ("=1", True), ("=T", True), ("=false", False), ("=0", False)]
    for suffix, expected in cases:
        ctx = cmd.make_context(" ".join(path), [flag + suffix], resilient_parsing=True)
        assert ctx.params[param] is expected, suffix
    # Without resilient parsing (which hides errors): the given flag is processed first, so its error wins.
    with pytest.raises(click.ClickException, match=r'invalid argument "maybe".*ParseBool: parsing "maybe"'):
        cmd.make_context(" ".join(path), [f"{flag}=maybe"])


def test_a_bare_boolean_never_takes_the_next_argument() -> None:
    """pflag: `--skip-verify false` is `--skip-verify` (true) and a positional `false`. Go's `run` ignores
    positionals, which would silently turn TLS verification off; we refuse them (exit 2) instead."""
    res = CliRunner().invoke(cli, ["run", "--skip-verify", "false"])
    assert res.exit_code == 2
    assert "unexpected extra argument (false)" in res.output


def test_version_detailed_false_is_the_short_form() -> None:
    """Kuma's `kuma-dp version -a/--detailed` is a pflag bool: `--detailed=false` prints the one-line form."""
    short = _kuma_dp("version", "--detailed=false")
    detailed = _kuma_dp("version", "-a=true")
    assert short.returncode == detailed.returncode == 0
    assert short.stdout.startswith("kuma-dp: ")
    assert detailed.stdout.startswith("Product:")


@pytest.mark.parametrize(
    ("transparent_proxy", "vnet", "family", "addresses"),
    [
        (False, False, "dualstack", ["0.0.0.0"]),
        (True, False, "ipv4", ["127.0.0.1"]),
        (True, False, "dualstack", ["127.0.0.1", "::1"]),
        (True, True, "ipv4", ["0.0.0.0"]),
        (True, True, "dualstack", ["0.0.0.0", "::"]),
    ],
    ids=[
        "0.0.0.0 when transparent proxy is nil",
        "loopback only for IPv4-only without VNet",
        "both loopbacks for dual-stack without VNet",
        "0.0.0.0 for IPv4-only VNet",
        "both wildcards for dual-stack VNet",
    ],
)
def test_dns_proxy_addresses(transparent_proxy: bool, vnet: bool, family: str, addresses: list[str]) -> None:
    """run_test.go "dnsProxyAddresses": Kuma's table, as kuma_dns.component.bind_addresses. (The agent binds
    loopback rather than 0.0.0.0 without the transparent proxy, on purpose: kuma_dns/component.py.)"""
    from kuma_dns.component import bind_addresses

    assert bind_addresses(transparent_proxy, vnet=vnet, ip_family=family) == addresses
