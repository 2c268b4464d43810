"""`kuma-dp dev-cp` driven as a user would: with `kuma-dp run` (real Envoy), token auth on the ADS stream,
bad input, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kuma_dp_dev.harness.localmesh import wait_until
from kuma_dp_dev.harness.ports import free_port
from kuma_dp_dev.harness.procs import stop
from tests.helpers.fake_cp import make_token

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KUMA_DP = [sys.executable, "-m", "kuma_dp"]


def _dataplane(name: str, admin: int) -> str:
    return json.dumps(
        {
            "type": "Dataplane",
            "mesh": "default",
            "name": name,
            "networking": {
                "address": "127.0.0.1",
                "inbound": [
                    {"port": free_port(), "servicePort": free_port(), "tags": {"kuma.io/service": "b"}}
                ],
                "admin": {"port": admin},
            },
        }
    )


class DevCp:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.log = tmp / "dev-cp.log"
        ready = tmp / "ready.json"
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [*KUMA_DP, "dev-cp", "--port", "0", "--ready-file", str(ready), *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        info = wait_until(lambda: ready.exists() and json.loads(ready.read_text()), 20, what="dev-cp ready")
        self.url = info["url"]

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in reversed(started):
        stop(proc, grace=15)


def _run(tmp: Path, cp: DevCp, name: str, envoy: str, token: str | None) -> subprocess.Popen[bytes]:
    workdir = tmp / name
    workdir.mkdir()
    argv = [*KUMA_DP, "run", "--cp-address", cp.url, "--dataplane", _dataplane(name, free_port()),
            "--binary-path", envoy, "--work-dir", str(workdir), "--drain-time", "1s"]  # fmt: skip
    if token is not None:
        argv += ["--dataplane-token", token]
    env = {**os.environ, "KUMA_READINESS_PORT": str(free_port()), "KUMA_DNS_PROXY_PORT": str(free_port())}
    with open(tmp / f"{name}.log", "wb") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)


def test_token_is_checked_on_the_ads_stream(short_tmp: Path, envoy_binary: str, procs: list) -> None:
    right, wrong = make_token({"Name": "right"}), make_token({"Name": "wrong"})
    token_file = short_tmp / "token"
    token_file.write_text(right + "\n")
    token_file.chmod(0o600)
    cp = DevCp(short_tmp, "--auth-token-file", str(token_file))
    procs.append(cp.proc)

    # No token at all: refused at /bootstrap already (422), which kuma-dp treats as fatal.
    missing = _run(short_tmp, cp, "no-token", envoy_binary, None)
    procs.append(missing)
    assert missing.wait(60) == 1
    assert "Dataplane Token is required" in (short_tmp / "no-token.log").read_text()

    # A wrong token passes /bootstrap (kuma-cp does not validate it there) and is refused on the stream.
    bad = _run(short_tmp, cp, "intruder", envoy_binary, wrong)
    procs.append(bad)
    wait_until(lambda: "xds stream refused" in cp.text(), 40, what="the refusal in the dev-cp log")
    assert "dataplane registered node=default.intruder" not in cp.text()

    good = _run(short_tmp, cp, "member", envoy_binary, right)
    procs.append(good)
    wait_until(lambda: "dataplane registered node=default.member" in cp.text(), 40, what="registration")
    assert right not in cp.text() and wrong not in cp.text()  # tokens are never logged

    # Ctrl-C: the CP stops cleanly and says so.
    cp.proc.send_signal(signal.SIGINT)
    assert cp.proc.wait(15) == 0
    assert "shutting down the dev control plane" in cp.text()


def test_bad_state_file_is_one_clear_line(tmp_path: Path) -> None:
    state = tmp_path / "state.yaml"
    state.write_text("dataplanes:\n  - {name: x, networking: {inbound: []}}\n")
    done = subprocess.run(
        [*KUMA_DP, "dev-cp", "--state", str(state)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["Error: dataplanes[0]: networking.address: can't be empty"], (
        done.stderr
    )
    missing = subprocess.run(
        [*KUMA_DP, "dev-cp", "--state", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 1 and "cannot read the file" in missing.stderr


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = subprocess.run(
            [*KUMA_DP, "dev-cp", "--port", str(port)], capture_output=True, text=True, timeout=30
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr


def test_wildcard_address_tells_each_proxy_the_host_it_used(tmp_path: Path, procs: list) -> None:
    import httpx
    import yaml

    cp = DevCp(tmp_path, "--address", "0.0.0.0")
    procs.append(cp.proc)
    port = cp.url.rsplit(":", 1)[1]
    resource = json.loads(_dataplane("wild", free_port()))
    body = {"mesh": "default", "name": "wild", "dataplaneResource": json.dumps(resource), "workdir": "/tmp"}
    resp = httpx.post(f"http://127.0.0.1:{port}/bootstrap", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    clusters = yaml.safe_load(resp.text)["staticResources"]["clusters"]
    ads = next(c for c in clusters if c["name"] == "ads_cluster")
    address = ads["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"]
    assert address == {"address": "127.0.0.1", "portValue": int(port)}
