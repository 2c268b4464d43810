"""A Pod manifest, as kuma-cp's injector outputs it, read the way kubelet reads it: containers in their
order and roles, env with fieldRef and `$(VAR)` expansion, securityContext, volume mounts and probes with
kubelet's defaults (period 10 s, timeout 1 s, success 1, failure 3), named ports resolved.

Pure: no processes, no namespaces; `runtime.py` acts on what this returns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SIDECAR_NAME = "kuma-sidecar"


class PodSpecError(ValueError):
    """The manifest cannot be run; the message names the field."""


@dataclass(frozen=True)
class Probe:
    """One kubelet probe (`kind`: http | tcp | grpc | exec) with kubelet's defaults filled in."""

    kind: str
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    host: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    service: str = ""
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class Mount:
    volume: str
    path: str
    read_only: bool = False


@dataclass
class Container:
    name: str
    image: str
    command: list[str]
    args: list[str]
    env: list[Mapping[str, Any]]
    ports: dict[str, int]
    mounts: list[Mount]
    uid: int | None
    gid: int | None
    read_only_root: bool
    caps_add: list[str]
    drop_all: bool
    no_new_privs: bool
    #: init containers only: "Always" makes it a native sidecar.
    restart_policy: str = ""
    init: bool = False
    startup: Probe | None = None
    liveness: Probe | None = None
    readiness: Probe | None = None
    pre_stop: list[str] = field(default_factory=list)

    @property
    def native_sidecar(self) -> bool:
        return self.init and self.restart_policy == "Always"


@dataclass
class PodSpec:
    name: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    init_containers: list[Container]
    containers: list[Container]
    volumes: dict[str, Mapping[str, Any]]
    termination_grace: float
    manifest: Mapping[str, Any]

    @property
    def all_containers(self) -> list[Container]:
        return [*self.init_containers, *self.containers]

    def container(self, name: str) -> Container:
        for c in self.all_containers:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def sidecar(self) -> Container | None:
        return next((c for c in self.all_containers if c.name == SIDECAR_NAME), None)


def _port(value: Any, ports: Mapping[str, int], what: str) -> int:
    if isinstance(value, int):
        return value
    text = str(value)
    if text.isdigit():
        return int(text)
    if text in ports:
        return ports[text]
    raise PodSpecError(f"{what}: named port {text!r} is not a port of the container")


def parse_probe(raw: Mapping[str, Any] | None, ports: Mapping[str, int], what: str) -> Probe | None:
    if not raw:
        return None
    timing = {
        "initial_delay": float(raw.get("initialDelaySeconds") or 0),
        "period": float(raw.get("periodSeconds") or 10),
        "timeout": float(raw.get("timeoutSeconds") or 1),
        "success_threshold": int(raw.get("successThreshold") or 1),
        "failure_threshold": int(raw.get("failureThreshold") or 3),
    }
    if "httpGet" in raw:
        h = raw["httpGet"]
        headers = tuple((str(x["name"]), str(x["value"])) for x in h.get("httpHeaders") or [])
        return Probe(
            "http",
            port=_port(h.get("port"), ports, what),
            path=str(h.get("path") or "/"),
            scheme=str(h.get("scheme") or "HTTP"),
            host=str(h.get("host") or ""),
            headers=headers,
            **timing,
        )
    if "tcpSocket" in raw:
        t = raw["tcpSocket"]
        return Probe("tcp", port=_port(t.get("port"), ports, what), host=str(t.get("host") or ""), **timing)
    if "grpc" in raw:
        g = raw["grpc"]
        return Probe("grpc", port=int(g.get("port")), service=str(g.get("service") or ""), **timing)
    if "exec" in raw:
        return Probe("exec", command=tuple(str(c) for c in raw["exec"].get("command") or []), **timing)
    raise PodSpecError(f"{what}: a probe needs httpGet, tcpSocket, grpc or exec")


