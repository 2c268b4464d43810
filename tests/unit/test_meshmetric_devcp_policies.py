"""The development control plane's MeshMetric/MeshTrace generation (kuma_dp_dev/devcp/policies.py): every
resource parses as the Envoy protobuf it names, the `/meshmetric` body is what the agent's parser takes,
and the pipe's `/otel` backends carry Kuma's signal plans."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from kuma_dp.bootstrap.features import FEATURE_OTEL_VIA_KUMA_DP
from kuma_dp.meshmetric import parse_meshmetric_config
from kuma_dp.otel import parse_otel_config
from kuma_dp.paths import metrics_hijacker_socket_path, otel_socket_path
from kuma_dp_dev.devcp import xds
from kuma_dp_dev.devcp.policies import PolicyError, parse_policies
from kuma_dp_dev.devcp.state import Service, parse_dataplane

pytestmark = pytest.mark.unit

POLICIES = """
type: MeshOpenTelemetryBackend
name: col
mesh: default
spec: {endpoint: {address: 10.0.0.9, port: 4317}, protocol: grpc, env: {mode: Disabled}}
---
type: MeshTrace
name: traces
mesh: default
spec:
  targetRef: {kind: Mesh}
  default:
    sampling: {random: 50}
    backends:
      - {type: OpenTelemetry, openTelemetry: {backendRef: {kind: MeshOpenTelemetryBackend, name: col}}}
---
type: MeshMetric
name: metrics
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  default:
    sidecar: {includeUnused: true, profiles: {appendProfiles: [{name: None}],
              include: [{type: Regex, match: "rq_.*"}]}}
    applications: [{name: app, port: 8080, path: /stats}]
    backends:
      - {type: Prometheus, prometheus: {port: 5670, path: /metrics, tls: {mode: ProvidedTLS}}}
      - {type: OpenTelemetry, openTelemetry: {endpoint: "otel.example:4317", refreshInterval: 30s}}
      - type: OpenTelemetry
        openTelemetry: {backendRef: {kind: MeshOpenTelemetryBackend, name: col}, refreshInterval: 10s}
