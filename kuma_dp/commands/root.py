"""The `kuma-dp` command group (click), for everything but the start-up path of a well-formed `kuma-dp run`
(kuma_dp/cli.py takes that one without click).

Sub-commands are imported lazily: `kuma-dp run` must not pay (in start-up time and RSS) for grpc, pyroute2
or the development control plane it never uses. Each sub-command lives in the package that owns it; this
module only maps names to `module:attribute` paths.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from kuma_dp.commands.goflags import adopt_go_flags, setting_option
from kuma_dp.config import SETTINGS

#: name -> "module:attribute" of a click.Command, imported only when that sub-command runs. Keep it sorted.
SUBCOMMANDS: dict[str, str] = {
    "bootstrap": "kuma_dp.bootstrap.cli:bootstrap",
    "demo": "kuma_dp_dev.demo:demo",
    "dev-cp": "kuma_dp_dev.devcp.cli:dev_cp",
    "dns": "kuma_dns.cli:dns",
    "run": "kuma_dp.commands.run:run",
    "transparent-proxy": "iptables.cli:transparent_proxy",
    "version": "kuma_dp.commands.version:version",
    "wait": "kuma_dp.commands.wait:wait",
}


#: How to get the development tools (package kuma_dp_dev) that serve `kuma-dp dev-cp` and `kuma-dp demo`; the
#: agent itself never imports them, and the .deb/.rpm do not ship them.
DEV_TOOLS_HINT = "pip install 'kuma-dp-py[dev]'"


def _missing_dev_tools() -> str:
    """The first module the development tools need that is not installed, or "" when all are there."""
    try:
        import kuma_dp_dev
    except ModuleNotFoundError:
        return "kuma_dp_dev"
    return kuma_dp_dev.missing_requirement()


def _dev_tools_hint(cmd_name: str, missing: str) -> click.Command:
    """A stand-in command that says how to install the development tools and exits 1."""

    def explain() -> None:
        click.echo(
            f"Error: `kuma-dp {cmd_name}` needs the development tools, which are not installed "
            f"(missing Python module {missing!r}): {DEV_TOOLS_HINT}",
            err=True,
        )
        raise SystemExit(1)

    return click.Command(
        cmd_name,
        callback=explain,
        help=f"(not installed: {DEV_TOOLS_HINT})",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported only when invoked (or listed in --help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        if module_name.startswith("kuma_dp_dev."):
            missing = _missing_dev_tools()
            if missing:
                return _dev_tools_hint(cmd_name, missing)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A sub-command whose module is not there (yet) must not break the others.
            if exc.name and module_name.startswith(exc.name):
                return None
            raise
        command: Any = getattr(module, attr)
        return adopt_go_flags(command)


#: Kuma's root (persistent) flags: the `log.*` settings. Go accepts them before or after the sub-command; the
#: sub-commands that log declare them too, and values given before the sub-command become those options'
#: defaults.
ROOT_LOG_SETTINGS = tuple(s for s in SETTINGS if s.path.startswith("log."))
ROOT_LOG_FLAGS = tuple(s.param for s in ROOT_LOG_SETTINGS)


def _root_log_options(func: Any) -> Any:
    for s in reversed(ROOT_LOG_SETTINGS):
        func = setting_option(s, root=True)(func)
    return func


@click.group(
    cls=LazyGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]}
)
@_root_log_options
@click.pass_context
def cli(ctx: click.Context, **root_flags: Any) -> None:
    """Dataplane agent for the Kuma service mesh (Python implementation).

    The --log-* options may also be given after the sub-command, where they win.
    """
    if ctx.invoked_subcommand is None:
        # Kuma's root command has no action of its own: cobra prints the help and exits 0
        # (app/kuma-dp/cmd/root_test.go runs `kuma-dp` without a sub-command and expects no error).
        click.echo(ctx.get_help())
        ctx.exit(0)
    given = {k: v for k, v in root_flags.items() if v is not None}
    if given:
        ctx.default_map = {name: dict(given) for name in SUBCOMMANDS}
