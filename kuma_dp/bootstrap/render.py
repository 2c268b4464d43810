"""Render the Envoy bootstrap kuma-cp would return for a bootstrap request.

One pure function, three callers: the dev control plane's `/bootstrap` server, `kuma-dp run
--bootstrap-source=local` and `kuma-dp bootstrap render`. The structure lives in
`bootstrap_templates/envoy_bootstrap_v3.yaml` (YAML fragments with typed `${name}` placeholders); this module
decides which fragments apply and computes their parameters, following kuma-cp v2.14.3's generator
(`pkg/xds/bootstrap/{generator,template_v3}.go`) and its golden files.

What kuma-cp knows and the request does not (where the CP listens, its CA, admin defaults, server switches,
the stored Dataplane) travels in `RenderParams`.
"""

from __future__ import annotations

import base64
import copy
import functools
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from kuma_dp.bootstrap.features import FEATURE_DELTA_GRPC, FEATURE_UNIFIED_RESOURCE_NAMING
from kuma_dp.paths import access_log_socket_path, admin_socket_path

TEMPLATE_PACKAGE = "bootstrap_templates"
TEMPLATE_FILE = "envoy_bootstrap_v3.yaml"

PROXY_TYPES = ("dataplane", "ingress", "egress")


class RenderError(ValueError):
    """The request and parameters cannot produce a bootstrap; the message names the input and the fix."""


@dataclass(frozen=True)
class RenderParams:
    """What the control plane knows: its address, its CA, admin defaults and its feature switches.

    Defaults are kuma-cp's (`KUMA_BOOTSTRAP_SERVER_PARAMS_*`, dp-server defaults) except `xds_host`, which
    kuma-cp takes from the request's Host header and the dev CP from where it listens.
    """

    #: Where Envoy reaches ADS. An IP literal gives a STATIC cluster, a name STRICT_DNS.
    xds_host: str = "127.0.0.1"
    xds_port: int = 5678
    #: TLS to the control plane (kuma-cp always). False only for a plaintext development control plane:
    #: then the ADS cluster has no transport socket and there is no `cp_validation_ctx` secret.
    xds_tls: bool = True
    #: PEM the CP would send as trusted CA (kuma-cp: its DP-server certificate); the request's `caCert`
    #: takes precedence. With `xds_tls` one of the two is required.
    ca_cert_pem: str | None = None
    admin_address: str = "127.0.0.1"
    #: Used when the Dataplane has no `networking.admin.port` (kuma-cp's defaultAdminPort). 0 = no admin.
    default_admin_port: int = 9901
    #: kuma-cp `bootstrapServer.params.envoyAdminUnixSocket`: admin on <workdir>/kuma-envoy-admin.sock.
    admin_unix_socket: bool = False
    admin_access_log_path: str = "/dev/null"
    xds_connect_timeout_s: float = 1.0
    xds_grpc_max_receive_message_bytes: int = 4194304
    #: dp-server `hds.enabled` (universal): adds `hdsConfig` for dataplane proxies.
    hds_enabled: bool = True
    #: `KUMA_DP_SERVER_AUTHN_ENABLE_RELOADABLE_TOKENS`: with a token path, Google gRPC + file credentials.
    reloadable_tokens: bool = False
    #: The Mesh has `meshServices.mode: Exclusive`; with the request feature it switches the bootstrap
    #: cluster names to `system_ads` / `system_access_log_sink`.
    mesh_services_exclusive: bool = False
    #: `gateway.globalDownstreamMaxConnections` of the CP's proxy config (builtin gateways).
    gateway_max_connections: int = 50000
    #: DNS lookup family of the ADS cluster, when the CP resolved `xds_host` (kuma-cp: "V4_ONLY" when a
    #: non-localhost name resolves to IPv4 only). None/"AUTO" = not emitted. Rendering never resolves names.
    xds_dns_lookup_family: str | None = None
    #: The stored Dataplane resource (mapping), used when the request carries no `dataplaneResource`.
    dataplane: Mapping[str, Any] | None = None


# -- template loading and filling ------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _fragments() -> Mapping[str, Any]:
    text = resources.files(TEMPLATE_PACKAGE).joinpath(TEMPLATE_FILE).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise RuntimeError(f"{TEMPLATE_PACKAGE}/{TEMPLATE_FILE}: expected a mapping of fragments")
    return data


def template_fragment(name: str, **values: Any) -> Any:
    """A fresh copy of fragment `name` with every `${key}` scalar replaced by `values[key]` (typed)."""
    try:
        fragment = _fragments()[name]
    except KeyError:
        raise RuntimeError(f"{TEMPLATE_PACKAGE}/{TEMPLATE_FILE}: no fragment {name!r}") from None
    return _fill(copy.deepcopy(fragment), values, name)


