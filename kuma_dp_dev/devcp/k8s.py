"""Kubernetes-style dataplanes for the dev CP: a Pod (as the injector leaves it) -> the Dataplane that
kuma-cp's pod controller would create for it, and a watcher of a directory of pod records standing in for the
API server.

On Kubernetes, kuma-dp sends no Dataplane template: kuma-cp's pod controller has already converted the Pod
into a Dataplane named `<pod>.<namespace>` (follows `pkg/plugins/runtime/k8s/controllers/pod_converter.go` and
`inbound_converter.go` in kumahq/kuma v2.14.3), and `/bootstrap` and ADS find it in the store by that name.

A pod record (one YAML/JSON file per pod in `kuma-dp dev-cp --pods-dir DIR`, written temp+rename) is:

```yaml
pod: {...}          # the Pod manifest (metadata.name, labels, annotations, spec.containers[].ports)
namespace: default  # where it runs (the manifest's own metadata.namespace wins when set)
podIP: 10.0.0.2     # status.podIP
ready: {app: true}  # container name -> Ready (status.containerStatuses); absent = not reported yet
deleting: false     # metadata.deletionTimestamp is set: every inbound is NotReady
services: [...]     # the Kubernetes Services that may select the pod
```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kuma_dp.component import Component

from .state import Dataplane, StateError, Store, parse_dataplane

log = logging.getLogger(__name__)

SIDECAR_NAME = "kuma-sidecar"
#: mesh_proto.TCPPortReserved: the inbound port of a pod that no Service selects.
TCP_PORT_RESERVED = 49151
_PROTOCOLS = {"http", "http2", "grpc", "tcp", "kafka"}


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def _labels(pod: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in ((pod.get("metadata") or {}).get("labels") or {}).items()}


def _containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((pod.get("spec") or {}).get("containers") or [])


def _find_port(pod: Mapping[str, Any], target: Any) -> tuple[int, str, str] | None:
    """util_k8s.FindPort: a numeric targetPort as is, a named one looked up in the containers' ports."""
    for container in _containers(pod):
        for port in container.get("ports") or []:
            if (isinstance(target, str) and port.get("name") == target) or (
                not isinstance(target, str) and int(port.get("containerPort", 0)) == int(target)
            ):
                return int(port["containerPort"]), str(port.get("name") or ""), str(container.get("name"))
    if isinstance(target, str):
        return None
    return int(target), "", ""


def _protocol(svc: Mapping[str, Any], port: Mapping[str, Any]) -> str:
    """ProtocolTagFor: appProtocol if known, else the `<port>.service.kuma.io/protocol` annotation, or tcp."""
    value = str(port.get("appProtocol") or "")
    if value.lower() not in _PROTOCOLS:
        value = ""
    annotations = (svc.get("metadata") or {}).get("annotations") or {}
    if not value:
        value = str(annotations.get(f"{port.get('port')}.service.kuma.io/protocol") or "")
    return (value or "tcp").lower()


