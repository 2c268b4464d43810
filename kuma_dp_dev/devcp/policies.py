"""Observability policies in the development control plane: MeshMetric, MeshTrace and
MeshOpenTelemetryBackend, turned into the Envoy resources and dynamic-config payloads kuma-cp would send.

Follows kumahq/kuma v2.14.3:

* pkg/plugins/policies/meshmetric/plugin/v1alpha1/plugin.go: a Prometheus backend is an inbound listener
  `_kuma:metrics:prometheus:<clientId|default-backend>` on the dataplane's address and the backend's port
  (default 5670) whose path (default /metrics) is rewritten to `/meshmetric` on the cluster
  `_kuma:metrics:hijacker` (the agent's hijacker socket); `tls.mode: ProvidedTLS` serves TLS with the
  certificate kuma-dp announced (`--metrics-cert-path`/`--metrics-key-path`). An inline OpenTelemetry backend
  is a listener on `<workdir>/kuma-otel-<name>.sock` forwarding OTLP gRPC to the collector. The `/meshmetric`
  payload is `createDynamicConfig` (dpapi.MeshMetricDpConfig);
* pkg/plugins/policies/meshtrace/: the HTTP connection managers get `tracing` with the
  `envoy.tracers.opentelemetry` provider on the cluster `tracing:opentelemetry`; with a `backendRef` and a
  proxy announcing `feature-otel-via-kuma-dp` that cluster is the agent's `kuma-otel-<backend>.sock`
  and the backend goes into `/otel` (pkg/core/xds/otel_pipe.go), with the signal plan of
  pkg/plugins/policies/core/xds/otel.go `BuildSignalRuntimePlan`; otherwise Envoy exports directly.

Policies target a whole mesh (`targetRef.kind: Mesh`), a Dataplane (by `name` or `labels`) or a MeshService
(by name = the dataplane's service); when several match, the more specific wins, then the later one
(Kuma's merge, simplified: a key of `default` replaces the same key of a broader policy).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kuma_dp.bootstrap.features import FEATURE_OTEL_VIA_KUMA_DP
from kuma_dp.paths import metrics_hijacker_socket_path, otel_socket_path

__all__ = ["Policy", "PolicyError", "PolicySet", "apply", "load_policies", "parse_policies"]

KINDS = ("MeshMetric", "MeshTrace", "MeshOpenTelemetryBackend")
_SPECIFICITY = {"Mesh": 0, "MeshService": 1, "Dataplane": 2}
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
OTEL_TRACER = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
HIJACKER_CLUSTER = "_kuma:metrics:hijacker"
TRACING_CLUSTER = "tracing:opentelemetry"
DEFAULT_PROMETHEUS_PORT = 5670
DEFAULT_PROMETHEUS_PATH = "/metrics"
DEFAULT_OTEL_PORT = 4317


class PolicyError(ValueError):
    """A policy document kuma-cp would reject (the message names it and the field)."""


@dataclass(frozen=True)
class Policy:
    kind: str
    mesh: str
    name: str
    target: Mapping[str, Any]
    spec: Mapping[str, Any]

    def matches(self, dp: Any) -> bool:
        if self.mesh != dp.mesh:
            return False
        kind = self.target.get("kind", "Mesh")
        if kind == "Mesh":
            return True
        if kind == "Dataplane":
            if "name" in self.target:
                return self.target["name"] == dp.name
            labels = self.target.get("labels") or {}
            return all(dp.labels.get(k) == v for k, v in labels.items())
        if kind == "MeshService":
            return self.target.get("name") in set(dp.services)
        return False


@dataclass
class PolicySet:
    policies: list[Policy] = field(default_factory=list)

    def conf(self, kind: str, dp: Any) -> dict[str, Any] | None:
        """The merged `default` of every `kind` policy matching `dp` (None when none does)."""
        matching = [p for p in self.policies if p.kind == kind and p.matches(dp)]
        if not matching:
            return None
        matching.sort(key=lambda p: _SPECIFICITY.get(str(p.target.get("kind", "Mesh")), 0))
        merged: dict[str, Any] = {}
        for p in matching:
            merged.update(p.spec.get("default") or {})
        return merged

    def otel_backend(self, mesh: str, ref: Mapping[str, Any]) -> Policy | None:
        """A MeshOpenTelemetryBackend by `backendRef` (name, or labels: the oldest = first one listed)."""
        for p in self.policies:
            if p.kind != "MeshOpenTelemetryBackend" or p.mesh != mesh:
                continue
            if "name" in ref and ref["name"] == p.name:
                return p
            labels = ref.get("labels")
            if labels and all((p.spec.get("labels") or {}).get(k) == v for k, v in labels.items()):
                return p
        return None


def parse_policies(docs: Iterable[Any]) -> PolicySet:
    out = PolicySet()
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            raise PolicyError(f"policies[{i}]: expected a mapping with type, name, mesh and spec")
        kind = doc.get("type") or doc.get("kind")
        if kind not in KINDS:
            raise PolicyError(f"policies[{i}]: type {kind!r} is not one of {', '.join(KINDS)}")
        name = str(doc.get("name") or (doc.get("metadata") or {}).get("name") or "")
        if not name:
            raise PolicyError(f"policies[{i}] ({kind}): name is required")
        spec = doc.get("spec") or {k: v for k, v in doc.items() if k in ("targetRef", "default")}
        if kind == "MeshOpenTelemetryBackend":
            spec = {**(doc.get("spec") or {}), "labels": doc.get("labels") or {}}
        elif not isinstance(spec.get("default"), Mapping):
            raise PolicyError(f"{kind} {name}: spec.default must be a mapping")
        target = spec.get("targetRef") or {"kind": "Mesh"}
        if target.get("kind", "Mesh") not in _SPECIFICITY:
            raise PolicyError(f"{kind} {name}: targetRef.kind must be Mesh, MeshService or Dataplane")
        _validate(kind, name, spec)
        out.policies.append(Policy(kind, str(doc.get("mesh") or "default"), name, target, spec))
    return out


def _validate(kind: str, name: str, spec: Mapping[str, Any]) -> None:
    default = spec.get("default") or {}
    if kind == "MeshMetric":
        for b in default.get("backends") or []:
            if b.get("type") not in ("Prometheus", "OpenTelemetry"):
                raise PolicyError(
                    f"MeshMetric {name}: backend type {b.get('type')!r} (Prometheus, OpenTelemetry)"
                )
            port = (b.get("prometheus") or {}).get("port", DEFAULT_PROMETHEUS_PORT)
            if b["type"] == "Prometheus" and not (isinstance(port, int) and 0 < port < 65536):
                raise PolicyError(f"MeshMetric {name}: prometheus.port {port!r} is not a port")
    if kind == "MeshTrace":
        backends = default.get("backends") or []
        if len(backends) > 1:
            raise PolicyError(f"MeshTrace {name}: at most one backend (kuma-cp's validation)")


def load_policies(path: str | Path) -> PolicySet:
    try:
        docs = list(yaml.safe_load_all(Path(path).read_text()))
    except OSError as exc:
        raise PolicyError(f"--policies {path}: cannot read the file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"--policies {path}: not valid YAML: {exc}") from None
    flat: list[Any] = []
    for d in docs:
        flat.extend(d if isinstance(d, list) else [d])
    return parse_policies(flat)


# -- generation ---------------------------------------------------------------------------------------------
def _pipe_cluster(name: str, path: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connectTimeout": "5s",
        "loadAssignment": {
            "clusterName": name,
            "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"pipe": {"path": path}}}}]}],
        },
    }


def _grpc_cluster(name: str, *, path: str | None = None, host: str = "", port: int = 0) -> dict[str, Any]:
    cluster = _pipe_cluster(name, path) if path else {
        "name": name, "type": "STRICT_DNS", "connectTimeout": "5s",
        "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {
            "socketAddress": {"address": host, "portValue": port}}}}]}]},
    }  # fmt: skip
    cluster["typedExtensionProtocolOptions"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_OPTIONS,
            "explicitHttpConfig": {"http2ProtocolOptions": {}},
        }
    }
    return cluster


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    """ParseOtelEndpoint: host[:port], gRPC's 4317 by default."""
    if endpoint.count(":") > 1 and "[" not in endpoint:
        return endpoint, DEFAULT_OTEL_PORT
    host, sep, port = endpoint.rpartition(":")
    if not sep:
        return endpoint, DEFAULT_OTEL_PORT
    try:
        return host.strip("[]"), int(port) or DEFAULT_OTEL_PORT
    except ValueError:
        return endpoint, DEFAULT_OTEL_PORT


