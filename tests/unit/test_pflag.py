"""The fast `kuma-dp run` reader (kuma_dp.commands.pflag) against click's reading of the same command line.

kuma_dp/cli.py starts a well-formed `kuma-dp run` without click; whatever the fast reader accepts must give
exactly the keyword arguments the click command gives, and whatever click refuses the fast reader must hand
to click (None). Random command lines over every flag of the settings table, with values click accepts,
converts in its own way or refuses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kuma_dp.commands import run as run_module
from kuma_dp.commands.pflag import guess_binary_path, parse_run_args, run_command_at
from kuma_dp.commands.root import cli
from kuma_dp.config import SETTINGS, Setting

pytestmark = pytest.mark.unit

FLAGGED = [s for s in SETTINGS if s.flags]
ROOT = [s for s in FLAGGED if s.path.startswith("log.")]

#: Values per kind: ones both readers take, ones click converts in its own way, ones it refuses.
VALUES: dict[str, list[str]] = {
    "str": ["", "x", "https://cp:5678", "a=b", "-", "run", "--x", "é"],
    "bool": ["true", "false", "1", "0", "t", "F", "TRUE", "yes", "", "2"],
    "duration": ["30s", "1m30s", "0", "500ms", "1.5h", "30", "-1s", "abc", ""],
    "uint": ["0", "1", "15053", "65535", "65536", "+5", " 7", "1_0", "-1", "x", ""],
    "vars": ["a=b", "x=1", "noequals", "=v", ""],
    "list": ["/etc/tp.yaml", "a,b", ""],
}


def _values(s: Setting) -> list[str]:
    return [*VALUES[s.kind], *s.choices, *(c.upper() for c in s.choices)]


@st.composite
def one_flag(draw: st.DrawFn, pool: list[Setting]) -> list[str]:
    s = draw(st.sampled_from(pool))
    name = draw(st.sampled_from(s.flags))
    value = draw(st.sampled_from(_values(s)))
    if s.kind == "bool":
        form = draw(st.sampled_from(["bare", "eq", "space"]))
    else:
        form = draw(
            st.sampled_from(["eq", "space", "glued"] if not name.startswith("--") else ["eq", "space"])
        )
    if form == "bare":
        return [name]
    if form == "eq":
        return [f"{name}={value}"]
    if form == "glued":
        return [f"{name}{value}"]
    return [name, value]


@st.composite
def command_line(draw: st.DrawFn) -> list[str]:
    root = [a for part in draw(st.lists(one_flag(ROOT), max_size=2)) for a in part]
    flags = [a for part in draw(st.lists(one_flag(FLAGGED), max_size=5)) for a in part]
    extra = draw(st.sampled_from([[], [], [], ["--help"], ["positional"], ["--no-such-flag"], ["--"]]))
    return [*root, "run", *flags, *extra]


def click_reading(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any] | None:
    """What the click command passes on, or None when click refuses the line (or prints help)."""
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(run_module, "run_with_flags", lambda kw: seen.append(dict(kw)))
    try:
        cli.main(args, prog_name="kuma-dp", standalone_mode=False)
    except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        return None
    return seen[0] if seen else None


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=command_line())
def test_fast_reader_agrees_with_click(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    fast = parse_run_args(args)
    if fast is None:
        return  # handed to click: always allowed
    assert fast == click_reading(args, monkeypatch), args


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--cp-address", "http://cp:5681", "--name", "dp-1", "--mesh", "default"],
        [
            "run",
            "--cp-address=http://cp:5681",
            "--dataplane",
            "{}",
            "--drain-time",
            "1m",
            "--concurrency",
            "2",
        ],
        ["--log-level", "debug", "run", "--dns-enabled=false", "-v", "a=b", "--dataplane-var", "c=d"],
        ["--log-level", "debug", "run", "--log-level", "warn", "--transparent-proxy"],
        ["run", "--bootstrap-source", "local", "--log-format=json", "--skip-verify"],
    ],
)
def test_typical_command_lines_take_the_fast_path(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The command lines operators and Kuma's injector write are read without click, as click reads them."""
    fast = parse_run_args(args)
    assert fast is not None
    assert fast == click_reading(args, monkeypatch)


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--help"],
        ["run", "--no-such-flag"],
        ["run", "positional"],
        ["run", "--concurrency", "+2"],
        ["run", "--drain-time", "30"],
        ["run", "--bootstrap-source", "REMOTE"],
        ["run", "-dfile.yaml"],
        ["run", "--name"],
        ["version"],
        [],
    ],
)
def test_anything_unusual_goes_to_click(args: list[str]) -> None:
    assert parse_run_args(args) is None


