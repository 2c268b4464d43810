"""The `kuma-dp` command line.

Sub-commands are imported lazily: `kuma-dp run` must not pay (in start-up time and RSS) for grpc, pyroute2
or the development control plane it never uses. Each sub-command lives in the package that owns it; this
module only maps names to `module:attribute` paths.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

#: name -> "module:attribute" of a click.Command. Owners add their line; keep it sorted.
SUBCOMMANDS: dict[str, str] = {
    "bootstrap": "kuma_dp.bootstrap.cli:bootstrap",
    "demo": "kuma_dp.demo:demo",
    "dev-cp": "kuma_dp.devcp.cli:dev_cp",
    "dns": "kuma_dns.cli:dns",
    "run": "kuma_dp.commands.run:run",
    "transparent-proxy": "iptables.cli:transparent_proxy",
    "version": "kuma_dp.commands.version:version",
    "wait": "kuma_dp.commands.wait:wait",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported only when invoked (or listed in --help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A sub-command whose module is not there (yet) must not break the others.
            if exc.name and module_name.startswith(exc.name):
                return None
            raise
        command: Any = getattr(module, attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Dataplane agent for the Kuma service mesh (Python implementation)."""


def main() -> None:
    cli(prog_name="kuma-dp")