def _backend_name(endpoint: str) -> str:
    """plugin.go backendNameFrom: the name is used in a socket file name."""
    return endpoint.replace("/", "").replace(":", "-")


def _signal_plan(
    inventory: Mapping[str, Any] | None, env_policy: Mapping[str, Any] | None, signal: str, refresh: str = ""
) -> dict[str, Any]:
    """BuildSignalRuntimePlan (pkg/plugins/policies/core/xds/otel.go) in its JSON form."""
    mode = (env_policy or {}).get("mode", "Optional")
    allow = bool((env_policy or {}).get("allowSignalOverrides", False))
    plan: dict[str, Any] = {"enabled": True}
    kinds: list[str] = []
    missing: list[str] = []
    if inventory:
        shared, own = inventory.get("shared"), inventory.get(signal)
        present = bool(shared) or bool(own)
        if present:
            plan["envInputPresent"] = True
        kinds = list((own or {}).get("overrideKinds") or [])
        if kinds:
            plan["overrideKinds"] = kinds
        if mode == "Required":
            missing = [
                e.partition(".")[2]
                for e in inventory.get("validationErrors") or []
                if e.partition(".")[0] in ("shared", signal)
            ]
            if missing:
                plan["missingFields"] = missing
    reasons = []
    if mode == "Disabled" and plan.get("envInputPresent"):
        reasons.append("EnvDisabledByPolicy")
    if mode == "Required" and (not plan.get("envInputPresent") or missing):
        reasons.append("RequiredEnvMissing")
    if kinds and not allow:
        reasons.append("SignalOverridesDisallowed")
    if reasons:
        plan["blockedReasons"] = reasons
    if refresh:
        plan["refreshInterval"] = refresh  # last, as in OtelSignalRuntimePlan
    return plan


