"""The Dataplane resource a proxy registers with: `--dataplane` / `--dataplane-file` + `--dataplane-var`.

Kuma renders the template with Mustache (hoisie/mustache), parses it as YAML/JSON and checks only the resource
meta (name, mesh); the control plane validates the rest and answers 422. We render with `chevron` but keep
hoisie's escaping (Go's `template.HTMLEscape`: `'` and `"` become `&#39;`/`&#34;`), check the meta with Kuma's
messages, and also check what the CP would reject (type, networking.address, inbound `kuma.io/service`) so
the operator gets the error naming the field before any network round trip.

The resource is sent as `dataplaneResource`: a compact JSON *string* laid out as Kuma's REST encoding
(`type, mesh, name, creationTime, modificationTime, [labels,] kri, <spec...>`) with Go's JSON escaping.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

log = logging.getLogger(__name__)

ZERO_TIME = "0001-01-01T00:00:00Z"
#: proxy type -> the resource type the template must have
PROXY_RESOURCE_TYPES = {"dataplane": "Dataplane", "ingress": "ZoneIngress", "egress": "ZoneEgress"}
_KRI_SHORT = {"Dataplane": "dp", "ZoneIngress": "zi", "ZoneEgress": "ze"}
_META_KEYS = ("type", "mesh", "name", "creationTime", "modificationTime", "labels", "kri")
_IDENTIFIER = re.compile(r"^[0-9a-z\-_.]*$")
_IDENTIFIER_MSG = (
    "invalid characters. Valid characters are numbers, lowercase latin letters and '-', '_', '.' symbols."
)
SERVICE_TAG = "kuma.io/service"


class DataplaneError(ValueError):
    """A template or resource problem; str() is the one-line message (it names the field or the flag)."""


# ---------------------------------------------------------------------------------------------- variables


def parse_vars(values: Iterable[str]) -> dict[str, str]:
    """`--dataplane-var` values (pflag StringToString): `k=v`, repeatable, comma-separated pairs allowed."""
    out: dict[str, str] = {}
    for value in values:
        for row in csv.reader(io.StringIO(value)):
            for pair in row:
                key, sep, val = pair.partition("=")
                if not sep:
                    raise DataplaneError(
                        f'invalid argument "{value}" for "-v, --dataplane-var" flag: '
                        f"{pair} must be formatted as key=value"
                    )
                out[key] = val
    return out


def template_context(variables: Mapping[str, str]) -> dict[str, Any]:
    """Vars as Mustache context: `a.b=c` becomes `{a: {b: c}}` so `{{ a.b }}` works."""
    ctx: dict[str, Any] = {}
    for key, value in variables.items():
        *parents, leaf = key.split(".")
        node = ctx
        for p in parents:
            child = node.get(p)
            if not isinstance(child, dict):
                child = {}
                node[p] = child
            node = child
        node[leaf] = value
    return ctx


def go_html_escape(text: str) -> str:
    """Go's text/template HTMLEscape, which hoisie/mustache applies to `{{ x }}`."""
    return (
        text.replace("&", "&amp;")
        .replace("'", "&#39;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&#34;")
        .replace("\x00", "\ufffd")
    )


_render_lock = threading.Lock()


def render_template(template: str, variables: Mapping[str, str]) -> str:
    """Mustache with Kuma's semantics: `{{x}}` escaped, `{{{x}}}` raw, dotted names nested, unknown -> ""."""
    if "{{" not in template:
        return template  # no tag (and so no delimiter change): mustache gives the text back as it is
    import chevron.renderer

    # chevron has no escape hook; swap its module-level escaper for Go's while we render (one-shot, locked).
    with _render_lock:
        original = chevron.renderer._html_escape
        chevron.renderer._html_escape = go_html_escape
        try:
            return str(chevron.renderer.render(template, template_context(variables), partials_path=None))
        except chevron.ChevronError as exc:
            raise DataplaneError(f"invalid Dataplane template: {exc}") from None
        finally:
            chevron.renderer._html_escape = original


