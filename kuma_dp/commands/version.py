"""`kuma-dp version`: our build and the Envoy this host would run (found like `kuma-dp run` finds it)."""

from __future__ import annotations

import click


@click.command("version")
@click.option("-a", "--detailed", is_flag=True, help="Print detailed version (git commit, build date).")
@click.option(
    "--binary-path",
    default="envoy",
    envvar="KUMA_DATAPLANE_RUNTIME_BINARY_PATH",
    show_default=True,
    help="Envoy binary to report on (as in `kuma-dp run`).",
)
def version(detailed: bool, binary_path: str) -> None:
    """Print the version of kuma-dp and of the Envoy binary it would run."""
    from kuma_dp.envoy import EnvoyNotFoundError, EnvoyVersionError, envoy_version, find_envoy
    from kuma_dp.versions import build_info, expected_envoy_version

    info = build_info()
    if detailed:
        click.echo("Product:       kuma-dp-py")
        click.echo(f"Version:       {info['version']}")
        click.echo(f"Git Tag:       {info['gitTag']}")
        click.echo(f"Git Commit:    {info['gitCommit']}")
        click.echo(f"Build Date:    {info['buildDate']}")
    else:
        click.echo(f"kuma-dp: {info['version']}")
    try:
        path = find_envoy(binary_path)
        ev = envoy_version(path)
    except (EnvoyNotFoundError, EnvoyVersionError) as exc:
        click.echo(f"Envoy: not available ({exc})")
        return
    compat = "compatible" if ev.kuma_dp_compatible else f"not the expected ~{expected_envoy_version()}"
    click.echo(f"Envoy: {ev.version} ({ev.build}) at {path}, {compat}")
