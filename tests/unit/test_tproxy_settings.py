"""The transparent-proxy settings table (`iptables.settings.SETTINGS`) and what is derived from it.

Each setting is declared once; these tests hold the derived parts to it: the env var names, the flag
mapping, the click options, the default tree and `to_dict()`, which must load back into the same config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from iptables import cli, settings
from iptables.config import _defaults, env_var_name, flag_path, load_config
from iptables.settings import ENV_PREFIX, SETTINGS, ConfigError, Setting

pytestmark = pytest.mark.unit

#: kind -> (a non-default value as an env var writes it, the same value as `to_dict()` writes it)
SAMPLES: dict[str, tuple[str, Any]] = {
    "TEXT": ("/srv/x", "/srv/x"),
    "USER": (" 4242 ", "4242"),
    "FAMILY": ("IPv4", "ipv4"),
    "BOOL": ("", None),  # the opposite of the default, filled in per setting
    "EBPF_SWITCH": ("false", False),  # true is refused: see test_ebpf_is_refused
    "UINT": ("9", 9),
    "DURATION": ("1m30s", "90s"),
    "PORT": ("1234", 1234),
    "PORTS": ("22, 80", [22, 80]),
    "IPS": ("10.0.0.1,fd00::/8", ["10.0.0.1", "fd00::/8"]),
    "UIDS": ("tcp:53,80:106-108;udp:*:0", ["tcp:53,80:106-108", "udp:*:0"]),
    "VNETS": ("docker0:172.17.0.0/16,br+:fd00::/64", ["docker0:172.17.0.0/16", "br+:fd00::/64"]),
    "EXECUTABLES": (
        "iptables:/a,iptables-save:/b,iptables-restore:/c",
        {"iptables": "/a", "iptables-save": "/b", "iptables-restore": "/c"},
    ),
}
KIND_NAMES = {id(getattr(settings, n)): n for n in SAMPLES}


def sample(s: Setting) -> tuple[str, Any]:
    name = KIND_NAMES[id(s.kind)]
    if name == "BOOL":
        return ("false", False) if s.default else ("true", True)
    return SAMPLES[name]


def at(tree: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        tree = tree[key]
    return tree


def test_every_setting_is_fully_declared() -> None:
    for s in SETTINGS:
        assert s.path and s.attr and s.env and s.help, s
        assert id(s.kind) in KIND_NAMES, f"{s.path}: kind without a sample here"
        assert s.shape in ("flag", "switch", "multi", "value", "command"), s.path
    for column in ("path", "attr", "env"):
        values = [getattr(s, column) for s in SETTINGS]
        assert len(values) == len(set(values)), f"duplicate {column}"
    flags = [f for s in SETTINGS for f in s.flags]
    assert len(flags) == len(set(flags))


def test_env_var_names_and_loading() -> None:
    for s in SETTINGS:
        assert s.env_var == env_var_name(s.path) == ENV_PREFIX + s.env
        assert s.env == s.env.upper() and " " not in s.env
        text, expected = sample(s)
        cfg = load_config([], {}, {s.env_var: text})
        assert at(cfg.to_dict(), s.path) == expected, s.env_var
        # a set but empty variable is ignored
        assert load_config([], {}, {s.env_var: ""}) == load_config([], {}, {})


def test_every_flag_maps_to_its_setting() -> None:
    for s in SETTINGS:
        for flag in s.flags:
            assert flag_path(flag) == flag_path(f"--{flag}") == flag_path(flag.replace("-", "_")) == s.path
            text, expected = sample(s)
            value: Any = s.kind.from_env(text) if s.shape == "multi" else text  # one entry per --flag
            assert at(load_config([], {flag: value}, {}).to_dict(), s.path) == expected, flag
    assert flag_path("no-such-flag") is None
    with pytest.raises(ConfigError, match="unknown transparent-proxy flag 'no-such-flag'"):
        load_config([], {"no-such-flag": "1"}, {})


@pytest.mark.parametrize("command", [cli.install, cli.kuma_init, cli.plan])
def test_click_options_follow_the_table(command: click.Command) -> None:
    options = {o.opts[0]: o for o in command.params if isinstance(o, click.Option)}
    for s in SETTINGS:
        if s.shape == "command":
            continue  # --dry-run and --verbose: each command declares its own, with its own help
        for flag in s.flags:
            option = options[f"--{flag}"]
            assert isinstance(option, cli.GoBoolOption) == (s.shape in ("flag", "switch")), flag
            assert option.multiple == (s.shape == "multi"), flag
            assert getattr(option, "negatable", False) == (s.shape == "switch"), flag
            assert option.help and (option.help.startswith(s.help) or flag != s.flags[0]), flag


def test_defaults_tree_and_to_dict_agree() -> None:
    defaults = _defaults()
    assert load_config([], {}, {}).to_dict() == defaults
    for s in SETTINGS:
        assert at(defaults, s.path) == s.default
    assert at(defaults, "redirect.inbound.port") == 15006
    assert at(defaults, "retry.sleepBetweenRetries") == "2s"


def test_to_dict_loads_back_into_the_same_config(tmp_path: Path) -> None:
    env = {s.env_var: sample(s)[0] for s in SETTINGS}
    changed = load_config([], {}, env)
    default = load_config([], {}, {})
    for cfg in (default, changed):
        path = tmp_path / "dump.yaml"
        path.write_text(yaml.safe_dump(cfg.to_dict()))
        assert load_config([str(path)], {}, {}) == cfg
    assert changed != default
    assert [(u.protocol, u.ports, u.uids) for u in changed.outbound.exclude_uids] == [
        ("tcp", "53,80", "106:108"),
        ("udp", "1:65535", "0"),
    ]


def test_ebpf_is_refused() -> None:
    for source in ({"flags": {"ebpf-enabled": True}}, {"env": {"KUMA_TRANSPARENT_PROXY_EBPF_ENABLED": "1"}}):
        with pytest.raises(ConfigError, match="eBPF mode is not supported"):
            load_config([], source.get("flags"), source.get("env"))


def test_capture_all_implies_dns_redirect() -> None:
    cfg = load_config([], {}, {"KUMA_TRANSPARENT_PROXY_REDIRECT_DNS_CAPTURE_ALL": "true"})
    assert cfg.dns.enabled and cfg.dns.capture_all


def test_unknown_key_names_the_valid_ones(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("redirect:\n  dns:\n    prot: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config([str(tmp_path / "c.yaml")], {}, {})
    assert str(exc.value) == (
        f"config file {tmp_path / 'c.yaml'}: unknown config key 'redirect.dns.prot' (the keys under "
        "redirect.dns are: captureAll, enabled, port, skipConntrackZoneSplit, resolvConfigPath)"
    )


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("retry.maxRetries", "-1", "invalid value for retry.maxRetries: '-1' is not a non-negative integer"),
        ("wait", "x", "invalid value for wait: 'x' is not a non-negative integer"),
        ("log.enabled", "yes", "invalid value for log.enabled: 'yes' is not a boolean (use true or false)"),
        (
            "retry.sleepBetweenRetries",
            "5",
            "invalid value for retry.sleepBetweenRetries: '5' is not a duration (e.g. 2s, 500ms)",
        ),
        (
            "retry.sleepBetweenRetries",
            "-1s",
            "invalid value for retry.sleepBetweenRetries: '-1s' is not a duration (e.g. 2s, 500ms)",
        ),
    ],
)
def test_go_grammar_errors(path: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config([], {path: value}, {})
    assert str(exc.value) == message


def test_duration_accepts_go_strings_and_yaml_numbers(tmp_path: Path) -> None:
    for raw, seconds in (("1m30s", 90.0), ("500ms", 0.5), ("0", 0.0)):
        assert load_config([], {"sleep-between-retries": raw}, {}).retry.sleep_between_retries == seconds
    (tmp_path / "n.yaml").write_text("retry: {sleepBetweenRetries: 3}\n")
    assert load_config([str(tmp_path / "n.yaml")], {}, {}).retry.sleep_between_retries == 3.0