# ---------------------------------------------------------------------------------------------- resource


@dataclass(frozen=True)
class DataplaneResource:
    """A parsed Dataplane (or ZoneIngress/ZoneEgress) resource: meta plus the spec as plain data."""

    type: str
    mesh: str
    name: str
    spec: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def kri(self) -> str:
        """`kri_<short type>_<mesh>_<zone>_<namespace>_<name>_<section>`, unknown parts empty."""
        short = _KRI_SHORT.get(self.type, self.type.lower())
        return f"kri_{short}_{self.mesh}___{self.name}_"

    def to_rest(self) -> dict[str, Any]:
        """Kuma's REST layout; times are zero because the resource is built in memory."""
        doc: dict[str, Any] = {
            "type": self.type,
            "mesh": self.mesh,
            "name": self.name,
            "creationTime": ZERO_TIME,
            "modificationTime": ZERO_TIME,
        }
        if self.labels:
            doc["labels"] = dict(self.labels)
        doc["kri"] = self.kri
        doc.update(self.spec)
        return doc

    def to_request_json(self) -> str:
        """The `dataplaneResource` string of the bootstrap request."""
        return go_json(self.to_rest())


def go_json(value: Any, indent: int | None = None) -> str:
    """json.Marshal(Indent) output: UTF-8 kept, `<`, `>`, `&`, U+2028/9 escaped like Go."""
    text = json.dumps(
        value,
        ensure_ascii=False,
        indent=indent,
        separators=(",", ": ") if indent is not None else (",", ":"),
        default=str,
    )
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


