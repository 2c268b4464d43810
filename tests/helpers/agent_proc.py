"""One way to run the agent as a subprocess in a test: `kuma-dp run`, or the static-bootstrap harness
(kuma_dp_dev/harness/static_agent.py, the same `run_agent` with no control plane).

Output (stdout and stderr) goes to a log file that a failing assertion shows; every wait is a poll with a
deadline that fails at once, with the log, when the process exits first; cleanup stops the process with
SIGTERM and a grace period (kuma_dp_dev.harness.procs.stop), then kills any child it left (Envoy).

    with kuma_dp_run(["--cp-address", cp.url, ...], log=tmp / "kuma-dp.log") as agent:
        agent.wait_ready()
        assert agent.stop_draining() == 0

or, for several per test, the `agents` fixture (tests/conftest.py): `agents.add(kuma_dp_run(...)).start()`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
import psutil

from kuma_dp_dev.harness.poll import wait_until
from kuma_dp_dev.harness.ports import free_port
from kuma_dp_dev.harness.procs import stop

REPO = Path(__file__).resolve().parents[2]
KUMA_DP = (sys.executable, "-m", "kuma_dp")
STATIC_AGENT = (sys.executable, "-m", "kuma_dp_dev.harness.static_agent")
#: Cleanup only: long enough for a 1 s drain and Envoy's exit, short enough that a 300 s drain is cut.
CLEANUP_GRACE = 3.0

T = TypeVar("T")


class AgentProcess:
    """An agent subprocess with its output in `log`; a context manager that always cleans it up."""

    def __init__(
        self,
        argv: list[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        inherit_env: bool = True,
        cwd: str | Path = REPO,
        readiness_port: int | None = None,
        **popen: Any,
    ) -> None:
        self.argv = argv
        self.log = log
        #: Added on top of this process's environment, or the whole environment without `inherit_env`.
        self.env = {**os.environ, **(env or {})} if inherit_env else dict(env or {})
        self.cwd = cwd
        self.readiness_port = readiness_port
        self.popen = popen
        self._proc: subprocess.Popen[bytes] | None = None

    # -- life cycle -----------------------------------------------------------------------------------------

    def start(self, stdin: bytes | None = None) -> AgentProcess:
        """Start it; `stdin` bytes are written to its standard input and closed."""
        with self.log.open("wb") as out:
            self._proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                **self.popen,
            )
        if stdin is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.write(stdin)
            self._proc.stdin.close()
        return self

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None, "the agent was not started"
        return self._proc

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        """The exit code once it exits by itself."""
        return self.proc.wait(timeout)

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, SIGKILL after `grace` seconds, then kill any child left behind; the exit code."""
        if self._proc is None:
            return 0
        # Only while it runs: the pid of a reaped process may belong to someone else by now.
        children = self._children() if self._proc.poll() is None else []
        stop(self._proc, grace)
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        return self._proc.wait()

    def close(self) -> None:
        """Cleanup: safe whatever state the process is in, and to call twice."""
        if self._proc is not None:
            self.stop(CLEANUP_GRACE)

    def __enter__(self) -> AgentProcess:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    # -- waiting --------------------------------------------------------------------------------------------

    def wait_for(self, check: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll `check` until truthy (an exception from it means "not yet", as in harness.poll); fails, with
        the log, on the deadline or as soon as the agent exits without the condition holding."""
        exited = object()

        def attempt() -> object:
            alive = self.running  # looked at first: a condition that held just before the exit counts
            try:
                value = check()
            except Exception:
                if alive:
                    raise
                value = None
            return value or (None if alive else exited)

        try:
            value = wait_until(attempt, timeout, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}:\n{self.output()}") from None
        if value is exited:
            raise AssertionError(f"exited with {self.proc.returncode} before {what}:\n{self.output()}")
        return value  # type: ignore[return-value]

    def wait_log(self, text: str, timeout: float = 30) -> None:
        """Until `text` is in the log."""
        self.wait_for(lambda: text in self.output(), timeout, f"{text!r} in the log")

    def ready(self) -> httpx.Response:
        """GET /ready on the readiness port."""
        assert self.readiness_port, "no readiness port known for this agent"
        return httpx.get(f"http://127.0.0.1:{self.readiness_port}/ready", timeout=2)

    def ready_status(self) -> httpx.Response | None:
        """/ready's answer, or None while nothing listens yet."""
        try:
            return self.ready()
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout: float = 60) -> httpx.Response:
        """Until /ready answers 200; returns that answer."""

        def ok() -> httpx.Response | None:
            resp = self.ready_status()
            return resp if resp is not None and resp.status_code == 200 else None

        return self.wait_for(ok, timeout, "/ready to answer 200")

    def stop_draining(self, timeout: float = 30) -> int:
        """SIGTERM, and once the agent took it (/ready says TERMINATING), a second SIGTERM that ends the
        drain wait; the exit code."""

        def took_it() -> bool:
            if not self.running:
                return True
            resp = self.ready_status()
            return resp is not None and resp.text == "TERMINATING"

        self.signal(signal.SIGTERM)
        wait_until(took_it, 10, "the agent to take SIGTERM (/ready says TERMINATING)")
        if self.running:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def envoy(self, timeout: float = 30) -> psutil.Process:
        """The Envoy child, once there is one."""

        def find() -> psutil.Process | None:
            kids = [p for p in psutil.Process(self.proc.pid).children() if p.name() == "envoy"]
            assert len(kids) <= 1, self.output()
            return kids[0] if kids else None

        return self.wait_for(find, timeout, "Envoy to start")