"""

DP = {
    "type": "Dataplane",
    "mesh": "default",
    "name": "web-1",
    "networking": {
        "address": "10.0.0.1",
        "inbound": [{"port": 8000, "servicePort": 8080,
                     "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}}],
    },
}  # fmt: skip


def generate(features: frozenset[str], metadata: dict[str, Any]) -> xds.Snapshot:
    proxy = xds.Proxy(parse_dataplane(DP), workdir="/w", features=features, metadata=metadata)
    pset = parse_policies(yaml.safe_load_all(POLICIES))
    snap = xds.generate(proxy, {"web": Service("default", "web", "http", ())}, {}, pset)
    for type_url, resources in snap.resources.items():
        for resource in resources.values():
            xds.to_message(type_url, resource)  # raises if Envoy's schema rejects it
    return snap


def dynconf_bodies(snap: xds.Snapshot) -> dict[str, bytes]:
    listener = snap.resources[xds.LISTENER_TYPE]["_kuma:dynamicconfig"]
    hcm = listener["filterChains"][0]["filters"][0]["typedConfig"]
    routes = hcm["routeConfig"]["virtualHosts"][0]["routes"]
    return {r["match"]["path"]: r["directResponse"]["body"]["inlineString"].encode()
            for r in routes if r.get("directResponse", {}).get("status") == 200}  # fmt: skip


def test_meshmetric_and_meshtrace_through_the_pipe() -> None:
    inventory = {"pipeEnabled": True, "shared": {"signal": "shared", "endpointPresent": True}}
    meta = {"metricsCertPath": "/c.pem", "metricsKeyPath": "/k.pem", "otelEnvInventory": inventory}
    snap = generate(frozenset({FEATURE_OTEL_VIA_KUMA_DP}), meta)
    listeners = snap.resources[xds.LISTENER_TYPE]
    clusters = snap.resources[xds.CLUSTER_TYPE]
    prom = listeners["_kuma:metrics:prometheus:default-backend"]
    assert prom["address"]["socketAddress"] == {"address": "10.0.0.1", "portValue": 5670}
    chain = prom["filterChains"][0]
    assert chain["filterChainMatch"] == {"transportProtocol": "tls"}  # ProvidedTLS with the announced cert
    route = chain["filters"][0]["typedConfig"]["routeConfig"]["virtualHosts"][0]["routes"][0]
    assert route["match"] == {"prefix": "/metrics"} and route["route"]["prefixRewrite"] == "/meshmetric"
    hijacker = clusters["_kuma:metrics:hijacker"]["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]
    assert hijacker["endpoint"]["address"]["pipe"]["path"] == metrics_hijacker_socket_path(
        "/w", "web-1", "default"
    )
    assert listeners["_kuma:metrics:opentelemetry:otel.example-4317"]["address"]["pipe"]["path"] == (
        otel_socket_path("/w", "otel.example-4317")
    )
    # MeshTrace: tracing on the inbound HCM, exporting to the agent's pipe socket
    inbound = listeners["inbound:10.0.0.1:8000"]["filterChains"][0]["filters"][0]["typedConfig"]
    assert inbound["tracing"]["provider"]["name"] == "envoy.tracers.opentelemetry"
    assert inbound["tracing"]["randomSampling"] == {"value": 50.0}
    tracing = clusters["tracing:opentelemetry"]["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]
    assert tracing["endpoint"]["address"]["pipe"]["path"] == otel_socket_path("/w", "col")

    bodies = dynconf_bodies(snap)
    mm = parse_meshmetric_config(bodies["/meshmetric"])
    assert mm.applications == [{"name": "app", "path": "/stats", "port": 8080, "address": ""}]
    assert mm.sidecar == {
        "includeUnused": True,
        "profiles": {"appendProfiles": [{"name": "None"}], "include": [{"type": "Regex", "match": "rq_.*"}]},
    }
    assert [(t.name, t.socket_path, t.refresh_interval) for t in mm.otel_targets()] == [
        ("otel.example-4317", otel_socket_path("/w", "otel.example-4317"), 30.0)
    ]
    assert mm.extra_labels == {"mesh": "default", "kuma.proxy_role": "sidecar", "dataplane": "web-1",
                               "service": "web"}  # fmt: skip
    (backend,) = parse_otel_config(bodies["/otel"])
    assert backend["socketPath"] == otel_socket_path("/w", "col")
    assert backend["endpoint"] == "10.0.0.9:4317" and backend["useHTTP"] is False
    # env mode Disabled with OTEL_* input present: the env is blocked for the signal (BuildSignalRuntimePlan)
    assert backend["traces"] == {
        "enabled": True,
        "envInputPresent": True,
        "blockedReasons": ["EnvDisabledByPolicy"],
    }
    # MeshMetric's backendRef joins the same pipe backend with a metrics plan (its refresh interval)
    assert backend["metrics"] == {
        "enabled": True,
        "refreshInterval": "10s",
        "envInputPresent": True,
        "blockedReasons": ["EnvDisabledByPolicy"],
    }


def test_without_the_pipe_feature_envoy_exports_directly() -> None:
    snap = generate(frozenset(), {})
    tracing = snap.resources[xds.CLUSTER_TYPE]["tracing:opentelemetry"]
    address = tracing["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]
    assert address["socketAddress"] == {"address": "10.0.0.9", "portValue": 4317}
    assert "/otel" not in dynconf_bodies(snap)
    # no metrics certificate announced: the Prometheus listener falls back to plain text (as kuma-cp)
    prom = snap.resources[xds.LISTENER_TYPE]["_kuma:metrics:prometheus:default-backend"]
    assert "filterChainMatch" not in prom["filterChains"][0]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"type": "MeshGateway", "name": "x"}, "is not one of"),
        (
            {"type": "MeshMetric", "name": "m", "spec": {"default": {"backends": [{"type": "Zipkin"}]}}},
            "backend type",
        ),
        ({"type": "MeshTrace", "name": "t", "spec": {"default": {"backends": [{}, {}]}}}, "at most one"),
        ({"type": "MeshMetric", "spec": {"default": {}}}, "name is required"),
    ],
)
def test_bad_policies_are_refused_with_the_policy_named(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policies([doc])


def test_state_file_can_carry_policies() -> None:
    from kuma_dp_dev.devcp.state import load_state

    store = load_state({"policies": list(yaml.safe_load_all(POLICIES))})
    assert [p.kind for p in store.policies.policies] == [
        "MeshOpenTelemetryBackend",
        "MeshTrace",
        "MeshMetric",
    ]
    assert json.loads(json.dumps([p.name for p in store.policies.policies])) == ["col", "traces", "metrics"]
