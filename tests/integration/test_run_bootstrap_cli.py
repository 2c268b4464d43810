"""`kuma-dp run` as an operator runs it, against a stand-in `/bootstrap` (tests/helpers/fake_cp.py).

Covers registration and bootstrap through the CLI: TLS with a generated CA (accepted), a wrong
CA and an untrusted certificate (refused, clear message), the CP down at start then up (retries, success),
422 (fatal, server message shown), the retry budget exhausted (exit 1 with Kuma's message), the API-port 404
hint, and the one-line errors of bad input. Success paths run the real Envoy and wait for `/ready` 200.
"""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trustme
import yaml

from kuma_dp_dev.harness.ports import free_port
from tests.conftest import REPO
from tests.helpers.agent_proc import AgentProcess, Agents, envoy_server_info, kuma_dp_run
from tests.helpers.fake_cp import FakeCP, Reply, make_token, minimal_bootstrap_yaml

pytestmark = pytest.mark.integration

TEMPLATE = """\
type: Dataplane
mesh: default
name: {{ name }}
networking:
  address: {{ address }}
  inbound:
  - port: {{ port }}
    tags:
      kuma.io/service: web
"""

#: No DNS proxy (these tests are about the bootstrap), and quick retries.
ENV = {"KUMA_DNS_ENABLED": "false", "KUMA_CONTROL_PLANE_RETRY_BACKOFF": "100ms"}


def _start(agents: Agents, tmp: Path, args: list[str], env: dict[str, str] | None = None) -> AgentProcess:
    """One `kuma-dp run` (not started yet), cleaned up after the test; its output in tmp/kuma-dp.log."""
    return agents.add(kuma_dp_run(args, tmp / "kuma-dp.log", env={**ENV, **(env or {})}))


def _template_args(envoy_binary: str) -> list[str]:
    return [
        "--dataplane", TEMPLATE,
        "--dataplane-var", "name=dp-1,address=127.0.0.1", "-v", "port=8080",
        "--binary-path", envoy_binary, "--drain-time", "1s", "--concurrency", "1",
    ]  # fmt: skip


# -- success paths ----------------------------------------------------------------------------------------


def test_tls_with_generated_ca_registers_and_envoy_gets_ready(
    agents: Agents, tmp_path: Path, envoy_binary: str
) -> None:
    ca = trustme.CA()
    admin = free_port()
    token = make_token({"Name": "dp-1", "Mesh": "default"})
    work = tmp_path / "wd"
    bootstrap = minimal_bootstrap_yaml(admin)
    with FakeCP([Reply.bootstrap(bootstrap)], tls_ca=ca) as cp:
        pem = cp.write_ca_pem(tmp_path / "ca.pem")
        k = _start(
            agents,
            tmp_path,
            [
                "--cp-address",
                cp.url,
                "--ca-cert-file",
                str(pem),
                "--dataplane-token",
                token,
                "--work-dir",
                str(work),
                "--log-level",
                "debug",  # the token must not show up even at debug
                "--envoy-log-level",
                "info",
                *_template_args(envoy_binary),
            ],
        ).start()
        k.wait_ready()
        req = cp.requests[0]
        # on disk while running: bootstrap exactly as served, token stored under the name, both 0600
        written = work / "bootstrap.yaml"
        assert yaml.safe_load(written.read_text()) == yaml.safe_load(bootstrap)
        assert stat.S_IMODE(written.stat().st_mode) == 0o600
        assert (work / "dp-1").read_text() == token
        assert stat.S_IMODE((work / "dp-1").stat().st_mode) == 0o600
        assert k.stop_draining() == 0
    assert (req.method, req.path, req.headers["accept"]) == ("POST", "/bootstrap", "application/json")
    body = req.json
    assert (body["mesh"], body["name"], body["proxyType"]) == ("default", "dp-1", "dataplane")
    assert body["dataplaneToken"] == token and body["dataplaneTokenPath"] == str(work / "dp-1")
    assert '"address":"127.0.0.1"' in body["dataplaneResource"] and '"port":8080' in body["dataplaneResource"]
    assert body["caCert"] == pem.read_text()
    assert body["workdir"] == str(work)
    assert body["readinessPort"] == k.readiness_port
    assert body["version"]["envoy"]["build"].count("/") == 4
    assert body["features"][0] == "feature-tcp-accesslog-via-named-pipe"
    assert token not in k.output()


