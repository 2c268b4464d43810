"""Dataplane resources as tests write them (the JSON/YAML kuma-cp stores), built one way."""

from __future__ import annotations

from typing import Any


def dataplane(
    name: str,
    service: str,
    port: int,
    *,
    service_port: int | None = None,
    protocol: str | None = None,
    outbounds: dict[str, int] | None = None,
    admin_port: int | None = None,
    mesh: str = "default",
    address: str = "127.0.0.1",
) -> dict[str, Any]:
    """A Dataplane with one inbound (`port`, optionally `service_port` and `kuma.io/protocol`), outbounds by
    service name, and an admin port when given; keys in the order kuma-cp writes them."""
    inbound: dict[str, Any] = {"port": port}
    if service_port is not None:
        inbound["servicePort"] = service_port
    inbound["tags"] = {"kuma.io/service": service}
    if protocol is not None:
        inbound["tags"]["kuma.io/protocol"] = protocol
    networking: dict[str, Any] = {"address": address, "inbound": [inbound]}
    if outbounds is not None:
        networking["outbound"] = [{"port": p, "tags": {"kuma.io/service": s}} for s, p in outbounds.items()]
    if admin_port is not None:
        networking["admin"] = {"port": admin_port}
    return {"type": "Dataplane", "mesh": mesh, "name": name, "networking": networking}