def _container(raw: Mapping[str, Any], init: bool, pod_sc: Mapping[str, Any]) -> Container:
    name = str(raw.get("name") or "")
    if not name:
        raise PodSpecError("a container has no name")
    ports = {str(p["name"]): int(p["containerPort"]) for p in raw.get("ports") or [] if p.get("name")}
    sc = raw.get("securityContext") or {}
    caps = sc.get("capabilities") or {}
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    pre_stop = ((raw.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command") or []
    return Container(
        name=name,
        image=str(raw.get("image") or ""),
        command=[str(c) for c in raw.get("command") or []],
        args=[str(a) for a in raw.get("args") or []],
        env=list(raw.get("env") or []),
        ports={**ports, **{str(p["containerPort"]): int(p["containerPort"]) for p in raw.get("ports") or []}},
        mounts=[
            Mount(str(m["name"]), str(m["mountPath"]), bool(m.get("readOnly")))
            for m in raw.get("volumeMounts") or []
        ],
        uid=None if uid is None else int(uid),
        gid=None if gid is None else int(gid),
        read_only_root=bool(sc.get("readOnlyRootFilesystem")),
        caps_add=[str(c) for c in caps.get("add") or []],
        drop_all="ALL" in [str(c).upper() for c in caps.get("drop") or []],
        no_new_privs=sc.get("allowPrivilegeEscalation") is False,
        restart_policy=str(raw.get("restartPolicy") or ""),
        init=init,
        startup=parse_probe(raw.get("startupProbe"), ports, f"{name}.startupProbe"),
        liveness=parse_probe(raw.get("livenessProbe"), ports, f"{name}.livenessProbe"),
        readiness=parse_probe(raw.get("readinessProbe"), ports, f"{name}.readinessProbe"),
        pre_stop=[str(c) for c in pre_stop],
    )


def parse_pod(manifest: Mapping[str, Any], namespace: str = "default", name: str | None = None) -> PodSpec:
    """Read a Pod manifest; `name` overrides metadata.name (a second copy of the same manifest)."""
    if not isinstance(manifest, Mapping) or manifest.get("kind", "Pod") != "Pod":
        raise PodSpecError("kind: the manifest is not a Pod")
    meta = manifest.get("metadata") or {}
    spec = manifest.get("spec") or {}
    pod_name = name or str(meta.get("name") or "")
    if not pod_name:
        raise PodSpecError("metadata.name: the Pod has no name")
    pod_sc = spec.get("securityContext") or {}
    inits = [_container(c, True, pod_sc) for c in spec.get("initContainers") or []]
    mains = [_container(c, False, pod_sc) for c in spec.get("containers") or []]
    if not mains:
        raise PodSpecError("spec.containers: the Pod has no containers")
    volumes = {str(v["name"]): v for v in spec.get("volumes") or []}
    for c in [*inits, *mains]:
        for m in c.mounts:
            if m.volume not in volumes:
                raise PodSpecError(f"{c.name}.volumeMounts: volume {m.volume!r} is not in spec.volumes")
    return PodSpec(
        name=pod_name,
        namespace=str(meta.get("namespace") or namespace),
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
        init_containers=inits,
        containers=mains,
        volumes=volumes,
        termination_grace=float(spec.get("terminationGracePeriodSeconds") or 30),
        manifest=manifest,
    )


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """kubelet's `$(VAR)` expansion (`$$` escapes); an unknown reference stays as written."""

    def sub(m: re.Match[str]) -> str:
        return env.get(m.group(1), m.group(0))

    parts = text.split("$$")
    return "$".join(_VAR.sub(sub, p) for p in parts)


def field_ref(path: str, pod: PodSpec, pod_ip: str, node_ip: str, node_name: str) -> str:
    """The downward API values kubelet resolves for `valueFrom.fieldRef`."""
    simple = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": node_ip,
        "spec.nodeName": node_name,
        "spec.serviceAccountName": str(
            (pod.manifest.get("spec") or {}).get("serviceAccountName") or "default"
        ),
    }
    if path in simple:
        return simple[path]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        source = pod.labels if m.group(1) == "labels" else pod.annotations
        return source.get(m.group(2), "")
    raise PodSpecError(f"fieldRef {path!r} is not supported by the pod runtime")


def container_env(
    c: Container, pod: PodSpec, pod_ip: str, node_ip: str, node_name: str, base: Mapping[str, str]
) -> dict[str, str]:
    """The container's environment: the image's (`base`), then `env` in order with fieldRefs resolved."""
    env = dict(base)
    for item in c.env:
        key = str(item["name"])
        if "value" in item:
            env[key] = expand(str(item["value"]), env)
        elif "fieldRef" in (item.get("valueFrom") or {}):
            env[key] = field_ref(
                str(item["valueFrom"]["fieldRef"]["fieldPath"]), pod, pod_ip, node_ip, node_name
            )
        else:
            raise PodSpecError(f"{c.name}.env[{key}]: only value and fieldRef are supported")
    return env


def probe_proxy_port(pod: PodSpec) -> int:
    """The application probe proxy port kuma-cp wrote (sidecar env, else the pod annotation); 0 = off."""
    sidecar = pod.sidecar
    for item in sidecar.env if sidecar else []:
        if item.get("name") == "KUMA_APPLICATION_PROBE_PROXY_PORT" and "value" in item:
            return int(item["value"] or 0)
    return int(pod.annotations.get("kuma.io/application-probe-proxy-port") or 0)


def probe_targets(c: Container, proxy_port: int) -> dict[str, set[int]]:
    """The ports an app must serve for its probes, undoing the injector's rewrite to the probe proxy
    (`/<port>/<path>` is HTTP on <port>, `/tcp/<port>` TCP, `/grpc/<port>[/service]` gRPC), plus the
    container's declared ports as HTTP."""
    out: dict[str, set[int]] = {"http": set(), "tcp": set(), "grpc": set()}
    for probe in (c.startup, c.liveness, c.readiness):
        if probe is None or probe.kind == "exec":
            continue
        if probe.kind == "http" and proxy_port and probe.port == proxy_port:
            parts = probe.path.lstrip("/").split("/")
            if parts[0] in ("tcp", "grpc") and len(parts) > 1 and parts[1].isdigit():
                out[parts[0]].add(int(parts[1]))
            elif parts[0].isdigit():
                out["http"].add(int(parts[0]))
            continue
        out[probe.kind].add(probe.port)
    out["http"].update(p for p in c.ports.values() if p not in out["tcp"] | out["grpc"])
    return out
