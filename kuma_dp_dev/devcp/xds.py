"""Pure xDS generation: (a proxy, the mesh's services and VIPs) -> Envoy Listeners, Clusters,
ClusterLoadAssignments.

Resources are written as protobuf-JSON dicts (the shape of kuma-cp's golden files) and parsed into the
xds-protos messages, so the golden comparison and the wire form come from one description. Names follow
kuma-cp's legacy naming: `inbound:<ip>:<port>` / `localhost:<port>`, `outbound:<ip>:<port>` / `<service>`,
`outbound:passthrough:ipv4`, `inbound:passthrough:ipv4` and `_kuma:dynamicconfig`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Imported for their side effect: registering the types that `@type` names in typed configs.
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.trace.v3 import opentelemetry_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,  # noqa: F401
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.filters.udp.dns_filter.v3 import dns_filter_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format
from google.protobuf.message import Message

from kuma_dp.bootstrap.features import FEATURE_BIND_OUTBOUNDS, FEATURE_EMBEDDED_DNS
from kuma_dp.paths import dynconf_socket_path

from . import policies as policies_mod
from . import vip as vips_mod
from .policies import PolicySet
from .state import Dataplane, Service

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
#: The order a push goes out in: clusters warm on their endpoints before listeners point at them.
PUSH_ORDER = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE)

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ORIGINAL_DST = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
DNS_FILTER = "type.googleapis.com/envoy.extensions.filters.udp.dns_filter.v3.DnsFilterConfig"

DYNCONF_LISTENER = "_kuma:dynamicconfig"
DYNCONF_LISTENER_UNIFIED = "system_dynamicconfig"
DNS_LISTENER = "kuma:dns"
DNS_TTL = 30
HTTP_PROTOCOLS = frozenset({"http", "http2", "grpc"})
_MESSAGES: dict[str, type[Message]] = {
    LISTENER_TYPE: listener_pb2.Listener,
    CLUSTER_TYPE: cluster_pb2.Cluster,
    ENDPOINT_TYPE: endpoint_pb2.ClusterLoadAssignment,
}


@dataclass(frozen=True)
class Proxy:
    """A connected Envoy as the generator sees it: its Dataplane plus what its node metadata said."""

    dataplane: Dataplane
    workdir: str = ""
    features: frozenset[str] = frozenset()
    #: Transparent proxy from node metadata `transparentProxy` (kuma-dp ≥2.11) or the resource.
    transparent: bool = False
    #: Transparent-proxy IP family is not `ipv4`: /dns records also carry the IPv4-mapped IPv6 form.
    dual_stack: bool = False
    #: Node metadata `ipv6Enabled`: the dynconf listener also trusts ::1.
    ipv6_enabled: bool = False
    outbound_port: int = 15001
    inbound_port: int = 15006
    #: Node metadata `dataplane.dns.port`: Envoy's own DNS port in the CoreDNS era (≤2.14 without
    #: `feature-embedded-dns`), where kuma-cp adds a UDP `kuma:dns` listener.
    dns_port: int = 0
    #: kuma-cp's unified resource naming (the proxy's feature and a Mesh with `meshServices.mode:
    #: Exclusive`); the dev CP has no such Mesh setting, so only callers that know set it.
    unified_naming: bool = False
    #: Node metadata `dataplane.readinessReporter.port`: with an admin port, kuma-cp's AdminProxyGenerator
    #: exposes `/ready` on <address>:<admin port> (what the kubelet probes on Kubernetes).
    readiness_port: int = 0
    #: The node metadata as sent (MeshMetric reads `metricsCertPath`/`metricsKeyPath`, the OpenTelemetry
    #: pipe the `otelEnvInventory`).
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Snapshot:
    """Resources by type URL, then by name, as dicts in protobuf-JSON form."""

    resources: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {t: {} for t in PUSH_ORDER}
    )

    def add(self, type_url: str, resource: dict[str, Any]) -> None:
        name = resource["clusterName"] if type_url == ENDPOINT_TYPE else resource["name"]
        self.resources[type_url][name] = resource


def to_message(type_url: str, resource: Mapping[str, Any]) -> Message:
    return json_format.ParseDict(resource, _MESSAGES[type_url]())


def resource_version(resource: Mapping[str, Any]) -> str:
    """A content hash: equal resources get equal versions, so unchanged types are not re-sent."""
    return hashlib.sha256(json.dumps(resource, sort_keys=True).encode()).hexdigest()[:16]


# -- /dns payload and the dynamic-config listener -----------------------------------------------------------
def dns_payload(
    domains: Mapping[str, str],
    reachable_ips: set[str] | None,
    ipv6: bool,
    mesh: str,
    labels: Mapping[str, str],
) -> bytes:
    """The exact bytes kuma-cp serves at /dns: compact JSON, records sorted by name, keys
    records/ttl/extraLabels.

    `reachable_ips` limits records to VIPs the proxy has an outbound for (None: every domain).
    """
    records = []
    for name, ip in sorted(domains.items()):
        if reachable_ips is not None and ip not in reachable_ips:
            continue
        ips = [ip]
        if ipv6 and ":" not in ip:
            ips.append(vips_mod.ipv4_mapped(ip))
        records.append({"name": name, "ips": ips})
    extra: dict[str, str] = {"mesh": mesh}
    for label, key in (
        ("kuma.io/workload", "kuma_workload"),
        ("k8s.kuma.io/namespace", "k8s_kuma_io_namespace"),
        ("kuma.io/zone", "kuma_io_zone"),
    ):
        if labels.get(label):
            extra[key] = labels[label]
    body = {"records": records, "ttl": DNS_TTL, "extraLabels": dict(sorted(extra.items()))}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def etag(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def dynconf_listener(
    workdir: str, paths: Mapping[str, bytes], ipv6: bool = False, unified: bool = False
) -> dict[str, Any]:
    """`_kuma:dynamicconfig` on the workdir's unix socket: per path a 304 route (If-None-Match == ETag),
    then a 200 route with the body and an `Etag` header. The body limit is the largest body, so big DNS
    maps fit."""
    name = DYNCONF_LISTENER_UNIFIED if unified else DYNCONF_LISTENER
    routes: list[dict[str, Any]] = []
    for path, body in paths.items():
        tag = etag(body)
        short = path.strip("/")
        not_modified: dict[str, Any] = {
            "match": {"path": path, "headers": [{"name": "If-None-Match", "stringMatch": {"exact": tag}}]},
            "directResponse": {"status": 304},
        }
        if unified:
            not_modified["name"] = f"{name}_{short}_not_modified"
        routes.append(not_modified)
        routes.append(
            {
                "name": f"{name}_{short}" if unified else f"{name}:{path}",
                "match": {"path": path},
                "directResponse": {"status": 200, "body": {"inlineString": body.decode()}},
                "responseHeadersToAdd": [{"header": {"key": "Etag", "value": tag}}],
            }
        )
    cidrs = [{"addressPrefix": "127.0.0.1", "prefixLen": 32}]
    if ipv6:
        cidrs.append({"addressPrefix": "::1", "prefixLen": 128})
    hcm = {
        "@type": HCM,
        "statPrefix": name if unified else "_kuma_dynamicconfig",
        "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {"@type": ROUTER}}],
        "internalAddressConfig": {"cidrRanges": cidrs},
        "routeConfig": {
            "maxDirectResponseBodySizeBytes": max((len(b) for b in paths.values()), default=0),
            "virtualHosts": [{"name": name, "domains": ["*"], "routes": routes}],
        },
    }
    listener: dict[str, Any] = {
        "name": name,
        "address": {"pipe": {"path": dynconf_socket_path(workdir)}},
        "filterChains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": hcm}]}
        ],
    }
    if unified:
        listener["statPrefix"] = name
    return listener


def dns_filter_listener(
    port: int, domains: Mapping[str, str], reachable_ips: set[str] | None, dual_stack: bool
) -> dict[str, Any]:
    """The ≤2.14 CoreDNS-era UDP listener `kuma:dns` on 127.0.0.1:<dns port>, for proxies without
    `feature-embedded-dns`: Envoy's DNS filter answers the mesh names itself (Kuma's
    `pkg/xds/generator/dns_generator.go`, `pkg/xds/envoy/listeners/v3/dns_configurer.go`)."""
    virtual_domains = []
    for name, ip in sorted(domains.items()):
        if reachable_ips is not None and ip not in reachable_ips:
            continue
        ips = [ip, vips_mod.ipv4_mapped(ip)] if dual_stack and ":" not in ip else [ip]
        virtual_domains.append(
            {"name": name, "endpoint": {"addressList": {"address": ips}}, "answerTtl": f"{DNS_TTL}s"}
        )
    return {
        "name": DNS_LISTENER,
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port, "protocol": "UDP"}},
        "enableReusePort": True,
        "trafficDirection": "INBOUND",
        "listenerFilters": [
            {
                "name": "envoy.filters.udp.dns_filter",
                "typedConfig": {
                    "@type": DNS_FILTER,
                    "statPrefix": "kuma_dns",
                    "serverConfig": {"inlineDnsTable": {"virtualDomains": virtual_domains}},
                },
            }
        ],
    }


# -- listeners and clusters ----------------------------------------------------------------------------------
def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socketAddress": {"address": address, "portValue": port}}


#: What a Kuma 2.x default mesh's `mesh-retry-all-default` MeshRetry gives every outbound (Kuma's
#: `HttpRetryOnDefault` / `GrpcRetryOnDefault`, 5 retries, 16 s per try, 25-250 ms back-off, 5 TCP
#: connect attempts): without it an endpoint that just went away (a drained and stopped backend, before
#: the CP's EDS push arrives) fails the request instead of it being retried on another endpoint.
HTTP_RETRY_ON = "gateway-error,connect-failure,refused-stream"
GRPC_RETRY_ON = "cancelled,connect-failure,gateway-error,refused-stream,reset,resource-exhausted,unavailable"
MAX_CONNECT_ATTEMPTS = 5


def _retry_policy(protocol: str) -> dict[str, Any]:
    return {
        "retryOn": GRPC_RETRY_ON if protocol == "grpc" else HTTP_RETRY_ON,
        "numRetries": 5,
        "perTryTimeout": "16s",
        "retryBackOff": {"baseInterval": "0.025s", "maxInterval": "0.250s"},
    }


def _network_filter(
    stat_prefix: str, cluster: str, protocol: str, virtual_host: str, outbound: bool = False
) -> dict[str, Any]:
    if protocol in HTTP_PROTOCOLS:
        route: dict[str, Any] = {"cluster": cluster, "timeout": "15s"}
        if outbound:
            route["retryPolicy"] = _retry_policy(protocol)
        hcm = {
            "@type": HCM,
            "statPrefix": stat_prefix,
            "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {"@type": ROUTER}}],
            "routeConfig": {
                "name": cluster,
                "virtualHosts": [
                    {
                        "name": virtual_host,
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": route}],
                    }
                ],
            },
        }
        if protocol in {"http2", "grpc"}:
            hcm["http2ProtocolOptions"] = {}
        return {"name": "envoy.filters.network.http_connection_manager", "typedConfig": hcm}
    tcp: dict[str, Any] = {"@type": TCP_PROXY, "statPrefix": stat_prefix, "cluster": cluster}
    if outbound:
        tcp["maxConnectAttempts"] = MAX_CONNECT_ATTEMPTS
    return {"name": "envoy.filters.network.tcp_proxy", "typedConfig": tcp}


def _listener(
    name: str, address: str, port: int, filt: dict[str, Any], direction: str, bind: bool = True
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "address": _socket(address, port),
        "trafficDirection": direction,
        "filterChains": [{"filters": [filt]}],
    }
    if not bind:
        out["bindToPort"] = False
    return out


def _cluster(name: str, protocol: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "connectTimeout": "5s", **extra}
    if protocol in {"http2", "grpc"}:
        out["typedExtensionProtocolOptions"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTIONS,
                "explicitHttpConfig": {"http2ProtocolOptions": {}},
            }
        }
    return out


def _load_assignment(cluster: str, endpoints: list[tuple[str, int]]) -> dict[str, Any]:
    lb = [{"endpoint": {"address": _socket(a, p)}} for a, p in sorted(endpoints)]
    return {"clusterName": cluster, "endpoints": [{"lbEndpoints": lb}] if lb else []}


def _admin_proxy(snap: Snapshot, address: str, admin_port: int, readiness_port: int) -> None:
    """`/ready` of the readiness reporter on the dataplane's own address (follows the plaintext chain of
    pkg/xds/generator/admin_proxy_generator.go; the dev CP has no admin mTLS certificates for the other)."""
    cluster = "kuma:readiness"
    load = _load_assignment(cluster, [("127.0.0.1", readiness_port)])
    snap.add(CLUSTER_TYPE, _cluster(cluster, "tcp", type="STATIC", loadAssignment=load))
    route = {"match": {"prefix": "/ready"}, "route": {"cluster": cluster, "prefixRewrite": "/ready"}}
    hcm = {
        "@type": HCM,
        "statPrefix": "kuma_envoy_admin",
        "codecType": "AUTO",
        "routeConfig": {
            "virtualHosts": [{"name": "kuma:envoy:admin", "domains": ["*"], "routes": [route]}],
            "validateClusters": False,
        },
        "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {"@type": ROUTER}}],
    }
    filt = {"name": "envoy.filters.network.http_connection_manager", "typedConfig": hcm}
    snap.add(LISTENER_TYPE, _listener("kuma:envoy:admin", address, admin_port, filt, "INBOUND"))


def generate(
    proxy: Proxy, services: Mapping[str, Service], vips: Mapping[str, str], policies: PolicySet | None = None
) -> Snapshot:
    """Everything one Envoy needs: its inbounds, an outbound per other service, EDS from registered
    dataplanes, what the matching MeshMetric/MeshTrace policies add, and the dynamic-config listener with its
    /dns (and /meshmetric, /otel) payloads."""
    dp = proxy.dataplane
    snap = Snapshot()
    own = set(dp.services)
    # Inbound: Envoy listens where the Dataplane says and hands traffic to the local app.
    for inbound in dp.inbounds:
        if inbound.ignored:
            continue
        cluster = f"localhost:{inbound.service_port}"
        local = _cluster(
            cluster,
            inbound.protocol,
            type="STATIC",
            loadAssignment=_load_assignment(cluster, [(inbound.service_address, inbound.service_port)]),
        )
        if proxy.transparent:
            # kuma-cp's inbound_proxy_generator: from 127.0.0.6, which the rules let through, so Envoy's own
            # connection to <pod IP>:<port> is not redirected back to its inbound listener.
            local["upstreamBindConfig"] = {"sourceAddress": {"address": "127.0.0.6", "portValue": 0}}
        snap.add(CLUSTER_TYPE, local)
        name = f"inbound:{inbound.address}:{inbound.port}"
        filt = _network_filter(name, cluster, inbound.protocol, inbound.service)
        # With the transparent proxy the inbound is reached through the 15006 listener (original
        # destination), so it does not bind: the app owns <address>:<port> (kuma-cp's TransparentProxying).
        listener = _listener(name, inbound.address, inbound.port, filt, "INBOUND", bind=not proxy.transparent)
        snap.add(LISTENER_TYPE, listener)

    if proxy.readiness_port and dp.admin_port and dp.address not in ("127.0.0.1", "::1"):
        _admin_proxy(snap, dp.address, dp.admin_port, proxy.readiness_port)

    # Outbound: declared outbounds, or (transparent proxy) one per other service on its VIP:80.
    targets: list[tuple[str, int, str]] = []
    if proxy.transparent:
        targets = [(vips[s], vips_mod.VIP_PORT, s) for s in services if s not in own and s in vips]
    else:
        targets = [(o.address, o.port, o.service) for o in dp.outbounds]
    for address, port, service in targets:
        svc = services.get(service)
        protocol = svc.protocol if svc else "tcp"
        if service not in snap.resources[CLUSTER_TYPE]:
            eds = {"edsConfig": {"ads": {}, "resourceApiVersion": "V3"}}
            snap.add(CLUSTER_TYPE, _cluster(service, protocol, type="EDS", edsClusterConfig=eds))
            endpoints = [(e.address, e.port) for e in svc.endpoints] if svc else []
            snap.add(ENDPOINT_TYPE, _load_assignment(service, endpoints))
        name = f"outbound:{address}:{port}"
        filt = _network_filter(service, service, protocol, service, outbound=True)
        snap.add(LISTENER_TYPE, _listener(name, address, port, filt, "OUTBOUND", bind=not proxy.transparent))

    if proxy.transparent:
        for direction, port, name in (
            ("OUTBOUND", proxy.outbound_port, "outbound:passthrough:ipv4"),
            ("INBOUND", proxy.inbound_port, "inbound:passthrough:ipv4"),
        ):
            snap.add(
                CLUSTER_TYPE,
                {
                    "name": name,
                    "connectTimeout": "5s",
                    "type": "ORIGINAL_DST",
                    "lbPolicy": "CLUSTER_PROVIDED",
                },
            )
            listener = _listener(name, "0.0.0.0", port, _network_filter(name, name, "tcp", name), direction)
            listener["useOriginalDst"] = True
            listener["listenerFilters"] = [
                {"name": "envoy.filters.listener.original_dst", "typedConfig": {"@type": ORIGINAL_DST}}
            ]
            snap.add(LISTENER_TYPE, listener)

    # /dns: with the transparent proxy only the VIPs it has outbounds for (as kuma-cp); without it every name,
    # so `kuma-dp run` without root can still resolve (and show) the mesh's names.
    domains = vips_mod.domains(vips)
    reachable = {a for a, _, _ in targets} if proxy.transparent else None
    dual = proxy.transparent and proxy.dual_stack
    payload = dns_payload(domains, reachable, dual, dp.mesh, dp.labels)
    extra_paths = policies_mod.apply(snap, proxy, policies, proxy.metadata)
    snap.add(
        LISTENER_TYPE,
        dynconf_listener(
            proxy.workdir, {"/dns": payload, **extra_paths}, proxy.ipv6_enabled, proxy.unified_naming
        ),
    )
    if (
        proxy.transparent
        and proxy.dns_port > 0
        and FEATURE_EMBEDDED_DNS not in proxy.features
        and FEATURE_BIND_OUTBOUNDS not in proxy.features
    ):
        snap.add(LISTENER_TYPE, dns_filter_listener(proxy.dns_port, domains, reachable, dual))
    return snap
