"""`kumactl`: the two sub-commands the kuma-init image needs, `install transparent-proxy` and `uninstall
transparent-proxy`, with Kuma's flags and exit codes.

Kuma's injector (pkg/plugins/runtime/k8s/webhooks/injector/injector.go in kumahq/kuma v2.14.3) runs the init
container as `/usr/bin/kumactl install transparent-proxy ARGS`, so the image must answer to that exact command
line; both sub-commands are our installer's (`iptables.cli`), mounted under Kuma's command tree. Nothing else
of kumactl is here: any other command is refused with a line that says what this binary is.
"""

from __future__ import annotations

import click

from iptables.cli import install, uninstall

_SETTINGS = {"help_option_names": ["-h", "--help"]}


@click.group("kumactl", context_settings=_SETTINGS)
def kumactl() -> None:
    """kumactl as the kuma-init image ships it: only `install|uninstall transparent-proxy`."""


@kumactl.group("install", context_settings=_SETTINGS)
def install_group() -> None:
    """Install Kuma components (here: the transparent proxy)."""


@kumactl.group("uninstall", context_settings=_SETTINGS)
def uninstall_group() -> None:
    """Uninstall Kuma components (here: the transparent proxy)."""


install_group.add_command(install, "transparent-proxy")
uninstall_group.add_command(uninstall, "transparent-proxy")


def main() -> None:
    kumactl(prog_name="kumactl")


if __name__ == "__main__":
    main()

__all__ = ["kumactl", "main"]
