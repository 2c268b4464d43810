"""Container images as the pod runtime runs them: no image exists here, so each image Kuma's injector names is
mapped to the same entrypoint, environment and paths inside this repository's virtualenv.

The mapping mirrors `packaging/docker/*.Dockerfile` (a unit test keeps the two in step): the kuma-init image
has `/usr/bin/kumactl` and `/usr/bin/kuma-init` and runs `kuma-init-entrypoint`; the sidecar image's
entrypoint is `kuma-dp` and its environment names the Envoy binary. Any other image is an application: with
no command it runs `kuma_dp_dev.pods.app` serving the pod's probe targets; with a command, the command runs
from the host's PATH (`sh -c ...`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT_SCRIPT = REPO / "packaging" / "docker" / "kuma-init-entrypoint.sh"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Image:
    """What an image contributes: ENTRYPOINT, ENV, and its executables mapped to files here."""

    kind: str
    entrypoint: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    #: Lines the image adds to /etc files (`passwd`, `group`): both images have the kuma-dp user, uid 5678,
    #: which the installer looks up when no --kuma-dp-user is given (as Kuma's does).
    etc: dict[str, tuple[str, ...]] = field(default_factory=dict)


KUMA_DP_USER = {
    "passwd": ("kuma-dp:x:5678:5678::/nonexistent:/usr/sbin/nologin",),
    "group": ("kuma-dp:x:5678:",),
}


def _bin(venv_bin: Path, name: str) -> str:
    return str(venv_bin / name)


def image_for(ref: str, venv_bin: Path, envoy: str) -> Image:
    """The image `ref` (`kuma/kuma-init:latest`, `busybox`, ...) as run from `venv_bin`."""
    repo = ref.rsplit("@", 1)[0]
    name = repo.rsplit("/", 1)[-1].split(":", 1)[0]
    path_env = f"{venv_bin}:{SYSTEM_PATH}"
    if name == "kuma-init":
        return Image(
            "kuma-init",
            entrypoint=("/usr/local/bin/kuma-init-entrypoint",),
            env={
                "PATH": path_env,
                "XTABLES_LOCKFILE": "/tmp/xtables.lock",
                "KUMA_INIT_BIN": _bin(venv_bin, "kuma-init"),
            },
            paths={
                "/usr/local/bin/kuma-init-entrypoint": str(ENTRYPOINT_SCRIPT),
                "/usr/bin/kumactl": _bin(venv_bin, "kumactl"),
                "/usr/bin/kuma-init": _bin(venv_bin, "kuma-init"),
                "/opt/kuma-dp/bin/kumactl": _bin(venv_bin, "kumactl"),
                "/opt/kuma-dp/bin/kuma-init": _bin(venv_bin, "kuma-init"),
            },
            etc=KUMA_DP_USER,
        )
    if name in ("kuma-sidecar", "kuma-dp"):
        return Image(
            "kuma-sidecar",
            entrypoint=("/opt/kuma-dp/bin/kuma-dp",),
            env={"PATH": path_env, "KUMA_DATAPLANE_RUNTIME_BINARY_PATH": envoy},
            paths={
                "/opt/kuma-dp/bin/kuma-dp": _bin(venv_bin, "kuma-dp"),
                "/usr/bin/kuma-dp": _bin(venv_bin, "kuma-dp"),
                "/opt/kuma-dp/bin/envoy": envoy,
            },
            etc=KUMA_DP_USER,
        )
    return Image("app", env={"PATH": SYSTEM_PATH})


def argv_for(image: Image, command: list[str], args: list[str], app_argv: list[str]) -> list[str]:
    """Kubernetes' rule: `command` replaces ENTRYPOINT (and drops CMD), `args` follow; no command and no
    entrypoint is the application stand-in."""
    head = list(command) or list(image.entrypoint)
    if not head:
        return [*app_argv, *args]
    head[0] = image.paths.get(head[0], head[0])
    return [*head, *args]


def default_python() -> str:
    return sys.executable
