"""The injector's side of the probe proxy contract: how kuma-cp rewrites a Pod's probes to go through the
proxy, as kumahq/kuma v2.14.3 `pkg/plugins/runtime/k8s/probes/` (`probe_converter.go`,
`pod_probe_overrider.go`, `headers.go`, and the older virtual probes of `probe.go`).

The agent does not run this: it is the definition of the requests the proxy (`kuma_dp.probes.proxy`)
receives, kept next to it so both sides are tested together, and what a test pod runtime uses to turn a
Pod as written into the Pod kubelet would run. Probes are the dicts of a Pod's YAML (`httpGet`, `tcpSocket`,
`grpc`, `timeoutSeconds`, ...); the functions return new dicts and leave their input alone.
"""

from __future__ import annotations

import copy
from typing import Any

KUMA_PROBE_HEADER_PREFIX = "X-Kuma-Probes-"
HEADER_TIMEOUT = KUMA_PROBE_HEADER_PREFIX + "Timeout"
HEADER_HOST = KUMA_PROBE_HEADER_PREFIX + "Host"
HEADER_SCHEME = KUMA_PROBE_HEADER_PREFIX + "Scheme"
HEADER_GRPC_SERVICE = KUMA_PROBE_HEADER_PREFIX + "GRPC-Service"

ANNOTATION_PROBE_PROXY_PORT = "kuma.io/application-probe-proxy-port"
ANNOTATION_VIRTUAL_PROBES = "kuma.io/virtual-probes"
ANNOTATION_GATEWAY = "kuma.io/gateway"
SIDECAR_CONTAINER = "kuma-sidecar"

Probe = dict[str, Any]


class ProbeConversionError(ValueError):
    """The injector refuses the Pod (Kuma's error text)."""


def int_value(port: Any) -> int:
    """`intstr.IntOrString.IntValue()`: a number, or a string parsed with Atoi (0 when it is a name)."""
    if isinstance(port, bool):
        return 0
    if isinstance(port, int):
        return port
    try:
        return int(str(port)) if str(port).lstrip("+-").isdigit() else 0
    except ValueError:
        return 0


def _reserved(virtual_port: int) -> ProbeConversionError:
    return ProbeConversionError(
        "cannot override Pod's probes. Port for probe cannot "
        f"be set to {virtual_port}. It is reserved for the dataplane that will serve pods without mTLS."
    )


def overriding_supported(probe: Probe) -> bool:
    """`ProxiedApplicationProbe.OverridingSupported`: HTTP, TCP and gRPC probes (not exec)."""
    return any(probe.get(k) is not None for k in ("httpGet", "tcpSocket", "grpc"))


def to_virtual(probe: Probe, virtual_port: int) -> Probe:
    """`ProxiedApplicationProbe.ToVirtual`: the `httpGet` the kubelet sends to the proxy instead."""
    timeout = int(probe.get("timeoutSeconds") or 0)
    headers: list[dict[str, str]] = []
    if probe.get("httpGet") is not None:
        get = probe["httpGet"]
        app_port = int_value(get.get("port"))
        if app_port == virtual_port:
            raise _reserved(virtual_port)
        path = get.get("path") or ""
        if not path.startswith("/"):
            path = "/" + path
        for h in get.get("httpHeaders") or []:
            # Only the first header named exactly "Host" is renamed (slices.IndexFunc).
            if h.get("name") == "Host" and not any(x["name"] == HEADER_HOST for x in headers):
                headers.append({"name": HEADER_HOST, "value": h.get("value", "")})
            else:
                headers.append(dict(h))
        scheme = get.get("scheme") or ""
        if scheme not in ("", "HTTP"):
            headers.append({"name": HEADER_SCHEME, "value": scheme})
        if timeout > 1:
            headers.append({"name": HEADER_TIMEOUT, "value": str(timeout)})
        target = f"/{app_port}{path}"
    elif probe.get("tcpSocket") is not None:
        app_port = int_value(probe["tcpSocket"].get("port"))
        if app_port == virtual_port:
            raise _reserved(virtual_port)
        if timeout > 1:
            headers.append({"name": HEADER_TIMEOUT, "value": str(timeout)})
        target = f"/tcp/{app_port}"
    elif probe.get("grpc") is not None:
        app_port = int(probe["grpc"].get("port") or 0)
        if app_port == virtual_port:
            raise _reserved(virtual_port)
        if timeout > 1:
            headers.append({"name": HEADER_TIMEOUT, "value": str(timeout)})
        service = probe["grpc"].get("service")
        if service:
            headers.append({"name": HEADER_GRPC_SERVICE, "value": service})
        target = f"/grpc/{app_port}"
    else:
        raise ProbeConversionError("unsupported probe type")
    get_action: dict[str, Any] = {"port": virtual_port, "path": target}
    if headers:
        get_action["httpHeaders"] = headers
    return {"httpGet": get_action}


