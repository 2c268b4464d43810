"""The development control plane's store: meshes, dataplanes and hand-described services.

kuma-cp keeps these in a database; the dev CP keeps them in memory, seeded from `--state file.yaml` so a user
can describe a mesh by hand. Everything the HTTP /bootstrap service and the ADS server decide is read from one
`Store`; every change bumps `Store.version` and wakes the subscribers (the ADS server pushes to its streams).

The state file (all keys optional):

```yaml
meshes: [default]                 # names, or [{name: default}]; "default" always exists
dataplanes:                       # Dataplane resources, as `kumactl apply` takes them; they never expire
  - {type: Dataplane, mesh: default, name: web-1, networking: {address: 127.0.0.1, inbound: [...]}}
services:                         # services without a sidecar: endpoints reached directly
  - {mesh: default, name: httpbin, protocol: http, endpoints: [{address: 127.0.0.1, port: 8080}]}
```
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SERVICE_TAG = "kuma.io/service"
PROTOCOL_TAG = "kuma.io/protocol"
DEFAULT_MESH = "default"

#: kuma-cp's 422 text when a transparent-proxy Dataplane declares outbounds (`dataplaneFor` in Kuma's
#: `pkg/xds/bootstrap/generator.go`).
TPROXY_OUTBOUND_ERROR = "outbound: should be empty since dataplane is in Transparent Proxying mode"


class StateError(ValueError):
    """A Dataplane or state file is invalid; the message is what kuma-cp would answer (422 body)."""


@dataclass(frozen=True)
class Inbound:
    """One inbound: Envoy listens on `address:port`, the app serves on `service_address:service_port`."""

    port: int
    service_port: int
    address: str
    service_address: str
    tags: Mapping[str, str]
    #: `state` (Ready/NotReady/Ignored) folded with `health.ready`: only ready inbounds are endpoints.
    ready: bool = True
    #: `state: Ignored`: not part of the mesh at all (no endpoint, no VIP).
    ignored: bool = False

    @property
    def service(self) -> str:
        return self.tags[SERVICE_TAG]

    @property
    def protocol(self) -> str:
        return self.tags.get(PROTOCOL_TAG, "tcp")


@dataclass(frozen=True)
class Outbound:
    """A declared outbound: Envoy listens on `address:port` and forwards to `service`."""

    address: str
    port: int
    service: str


@dataclass(frozen=True)
class TransparentProxying:
    redirect_port_inbound: int = 15006
    redirect_port_outbound: int = 15001
    ip_family_mode: str = ""

    @property
    def enabled(self) -> bool:
        return self.redirect_port_outbound > 0 or self.redirect_port_inbound > 0


@dataclass(frozen=True)
class Dataplane:
    """The parts of a Kuma Dataplane resource the dev CP acts on (schema: Kuma's
    `api/mesh/v1alpha1/dataplane.proto`)."""

    mesh: str
    name: str
    address: str
    inbounds: tuple[Inbound, ...] = ()
    outbounds: tuple[Outbound, ...] = ()
    transparent_proxying: TransparentProxying | None = None
    admin_port: int = 9901
    labels: Mapping[str, str] = field(default_factory=dict)
    #: The resource as received, for echoing back (e.g. in logs or `kumactl get`-like output).
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.mesh, self.name)

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(sorted({i.service for i in self.inbounds}))

    @property
    def transparent(self) -> bool:
        return self.transparent_proxying is not None and self.transparent_proxying.enabled


@dataclass(frozen=True)
class Endpoint:
    """Where traffic for a service goes: a sidecar's inbound, or a bare endpoint from the state file."""

    address: str
    port: int
    #: (mesh, name) of the Dataplane behind it, or None for a hand-described service endpoint.
    dataplane: tuple[str, str] | None = None


@dataclass(frozen=True)
class Service:
    mesh: str
    name: str
    protocol: str = "tcp"
    endpoints: tuple[Endpoint, ...] = ()


def _require_mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise StateError(f"{what}: must be an object")
    return value