def _pipe_backend(
    workdir: str, backend: Policy, inventory: Any, signals: Mapping[str, str]
) -> dict[str, Any]:
    """OtelPipeBackend for a MeshOpenTelemetryBackend (BuildResolvedPipeBackend)."""
    ep = backend.spec.get("endpoint") or {}
    protocol = backend.spec.get("protocol", "grpc")
    port = int(ep.get("port") or DEFAULT_OTEL_PORT)
    out: dict[str, Any] = {
        "name": backend.name,
        "socketPath": otel_socket_path(workdir, backend.name),
        "endpoint": f"{ep.get('address', '')}:{port}",
        "useHTTP": protocol == "http",
    }
    if protocol == "http" and port == 443:
        out["useHTTPS"] = True
    if ep.get("path"):
        out["path"] = ep["path"]
    env = backend.spec.get("env")
    if env:
        policy = {
            "mode": env.get("mode", "Optional"),
            "precedence": env.get("precedence", "EnvFirst"),
            "allowSignalOverrides": env.get("allowSignalOverrides", False),
        }
        out["envPolicy"] = {k: v for k, v in policy.items() if v}  # omitempty
    for signal, refresh in signals.items():
        out[signal] = _signal_plan(inventory, env, signal, refresh)
    return out


def _prometheus(snap: Any, proxy: Any, backend: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
    prom = backend.get("prometheus") or {}
    client = prom.get("clientId") or "default-backend"
    name = f"_kuma:metrics:prometheus:{client}"
    dp = proxy.dataplane
    path = prom.get("path") or DEFAULT_PROMETHEUS_PATH
    route = {
        "match": {"prefix": path},
        "route": {"cluster": HIJACKER_CLUSTER, "prefixRewrite": "/meshmetric"},
    }
    hcm = {
        "@type": HCM,
        "statPrefix": name.replace(":", "_"),
        "routeConfig": {"virtualHosts": [{"name": name, "domains": ["*"], "routes": [route]}],
                        "validateClusters": False},
        "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {"@type": ROUTER}}],
    }  # fmt: skip
    chain: dict[str, Any] = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                          "typedConfig": hcm}]}  # fmt: skip
    listener: dict[str, Any] = {
        "name": name,
        "address": {"socketAddress": {"address": dp.address, "portValue": int(prom.get("port") or
                                                                              DEFAULT_PROMETHEUS_PORT)}},
        "trafficDirection": "INBOUND",
        "filterChains": [chain],
    }  # fmt: skip
    tls = prom.get("tls") or {}
    cert, key = metadata.get("metricsCertPath"), metadata.get("metricsKeyPath")
    if tls.get("mode") == "ProvidedTLS" and cert and key:
        chain["filterChainMatch"] = {"transportProtocol": "tls"}
        chain["transportSocket"] = {"name": "envoy.transport_sockets.tls", "typedConfig": {
            "@type": DOWNSTREAM_TLS, "commonTlsContext": {"tlsCertificates": [
                {"certificateChain": {"filename": cert}, "privateKey": {"filename": key}}]}}}  # fmt: skip
        listener["listenerFilters"] = [{"name": "envoy.filters.listener.tls_inspector",
                                        "typedConfig": {"@type": TLS_INSPECTOR}}]  # fmt: skip
    snap.add("type.googleapis.com/envoy.config.listener.v3.Listener", listener)
    snap.add(
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        _pipe_cluster(HIJACKER_CLUSTER, metrics_hijacker_socket_path(proxy.workdir, dp.name, dp.mesh)),
    )