def _fill(node: Any, values: Mapping[str, Any], where: str) -> Any:
    if isinstance(node, str) and node.startswith("${") and node.endswith("}"):
        key = node[2:-1]
        if key not in values:
            raise RuntimeError(f"{TEMPLATE_PACKAGE}/{TEMPLATE_FILE}: fragment {where!r} needs ${{{key}}}")
        return values[key]
    if isinstance(node, dict):
        return {k: _fill(v, values, where) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, values, where) for v in node]
    return node


# -- helpers -------------------------------------------------------------------------------------------


def proto_duration(seconds: float) -> str:
    """protobuf-JSON Duration text: "1s", "0.250s" (0, 3, 6 or 9 fractional digits)."""
    nanos_total = round(seconds * 1_000_000_000)
    whole, nanos = divmod(nanos_total, 1_000_000_000)
    if nanos == 0:
        return f"{whole}s"
    if nanos % 1_000_000 == 0:
        return f"{whole}.{nanos // 1_000_000:03d}s"
    if nanos % 1_000 == 0:
        return f"{whole}.{nanos // 1_000:06d}s"
    return f"{whole}.{nanos:09d}s"


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_dataplane_resource(text: str) -> dict[str, Any]:
    """The request's `dataplaneResource`: kuma-cp parses it as YAML (so JSON with a trailing comma works)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RenderError(f"dataplaneResource: not valid JSON or YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RenderError("dataplaneResource: must be a JSON object describing a Dataplane")
    return data


def identifying_service(resource: Mapping[str, Any] | None) -> str:
    """kuma-cp's Dataplane.GetIdentifyingService: the sorted-first kuma.io/service of inbounds and gateway."""
    networking = (resource or {}).get("networking") or {}
    services: set[str] = set()
    for inbound in networking.get("inbound") or []:
        service = ((inbound or {}).get("tags") or {}).get("kuma.io/service")
        if service:
            services.add(str(service))
    gateway_service = ((networking.get("gateway") or {}).get("tags") or {}).get("kuma.io/service")
    if gateway_service:
        services.add(str(gateway_service))
    return min(services) if services else "unknown"


def is_builtin_gateway(resource: Mapping[str, Any] | None) -> bool:
    gateway = ((resource or {}).get("networking") or {}).get("gateway") or {}
    return str(gateway.get("type") or "").upper() == "BUILTIN"


def _admin_port_of(resource: Mapping[str, Any] | None) -> int:
    admin = ((resource or {}).get("networking") or {}).get("admin") or {}
    try:
        return int(admin.get("port") or 0)
    except (TypeError, ValueError):
        raise RenderError(f"networking.admin.port: must be a number, got {admin.get('port')!r}") from None


def _version_struct(version: Any) -> dict[str, Any]:
    """node.metadata.version as kuma-cp writes it: proto3-JSON of mesh Version (zero values omitted)."""
    version = version if isinstance(version, Mapping) else {}
    out: dict[str, Any] = {}
    for part, keys in (
        ("kumaDp", ("version", "gitTag", "gitCommit", "buildDate")),
        ("envoy", ("version", "build", "kumaDpCompatible")),
    ):
        src = version.get(part) if isinstance(version.get(part), Mapping) else {}
        out[part] = {k: src[k] for k in keys if src.get(k) not in (None, "", False)}
    return out


def _uint(request: Mapping[str, Any], key: str) -> int:
    value = request.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RenderError(f"{key}: must be a non-negative integer, got {value!r}")
    return value


def _str(request: Mapping[str, Any], key: str) -> str:
    value = request.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RenderError(f"{key}: must be a string, got {type(value).__name__}")
    return value


def _nested_str(request: Mapping[str, Any], key: str, sub: str) -> str:
    obj = request.get(key)
    if isinstance(obj, Mapping) and isinstance(obj.get(sub), str):
        return str(obj[sub])
    return ""


# -- the renderer ----------------------------------------------------------------------------------------