def _selects(svc: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    selector = (svc.get("spec") or {}).get("selector") or {}
    return bool(selector) and all(labels.get(k) == str(v) for k, v in selector.items())


def _pod_ready(ready: Mapping[str, bool], container: str, deleting: bool) -> bool:
    """podReady: the matched container and kuma-sidecar both Ready (when reported), and not being deleted."""
    if deleting:
        return False
    if container and ready.get(container) is False:
        return False
    return ready.get(SIDECAR_NAME) is not False


def pod_to_dataplane(record: Mapping[str, Any]) -> Dataplane:
    """The Dataplane kuma-cp derives from a pod record (see the module doc); StateError on a bad record."""
    pod = record.get("pod")
    if not isinstance(pod, Mapping):
        raise StateError("pod: the record has no Pod manifest")
    meta = pod.get("metadata") or {}
    name = str(meta.get("name") or "")
    namespace = str(meta.get("namespace") or record.get("namespace") or "default")
    address = str(record.get("podIP") or "")
    if not name or not address:
        raise StateError("pod: metadata.name and podIP are required")
    annotations = _annotations(pod)
    labels = _labels(pod)
    ready = {str(k): bool(v) for k, v in (record.get("ready") or {}).items()}
    deleting = bool(record.get("deleting"))
    mesh = str(annotations.get("kuma.io/mesh") or labels.get("kuma.io/mesh") or "default")
    inbounds: list[dict[str, Any]] = []
    for svc in record.get("services") or []:
        smeta = svc.get("metadata") or {}
        if (
            str(smeta.get("namespace") or namespace) != namespace
            or (svc.get("spec") or {}).get("type") == "ExternalName"
        ):
            continue
        selected = _selects(svc, labels)
        for sport in (svc.get("spec") or {}).get("ports") or []:
            if str(sport.get("protocol") or "TCP") != "TCP":
                continue
            found = _find_port(pod, sport.get("targetPort", sport.get("port")))
            if found is None:
                continue
            port, port_name, container = found
            tags = {k: v for k, v in labels.items() if v and "kuma.io/" not in k}
            tags.update(
                {
                    "k8s.kuma.io/namespace": namespace,
                    "k8s.kuma.io/service-name": str(smeta.get("name")),
                    "k8s.kuma.io/service-port": str(sport.get("port")),
                    "kuma.io/service": f"{smeta.get('name')}_{namespace}_svc_{sport.get('port')}",
                    "kuma.io/protocol": _protocol(svc, sport),
                }
            )
            state = "Ready" if _pod_ready(ready, container, deleting) else "NotReady"
            if not selected:
                state = "Ignored"
            inbound: dict[str, Any] = {"port": port, "tags": tags, "state": state}
            inbound["health"] = {"ready": state == "Ready"}
            if port_name:
                inbound["name"] = port_name
            inbounds.append(inbound)
    if not inbounds:
        # inboundForServiceless: every app container and the sidecar Ready, else NotReady.
        apps_ready = all(ready.get(str(c.get("name"))) is not False for c in _containers(pod))
        state = "Ready" if apps_ready and _pod_ready(ready, "", deleting) else "NotReady"
        tags = {k: v for k, v in labels.items() if v}
        tags.update(
            {
                "k8s.kuma.io/namespace": namespace,
                "kuma.io/service": f"{name}_{namespace}_svc",
                "kuma.io/protocol": "tcp",
                "kuma.io/instance": name,
            }
        )
        inbounds.append({"port": TCP_PORT_RESERVED, "tags": tags, "state": state, "health": {"ready": False}})
        inbounds[-1]["health"]["ready"] = state == "Ready"
    networking: dict[str, Any] = {"address": address, "inbound": inbounds}
    if str(annotations.get("kuma.io/transparent-proxying", "")).lower() == "enabled":
        networking["transparentProxying"] = {
            "redirectPortInbound": int(annotations.get("kuma.io/transparent-proxying-inbound-port") or 15006),
            "redirectPortOutbound": int(
                annotations.get("kuma.io/transparent-proxying-outbound-port") or 15001
            ),
            "ipFamilyMode": str(
                annotations.get("kuma.io/transparent-proxying-ip-family-mode") or "dualstack"
            ),
        }
    admin = annotations.get("kuma.io/envoy-admin-port")
    if admin:
        networking["admin"] = {"port": int(admin)}
    resource = {
        "type": "Dataplane",
        "mesh": mesh,
        "name": f"{name}.{namespace}",
        "labels": {
            **labels,
            "k8s.kuma.io/namespace": namespace,
            "kuma.io/proxy-type": "sidecar",
        },
        "networking": networking,
    }
    return parse_dataplane(resource)


def load_record(path: Path) -> Mapping[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, Mapping):
        raise StateError(f"{path}: a pod record must be an object")
    return data


class PodsDirWatcher(Component):
    """Polls a directory of pod records and keeps the store's Kubernetes-style Dataplanes in step with it
    (kuma-cp's pod controller reconciling on Pod events): a new or changed file upserts, a removed one
    deletes."""

    name = "devcp-pods"

    def __init__(self, store: Store, directory: Path, interval: float = 0.1) -> None:
        super().__init__()
        self.store = store
        self.directory = directory
        self.interval = interval
        self._seen: dict[Path, tuple[float, int, tuple[str, str] | None]] = {}

    def scan(self) -> None:
        """One reconciliation pass (also called directly by tests)."""
        present = {p for p in self.directory.glob("*.yaml") if p.is_file()}
        for path in sorted(present):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            stamp = (st.st_mtime, st.st_size)
            old = self._seen.get(path)
            if old is not None and old[:2] == stamp:
                continue
            key: tuple[str, str] | None = None
            try:
                dp = pod_to_dataplane(load_record(path))
                key = dp.key
                self.store.put_static(dp)
                log.info("pod dataplane upserted name=%s mesh=%s address=%s", dp.name, dp.mesh, dp.address)
            except (OSError, yaml.YAMLError, StateError, ValueError, TypeError) as exc:
                log.warning("pod record %s ignored: %s; fix it (see kuma_dp_dev/devcp/k8s.py)", path, exc)
            self._seen[path] = (*stamp, key)
        for path in set(self._seen) - present:
            _, _, key = self._seen.pop(path)
            if key is not None:
                self.store.remove_static(key)
                log.info("pod dataplane deleted name=%s mesh=%s", key[1], key[0])

    async def run(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.scan()
        self.ready.set()
        while True:
            await asyncio.sleep(self.interval)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.scan)