def test_cp_down_at_start_then_up(agents: Agents, tmp_path: Path, envoy_binary: str) -> None:
    port = free_port()
    admin = free_port()
    k = _start(
        agents,
        tmp_path,
        ["--cp-address", f"http://127.0.0.1:{port}", *_template_args(envoy_binary)],
        env={"KUMA_CONTROL_PLANE_RETRY_MAX_DURATION": "60s"},
    ).start()
    k.wait_log("request to bootstrap server failed", 30)
    with FakeCP([Reply.bootstrap(minimal_bootstrap_yaml(admin))], port=port) as cp:
        k.wait_ready()
        assert len(cp.requests) == 1
        assert k.stop_draining() == 0
    assert "could not fetch bootstrap configuration" in k.output()


def test_skip_verify_accepts_an_untrusted_cp_loudly_and_legacy_yaml_works(
    agents: Agents, tmp_path: Path, envoy_binary: str
) -> None:
    admin = free_port()
    with FakeCP([Reply.legacy_yaml(minimal_bootstrap_yaml(admin))], tls_ca=trustme.CA()) as cp:
        k = _start(
            agents, tmp_path, ["--cp-address", cp.url, "--skip-verify", *_template_args(envoy_binary)]
        ).start()
        k.wait_ready()
        assert k.stop_draining() == 0
    assert "TLS verification of the control plane is DISABLED" in k.output()


def test_template_from_stdin_and_temp_work_dir_removed(
    agents: Agents, tmp_path: Path, envoy_binary: str
) -> None:
    admin = free_port()
    with FakeCP([Reply.bootstrap(minimal_bootstrap_yaml(admin))]) as cp:
        args = ["--cp-address", cp.url, "-d", "-", "-v", "name=dp-2,address=127.0.0.1,port=9090"]
        args += ["--binary-path", envoy_binary, "--drain-time", "1s", "--concurrency", "1"]
        k = _start(agents, tmp_path, args).start(stdin=TEMPLATE.encode())
        k.wait_ready()
        body = cp.requests[0].json
        work = Path(body["workdir"])
        assert work.name.startswith("kuma-dp-") and stat.S_IMODE(work.stat().st_mode) == 0o711
        assert k.stop_draining() == 0
    assert body["name"] == "dp-2"
    assert not work.exists()


# -- refusals and failures ----------------------------------------------------------------------------------