def test_fast_path_does_not_load_click(tmp_path: Path) -> None:
    """`kuma-dp run` with a configuration error exits with Kuma's message, and click was never imported."""
    code = (
        "import sys, atexit\n"
        "atexit.register(lambda: print('CLICK' if 'click' in sys.modules else 'NO-CLICK', file=sys.stderr))\n"
        "sys.argv = ['kuma-dp', 'run', '--cp-address', 'http://127.0.0.1:1', '--name', 'dp', '--mesh', 'm',"
        " '--proxy-type', 'bogus']\n"
        "from kuma_dp.cli import main\nmain()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUMA_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert "Error: configuration validation failed" in proc.stderr and "bogus" in proc.stderr
    assert proc.stderr.strip().endswith("NO-CLICK"), proc.stderr


def test_unusable_flag_value_falls_back_to_clicks_usage_error() -> None:
    """A malformed --dataplane-var parses but cannot be used: click's usage error and exit 2, as before."""
    code = (
        "import sys\nsys.argv = ['kuma-dp', 'run', '-v', 'noequals']\nfrom kuma_dp.cli import main\nmain()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUMA_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert "Error:" in proc.stderr and "noequals" in proc.stderr


def test_binary_guess_reads_the_settings_flag_and_variable() -> None:
    """The early probe's guess uses the same flag and variable as the setting (variable wins)."""
    (s,) = [s for s in SETTINGS if s.path == "dataplane_runtime.binary_path"]
    assert guess_binary_path(["run", s.flag, "/opt/envoy"], {}) == "/opt/envoy"
    assert guess_binary_path(["run", f"{s.flag}=/a", f"{s.flag}=/b"], {}) == "/b"
    assert guess_binary_path(["run", s.flag, "/opt/envoy"], {s.env: "/env/envoy"}) == "/env/envoy"
    assert guess_binary_path(["run"], {}) == s.default


def _fake_envoy(path: Path, version: str) -> str:
    path.write_text(f"#!/bin/sh\nsleep 0.2\necho 'version: abc/{version}/Clean/RELEASE/BoringSSL'\n")
    path.chmod(0o755)
    return str(path)


def test_early_probe_is_claimed_for_its_binary_and_discarded_for_another(tmp_path: Path) -> None:
    """A right guess hands its running `envoy --version` over; a wrong one is killed and reaped, and the
    answer comes from the binary the configuration named."""
    from kuma_dp.envoy import _binary

    first = _fake_envoy(tmp_path / "envoy-a", "1.38.2")
    second = _fake_envoy(tmp_path / "envoy-b", "1.38.3")
    _binary.start_early_probe(first)
    early = _binary._early
    assert early is not None and early._proc is not None
    assert _binary.start_version_probe(first) is early  # claimed
    assert early.result().version == "1.38.2"

    _binary.start_early_probe(first)
    wrong = _binary._early
    assert wrong is not None and wrong._proc is not None
    probe = _binary.start_version_probe(second)
    assert probe is not wrong and wrong._proc.returncode is not None  # killed and reaped
    assert probe.result().version == "1.38.3"
    assert _binary._early is None


@pytest.mark.parametrize(
    ("args", "at"),
    [
        (["run"], 0),
        (["--log-level", "debug", "run", "--name", "x"], 2),
        (["--log-level=debug", "run"], 1),
        (["dns", "--port", "run"], None),  # a value that reads "run" under another sub-command
        (["--log-output-path", "run", "version"], None),  # "run" as a root flag's value
        (["version"], None),
        ([], None),
    ],
)
def test_the_run_sub_command_is_found_where_cobra_finds_it(args: list[str], at: int | None) -> None:
    """Only a real `run` starts the early `envoy --version` and DNS responder (kuma_dp/cli.py)."""
    assert run_command_at(args) == at
    if at is None:
        assert parse_run_args(args) is None


def test_every_root_flag_takes_a_value() -> None:
    """run_command_at relies on it: a word after a root `--flag` without `=` is its value."""
    from kuma_dp.commands.root import ROOT_LOG_SETTINGS

    assert ROOT_LOG_SETTINGS and all(s.kind != "bool" for s in ROOT_LOG_SETTINGS)