def gone(proc: psutil.Process, timeout: float) -> bool:
    """Whether the process is dead within `timeout` seconds; a zombie counts (whoever inherited it reaps
    it, not us)."""

    def dead() -> bool:
        try:
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    try:
        return wait_until(dead, timeout, f"pid {proc.pid} to exit")
    except TimeoutError:
        return False


def envoy_server_info(admin_port: int) -> dict[str, Any] | None:
    """Envoy's admin /server_info on loopback, or None while it does not answer yet."""
    try:
        info: dict[str, Any] = httpx.get(f"http://127.0.0.1:{admin_port}/server_info", timeout=2).json()
        return info
    except (httpx.TransportError, ValueError):
        return None


def kuma_dp_run(
    args: Iterable[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    readiness_port: int | None = None,
    **popen: Any,
) -> AgentProcess:
    """`kuma-dp run ARGS` (not started), with KUMA_READINESS_PORT set to a free port unless given."""
    port = free_port() if readiness_port is None else readiness_port
    env = {"KUMA_READINESS_PORT": str(port), **(env or {})}
    return AgentProcess([*KUMA_DP, "run", *args], log, env=env, readiness_port=port, **popen)


def start_dev_cp(agents: Agents, log: Path, *args: str) -> tuple[AgentProcess, dict[str, Any]]:
    """`kuma-dp dev-cp --port 0 ARGS`, started and cleaned up with the test's agents; returns it and what its
    ready file says (url, port) once it serves."""
    ready = log.with_name(log.stem + ".ready.json")
    cp = agents.add(AgentProcess([*KUMA_DP, "dev-cp", "--port", "0", "--ready-file", str(ready), *args], log))
    cp.start()
    info: dict[str, Any] = cp.wait_for(
        lambda: ready.exists() and json.loads(ready.read_text()), 20, "the dev CP's ready file"
    )
    return cp, info


class Agents:
    """The agents a test started; the `agents` fixture closes them all, whatever happened."""

    def __init__(self) -> None:
        self.started: list[AgentProcess] = []

    def add(self, agent: AgentProcess) -> AgentProcess:
        self.started.append(agent)
        return agent

    def close(self) -> None:
        for agent in reversed(self.started):
            agent.close()
