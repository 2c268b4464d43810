"""Kuma v2.14.3's `app/kuma-dp/cmd/run_test.go` start-up table: "should be possible to start dataplane
(Envoy) using `kuma-dp run`", entry by entry, with Kuma's mock Envoy and Kuma's bootstrap golden.

Kuma's test swaps the bootstrap client for one that returns `testdata/bootstrap-config.golden.yaml`; here a
stand-in control plane (tests/helpers/fake_cp.py) returns that file over HTTP, so the `--cp-address` /
`KUMA_CONTROL_PLANE_URL` of each entry points at it. Each entry checks what Kuma checks: Envoy starts with
`--config-path <a regular file>` (the given work dir's `bootstrap.yaml` when one is given), the agent stops
cleanly on a signal, Envoy is gone afterwards, a temporary work dir is removed and a given one is kept.

Deliberate differences: there is no CoreDNS to check (we run the embedded DNS proxy instead, here on a free
port; the CoreDNS flags and variables are accepted), and `KUMA_READINESS_PORT=0` picks a free port so the
entries can run beside other agents. The mock scripts and the token are Kuma's testdata (Apache-2.0,
Copyright Kong Inc.).
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from kuma_dp_dev.harness.poll import wait_until
from kuma_dp_dev.harness.ports import free_port
from tests.helpers.agent_proc import Agents, kuma_dp_run
from tests.helpers.fake_cp import FakeCP, Reply

pytestmark = pytest.mark.integration

#: testdata/envoy-mock.sleep.sh
ENVOY_MOCK = """#!/bin/sh

if [ ! -e "${ENVOY_MOCK_CMDLINE_FILE}" ]; then
    touch "${ENVOY_MOCK_CMDLINE_FILE}"
fi

if [ "$1" = "--version" ];
then
    echo "$1" >> "${ENVOY_MOCK_CMDLINE_FILE}"
    printf "\\nversion: BUILD\\n"
    exit 0
else
    for arg in "$@"; do
        echo "$arg" >> "${ENVOY_MOCK_CMDLINE_FILE}"
    done
fi

echo $$ >"${ENVOY_MOCK_PID_FILE}"

# Send logs for Cmd#Wait to finish
while true;
do
  echo "Log"
  sleep 0.1
done
""".replace(
    "BUILD", "50ef0945fa2c5da4bff7627c3abf41fdd3b7cffd/1.15.0/clean-getenvoy-2aa564b-envoy/RELEASE/BoringSSL"
)
#: testdata/bootstrap-config.golden.yaml
BOOTSTRAP_GOLDEN = """admin:
  accessLogPath: /dev/null
  address:
    socketAddress:
      address: 127.0.0.1
      portValue: 9901
dynamicResources:
  adsConfig:
    apiType: GRPC
    grpcServices:
      - envoyGrpc:
          clusterName: ads_cluster
  cdsConfig:
    ads: {}
  ldsConfig:
    ads: {}
node:
  cluster: backend
  id: dp-1.default.default
staticResources:
  clusters:
    - connectTimeout: 0.250s
      http2ProtocolOptions: {}
      loadAssignment:
        clusterName: ads_cluster
        endpoints:
          - lbEndpoints:
              - endpoint:
                  address:
                    socketAddress:
                      address: localhost
                      portValue: 5678
      name: ads_cluster
      type: STRICT_DNS
      upstreamConnectionOptions:
        tcpKeepalive: {}"""
#: testdata/dataplane_template.yaml
DATAPLANE_TEMPLATE = """type: Dataplane
mesh: default
name: {{ name }}
networking:
  address: {{ address }}
  inbound:
    - port: 11011
      servicePort: 11012
      tags:
        kuma.io/service: backend
        kuma.io/protocol: http
  outbound:
    - port: 33033
      tags:
        kuma.io/service: redis
  admin:
    port: 9901