def resolve_named_port(probe: Probe, container_ports: list[dict[str, Any]]) -> None:
    """`namedPortResolver`: an HTTP or TCP probe's named port becomes the container port of that name
    (gRPC ports are numbers). A name no port has stays, and counts as port 0 (`IntValue()`).
    """
    action = probe.get("httpGet") if probe.get("httpGet") is not None else probe.get("tcpSocket")
    if action is None or int_value(action.get("port")) != 0:
        return
    for cp in container_ports:
        if cp.get("name") and cp.get("name") == str(action.get("port")):
            action["port"] = int(cp["containerPort"])
            return


def override_probe(probe: Probe | None, virtual_port: int, container_ports: list[dict[str, Any]]) -> None:
    """`overrideProbe`: rewrite one probe in place (period, thresholds and timeout stay as they are)."""
    if probe is None or not overriding_supported(probe):
        return
    resolve_named_port(probe, container_ports)
    virtual = to_virtual(probe, virtual_port)
    probe.pop("grpc", None)
    probe.pop("tcpSocket", None)
    probe["httpGet"] = virtual["httpGet"]


def setup_app_probe_proxies(pod: dict[str, Any]) -> dict[str, Any]:
    """`SetupAppProbeProxies`: the Pod with every application container's liveness, readiness and startup
    probe rewritten to the port in the `kuma.io/application-probe-proxy-port` annotation (0 or absent: the
    Pod unchanged). Native sidecars after kuma-sidecar count as application containers; kuma-sidecar does not.
    """
    pod = copy.deepcopy(pod)
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    port = int(annotations.get(ANNOTATION_PROBE_PROXY_PORT) or 0)
    if port == 0:
        return pod
    spec = pod.get("spec") or {}
    containers = []
    after_sidecar = False
    for c in spec.get("initContainers") or []:
        if c.get("name") == SIDECAR_CONTAINER:
            after_sidecar = True
            continue
        if after_sidecar and c.get("restartPolicy") == "Always":
            containers.append(c)
    containers += [c for c in spec.get("containers") or [] if c.get("name") != SIDECAR_CONTAINER]
    for c in containers:
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            override_probe(c.get(kind), port, c.get("ports") or [])
    return pod


def _enabled(value: str | None) -> tuple[bool, bool]:
    """`Annotations.GetEnabled`: (enabled, present)."""
    if value is None:
        return False, False
    if value in ("enabled", "true"):
        return True, True
    if value in ("disabled", "false"):
        return False, True
    raise ProbeConversionError(f"annotation has wrong value {value!r}")


def application_probe_proxy_port(annotations: dict[str, str], default_port: int) -> int:
    """`GetApplicationProbeProxyPort`: which proxy port a Pod gets (0 = off)."""
    raw = annotations.get(ANNOTATION_PROBE_PROXY_PORT)
    port = int(raw) if raw is not None else 0
    vp_enabled, vp_exists = _enabled(annotations.get(ANNOTATION_VIRTUAL_PROBES))
    gw_enabled, _ = _enabled(annotations.get(ANNOTATION_GATEWAY))
    if gw_enabled and port > 0:
        raise ProbeConversionError("application probe proxies probes can't be enabled in gateway mode")
    if gw_enabled:
        return 0
    if raw is not None:
        return port
    if vp_exists and vp_enabled:
        return default_port
    if vp_exists:
        return 0
    return default_port


# -- virtual probes (probe.go), the mechanism the probe proxy replaced ---------------------------------------


def virtual_to_real(probe: Probe, virtual_port: int) -> Probe:
    """`KumaProbe.ToReal`: the application probe behind a virtual one ({} for /tcp and /grpc paths)."""
    get = probe.get("httpGet") or {}
    if int_value(get.get("port")) != virtual_port:
        raise ProbeConversionError(
            f"probe's port {int_value(get.get('port'))} should be equal to virtual port {virtual_port}"
        )
    segments = (get.get("path") or "").split("/")
    if len(segments) < 2 or segments[0] != "":
        raise ProbeConversionError("not enough segments in probe's path")
    if segments[1] in ("tcp", "grpc"):
        return {}
    if not segments[1].lstrip("+-").isdigit() or not -(2**31) <= int(segments[1]) < 2**31:
        raise ProbeConversionError(f"invalid port value {segments[1]}")
    return {"httpGet": {"port": int(segments[1]), "path": "/" + "/".join(segments[2:])}}


def real_to_virtual(probe: Probe, virtual_port: int) -> Probe:
    """`KumaProbe.ToVirtual`: the virtual-probe form (port and path only, no headers)."""
    get = probe.get("httpGet") or {}
    port = int_value(get.get("port"))
    if port == virtual_port:
        raise _reserved(virtual_port)
    path = get.get("path") or ""
    if not path.startswith("/"):
        path = "/" + path
    return {"httpGet": {"port": virtual_port, "path": f"/{port}{path}"}}