def _inline_metrics_otel(snap: Any, proxy: Any, name: str, endpoint: str) -> None:
    host, port = _split_endpoint(endpoint)
    cluster = f"_kuma:metrics:opentelemetry:{name}"
    route = {"match": {"prefix": "/"}, "route": {"cluster": cluster}}
    hcm = {
        "@type": HCM, "statPrefix": cluster.replace(":", "_"), "codecType": "HTTP2",
        "routeConfig": {"virtualHosts": [{"name": cluster, "domains": ["*"], "routes": [route]}]},
        "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {"@type": ROUTER}}],
    }  # fmt: skip
    snap.add("type.googleapis.com/envoy.config.listener.v3.Listener", {
        "name": cluster,
        "address": {"pipe": {"path": otel_socket_path(proxy.workdir, name)}},
        "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                       "typedConfig": hcm}]}],
    })  # fmt: skip
    snap.add(
        "type.googleapis.com/envoy.config.cluster.v3.Cluster", _grpc_cluster(cluster, host=host, port=port)
    )


def meshmetric(snap: Any, proxy: Any, conf: Mapping[str, Any], metadata: Mapping[str, Any]) -> bytes | None:
    """Envoy resources for the policy, and the `/meshmetric` body (None: no backends, no policy effect)."""
    backends = conf.get("backends") or []
    if not backends:
        return None
    dp = proxy.dataplane
    dp_backends: list[dict[str, Any]] = []
    if any(b.get("type") == "Prometheus" for b in backends):
        dp_backends.append({"type": "Prometheus", "name": None})
    for b in backends:
        if b.get("type") == "Prometheus":
            _prometheus(snap, proxy, b, metadata)
        elif b.get("type") == "OpenTelemetry" and b.get("openTelemetry"):
            otel = b["openTelemetry"]
            endpoint = str(otel.get("endpoint") or "")
            if not endpoint:
                continue  # a backendRef: through the agent's pipe (`meshmetric_pipe`), nothing for Envoy
            name = _backend_name(endpoint)
            _inline_metrics_otel(snap, proxy, name, endpoint)
            dp_backends.append({"type": "OpenTelemetry", "name": name, "openTelemetry": {
                "endpoint": otel_socket_path(proxy.workdir, name),
                "refreshInterval": otel.get("refreshInterval") or "1m0s"}})  # fmt: skip
    extra = {"mesh": dp.mesh, "kuma.proxy_role": "sidecar", "dataplane": dp.name}
    if dp.services:
        extra["service"] = dp.services[0]
    payload = {"observability": {"metrics": {
        "applications": [{**({"name": a["name"]} if a.get("name") else {}), "path": a.get("path", "/metrics"),
                          "port": int(a["port"]), "address": a.get("address", "")}
                         for a in conf.get("applications") or []],
        "backends": dp_backends,
        **({"sidecar": conf["sidecar"]} if conf.get("sidecar") is not None else {}),
        "extraLabels": extra,
    }}}  # fmt: skip
    return json.dumps(payload, separators=(",", ":")).encode()


