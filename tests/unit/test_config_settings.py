"""The settings table: one declaration per setting, from which flags, variables and docs are derived."""

from __future__ import annotations

import click
import pytest

from kuma_dp.cli import ROOT_LOG_FLAGS, cli
from kuma_dp.commands import run as run_module
from kuma_dp.config import (
    ENV_VARS,
    SETTINGS,
    EnvError,
    RunConfig,
    Setting,
    apply_env,
    effective_config,
    env_value,
    get_path,
    load_config,
)
from kuma_dp.config.docs import settings_markdown
from tests.conftest import REPO

pytestmark = pytest.mark.unit

#: A value other than the default, as the variable would carry it, per kind.
_SAMPLE_TEXT = {"str": "x-1", "uint": "7", "duration": "1m30s", "list": "a, b", "seconds": "42"}


def _sample(s: Setting) -> str:
    if isinstance(s.default, bool):
        return "0" if s.default else "1"
    return _SAMPLE_TEXT[s.kind]


def test_every_setting_is_reachable_and_documented() -> None:
    for s in SETTINGS:
        assert s.flags or s.env, s.path
        assert s.help, s.path


def test_paths_flags_and_variables_are_unique() -> None:
    paths = [s.path for s in SETTINGS]
    flags = [f for s in SETTINGS for f in s.flags]
    envs = [s.env for s in SETTINGS if s.env]
    assert len(paths) == len(set(paths))
    assert len(flags) == len(set(flags))
    assert len(envs) == len(set(envs))


def test_table_defaults_are_the_dataclass_defaults() -> None:
    cfg = RunConfig()
    for s in SETTINGS:
        assert get_path(cfg, s.path) == s.default, s.path


def test_env_vars_mapping_is_derived_from_the_table() -> None:
    assert {s.env: (s.path, s.parse) for s in SETTINGS if s.env} == ENV_VARS
    assert ENV_VARS["KUMA_CONTROL_PLANE_URL"][0] == "control_plane.url"


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.env], ids=lambda s: s.env)
def test_every_variable_round_trips(s: Setting) -> None:
    text = _sample(s)
    cfg = load_config(RunConfig(), environ={s.env: text})
    expected = s.parse(text)
    assert expected != s.default
    assert get_path(cfg, s.path) == expected
    assert env_value(s.path, {s.env: text}) == expected
    assert env_value(s.path, {}) == s.default


def test_an_empty_variable_sets_strings_only() -> None:
    for s in SETTINGS:
        if not s.env:
            continue
        cfg = apply_env(RunConfig(), {s.env: ""})
        if s.kind == "str":
            assert get_path(cfg, s.path) == "", s.path
        elif s.skip_empty:
            assert get_path(cfg, s.path) == s.default, s.path


def _run_params() -> dict[str, click.Option]:
    return {p.name: p for p in run_module.run.params if isinstance(p, click.Option) and p.name}


def test_flags_are_derived_from_the_same_defaults() -> None:
    params = _run_params()
    flagged = [s for s in SETTINGS if s.flags]
    assert set(params) - {"help"} == {s.param for s in flagged}
    ctx = click.Context(run_module.run)
    for s in flagged:
        p = params[s.param]
        assert tuple(sorted(p.opts)) == tuple(sorted(s.flags)), s.path
        assert p.hidden == s.hidden, s.path
        if s.kind in ("list", "vars"):
            assert p.multiple, s.path
            continue
        assert p.type_cast_value(ctx, p.get_default(ctx)) == s.default, s.path


def test_root_log_flags_are_the_log_settings_without_defaults() -> None:
    log_settings = [s for s in SETTINGS if s.path.startswith("log.")]
    assert tuple(s.param for s in log_settings) == ROOT_LOG_FLAGS
    root = {p.name: p for p in cli.params if isinstance(p, click.Option)}
    run_params = _run_params()
    for s in log_settings:
        p = root[s.param]
        assert p.default is None and p.opts == run_params[s.param].opts
        assert p.type.to_info_dict() == run_params[s.param].type.to_info_dict()


def test_a_secret_variable_is_never_echoed() -> None:
    secret = Setting(path="dataplane.readiness_port", kind="uint", default=0, help="h", env="X_SECRET",
                     parse=int, secret=True)  # fmt: skip
    with pytest.raises(EnvError) as exc:
        apply_env(RunConfig(), {"X_SECRET": "hunter2"}, settings=[secret])
    assert "hunter2" not in str(exc.value) and "X_SECRET" in str(exc.value)
    with pytest.raises(EnvError, match="'abc'"):
        apply_env(RunConfig(), {"KUMA_READINESS_PORT": "abc"})


def test_effective_config_redacts_what_the_table_marks() -> None:
    cfg = load_config(
        RunConfig(),
        environ={"KUMA_DATAPLANE_RUNTIME_TOKEN": "tok-secret", "KUMA_CONTROL_PLANE_CA_CERT": "-----BEGIN"},
    )
    data = effective_config(cfg)
    assert data["dataplane_runtime"]["token"] == "<redacted>"
    assert data["control_plane"]["ca_cert"] == "<PEM>"
    assert "tok-secret" not in repr(cfg)
    assert effective_config(RunConfig())["dataplane_runtime"]["token"] == ""


def test_component_variables_keep_their_grammar() -> None:
    cfg = load_config(
        RunConfig(),
        environ={
            "KUMA_DNS_PROXY_ADDRESS": " 0.0.0.0, ::,",
            "KUMA_DNS_PROXY_TABLE_STALE_AFTER": "not-a-number",
            "KUMA_DNS_PROXY_UPSTREAM_PARALLEL": "YES",
            "KUMA_DNS_MMSG": "0",
            "POD_NAME": "",
            "NOTIFY_SOCKET": "@sd",
        },
    )
    assert cfg.dns.proxy_address == ["0.0.0.0", "::"]
    assert cfg.dns.proxy_table_stale_after == 300.0  # a warning, not an error
    assert cfg.dns.proxy_upstream_parallel is True
    assert cfg.dns.mmsg is False
    assert cfg.pod_name == "" and cfg.pod_namespace is None  # present (even empty) is what counts
    assert cfg.systemd.notify_socket == "@sd"
    assert load_config(RunConfig(), environ={"KUMA_DNS_MMSG": "false"}).dns.mmsg is True  # only "0" is off


def test_docs_page_is_current() -> None:
    page = (REPO / "docs" / "settings.md").read_text()
    assert page == settings_markdown(), "regenerate: python -m kuma_dp.config.docs > docs/settings.md"


def test_docs_page_lists_every_flag_and_variable() -> None:
    page = settings_markdown()
    for s in SETTINGS:
        for text in (*s.flags, s.env):
            if text:
                assert f"`{text}`" in page, text
