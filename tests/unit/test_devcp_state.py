"""The dev CP store: Dataplane parsing/validation with kuma-cp's messages, registration, the state file."""

from __future__ import annotations

from pathlib import Path

import pytest

from kuma_dp_dev.devcp.state import TPROXY_OUTBOUND_ERROR, StateError, Store, load_state, parse_dataplane

pytestmark = pytest.mark.unit

WEB = {
    "type": "Dataplane",
    "mesh": "default",
    "name": "web-1",
    "networking": {
        "address": "127.0.0.1",
        "inbound": [{"port": 20001, "servicePort": 8080, "tags": {"kuma.io/service": "web"}}],
        "outbound": [{"port": 33033, "tags": {"kuma.io/service": "backend"}}],
    },
}


def test_parse_fills_defaults_like_kuma() -> None:
    dp = parse_dataplane(WEB)
    assert dp.key == ("default", "web-1")
    (inbound,) = dp.inbounds
    assert (inbound.port, inbound.service_port, inbound.address, inbound.service_address) == (
        20001,
        8080,
        "127.0.0.1",
        "127.0.0.1",
    )
    assert inbound.protocol == "tcp"
    assert dp.outbounds[0].address == "127.0.0.1"
    assert not dp.transparent


def test_parse_json_text_and_name_from_request() -> None:
    dp = parse_dataplane(
        '{"networking":{"address":"10.0.0.1","inbound":[{"port":1,"tags":{"kuma.io/service":"a"}}]}}',
        mesh="m",
        name="n",
    )
    assert dp.key == ("m", "n") and dp.services == ("a",)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            {"transparentProxying": {"redirectPortOutbound": 15001, "redirectPortInbound": 15006}},
            TPROXY_OUTBOUND_ERROR,
        ),
        ({"address": ""}, "networking.address"),
        ({"inbound": [{"port": 1, "tags": {"app": "x"}}]}, 'tags["kuma.io/service"]'),
        ({"inbound": [{"port": 70000, "tags": {"kuma.io/service": "x"}}]}, "range"),
    ],
)
def test_invalid_dataplanes_are_refused_with_kuma_messages(patch: dict, message: str) -> None:
    res = {**WEB, "networking": {**WEB["networking"], **patch}}
    with pytest.raises(StateError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_dataplane(res)


def test_register_unregister_refcounts_streams_and_notifies() -> None:
    store = Store()
    calls: list[int] = []
    store.subscribe(lambda: calls.append(store.version))
    dp = parse_dataplane(WEB)
    store.register(dp)
    store.register(dp)  # a reconnect before the old stream closed
    store.unregister(dp.key)
    assert store.get_dataplane("default", "web-1") is not None
    store.unregister(dp.key)
    assert store.get_dataplane("default", "web-1") is None
    assert calls == [1, 2, 3]


def test_state_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    path.write_text(
        "meshes: [demo]\n"
        "dataplanes:\n"
        "  - {mesh: demo, name: b, networking: {address: 127.0.0.2,\n"
        "      inbound: [{port: 9000, tags: {kuma.io/service: backend}}]}}\n"
        "services:\n"
        "  - {mesh: demo, name: httpbin, protocol: http, endpoints: [{address: 127.0.0.1, port: 8080}]}\n"
    )
    store = load_state(path)
    assert store.mesh_exists("demo") and store.mesh_exists("default") and not store.mesh_exists("x")
    services = store.services("demo")
    assert sorted(services) == ["backend", "httpbin"]
    assert services["backend"].endpoints[0].address == "127.0.0.2"
    assert services["httpbin"].protocol == "http"


def test_state_file_errors_name_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("dataplanes:\n  - {name: x, networking: {}}\n")
    with pytest.raises(StateError, match=r"dataplanes\[0\]: networking.address"):
        load_state(path)
    with pytest.raises(StateError, match="cannot read"):
        load_state(tmp_path / "missing.yaml")


def test_the_shipped_example_state_file_loads() -> None:
    store = load_state(Path(__file__).resolve().parents[2] / "kuma_dp_dev/devcp/example-state.yaml")
    assert store.mesh_exists("demo")
    assert sorted(store.services("default")) == ["backend", "legacy-db"]
    assert store.get_dataplane("default", "backend-1").inbounds[0].service_port == 8080


def test_not_ready_inbounds_are_no_endpoints_and_ignored_ones_no_service() -> None:
    store = Store()
    for name, extra in (("a", {}), ("b", {"health": {"ready": False}}), ("c", {"state": "NotReady"})):
        inbound = {"port": 1000 + ord(name), "tags": {"kuma.io/service": "svc"}, **extra}
        store.put_static(
            parse_dataplane({"name": name, "networking": {"address": "127.0.0.1", "inbound": [inbound]}})
        )
    ignored = {"port": 2000, "state": "Ignored", "tags": {"kuma.io/service": "hidden"}}
    store.put_static(
        parse_dataplane({"name": "d", "networking": {"address": "127.0.0.1", "inbound": [ignored]}})
    )
    services = store.services("default")
    assert sorted(services) == ["svc"]
    assert [e.dataplane for e in services["svc"].endpoints] == [("default", "a")]
    with pytest.raises(StateError, match="state: must be one of"):
        parse_dataplane(
            {"name": "e", "networking": {"address": "x", "inbound": [{**ignored, "state": "Up"}]}}
        )