def _fail(agents: Agents, tmp: Path, args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    k = _start(agents, tmp, args, env).start()
    code = k.wait(60)
    return code, k.output()


def _error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, output
    return lines[0]


def _refused_over_tls(agents: Agents, tmp: Path, envoy_binary: str, ca_args: list[str]) -> str:
    """A CP whose certificate `kuma-dp run` (with `ca_args`) must not trust: exit 1; the output."""
    with FakeCP(tls_ca=trustme.CA()) as cp:
        code, out = _fail(
            agents,
            tmp,
            ["--cp-address", cp.url, *ca_args, *_template_args(envoy_binary)],
            env={"KUMA_CONTROL_PLANE_RETRY_MAX_DURATION": "300ms"},
        )
        assert cp.requests == []  # the handshake failed: nothing (no token) reached the server
    assert code == 1
    return out


def test_wrong_ca_is_refused_with_a_clear_error(
    agents: Agents, tmp_path: Path, envoy_binary: str
) -> None:
    wrong = trustme.CA()
    pem = tmp_path / "wrong-ca.pem"
    wrong.cert_pem.write_to_path(str(pem))
    out = _refused_over_tls(agents, tmp_path, envoy_binary, ["--ca-cert-file", str(pem)])
    line = _error_line(out)
    assert line.startswith(
        "Error: Failed to fetch Envoy bootstrap config. request to bootstrap server failed"
    )
    assert "certificate verify failed" in line and "--ca-cert-file" in line


def test_without_a_ca_the_system_roots_verify(
    agents: Agents, tmp_path: Path, envoy_binary: str
) -> None:
    out = _refused_over_tls(agents, tmp_path, envoy_binary, [])
    assert "not trusted by the system CAs" in _error_line(out)


def test_422_is_fatal_and_shows_the_server_message(
    agents: Agents, tmp_path: Path, envoy_binary: str
) -> None:
    msg = "outbound: should be empty since dataplane is in Transparent Proxying mode"
    with FakeCP([Reply.status_only(422, msg)]) as cp:
        code, out = _fail(
            agents,
            tmp_path,
            ["--cp-address", cp.url, *_template_args(envoy_binary)],
            env={"KUMA_CONTROL_PLANE_RETRY_MAX_DURATION": "5m"},
        )
        assert len(cp.requests) == 1
    assert code == 1
    assert _error_line(out) == f"Error: Failed to fetch Envoy bootstrap config. Invalid request: {msg}"


def test_budget_exhausted_exits_1_with_kumas_message(
    agents: Agents, tmp_path: Path, envoy_binary: str
) -> None:
    with FakeCP([Reply.status_only(404)]) as cp:
        code, out = _fail(
            agents,
            tmp_path,
            ["--cp-address", cp.url, "--name", "dp-1", "--mesh", "default", "--binary-path", envoy_binary],
            env={"KUMA_CONTROL_PLANE_RETRY_MAX_DURATION": "500ms"},
        )
        assert len(cp.requests) >= 3
    assert code == 1
    assert _error_line(out) == (
        "Error: Failed to fetch Envoy bootstrap config. Dataplane entity not found. If you are running on "
        "Universal please create a Dataplane entity on kuma-cp before starting kuma-dp or pass it to kuma-dp "
        "run --dataplane-file=/file. If you are running on Kubernetes, please check the kuma-cp logs to "
        "determine why the Dataplane entity could not be created by the automatic sidecar injection."
    )
    assert "Dataplane entity is not yet found in the Control Plane" in out


def test_api_port_404_hint(agents: Agents, tmp_path: Path, envoy_binary: str) -> None:
    with FakeCP([Reply.status_only(404, "404: Page Not Found")]) as cp:
        code, out = _fail(
            agents,
            tmp_path,
            ["--cp-address", cp.url, *_template_args(envoy_binary)],
            env={"KUMA_CONTROL_PLANE_RETRY_MAX_DURATION": "200ms"},
        )
    assert code == 1
    line = _error_line(out)
    assert "There is no /bootstrap endpoint for provided CP address" in line
    assert "DP Server port (5678 by default), not HTTP API (5681 by default)" in line


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["--proxy-type", "not-a-proxy", "--drain-time", "0s"],
            {},
            "Error: configuration validation failed: .Dataplane is not valid: .ProxyType is not valid: "
            "not-a-proxy is not a valid proxy type; .Mesh must be non-empty; .Name must be non-empty; "
            ".DrainTime must be positive",
        ),
        (
            ["--name", "dp-1", "--mesh", "default", "--dataplane", TEMPLATE, "-v", "name=a,address=b,port=1"],
            {},
            "Error: --name and --mesh cannot be specified when a dataplane definition is provided, mesh and "
            "name will be read from the dataplane definition",
        ),
        (["--dataplane", TEMPLATE, "-v", "address=1.1.1.1,port=1"], {}, "Error: name: cannot be empty"),
        (
            ["--name", "dp-1", "--mesh", "default", "--ca-cert-file", "/nonexistent/ca.pem"],
            {},
            "Error: could not read certificate file /nonexistent/ca.pem: open /nonexistent/ca.pem: "
            "no such file or directory",
        ),
        (
            ["--name", "dp-1", "--mesh", "default", "--dataplane-token", "not-a-jwt-at-all"],
            {},
            "Error: dataplane token is invalid, in Kubernetes you must mount a serviceAccount token, in "
            "universal you must start your proxy with a generated token.: not valid JWT token. "
            "Can't parse it.: token is malformed: token contains an invalid number of segments",
        ),
        (
            ["--name", "from-flag", "--mesh", "default"],
            {"KUMA_DATAPLANE_NAME": "a$b", "KUMA_CONTROL_PLANE_RETRY_BACKOFF": "0s"},
            # Kuma only requires a non-empty name at validation: `a$b` passes, the backoff does not.
            "Error: configuration validation failed: .ControlPlane is not valid: .Retry is not valid: "
            ".Backoff must be a positive duration",
        ),
    ],
)
def test_bad_input_is_one_line_exit_1(
    agents: Agents, tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    code, out = _fail(agents, tmp_path, ["--cp-address", "http://127.0.0.1:1", *args], env=env)
    assert code == 1
    assert _error_line(out) == expected
    assert "Traceback" not in out


def test_local_bootstrap_source_needs_no_cp_and_envoy_accepts_it(
    agents: Agents, tmp_path: Path, envoy_binary: str
) -> None:
    """`--bootstrap-source local` renders the bootstrap in-process; Envoy loads it."""
    admin = free_port()
    work = tmp_path / "wd"
    template = TEMPLATE + f"  admin:\n    port: {admin}\n"
    k = _start(
        agents,
        tmp_path,
        [
            "--bootstrap-source", "local", "--cp-address", f"http://127.0.0.1:{free_port()}",
            "--dataplane", template, "-v", "name=dp-local,address=127.0.0.1,port=8080",
            "--binary-path", envoy_binary, "--work-dir", str(work),
            "--drain-time", "1s", "--concurrency", "1",
        ],
    ).start()  # fmt: skip
    info = k.wait_for(lambda: envoy_server_info(admin), 60, "Envoy's admin /server_info")
    assert info["node"]["id"] == "default.dp-local"
    rendered = yaml.safe_load((work / "bootstrap.yaml").read_text())
    assert rendered["node"]["id"] == "default.dp-local"
    assert k.stop_draining() == 0


def test_sigterm_while_retrying_stops_at_once_and_removes_the_temp_dir(
    agents: Agents, tmp_path: Path, envoy_binary: str
) -> None:
    with FakeCP([Reply.status_only(404)]) as cp:
        k = _start(
            agents,
            tmp_path,
            ["--cp-address", cp.url, *_template_args(envoy_binary)],
            env={"KUMA_CONTROL_PLANE_RETRY_BACKOFF": "1s", "KUMA_CONTROL_PLANE_RETRY_MAX_DURATION": "5m"},
        ).start()
        k.wait_for(lambda: cp.requests, 30, "the first /bootstrap request")
        k.signal(signal.SIGTERM)
        code = k.wait(10)
    out = k.output()
    assert code == 1
    assert _error_line(out) == "Error: Failed to fetch Envoy bootstrap config. context canceled"
    temp = next(ln for ln in out.splitlines() if "temporary directory" in ln).rsplit("dir=", 1)[1].strip()
    assert Path(temp).name.startswith("kuma-dp-") and not Path(temp).exists()


def test_version_command_reports_us_and_envoy(envoy_binary: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kuma_dp", "version", "--binary-path", envoy_binary],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    ).stdout
    from kuma_dp import __version__
    from kuma_dp.envoy import envoy_version

    ev = envoy_version(envoy_binary)
    assert f"kuma-dp: {__version__}" in out
    assert f"Envoy: {ev.version} ({ev.build})" in out


def test_missing_envoy_is_one_line_and_nothing_is_sent(agents: Agents, tmp_path: Path) -> None:
    with FakeCP() as cp:
        code, out = _fail(
            agents, tmp_path, ["--cp-address", cp.url, "--name", "dp-1", "--mesh", "default",
                               "--binary-path", str(tmp_path / "no-envoy")]
        )  # fmt: skip
        assert cp.requests == []
    assert code == 1
    assert _error_line(out).startswith(f"Error: could not find envoy executable: {tmp_path / 'no-envoy'}")


def test_sidecar_metrics_aggregate_reaches_the_hijacker(
    agents: Agents, tmp_path: Path, short_tmp: Path, envoy_binary: str
) -> None:
    """kumaSidecarConfiguration.metrics.aggregate from the CP is scraped and merged on the hijacker socket."""
    admin = free_port()
    work = short_tmp / "wd"
    app_page = Reply(
        200, b"# TYPE app_requests_total counter\napp_requests_total 7\n", "text/plain; version=0.0.4"
    )
    with FakeCP([app_page]) as app:
        sidecar = {
            "networking": {"address": "127.0.0.1"},
            "metrics": {
                "aggregate": [{"name": "app", "address": "127.0.0.1", "port": app.port, "path": "/stats"}]
            },
        }
        with FakeCP([Reply.bootstrap(minimal_bootstrap_yaml(admin), sidecar)]) as cp:
            k = _start(
                agents,
                tmp_path,
                ["--cp-address", cp.url, "--work-dir", str(work), *_template_args(envoy_binary)],
            ).start()
            k.wait_ready()
            sock = work / "kuma-mh-dp-1-default.sock"
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as client:
                page = client.get("http://localhost/", timeout=5)
            assert k.stop_draining() == 0
        assert any(r.path == "/stats" for r in app.requests)
    assert page.status_code == 200
    assert "app_requests_total" in page.text