"""
#: testdata/token
TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJOYW1lIjoiZHAtZWNoby0xIiwiTWVzaCI6ImRlZmF1bHQifQ."
    "vHYjNsgLBevIm7B968UomNu8BOmuvdFejmNg6kiP82c"
)


class KumaTestdata:
    """Kuma's `testdata/` and the entry's temporary dir (`tmpDir` in run_test.go)."""

    def __init__(self, root: Path) -> None:
        self.tmp = root / "tmpdir"
        self.tmp.mkdir()
        data = root / "testdata"
        data.mkdir()
        self.envoy = data / "envoy-mock.sleep.sh"
        self.envoy.write_text(ENVOY_MOCK)
        self.envoy.chmod(self.envoy.stat().st_mode | stat.S_IXUSR)
        self.coredns = data / "coredns-mock.sleep.sh"  # never run: no CoreDNS here
        self.token = data / "token"
        self.token.write_text(TOKEN)
        self.template = data / "dataplane_template.yaml"
        self.template.write_text(DATAPLANE_TEMPLATE)
        self.pid_file = root / "envoy-mock.pid"
        self.cmdline_file = root / "envoy-mock.cmdline"


#: One entry: (env, args, expected bootstrap file or None for a temporary work dir), from the test data.
Entry = Callable[[KumaTestdata, str], tuple[dict[str, str], list[str], Path | None]]


def _env_entry(config_dir: bool, template: bool = False) -> Entry:
    def entry(t: KumaTestdata, cp: str) -> tuple[dict[str, str], list[str], Path | None]:
        env = {
            "KUMA_CONTROL_PLANE_API_SERVER_URL": "http://localhost:1234",
            "KUMA_CONTROL_PLANE_URL": cp,
            "KUMA_DATAPLANE_NAME": "example",
            "KUMA_DATAPLANE_MESH": "default",
            "KUMA_DATAPLANE_RUNTIME_BINARY_PATH": str(t.envoy),
            "KUMA_DNS_CORE_DNS_BINARY_PATH": str(t.coredns),
        }
        if config_dir:
            env["KUMA_DATAPLANE_RUNTIME_CONFIG_DIR"] = str(t.tmp)
        if template:
            corefile = t.tmp / "Corefile"
            corefile.write_text("abcd")
            env["KUMA_DNS_CORE_DNS_CONFIG_TEMPLATE_PATH"] = str(corefile)
        return env, [], t.tmp / "bootstrap.yaml" if config_dir else None

    return entry


def _args_entry(*extra: str, expected: bool = False, named: bool = True) -> Entry:
    def entry(t: KumaTestdata, cp: str) -> tuple[dict[str, str], list[str], Path | None]:
        subst = {"{tmp}": str(t.tmp), "{token}": str(t.token), "{template}": str(t.template)}
        args = ["--cp-address", cp]
        if named:
            args += ["--name", "example", "--mesh", "default"]
        args += ["--binary-path", str(t.envoy)]
        for arg in extra:
            for key, value in subst.items():
                arg = arg.replace(key, value)
            args.append(arg)
        args += ["--dns-coredns-path", str(t.coredns)]
        return {}, args, t.tmp / "bootstrap.yaml" if expected else None

    return entry


ENTRIES: dict[str, Entry] = {
    "can be launched with env vars": _env_entry(config_dir=False),
    "can be launched with env vars and given config dir": _env_entry(config_dir=True),
    "can be launched with args": _args_entry(),
    "can be launched with args and given config dir": _args_entry("--config-dir", "{tmp}", expected=True),
    "can be launched with args and given work dir": _args_entry("--work-dir", "{tmp}", expected=True),
    "can be launched with args and given config dir (and work dir)": _args_entry(
        "--config-dir", "{tmp}/config-dir", "--work-dir", "{tmp}", expected=True
    ),
    "can be launched with args and dataplane token": _args_entry("--dataplane-token-file", "{token}"),
    "can be launched without Envoy Admin API (env vars)": _env_entry(config_dir=False),
    "can be launched without Envoy Admin API (command-line args)": _args_entry(),
    "can be launched with dataplane template": _args_entry(
        "--dataplane-token-file",
        "{token}",
        "--dataplane-file",
        "{template}",
        "--dataplane-var",
        "name=example",
        "--dataplane-var",
        "address=127.0.0.1",
        named=False,
    ),
    "can be launched with given coredns configuration path": _env_entry(config_dir=True, template=True),
}


@pytest.mark.parametrize("name", list(ENTRIES))
def test_kuma_dp_run_starts_and_stops_envoy(agents: Agents, tmp_path: Path, name: str) -> None:
    t = KumaTestdata(tmp_path)
    with FakeCP([Reply.bootstrap(BOOTSTRAP_GOLDEN)]) as cp:
        env, args, expected_file = ENTRIES[name](t, cp.url)
        env = {
            **env,
            "ENVOY_MOCK_PID_FILE": str(t.pid_file),
            "ENVOY_MOCK_CMDLINE_FILE": str(t.cmdline_file),
            "KUMA_READINESS_PORT": "0",
            "KUMA_DNS_PROXY_PORT": str(free_port()),
        }
        agent = agents.add(kuma_dp_run(args, tmp_path / "kuma-dp.log", env=env)).start()

        # "waiting for dataplane (Envoy) to get started"
        pid = agent.wait_for(lambda: _pid(t.pid_file), 30, "the mock Envoy's pid file")
        envoy_args = [ln for ln in t.cmdline_file.read_text().splitlines() if ln and ln != "--version"]
        assert envoy_args[0] == "--config-path"
        config_file = Path(envoy_args[1])
        assert config_file.is_file()
        if expected_file is not None:
            assert config_file == expected_file

        # "signaling the dataplane manager to stop": a clean exit, then no Envoy.
        assert agent.stop(grace=15) == 0, agent.output()
        assert wait_until(lambda: not psutil.pid_exists(pid) or _zombie(pid), timeout=5)
        if expected_file is None:
            assert not config_file.exists()  # the temporary work dir is removed
        else:
            assert expected_file.exists()  # a given work dir is kept


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