def _port(value: Any, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise StateError(f"{what}: port must be a number, got {value!r}") from None
    if not 0 < port < 65536:
        raise StateError(f"{what}: port must be in the range [1, 65535], got {port}")
    return port


def _tags(value: Any, what: str) -> dict[str, str]:
    tags = _require_mapping(value, f"{what}.tags")
    return {str(k): str(v) for k, v in tags.items()}


def parse_dataplane(resource: Mapping[str, Any] | str, *, mesh: str = "", name: str = "") -> Dataplane:
    """Parse and validate a Dataplane resource (a mapping, or its JSON/YAML text as kuma-dp sends it).

    `mesh`/`name` fill in what the resource omits (the bootstrap request carries them separately).
    Raises StateError with a kuma-cp style message.
    """
    if isinstance(resource, str):
        try:
            resource = yaml.safe_load(resource)
        except yaml.YAMLError as exc:
            raise StateError(f"dataplane resource is not valid JSON or YAML: {exc}") from None
    res = _require_mapping(resource, "dataplane")
    kind = res.get("type", "Dataplane")
    if kind != "Dataplane":
        raise StateError(f"type: should be Dataplane, got {kind!r}")
    mesh = str(res.get("mesh") or mesh or DEFAULT_MESH)
    name = str(res.get("name") or name)
    if not name:
        raise StateError("name: must be non-empty")
    net = _require_mapping(res.get("networking"), "networking")
    address = str(net.get("address") or "")
    if not address:
        raise StateError("networking.address: can't be empty")
    inbounds: list[Inbound] = []
    for i, raw in enumerate(net.get("inbound") or []):
        what = f"networking.inbound[{i}]"
        raw = _require_mapping(raw, what)
        tags = _tags(raw.get("tags"), what)
        if SERVICE_TAG not in tags or not tags[SERVICE_TAG]:
            raise StateError(f'{what}.tags["{SERVICE_TAG}"]: tag has to exist')
        port = _port(raw.get("port"), what)
        state = str(raw.get("state") or "Ready")
        if state not in ("Ready", "NotReady", "Ignored"):
            raise StateError(f"{what}.state: must be one of Ready, NotReady, Ignored, got {state!r}")
        health = _require_mapping(raw.get("health"), f"{what}.health")
        ready = state == "Ready" and health.get("ready", True) is not False
        inbounds.append(
            Inbound(
                port=port,
                service_port=_port(raw.get("servicePort", port), what + ".servicePort"),
                address=str(raw.get("address") or address),
                service_address=str(raw.get("serviceAddress") or raw.get("address") or address),
                tags=tags,
                ready=ready,
                ignored=state == "Ignored",
            )
        )
    outbounds: list[Outbound] = []
    for i, raw in enumerate(net.get("outbound") or []):
        what = f"networking.outbound[{i}]"
        raw = _require_mapping(raw, what)
        tags = _tags(raw.get("tags"), what)
        service = tags.get(SERVICE_TAG, "")
        if not service:
            raise StateError(f'{what}.tags["{SERVICE_TAG}"]: tag has to exist')
        address_out = str(raw.get("address") or "127.0.0.1")
        outbounds.append(Outbound(address_out, _port(raw.get("port"), what), service))
    tproxy: TransparentProxying | None = None
    raw_tp = net.get("transparentProxying")
    if raw_tp:
        tp = _require_mapping(raw_tp, "networking.transparentProxying")
        tproxy = TransparentProxying(
            redirect_port_inbound=int(tp.get("redirectPortInbound") or 0),
            redirect_port_outbound=int(tp.get("redirectPortOutbound") or 0),
            ip_family_mode=str(tp.get("ipFamilyMode") or ""),
        )
        if tproxy.enabled and outbounds:
            raise StateError(TPROXY_OUTBOUND_ERROR)
    admin = _require_mapping(net.get("admin"), "networking.admin")
    labels = {str(k): str(v) for k, v in _require_mapping(res.get("labels"), "labels").items()}
    return Dataplane(
        mesh=mesh,
        name=name,
        address=address,
        inbounds=tuple(inbounds),
        outbounds=tuple(outbounds),
        transparent_proxying=tproxy,
        admin_port=int(admin.get("port") or 9901),
        labels=labels,
        raw=dict(res),
    )


def _parse_service(raw: Any, i: int) -> Service:
    what = f"services[{i}]"
    data = _require_mapping(raw, what)
    name = str(data.get("name") or "")
    if not name:
        raise StateError(f"{what}.name: must be non-empty")
    endpoints = []
    for j, ep in enumerate(data.get("endpoints") or []):
        ep = _require_mapping(ep, f"{what}.endpoints[{j}]")
        address = str(ep.get("address") or "")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise StateError(f"{what}.endpoints[{j}].address: must be an IP, got {address!r}") from None
        endpoints.append(Endpoint(address, _port(ep.get("port"), f"{what}.endpoints[{j}]")))
    return Service(
        mesh=str(data.get("mesh") or DEFAULT_MESH),
        name=name,
        protocol=str(data.get("protocol") or "tcp"),
        endpoints=tuple(endpoints),
    )


Listener = Callable[[], None]


class Store:
    """Thread-safe in-memory store. Readers take `snapshot()`; writers notify subscribers after the change.

    Dataplanes registered by an ADS stream are reference-counted per stream (an Envoy that reconnects before
    the old stream is torn down must not vanish); those from the state file never expire.
    """

    def __init__(self, meshes: Iterable[str] = (DEFAULT_MESH,)) -> None:
        self._lock = threading.RLock()
        self._meshes: set[str] = {DEFAULT_MESH, *meshes}
        self._static: dict[tuple[str, str], Dataplane] = {}
        self._dynamic: dict[tuple[str, str], Dataplane] = {}
        self._streams: dict[tuple[str, str], int] = {}
        self._services: dict[tuple[str, str], Service] = {}
        self._subscribers: list[Listener] = []
        self.version = 0
        #: MeshMetric/MeshTrace/MeshOpenTelemetryBackend (kuma_dp_dev.devcp.policies.PolicySet), or None.
        self.policies: Any = None

    # -- reads ---------------------------------------------------------------------------------------------
    def mesh_exists(self, mesh: str) -> bool:
        with self._lock:
            return mesh in self._meshes

    @property
    def meshes(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._meshes))

    def get_dataplane(self, mesh: str, name: str) -> Dataplane | None:
        with self._lock:
            return self._dynamic.get((mesh, name)) or self._static.get((mesh, name))

    def dataplanes(self, mesh: str | None = None) -> tuple[Dataplane, ...]:
        with self._lock:
            merged = {**self._static, **self._dynamic}
        return tuple(dp for key, dp in sorted(merged.items()) if mesh is None or dp.mesh == mesh)

    def services(self, mesh: str) -> dict[str, Service]:
        """Every service in the mesh (from dataplane inbounds and the state file), with its endpoints."""
        with self._lock:
            extra = [s for s in self._services.values() if s.mesh == mesh]
        endpoints: dict[str, list[Endpoint]] = {}
        protocols: dict[str, str] = {}
        for dp in self.dataplanes(mesh):
            for inbound in dp.inbounds:
                if inbound.ignored:
                    continue
                eps = endpoints.setdefault(inbound.service, [])
                if inbound.ready:
                    eps.append(Endpoint(inbound.address, inbound.port, dp.key))
                protocols.setdefault(inbound.service, inbound.protocol)
        for svc in extra:
            endpoints.setdefault(svc.name, []).extend(svc.endpoints)
            protocols.setdefault(svc.name, svc.protocol)
        return {
            name: Service(mesh, name, protocols[name], tuple(eps)) for name, eps in sorted(endpoints.items())
        }

    # -- writes --------------------------------------------------------------------------------------------
    def subscribe(self, callback: Listener) -> Callable[[], None]:
        """Call `callback()` (in the writer's thread) after every change; returns an unsubscribe function."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _changed(self) -> None:
        with self._lock:
            self.version += 1
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback()

    def add_mesh(self, mesh: str) -> None:
        with self._lock:
            if mesh in self._meshes:
                return
            self._meshes.add(mesh)
        self._changed()

    def put_static(self, dp: Dataplane) -> None:
        """Add or replace a Dataplane that does not depend on a connected Envoy (state file, tests)."""
        with self._lock:
            self._meshes.add(dp.mesh)
            self._static[dp.key] = dp
        self._changed()

    def remove_static(self, key: tuple[str, str]) -> None:
        """Delete a Dataplane added by `put_static` (a Kubernetes pod that went away)."""
        with self._lock:
            if self._static.pop(key, None) is None:
                return
        self._changed()

    def put_service(self, svc: Service) -> None:
        with self._lock:
            self._meshes.add(svc.mesh)
            self._services[(svc.mesh, svc.name)] = svc
        self._changed()

    def register(self, dp: Dataplane) -> None:
        """An Envoy connected for `dp` (ADS stream open): upsert it, as kuma-cp does on connect. A Dataplane
        the store already holds as static (a Kubernetes pod's, kept current by its pod controller) is not
        shadowed by the stream's copy, so its later readiness changes still reach the other proxies."""
        with self._lock:
            if self._static.get(dp.key) is not dp:
                self._dynamic[dp.key] = dp
            self._streams[dp.key] = self._streams.get(dp.key, 0) + 1
        self._changed()

    def unregister(self, key: tuple[str, str]) -> None:
        """That Envoy's stream closed: delete the Dataplane once its last stream is gone."""
        with self._lock:
            count = self._streams.get(key, 0) - 1
            if count > 0:
                self._streams[key] = count
                return
            self._streams.pop(key, None)
            if self._dynamic.pop(key, None) is None:
                return
        self._changed()


def load_state(source: str | Path | Mapping[str, Any]) -> Store:
    """Build a Store from a state file (path) or its parsed content; StateError names the bad entry."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise StateError(f"--state {path}: cannot read the file: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise StateError(f"--state {path}: not valid YAML: {exc}") from None
    else:
        data = source
    data = _require_mapping(data, "state")
    unknown = set(data) - {"meshes", "dataplanes", "services", "policies"}
    if unknown:
        raise StateError(
            f"state: unknown keys {sorted(unknown)}; expected meshes, dataplanes, services, policies"
        )
    meshes = []
    for m in data.get("meshes") or []:
        meshes.append(str(m["name"]) if isinstance(m, Mapping) else str(m))
    store = Store(meshes)
    for i, raw in enumerate(data.get("dataplanes") or []):
        try:
            store.put_static(parse_dataplane(raw))
        except StateError as exc:
            raise StateError(f"dataplanes[{i}]: {exc}") from None
    for i, raw in enumerate(data.get("services") or []):
        store.put_service(_parse_service(raw, i))
    if data.get("policies"):
        from .policies import PolicyError, parse_policies

        try:
            store.policies = parse_policies(data["policies"])
        except PolicyError as exc:
            raise StateError(str(exc)) from None
    return store


def dataplane_json(dp: Dataplane) -> str:
    """The resource as compact JSON (what kuma-dp sends as `dataplaneResource`)."""
    return json.dumps(dict(dp.raw), separators=(",", ":"))