def render_bootstrap(request: Mapping[str, Any], params: RenderParams) -> dict[str, Any]:
    """The Envoy v3 Bootstrap (protobuf-JSON camelCase data) for a BootstrapRequest (the JSON of Kuma's
    `pkg/xds/bootstrap/types/bootstrap_request.go`).

    The Dataplane is the request's `dataplaneResource` (parsed as YAML, copied verbatim into node metadata)
    or else `params.dataplane`. Validation of the resource against the store (422s) is the server's job;
    this raises RenderError only for inputs it cannot render at all.
    """
    if not isinstance(request, Mapping):
        raise RenderError("bootstrap request: must be a JSON object")
    mesh = _str(request, "mesh")
    name = _str(request, "name")
    proxy_type = _str(request, "proxyType") or "dataplane"
    if proxy_type not in PROXY_TYPES:
        choices = ", ".join(PROXY_TYPES)
        raise RenderError(f"proxyType: unknown proxy type {proxy_type!r}; use one of {choices}")
    workdir = _str(request, "workdir")
    features_raw = request.get("features") or []
    if not isinstance(features_raw, list) or not all(isinstance(f, str) for f in features_raw):
        raise RenderError("features: must be a list of strings")
    features: list[str] = list(features_raw)
    token = _str(request, "dataplaneToken")
    token_path = _str(request, "dataplaneTokenPath")
    resource_text = _str(request, "dataplaneResource")

    resource: Mapping[str, Any] | None
    resource = parse_dataplane_resource(resource_text) if resource_text else params.dataplane

    if proxy_type == "dataplane":
        service = identifying_service(resource)
        gateway = is_builtin_gateway(resource)
        hds = params.hds_enabled
    else:
        service = proxy_type
        gateway = False
        hds = False
    resource_port = _admin_port_of(resource)
    admin_port = resource_port or params.default_admin_port

    # ADS transport: the proxy resource's explicit choice, else the agent's delta feature.
    variant = str(((resource or {}).get("envoy") or {}).get("xdsTransportProtocolVariant") or "")
    if variant.upper() in ("GRPC", "DELTA_GRPC"):
        ads_api_type = variant.upper()
    else:
        ads_api_type = "DELTA_GRPC" if FEATURE_DELTA_GRPC in features else "GRPC"

    unified = params.mesh_services_exclusive and FEATURE_UNIFIED_RESOURCE_NAMING in features
    ads_cluster_name = "system_ads" if unified else "ads_cluster"
    access_log_cluster_name = "system_access_log_sink" if unified else "access_log_sink"

    ca_bytes: str | None = None
    if params.xds_tls:
        pem = _str(request, "caCert") or params.ca_cert_pem
        if not pem:
            raise RenderError(
                "caCert: no CA for the TLS connection to the control plane; send caCert in the request, "
                "give the control plane's CA (RenderParams.ca_cert_pem / --ca-cert-file), or render for a "
                "plaintext control plane (xds_tls=False / --plaintext)"
            )
        ca_bytes = base64.b64encode(pem.encode()).decode()

    xds_host = params.xds_host
    target_host = f"[{xds_host}]" if ":" in xds_host and is_ip(xds_host) else xds_host
    use_google_grpc = params.reloadable_tokens and bool(token_path)
    if use_google_grpc:
        grpc_service = template_fragment(
            "grpc_service_google",
            target_uri=f"{target_host}:{params.xds_port}",
            token_path=token_path,
            max_receive_message_length=str(params.xds_grpc_max_receive_message_bytes),
        )
        if ca_bytes is not None:
            grpc_service["googleGrpc"]["channelCredentials"] = template_fragment(
                "google_grpc_ssl_credentials", ca_bytes=ca_bytes
            )
    else:
        grpc_service = template_fragment("grpc_service_envoy", ads_cluster_name=ads_cluster_name)
        if token:
            grpc_service["initialMetadata"] = template_fragment("initial_metadata_token", token=token)

    connect_timeout = proto_duration(params.xds_connect_timeout_s)
    clusters: list[dict[str, Any]] = [
        template_fragment(
            "access_log_sink_cluster",
            access_log_cluster_name=access_log_cluster_name,
            connect_timeout=connect_timeout,
            access_log_path=access_log_socket_path(workdir, name, mesh),
        )
    ]
    if not use_google_grpc:
        ads = template_fragment(
            "ads_cluster",
            ads_cluster_name=ads_cluster_name,
            xds_cluster_type="STATIC" if is_ip(xds_host) else "STRICT_DNS",
            connect_timeout=connect_timeout,
            xds_host=xds_host,
            xds_port=params.xds_port,
        )
        family = (params.xds_dns_lookup_family or "").upper()
        if family and family != "AUTO":
            ads["dnsLookupFamily"] = family
        if params.xds_tls:
            ads["transportSocket"] = template_fragment("ads_tls_transport_socket", xds_host=xds_host)
        clusters.append(ads)

    metadata = _node_metadata(
        request,
        features=features,
        workdir=workdir,
        proxy_type=proxy_type,
        resource_text=resource_text,
    )
    if params.admin_unix_socket:
        metadata["dataplane.admin.socketPath"] = admin_socket_path(workdir)
    elif admin_port:
        metadata["dataplane.admin.port"] = str(admin_port)
        metadata["dataplane.admin.address"] = params.admin_address

    bootstrap: dict[str, Any] = template_fragment(
        "bootstrap",
        node_id=f"{mesh}.{name}",
        service=service,
        node_metadata=metadata,
        ads_api_type=ads_api_type,
        grpc_service=grpc_service,
        static_clusters=clusters,
    )
    if params.xds_tls:
        bootstrap["staticResources"]["secrets"] = [
            template_fragment("cp_validation_ctx_secret", xds_host=xds_host, ca_bytes=ca_bytes)
        ]
    if hds:
        bootstrap["hdsConfig"] = template_fragment("hds_config", grpc_service=copy.deepcopy(grpc_service))

    admin: dict[str, Any] | None = None
    if params.admin_unix_socket:
        admin = template_fragment("admin_pipe", admin_socket_path=admin_socket_path(workdir))
    elif admin_port:
        admin = template_fragment("admin_tcp", admin_address=params.admin_address, admin_port=admin_port)
    if admin is not None:
        if params.admin_access_log_path:
            admin["accessLog"] = [
                template_fragment("admin_access_log", admin_access_log=params.admin_access_log_path)
            ]
        bootstrap["admin"] = admin

    if gateway:
        bootstrap["layeredRuntime"]["layers"].append(template_fragment("gateway_runtime_layer"))
        overload = template_fragment(
            "gateway_overload_manager", max_connections=str(params.gateway_max_connections or 50000)
        )
        max_heap = _nested_uint(request, "resources", "maxHeapSizeBytes")
        if max_heap > 0:
            overload["resourceMonitors"].append(
                template_fragment("gateway_fixed_heap_monitor", max_heap_size_bytes=str(max_heap))
            )
            overload["actions"] = template_fragment("gateway_fixed_heap_actions")
        bootstrap["overloadManager"] = overload
    return bootstrap