def meshtrace(
    snap: Any, proxy: Any, conf: Mapping[str, Any], pset: PolicySet, metadata: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Tracing on every HTTP connection manager; returns the pipe backends for `/otel`."""
    backends = conf.get("backends") or []
    if not backends or not (backends[0].get("openTelemetry")):
        return []
    otel = backends[0]["openTelemetry"]
    dp = proxy.dataplane
    pipe: list[dict[str, Any]] = []
    ref = otel.get("backendRef")
    use_pipe = bool(ref) and FEATURE_OTEL_VIA_KUMA_DP in proxy.features
    if ref:
        backend = pset.otel_backend(dp.mesh, ref)
        if backend is None:
            return []  # a dangling backendRef: kuma-cp skips the backend
        if use_pipe:
            cluster = _grpc_cluster(TRACING_CLUSTER, path=otel_socket_path(proxy.workdir, backend.name))
            pipe.append(
                _pipe_backend(proxy.workdir, backend, metadata.get("otelEnvInventory"), {"traces": ""})
            )
        else:
            ep = backend.spec.get("endpoint") or {}
            cluster = _grpc_cluster(
                TRACING_CLUSTER, host=ep.get("address", ""), port=int(ep.get("port") or DEFAULT_OTEL_PORT)
            )
    else:
        host, port = _split_endpoint(str(otel.get("endpoint") or ""))
        cluster = _grpc_cluster(TRACING_CLUSTER, host=host, port=port)
    snap.add("type.googleapis.com/envoy.config.cluster.v3.Cluster", cluster)
    sampling = conf.get("sampling") or {}
    service = dp.services[0] if dp.services else dp.name
    tracing: dict[str, Any] = {
        "spawnUpstreamSpan": False,
        "provider": {"name": "envoy.tracers.opentelemetry", "typedConfig": {
            "@type": OTEL_TRACER, "serviceName": service,
            "grpcService": {"envoyGrpc": {"clusterName": TRACING_CLUSTER}}}},
        "customTags": [{"tag": "kuma.mesh", "literal": {"value": dp.mesh}}],
    }  # fmt: skip
    for key, field_name in (("overall", "overallSampling"), ("client", "clientSampling"),
                            ("random", "randomSampling")):  # fmt: skip
        if key in sampling:
            tracing[field_name] = {"value": float(sampling[key])}
    for listener in snap.resources["type.googleapis.com/envoy.config.listener.v3.Listener"].values():
        for chain in listener.get("filterChains") or []:
            for f in chain.get("filters") or []:
                typed = f.get("typedConfig") or {}
                if typed.get("@type") == HCM and not listener["name"].startswith("_kuma:"):
                    typed["tracing"] = tracing
    return pipe


def meshmetric_pipe(
    proxy: Any, conf: Mapping[str, Any], pset: PolicySet, metadata: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """OpenTelemetry backends by `backendRef` go to `/otel` with a metrics plan (`addOtelToAccumulator`);
    the agent pushes MeshMetric's data to the receiver, which forwards to the collector."""
    if FEATURE_OTEL_VIA_KUMA_DP not in proxy.features:
        return []
    out = []
    for b in conf.get("backends") or []:
        otel = b.get("openTelemetry") or {}
        ref = otel.get("backendRef")
        if b.get("type") != "OpenTelemetry" or not ref:
            continue
        backend = pset.otel_backend(proxy.dataplane.mesh, ref)
        if backend is not None:
            refresh = str(otel.get("refreshInterval") or "1m0s")
            out.append(
                _pipe_backend(proxy.workdir, backend, metadata.get("otelEnvInventory"), {"metrics": refresh})
            )
    return out


def _merge_pipe(backends: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per backend name, its signals merged (OtelPipeBackends.AddSignal)."""
    merged: dict[str, dict[str, Any]] = {}
    for b in backends:
        merged.setdefault(b["name"], {}).update(b)
    return [merged[name] for name in sorted(merged)]


def apply(snap: Any, proxy: Any, pset: PolicySet | None, metadata: Mapping[str, Any]) -> dict[str, bytes]:
    """Add what the matching policies generate to `snap`; returns the extra dynamic-config paths."""
    if pset is None:
        return {}
    paths: dict[str, bytes] = {}
    pipe: list[dict[str, Any]] = []
    mm = pset.conf("MeshMetric", proxy.dataplane)
    if mm is not None:
        body = meshmetric(snap, proxy, mm, metadata)
        if body is not None:
            paths["/meshmetric"] = body
        pipe += meshmetric_pipe(proxy, mm, pset, metadata)
    mt = pset.conf("MeshTrace", proxy.dataplane)
    if mt is not None:
        pipe += meshtrace(snap, proxy, mt, pset, metadata)
    if pipe and FEATURE_OTEL_VIA_KUMA_DP in proxy.features:
        paths["/otel"] = json.dumps({"backends": _merge_pipe(pipe)}, separators=(",", ":")).encode()
    return paths
