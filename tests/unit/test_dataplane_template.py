"""Dataplane templates: Kuma's Mustache semantics, resource meta checks and the request JSON string."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kuma_dp.dataplane import (
    DataplaneError,
    DataplaneResource,
    go_json,
    load_dataplane,
    parse_resource,
    parse_vars,
    render_template,
    template_context,
)

pytestmark = pytest.mark.unit

#: Kuma's app/kuma-dp/cmd/testdata/dataplane_template.yaml, in substance.
TEMPLATE = """\
type: Dataplane
mesh: default
name: {{ name }}
networking:
  address: {{ address }}
  inbound:
  - port: 11011
    servicePort: 11012
    tags:
      kuma.io/service: backend
      kuma.io/protocol: http
  outbound:
  - port: 33033
    tags:
      kuma.io/service: redis
  admin:
    port: 9901
"""


def test_vars_repeatable_and_comma_separated() -> None:
    assert parse_vars(["name=dp-1,address=10.0.0.1", "port=80", "a.b=c"]) == {
        "name": "dp-1",
        "address": "10.0.0.1",
        "port": "80",
        "a.b": "c",
    }
    assert parse_vars(["k=v=w"]) == {"k": "v=w"}


def test_var_without_equals_is_rejected_naming_the_flag() -> None:
    with pytest.raises(DataplaneError, match=r"--dataplane-var.*oops must be formatted as key=value"):
        parse_vars(["name=dp-1,oops"])


def test_escaped_raw_dotted_unknown_and_sections() -> None:
    out = render_template(
        "e={{ v }} r={{{ v }}} amp={{& v}} d={{ a.b }} u=[{{ nope }}] s={{#on}}yes{{/on}}{{^off}}no{{/off}}",
        {"v": "<a href='x'>&\"", "a.b": "nested", "on": "1"},
    )
    assert out == (
        "e=&lt;a href=&#39;x&#39;&gt;&amp;&#34; r=<a href='x'>&\" amp=<a href='x'>&\" d=nested u=[] s=yesno"
    )


def test_reference_template_renders_and_parses() -> None:
    res = load_dataplane(TEMPLATE, "", {"name": "dp-1", "address": "192.168.0.2"})
    assert res is not None
    assert (res.type, res.mesh, res.name) == ("Dataplane", "default", "dp-1")
    assert res.spec["networking"]["address"] == "192.168.0.2"
    assert res.spec["networking"]["inbound"][0]["servicePort"] == 11012


def test_request_json_matches_kumas_rest_layout() -> None:
    res = load_dataplane(TEMPLATE, "", {"name": "dp-1", "address": "192.168.0.2"})
    assert res is not None
    text = res.to_request_json()
    assert text.startswith(
        '{"type":"Dataplane","mesh":"default","name":"dp-1","creationTime":"0001-01-01T00:00:00Z",'
        '"modificationTime":"0001-01-01T00:00:00Z","kri":"kri_dp_default___dp-1_","networking":{'
    )
    assert json.loads(text)["networking"]["outbound"][0]["port"] == 33033
    bare = DataplaneResource("Dataplane", "demo", "sample").to_request_json()
    assert bare == (
        '{"type":"Dataplane","mesh":"demo","name":"sample","creationTime":"0001-01-01T00:00:00Z",'
        '"modificationTime":"0001-01-01T00:00:00Z","kri":"kri_dp_demo___sample_"}'
    )


def test_go_json_escapes_like_go() -> None:
    assert go_json({"a": "<&>\u2028é"}) == '{"a":"\\u003c\\u0026\\u003e\\u2028é"}'
    assert go_json({"a": [1]}, indent=1) == '{\n "a": [\n  1\n ]\n}'


def test_stdin_template(tmp_path: Path) -> None:
    res = load_dataplane("", "-", {"name": "dp-2", "address": "1.1.1.1"}, stdin=io.StringIO(TEMPLATE))
    assert res is not None and res.name == "dp-2"


def test_file_template_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "dp.yaml"
    f.write_text(TEMPLATE)
    res = load_dataplane("ignored: inline", str(f), {"name": "dp-3", "address": "1.1.1.1"})
    assert res is not None and res.name == "dp-3"
    with pytest.raises(DataplaneError, match=r"^error while reading provided file: open .*nope.yaml"):
        load_dataplane("", str(tmp_path / "nope.yaml"), {})


def test_no_template_means_none() -> None:
    assert load_dataplane("", "", {}) is None


def test_json_template() -> None:
    res = load_dataplane(
        '{"type":"Dataplane","mesh":"m","name":"{{n}}","networking":{"address":"1.2.3.4"}}', "", {"n": "x"}
    )
    assert res is not None and res.name == "x"


def test_unrendered_variable_gives_kumas_meta_error() -> None:
    with pytest.raises(DataplaneError) as exc:
        load_dataplane(TEMPLATE, "", {"address": "1.1.1.1"})
    assert str(exc.value) == "name: cannot be empty"


def test_meta_identifier_rules() -> None:
    with pytest.raises(DataplaneError, match=r"^mesh: invalid characters\. Valid characters are numbers"):
        parse_resource("type: Dataplane\nmesh: Default\nname: a\n")
    with pytest.raises(DataplaneError, match=r"^name: cannot be empty; mesh: cannot be empty$"):
        parse_resource("type: Dataplane\n")


def test_type_must_match_the_proxy_type() -> None:
    with pytest.raises(DataplaneError) as exc:
        load_dataplane("type: ZoneIngress\nname: zi\n", "", {})
    assert str(exc.value) == 'invalid proxy resource type "ZoneIngress", expected Dataplane'
    res = load_dataplane(
        "type: ZoneIngress\nname: zi\nnetworking: {address: 1.1.1.1}\n", "", {}, proxy_type="ingress"
    )
    assert res is not None and res.kri.startswith("kri_zi_")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("networking: {inbound: []}", "networking.address: address can't be empty"),
        ("networking: {address: ''}", "networking.address"),
        (
            "networking: {address: 1.1.1.1, inbound: [{port: 80, tags: {app: x}}]}",
            'networking.inbound[0].tags["kuma.io/service"]: tag has to exist',
        ),
        (
            "networking: {address: 1.1.1.1, inbound: [{port: 80}]}",
            "networking.inbound[0].tags: tags must be non-empty",
        ),
        (
            "networking: {address: 1.1.1.1, inbound: [{port: 70000, tags: {kuma.io/service: a}}]}",
            "networking.inbound[0].port: port must be in the range [1, 65535]",
        ),
        ("networking: {address: 1.1.1.1, gateway: {tags: {}}}", 'networking.gateway.tags["kuma.io/service"]'),
        ("spec: {}", "networking: must be defined"),
    ],
)
def test_spec_errors_name_the_field(spec: str, field: str) -> None:
    with pytest.raises(DataplaneError) as exc:
        load_dataplane(f"type: Dataplane\nmesh: default\nname: dp-1\n{spec}\n", "", {})
    assert field in str(exc.value)
    assert str(exc.value).startswith("invalid Dataplane resource: ")


def test_invalid_yaml_is_one_line() -> None:
    with pytest.raises(DataplaneError) as exc:
        parse_resource("type: [unclosed\n")
    assert "\n" not in str(exc.value)
    assert str(exc.value).startswith("invalid Dataplane resource: not valid YAML or JSON")


def test_timestamps_stay_strings_and_labels_are_kept() -> None:
    res = parse_resource(
        "type: Dataplane\nmesh: m\nname: n\ncreationTime: 2020-01-01T00:00:00Z\nlabels: {team: a}\n"
        "networking: {address: 1.1.1.1, inbound: "
        "[{port: 1, tags: {kuma.io/service: s, since: 2020-01-01}}]}\n"
    )
    doc = json.loads(res.to_request_json())
    assert doc["creationTime"] == "0001-01-01T00:00:00Z"
    assert doc["labels"] == {"team": "a"}
    assert doc["networking"]["inbound"][0]["tags"]["since"] == "2020-01-01"


@settings(max_examples=300, deadline=None)
@given(st.text().filter(lambda t: "{{" not in t))
def test_a_template_without_tags_is_its_own_rendering(text: str) -> None:
    """The shortcut for tag-free templates (no template engine loaded) gives what the engine would."""
    import chevron

    assert render_template(text, {"x": "1"}) == text
    assert chevron.render(text, template_context({"x": "1"})) == text
