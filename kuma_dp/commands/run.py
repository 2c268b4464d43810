"""`kuma-dp run`: configuration -> Dataplane -> token -> bootstrap -> the agent (Envoy and friends).

The order and the error texts follow Kuma's `app/kuma-dp/cmd/run.go`: validate the configuration, render
the Dataplane template, prepare the work dir, store and check the token, read the CA, ask Envoy for its
version, fetch the bootstrap (retrying within the budget), write `<workdir>/bootstrap.yaml`, exec Envoy
(`kuma_dp.launch`) and hand over to `kuma_dp.agent.run_agent`, which adopts it and starts the rest beside it.
Every failure is one line on stderr and exit status 1.

Start-up cost is what a user feels on every rollout (bench/startup.py), so nothing before Envoy's exec loads
click (kuma_dp/cli.py reads a well-formed command line itself), asyncio (the first bootstrap request is
blocking; only retries run on an event loop) or the agent's components.

Flags mirror Go's pflag: booleans accept `--flag`, `--flag=true|false`; durations are Go durations
(`30s`, `5m`). A set `KUMA_*` variable overrides the same flag (Kuma's precedence). Flags, variables and
defaults all come from the settings table (`kuma_dp.config.SETTINGS`, listed in docs/settings.md).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kuma_dp.config import (
    SETTINGS,
    ConfigError,
    EnvError,
    RunConfig,
    Setting,
    effective_config,
    load_config,
    set_path,
    validate,
)
from kuma_dp.goparse import go_path_error

if TYPE_CHECKING:
    from collections.abc import Callable

    import click

log = logging.getLogger(__name__)


class RunError(Exception):
    """A start-up failure; str() is the one-line message printed after `Error: `."""


#: The settings `kuma-dp run` takes as flags, in `--help` order.
FLAG_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.flags)


def config_from_flags(kw: dict[str, Any]) -> RunConfig:
    """RunConfig from the parsed flags (Kuma defaults where a flag is absent); env is applied later."""
    from kuma_dp.dataplane import parse_vars

    cfg = RunConfig()
    for s in FLAG_SETTINGS:
        value = kw[s.param]
        if s.kind == "vars":
            value = parse_vars(value)
        elif s.kind == "list":
            value = list(value)
        set_path(cfg, s.path, value)
    return cfg


def _setup_logging(cfg: RunConfig) -> None:
    try:
        from kuma_dp import logs
    except ImportError:
        logging.basicConfig(level=logging.DEBUG if cfg.log.level == "debug" else logging.INFO)
        return
    logs.setup_logging(
        cfg.log.level,
        cfg.log.output_path or None,
        cfg.log.max_size,
        cfg.log.max_retained_files,
        cfg.log.max_age,
        cfg.log.format,
    )


def prepare_work_dir(cfg: RunConfig) -> tuple[Path, bool]:
    """The work dir (created 0711) and whether it is a temp dir we must remove on exit."""
    rt = cfg.dataplane_runtime
    if rt.work_dir:
        path = Path(rt.work_dir)
        try:
            path.mkdir(mode=0o711, parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"could not create the work dir {path}: {exc.strerror}; fix --work-dir") from None
        _warn_if_shared(path)
        return path, False
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="kuma-dp-"))
    os.chmod(path, 0o711)
    rt.work_dir = str(path)
    log.info("generated configurations will be stored in a temporary directory dir=%s", path)
    return path, True


def _warn_if_shared(path: Path) -> None:
    """One warning when other users can write into the work dir: they could plant files where the agent
    and Envoy expect theirs (the access-log FIFO, the DNS table, sockets). The agent replaces or refuses what
    it does not own, but a private directory (Kuma's temp dir is 0711) is the real fix."""
    try:
        st = path.stat()
    except OSError:
        return
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        log.warning(
            "the work dir %s is writable by other users or owned by uid %d; use a directory only kuma-dp's "
            "user can write to (--work-dir), as the default temporary one is",
            path,
            st.st_uid,
        )


def _read_ca(cfg: RunConfig) -> None:
    cp = cfg.control_plane
    if not cp.ca_cert and cp.ca_cert_file:
        try:
            cp.ca_cert = Path(cp.ca_cert_file).read_text()
        except OSError as exc:
            reason = go_path_error("open", cp.ca_cert_file, exc)  # Kuma: errors.Wrapf(os.ReadFile error)
            raise RunError(f"could not read certificate file {cp.ca_cert_file}: {reason}") from None


class _EnvoyProbe:
    """`envoy --version` (kuma_dp.envoy.start_version_probe), started early so it overlaps the rest of the
    start-up; errors surface when the result is taken, in Kuma's order (after the token and CA checks)."""

    def __init__(self, cfg: RunConfig) -> None:
        from kuma_dp.envoy import EnvoyNotFoundError, find_envoy, start_version_probe

        self.binary: str | None = None
        self.error: str | None = None
        self.probe: Any = None
        self.taken = False
        try:
            self.binary = str(find_envoy(cfg.dataplane_runtime.binary_path))
        except EnvoyNotFoundError as exc:
            self.error = str(exc)
            return
        self.probe = start_version_probe(self.binary)

    def result(self) -> tuple[str, dict[str, Any]]:
        from kuma_dp.envoy import EnvoyVersionError
        from kuma_dp.versions import expected_envoy_version

        self.taken = True
        if self.error is not None or self.probe is None or self.binary is None:
            raise RunError(self.error or "could not find envoy executable")
        try:
            ev = self.probe.result()
        except EnvoyVersionError as exc:
            raise RunError(str(exc)) from None
        if not ev.kuma_dp_compatible:
            expected = expected_envoy_version()
            log.info("Envoy version incompatible expected=%s current=%s", expected, ev.version)
        log.info("fetched Envoy version version=%s build=%s", ev.version, ev.build)
        info = {"version": ev.version, "build": ev.build, "kumaDpCompatible": ev.kuma_dp_compatible}
        return self.binary, info

    def abandon(self) -> None:
        """Reap the probe when start-up failed before its result was taken (no zombie left behind)."""
        if self.probe is not None and not self.taken:
            try:
                self.probe.result()
            except Exception:
                pass


def _local_bootstrap(cfg: RunConfig, request: dict[str, Any]) -> bytes:
    from urllib.parse import urlsplit

    from kuma_dp.bootstrap.render import RenderError, RenderParams, dump_yaml, render_bootstrap

    parts = urlsplit(cfg.control_plane.url)
    https = parts.scheme == "https"
    try:
        port = parts.port  # validation runs Go's url.Parse, which leaves the port's range to the dialer
    except ValueError as exc:
        raise RunError(f"invalid --cp-address {cfg.control_plane.url!r}: {exc}; fix the port") from None
    params = RenderParams(
        xds_host=parts.hostname or "localhost",
        xds_port=port or (5678 if https else 80),
        xds_tls=https,
        ca_cert_pem=cfg.control_plane.ca_cert or None,
    )
    try:
        return dump_yaml(render_bootstrap(request, params)).encode()
    except RenderError as exc:
        raise RunError(f"could not render the bootstrap locally (--bootstrap-source local): {exc}") from None


class _FetchRecord:
    """The bootstrap fetch's attempts and duration, kept until the agent metrics exist.

    The metrics live in prometheus_client, whose import costs tens of milliseconds; the fetch is on the
    path to Envoy's exec and the metrics are not served before the agent runs, so the numbers wait here
    and `replay` hands them over once Envoy is running.
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[bool, float]] = []
        self.began = self.ended = 0.0

    def attempt(self, ok: bool, seconds: float) -> None:
        self.attempts.append((ok, seconds))

    def replay(self) -> None:
        from kuma_dp.metrics import agent_metrics

        metrics = agent_metrics()
        for ok, seconds in self.attempts:
            metrics.bootstrap_attempt(ok, seconds)
        if self.ended:
            metrics.phase_done("bootstrap", since=self.began, until=self.ended)


class _Interrupted(Exception):
    """SIGINT/SIGTERM during the blocking first bootstrap request."""


class _StartSignals:
    """SIGINT/SIGTERM before the agent exists (no event loop yet): remembered, never left to their default
    action, which would kill us with the temp work dir left behind.

    While the blocking first bootstrap request runs (`interrupting`), a signal also aborts it, as a
    cancelled fetch: "context canceled", exit 1. Once the bootstrap is in, a signal stops the start before
    Envoy's spawn (exit 0), or, arriving after the spawn, reaches the agent (`Launched.signals`), which
    drains and stops as for any signal. The retry loop's event loop takes the signals over while it runs
    and hands them back (`install`) before it closes.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self.interrupting = False
        self.install()

    def install(self, before: Callable[[], None] | None = None) -> None:
        """Our handlers, with the two signals blocked meanwhile, so that one arriving during the switch (from
        the event loop's handlers, `before`) is held and then delivered to ours, never to the default."""
        import signal

        sigs = {signal.SIGINT, signal.SIGTERM}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
        try:
            if before is not None:
                before()
            for sig in sigs:
                signal.signal(sig, self._on_signal)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _on_signal(self, sig: int, frame: object) -> None:
        self.received.append(sig)
        if self.interrupting:
            self.interrupting = False
            raise _Interrupted


async def _fetch_cancellable(
    cfg: RunConfig, request: dict[str, Any], record: _FetchRecord, first: Any, signals: _StartSignals
) -> Any:
    """fetch_bootstrap going on from a failed first attempt, cancelled by SIGINT/SIGTERM."""
    import asyncio
    import signal

    from kuma_dp.bootstrap.client import fetch_bootstrap

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(
        fetch_bootstrap(
            cfg, request, on_attempt=record.attempt, prior_failure=first.failure, started=first.started
        )
    )
    signalled: list[int] = []

    def on_signal(sig: int) -> None:
        # Remembered as well as cancelling: a signal that lands while the last step of the fetch runs
        # (the task can no longer be cancelled) must still stop us before Envoy starts.
        signalled.append(sig)
        task.cancel()

    sigs = (signal.SIGINT, signal.SIGTERM)
    for sig in sigs:
        loop.add_signal_handler(sig, on_signal, sig)
    for sig in signals.received:  # one that came while the event loop was being set up
        on_signal(sig)
    try:
        result = await task
        if signalled:
            raise asyncio.CancelledError
        return result
    except asyncio.CancelledError:
        raise RunError("Failed to fetch Envoy bootstrap config. context canceled") from None
    finally:

        def hand_back() -> None:
            for sig in sigs:
                loop.remove_signal_handler(sig)

        signals.install(before=hand_back)


#: What the path from the bootstrap answer to Envoy's exec imports: the YAML parser (the bootstrap is
#: checked before it is written; nothing else has loaded it when no Dataplane template was given, as on
#: Kubernetes) and the launch modules.
_AFTER_THE_ANSWER = (
    "yaml",
    "kuma_dp.envoy._admin",
    "kuma_dp.launch",
    "kuma_dp.envoy._spawn",
    "kuma_dp.paths",
)


def _prefetch(modules: tuple[str, ...]) -> None:
    """Import `modules` in a daemon thread while the main thread waits for the control plane's answer (the
    blocking socket read releases the GIL): the round trip is idle time on the start-up's critical path.
    The main thread's own import of any of them waits for this one (import locks), never repeats it."""
    import importlib
    import threading

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:
                return  # the main thread's own import reports it

    threading.Thread(target=run, name="kuma-dp-prefetch", daemon=True).start()


def _fetch(cfg: RunConfig, request: dict[str, Any], record: _FetchRecord, signals: _StartSignals) -> Any:
    """The bootstrap from the control plane: one blocking attempt, and only if it fails retryably, the
    retry loop on an event loop (kuma_dp.bootstrap.client)."""
    import time

    from kuma_dp.bootstrap.client import FETCH_FAILED_PREFIX, BootstrapError, first_attempt_blocking

    record.began = time.monotonic()
    _prefetch(_AFTER_THE_ANSWER)
    try:
        signals.interrupting = True
        try:
            first = first_attempt_blocking(cfg, request, on_attempt=record.attempt)
        finally:
            signals.interrupting = False
        if signals.received:
            raise _Interrupted
        if first.result is not None:
            result = first.result
        else:
            import asyncio

            result = asyncio.run(_fetch_cancellable(cfg, request, record, first, signals))
    except _Interrupted:
        raise RunError(f"{FETCH_FAILED_PREFIX} context canceled") from None
    except BootstrapError as exc:
        raise RunError(f"{FETCH_FAILED_PREFIX} {exc}") from None
    record.ended = time.monotonic()
    return result


def _start(cfg: RunConfig, request: dict[str, Any], work_dir: Path, envoy_binary: str) -> int:
    """Bootstrap, Envoy's exec, then the agent on its event loop."""
    from kuma_dp import starttrace
    from kuma_dp.bootstrap.client import BootstrapResult, write_bootstrap

    signals = _StartSignals()
    record = _FetchRecord()
    if cfg.bootstrap_source == "local":
        result = BootstrapResult(bootstrap_yaml=_local_bootstrap(cfg, request))
        log.info("rendered bootstrap configuration locally")
    else:
        log.info("generating bootstrap configuration cp=%s", cfg.control_plane.url)
        starttrace.mark("bootstrap_sent")
        result = _fetch(cfg, request, record, signals)
        log.info("received bootstrap configuration")
    starttrace.mark("bootstrap_answered")
    path = write_bootstrap(work_dir, result)
    starttrace.mark("bootstrap_written")
    if signals.received:
        log.info("received a signal before Envoy was started: stopping")
        return 0
    log.info("starting Kuma DP version=%s", request["version"]["kumaDp"].get("version", ""))
    launched = _launch(cfg, path, result, envoy_binary)
    if launched is None:
        return 1
    launched.signals = signals.received  # one arriving before the agent's own handlers reaches it
    import asyncio

    return asyncio.run(_agent(cfg, path, result, envoy_binary, launched, record))


async def _agent(
    cfg: RunConfig, path: Path, result: Any, envoy_binary: str, launched: Any, record: _FetchRecord
) -> int:
    try:
        from kuma_dp.agent import run_agent  # the other components are imported and started beside Envoy

        record.replay()
    except BaseException:
        launched.abort()
        raise
    return await run_agent(
        cfg, path, envoy_binary=envoy_binary, sidecar_config=result.sidecar_config, launched=launched
    )


def _launch(cfg: RunConfig, path: Path, result: Any, envoy_binary: str) -> Any:
    """Envoy spawned now (kuma_dp.launch), or None after one error line (readiness port taken, no admin
    address, Envoy not executable): the same errors and exit code the agent gives when it spawns Envoy."""
    from kuma_dp.envoy import AdminError, EnvoyNotFoundError, load_bootstrap
    from kuma_dp.launch import ReadinessPortError, launch_envoy

    try:
        document = result.document if result.document is not None else load_bootstrap(path)
        return launch_envoy(
            cfg, path, document, envoy_binary=envoy_binary, sidecar_config=result.sidecar_config
        )
    except (ReadinessPortError, EnvoyNotFoundError, AdminError, OSError) as exc:
        log.error("%s", exc)
        return None


def execute(cfg: RunConfig) -> int:
    """Everything after flag parsing; returns the exit code, raises RunError for a one-line failure."""
    from kuma_dp import starttrace

    try:
        load_config(cfg, os.environ)
    except (EnvError, ConfigError) as exc:
        raise RunError(str(exc)) from None
    rt = cfg.dataplane_runtime
    starttrace.enable(rt.startup_trace)
    starttrace.mark("settings")
    # `envoy --version` takes tens of milliseconds: it runs while the rest of the start-up is checked and
    # imported; its answer (or error) is taken where Kuma asks for it, after the token and the CA.
    probe = _EnvoyProbe(cfg)
    try:
        return _execute(cfg, probe)
    finally:
        probe.abandon()


def _execute(cfg: RunConfig, probe: _EnvoyProbe) -> int:
    import json

    from kuma_dp import starttrace
    from kuma_dp.dataplane import (
        NAME_MESH_WITH_RESOURCE,
        PROXY_RESOURCE_TYPES,
        DataplaneError,
        load_dataplane,
    )
    from kuma_dp.token import TokenError, resolve_token

    rt = cfg.dataplane_runtime
    if rt.token:
        try:
            from kuma_dp import logs

            logs.add_secret(rt.token)
        except ImportError:
            pass
    try:
        validate(cfg)
    except ConfigError as exc:  # `configuration validation failed: ...`, Kuma's text (pkg/config/loader.go)
        raise RunError(str(exc)) from None
    log.info("effective configuration config=%s", json.dumps(effective_config(cfg), sort_keys=True))
    if cfg.dataplane.proxy_type not in PROXY_RESOURCE_TYPES:
        raise RunError(f'invalid proxy type "{cfg.dataplane.proxy_type}"')
    if not rt.envoy_log_level:
        rt.envoy_log_level = cfg.log.level
    try:
        resource = load_dataplane(
            rt.resource, rt.resource_path, rt.resource_vars, proxy_type=cfg.dataplane.proxy_type
        )
    except DataplaneError as exc:
        raise RunError(str(exc)) from None
    if resource is not None:
        if cfg.dataplane.name or cfg.dataplane.mesh:
            raise RunError(NAME_MESH_WITH_RESOURCE)
        cfg.dataplane.mesh, cfg.dataplane.name = resource.mesh, resource.name

    work_dir, is_temp = prepare_work_dir(cfg)
    try:
        if not cfg.dns.config_dir:
            cfg.dns.config_dir = str(work_dir)
        try:
            token = resolve_token(rt.token, rt.token_path, work_dir, cfg.dataplane.name)
        except TokenError as exc:
            raise RunError(str(exc)) from None
        if token is not None:
            rt.token_path = token.path
        _read_ca(cfg)
        from kuma_dp.bootstrap.client import (
            FatalBootstrapError,
            build_request,
            host_has_ipv6,
            params_from_config,
            system_ca_bundle,
            transparent_proxy_dataplane_config,
        )

        envoy_binary, envoy_info = probe.result()
        starttrace.mark("envoy_version")
        if rt.ipv6_enabled and not host_has_ipv6():
            rt.ipv6_enabled = False
        if not rt.system_ca_path:
            rt.system_ca_path = system_ca_bundle()
        metadata: dict[str, str] = {}
        if cfg.host_ip:
            metadata["HOST_IP"] = cfg.host_ip
        try:
            dataplane_config = transparent_proxy_dataplane_config(cfg)
        except FatalBootstrapError as exc:
            raise RunError(str(exc)) from None
        params = params_from_config(
            cfg,
            dataplane=resource,
            token=token.value if token else "",
            token_path=token.path if token else "",
            envoy_version=envoy_info,
            workdir=str(work_dir),
            dynamic_metadata=metadata,
            dataplane_config=dataplane_config,
        )
        from kuma_dp.otel import discover  # run.go: otelenv.Discover, sent as otelEnv in every request

        params.otel_env = discover(rt.otel_pipe_enabled).inventory
        request = build_request(params)
        starttrace.mark("config")  # settings, Dataplane, token, CA, Envoy's version: the request is built
        return _start(cfg, request, work_dir, envoy_binary)
    finally:
        if is_temp:
            import shutil

            shutil.rmtree(work_dir, ignore_errors=True)


class FlagError(ValueError):
    """A flag value that parsed but cannot be used (a malformed --dataplane-var, a log file that cannot be
    opened): click's usage error (exit 2) on the command line."""


def run_with_flags(kw: dict[str, Any]) -> None:
    """`kuma-dp run` once its flags are parsed (by click, or by kuma_dp.commands.pflag): exits the process.

    Raises FlagError before anything has started when a flag's value cannot be used.
    """
    from kuma_dp import starttrace
    from kuma_dp.dataplane import DataplaneError

    starttrace.mark("imports")  # flags parsed: what `kuma-dp run` needs to go on is loaded

    try:
        cfg = config_from_flags(kw)
    except DataplaneError as exc:  # a malformed --dataplane-var
        raise FlagError(str(exc)) from None
    try:
        _setup_logging(cfg)
    except ValueError as exc:
        raise FlagError(str(exc)) from None
    try:
        code = execute(cfg)
    except RunError as exc:
        log.debug("start-up failed", exc_info=False)
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(code)


def _run(**kw: Any) -> None:
    import click

    try:
        run_with_flags(kw)
    except FlagError as exc:
        raise click.UsageError(str(exc)) from None


def _build_command() -> click.Command:
    import click

    from kuma_dp.commands.goflags import GoCommand, setting_option

    func: Any = _run
    for s in reversed(FLAG_SETTINGS):
        func = setting_option(s)(func)
    return click.command(
        "run",
        cls=GoCommand,
        short_help="Launch Dataplane (Envoy)",
        help="Launch Dataplane (Envoy): fetch the bootstrap from the Control Plane and supervise Envoy.",
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    )(func)


_command: click.Command | None = None


def __getattr__(name: str) -> Any:
    """`run`, the click command, built on first use: the fast start (kuma_dp/cli.py) never needs it."""
    global _command
    if name != "run":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _command is None:
        _command = _build_command()
    return _command
