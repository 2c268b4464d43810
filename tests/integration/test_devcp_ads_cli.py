"""`kuma-dp dev-cp` driven as a user would: with `kuma-dp run` (real Envoy), token auth on the ADS stream,
bad input, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kuma_dp_dev.harness.ports import free_port
from tests.helpers.agent_proc import AgentProcess, Agents, kuma_dp_run, start_dev_cp
from tests.helpers.fake_cp import make_token
from tests.helpers.resources import dataplane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KUMA_DP = [sys.executable, "-m", "kuma_dp"]


def _dataplane(name: str, admin: int) -> str:
    return json.dumps(dataplane(name, "b", free_port(), service_port=free_port(), admin_port=admin))


def _run(
    agents: Agents, tmp: Path, cp_url: str, name: str, envoy: str, token: str | None
) -> AgentProcess:
    workdir = tmp / name
    workdir.mkdir()
    args = ["--cp-address", cp_url, "--dataplane", _dataplane(name, free_port()),
            "--binary-path", envoy, "--work-dir", str(workdir), "--drain-time", "1s"]  # fmt: skip
    if token is not None:
        args += ["--dataplane-token", token]
    run = kuma_dp_run(args, tmp / f"{name}.log", env={"KUMA_DNS_PROXY_PORT": str(free_port())})
    return agents.add(run).start()


def test_token_is_checked_on_the_ads_stream(short_tmp: Path, envoy_binary: str, agents: Agents) -> None:
    right, wrong = make_token({"Name": "right"}), make_token({"Name": "wrong"})
    token_file = short_tmp / "token"
    token_file.write_text(right + "\n")
    token_file.chmod(0o600)
    cp, info = start_dev_cp(agents, short_tmp / "dev-cp.log", "--auth-token-file", str(token_file))

    # No token at all: refused at /bootstrap already (422), which kuma-dp treats as fatal.
    missing = _run(agents, short_tmp, info["url"], "no-token", envoy_binary, None)
    assert missing.wait(60) == 1
    assert "Dataplane Token is required" in missing.output()

    # A wrong token passes /bootstrap (kuma-cp does not validate it there) and is refused on the stream.
    _run(agents, short_tmp, info["url"], "intruder", envoy_binary, wrong)
    cp.wait_log("xds stream refused", 40)
    assert "dataplane registered node=default.intruder" not in cp.output()

    _run(agents, short_tmp, info["url"], "member", envoy_binary, right)
    cp.wait_log("dataplane registered node=default.member", 40)
    assert right not in cp.output() and wrong not in cp.output()  # tokens are never logged

    # Ctrl-C: the CP stops cleanly and says so.
    cp.signal(signal.SIGINT)
    assert cp.wait(15) == 0
    assert "shutting down the dev control plane" in cp.output()


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


def test_wildcard_address_tells_each_proxy_the_host_it_used(tmp_path: Path, agents: Agents) -> None:
    import httpx
    import yaml

    _, info = start_dev_cp(agents, tmp_path / "dev-cp.log", "--address", "0.0.0.0")
    port = info["url"].rsplit(":", 1)[1]
    resource = json.loads(_dataplane("wild", free_port()))
    body = {"mesh": "default", "name": "wild", "dataplaneResource": json.dumps(resource), "workdir": "/tmp"}
    resp = httpx.post(f"http://127.0.0.1:{port}/bootstrap", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    clusters = yaml.safe_load(resp.text)["staticResources"]["clusters"]
    ads = next(c for c in clusters if c["name"] == "ads_cluster")
    address = ads["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"]
    assert address == {"address": "127.0.0.1", "portValue": int(port)}
