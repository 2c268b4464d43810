"""The `kuma-dp` entry point.

A well-formed `kuma-dp run` is read by `kuma_dp.commands.pflag` straight from the settings table and started
without loading click: start-up time is what a sidecar user feels on every rollout, and click, the option
objects of ~40 flags and their parsing cost more than a tenth of a second before Envoy could be asked for its
version. Everything else (help, any other sub-command, and any `run` command line the fast reader does not
take as certain: an unknown flag, a value to check, a positional argument) goes to the click group in
`kuma_dp.commands.root`, which gives Kuma's errors and help texts. Both end in the same
`kuma_dp.commands.run.run_with_flags`, and tests/unit/test_pflag.py checks that they read every setting alike.
"""

from __future__ import annotations

import os
import sys

from kuma_dp import starttrace
from kuma_dp._lazy import lazy_exports

#: `typing` costs ~10 ms to import and nothing on the start-up path needs it at run time; type checkers
#: read any constant named TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from kuma_dp.commands.root import DEV_TOOLS_HINT, ROOT_LOG_FLAGS, ROOT_LOG_SETTINGS, SUBCOMMANDS, cli

__all__ = ["DEV_TOOLS_HINT", "ROOT_LOG_FLAGS", "ROOT_LOG_SETTINGS", "SUBCOMMANDS", "cli", "main"]

#: The click group and its tables, loaded only when used (kuma_dp/_lazy.py).
__getattr__ = lazy_exports("kuma_dp.commands", {name: "root" for name in __all__ if name != "main"})


def main() -> None:
    starttrace.mark("interpreter")  # the console script's first line: the start-up timeline's origin
    from kuma_dp.commands.pflag import guess_binary_path, parse_run_args, run_command_at

    args = sys.argv[1:]
    if run_command_at(args) is not None and "--help" not in args and "-h" not in args:
        from kuma_dns.early import start_early

        start_early(args, os.environ)  # mesh names answered from the last table while we start (issue 16)
        from kuma_dp.envoy._binary import start_early_probe

        start_early_probe(guess_binary_path(args, os.environ))
    kw = parse_run_args(args)
    if kw is not None:
        from kuma_dp.commands.run import FlagError, run_with_flags

        try:
            run_with_flags(kw)  # exits
        except FlagError:
            pass  # nothing started yet: click reads the command line again and says what is wrong
    from kuma_dp.commands.root import cli

    cli(prog_name="kuma-dp")