@functools.cache
def _no_timestamp_loader() -> type:
    """A SafeLoader without implicit timestamps: a resource is re-sent as JSON, dates must stay strings.

    Built on first use: PyYAML costs tens of milliseconds to import, and `kuma-dp run` without a Dataplane
    template (Kubernetes, or --name/--mesh) never parses one."""
    import yaml

    class NoTimestampLoader(yaml.SafeLoader):
        pass

    NoTimestampLoader.yaml_implicit_resolvers = {
        k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return NoTimestampLoader


def _meta_error(name: str, mesh: str, mesh_scoped: bool) -> str | None:
    """Kuma's core_mesh.ValidateMeta: violations as `field: message` joined with `; `."""
    violations: list[str] = []
    for field_name, value, check in (("name", name, True), ("mesh", mesh, mesh_scoped)):
        if not check:
            continue
        if value == "":
            violations.append(f"{field_name}: cannot be empty")
        elif not _IDENTIFIER.match(value):
            violations.append(f"{field_name}: {_IDENTIFIER_MSG}")
        elif len(value) > 253:
            violations.append(f"{field_name}: value length must less or equal 253")
    return "; ".join(violations) or None


def parse_resource(text: str) -> DataplaneResource:
    """Parse a rendered template (YAML or JSON) and check its meta like Kuma does."""
    import yaml

    try:
        doc = yaml.load(text, Loader=_no_timestamp_loader())  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise DataplaneError(f"invalid Dataplane resource: not valid YAML or JSON: {first}") from None
    if not isinstance(doc, dict):
        raise DataplaneError("invalid Dataplane resource: expected an object (type, mesh, name, networking)")
    kind = doc.get("type")
    if not isinstance(kind, str) or not kind:
        raise DataplaneError("invalid Dataplane resource: type: must be set (type: Dataplane)")
    name = doc.get("name")
    mesh = doc.get("mesh")
    name = "" if name is None else str(name)
    mesh = "" if mesh is None else str(mesh)
    labels_raw = doc.get("labels") or {}
    if not isinstance(labels_raw, dict):
        raise DataplaneError("invalid Dataplane resource: labels: must be a map of strings")
    spec = {k: v for k, v in doc.items() if k not in _META_KEYS}
    err = _meta_error(name, mesh, mesh_scoped=kind == "Dataplane")
    if err:
        raise DataplaneError(err)
    return DataplaneResource(
        type=kind, mesh=mesh, name=name, spec=spec, labels={str(k): str(v) for k, v in labels_raw.items()}
    )


def _port_ok(value: Any) -> bool:
    try:
        port = int(value)
    except (TypeError, ValueError):
        return False
    return 1 <= port <= 65535


def check_spec(res: DataplaneResource) -> None:
    """What kuma-cp would answer 422 for, checked up front; the message names the field to fix."""
    if res.type != "Dataplane":
        return
    net = res.spec.get("networking")
    if not isinstance(net, dict):
        raise DataplaneError("invalid Dataplane resource: networking: must be defined")
    if not net.get("address"):
        raise DataplaneError("invalid Dataplane resource: networking.address: address can't be empty")
    inbound = net.get("inbound") or []
    if not isinstance(inbound, list):
        raise DataplaneError("invalid Dataplane resource: networking.inbound: must be a list")
    for i, item in enumerate(inbound):
        where = f"networking.inbound[{i}]"
        if not isinstance(item, dict):
            raise DataplaneError(f"invalid Dataplane resource: {where}: must be an object")
        if "port" in item and not _port_ok(item["port"]):
            raise DataplaneError(
                f"invalid Dataplane resource: {where}.port: port must be in the range [1, 65535], "
                f"got {item['port']!r}"
            )
        tags = item.get("tags")
        if not isinstance(tags, dict) or not tags:
            raise DataplaneError(f"invalid Dataplane resource: {where}.tags: tags must be non-empty")
        if not tags.get(SERVICE_TAG):
            raise DataplaneError(
                f'invalid Dataplane resource: {where}.tags["{SERVICE_TAG}"]: tag has to exist'
            )
    gateway = net.get("gateway")
    if isinstance(gateway, dict):
        tags = gateway.get("tags")
        if not isinstance(tags, dict) or not tags.get(SERVICE_TAG):
            raise DataplaneError(
                f'invalid Dataplane resource: networking.gateway.tags["{SERVICE_TAG}"]: tag has to exist'
            )
    outbound = net.get("outbound") or []
    if not isinstance(outbound, list):
        raise DataplaneError("invalid Dataplane resource: networking.outbound: must be a list")
    for i, item in enumerate(outbound):
        if isinstance(item, dict) and "port" in item and not _port_ok(item["port"]):
            raise DataplaneError(
                f"invalid Dataplane resource: networking.outbound[{i}].port: port must be in the range "
                f"[1, 65535], got {item['port']!r}"
            )


def read_template(resource: str, resource_path: str, stdin: TextIO | None = None) -> str:
    """The template: the file (`-` = stdin) wins over inline `--dataplane`; "" when neither is given."""
    if resource_path == "-":
        return (stdin or sys.stdin).read()
    if resource_path:
        try:
            with open(resource_path, encoding="utf-8") as f:
                return f.read()
        except OSError as exc:
            raise DataplaneError(
                f"error while reading provided file: open {resource_path}: {exc.strerror or exc}"
            ) from None
    return resource


def load_dataplane(
    resource: str,
    resource_path: str,
    variables: Mapping[str, str],
    *,
    proxy_type: str = "dataplane",
    stdin: TextIO | None = None,
) -> DataplaneResource | None:
    """Read, render, parse and check the template; None without a template (the CP has the resource)."""
    text = read_template(resource, resource_path, stdin)
    if not text:
        return None
    rendered = render_template(text, variables)
    log.info("rendered resource resource=%s", json.dumps(rendered))
    res = parse_resource(rendered)
    expected = PROXY_RESOURCE_TYPES.get(proxy_type)
    if expected is None:
        raise DataplaneError(f'invalid proxy type "{proxy_type}"')
    if res.type != expected:
        raise DataplaneError(f'invalid proxy resource type "{res.type}", expected {expected}')
    check_spec(res)
    return res


NAME_MESH_WITH_RESOURCE = (
    "--name and --mesh cannot be specified when a dataplane definition is provided, "
    "mesh and name will be read from the dataplane definition"
)