def _nested_uint(request: Mapping[str, Any], key: str, sub: str) -> int:
    obj = request.get(key)
    value = obj.get(sub) if isinstance(obj, Mapping) else 0
    value = value or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RenderError(f"{key}.{sub}: must be a non-negative integer, got {value!r}")
    return value


def _node_metadata(
    request: Mapping[str, Any],
    *,
    features: list[str],
    workdir: str,
    proxy_type: str,
    resource_text: str,
) -> dict[str, Any]:
    """node.metadata: what the control plane reads back on the ADS stream (pkg/core/xds/metadata.go)."""
    metadata: dict[str, Any] = {
        "version": _version_struct(request.get("version")),
        "features": list(features),
        "workdir": workdir,
        "metricsCertPath": _nested_str(request, "metricsResources", "certPath"),
        "metricsKeyPath": _nested_str(request, "metricsResources", "keyPath"),
        "systemCaPath": _str(request, "systemCaPath"),
        "spireAgent.socketPath": _nested_str(request, "spireResources", "socketPath"),
        "ipv6Enabled": bool(request.get("ipv6Enabled")),
        "dataplane.proxyType": proxy_type,
    }
    if resource_text:
        metadata["dataplane.resource"] = resource_text
    dns_port = _uint(request, "dnsPort")
    if dns_port:
        metadata["dataplane.dns.port"] = str(dns_port)
    readiness_port = _uint(request, "readinessPort")
    if readiness_port:
        metadata["dataplane.readinessReporter.port"] = str(readiness_port)
    # The wire name means "enabled", kept for old CPs (`AppProbeProxyEnabled` in Kuma's bootstrap_request.go).
    if request.get("appProbeProxyDisabled") is True:
        metadata["dataplane.appProbeProxy.enabled"] = "true"
    dynamic = request.get("dynamicMetadata")
    if isinstance(dynamic, Mapping) and dynamic:
        metadata["dynamicMetadata"] = {str(k): str(v) for k, v in dynamic.items()}
    if isinstance(request.get("dataplaneConfig"), Mapping):
        metadata["transparentProxy"] = json.loads(json.dumps(request["dataplaneConfig"]))
    if isinstance(request.get("otelEnv"), Mapping):
        metadata["otelEnvInventory"] = json.loads(json.dumps(request["otelEnv"]))
    return metadata


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Block-style YAML; multi-line strings (the dataplane resource, PEMs) as literal blocks. On libyaml's
    emitter when PyYAML has it: the same text, about 8 times faster (the dev CP renders a bootstrap per
    request, on the start-up path of every `kuma-dp run`)."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not value.startswith((" ", "\n")) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def dump_yaml(bootstrap: Mapping[str, Any]) -> str:
    """YAML text of a rendered bootstrap, keys sorted like kuma-cp's output; Envoy reads it as is.

    Non-ASCII is escaped: with raw Unicode PyYAML writes NEL/LS/PS as is, and YAML readers fold them into
    line breaks (a name with U+0085 would come back changed).
    """
    return yaml.dump(
        bootstrap, Dumper=_Dumper, sort_keys=True, default_flow_style=False, allow_unicode=False, width=100000
    )
