"""The client for Envoy's admin API, over TCP or the unix socket the bootstrap names.

Only a handful of calls are needed (`/ready`, `/healthcheck/fail`, `/drain_listeners`, `/server_info`); they
go through the agent's own small HTTP/1.1 client (kuma_dp/_http.py), not an HTTP library, for start-up time
and RSS (see bench/startup.py). Failures are AdminError (an HttpError) naming the call and the address.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The wire types only: the asyncio client is imported by the first request, so `kuma-dp run` can read the
# bootstrap's admin address before the event loop is loaded (kuma_dp/launch.py).
from kuma_dp._httpwire import HttpError, Response, parse_response


@dataclass(frozen=True)
class AdminAddress:
    """Where Envoy's admin API listens: `host`+`port`, or `socket_path` (≥2.14 `kuma-envoy-admin.sock`)."""

    host: str = "127.0.0.1"
    port: int = 9901
    socket_path: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.socket_path is not None

    def __str__(self) -> str:
        if self.socket_path is not None:
            return f"unix:{self.socket_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


HttpResponse = Response


class AdminError(HttpError):
    """The admin API could not be reached or answered garbage."""


def _get(d: dict[str, Any], camel: str, snake: str) -> Any:
    return d.get(camel, d.get(snake))


def admin_address_from_bootstrap(bootstrap: dict[str, Any]) -> AdminAddress:
    """Read `admin.address` of an Envoy bootstrap (protojson camelCase as Kuma writes it, or snake_case)."""
    admin = bootstrap.get("admin") or {}
    address = admin.get("address") or {}
    pipe = address.get("pipe")
    if pipe and pipe.get("path"):
        return AdminAddress(socket_path=str(pipe["path"]))
    sock = _get(address, "socketAddress", "socket_address") or {}
    host = str(sock.get("address") or "127.0.0.1")
    port = int(_get(sock, "portValue", "port_value") or 0)
    if not sock or port <= 0:
        raise AdminError(
            "the Envoy bootstrap has no admin address with a fixed port "
            "(admin.address.socketAddress.portValue or admin.address.pipe.path); "
            "kuma-dp needs it to drain and to report readiness"
        )
    if host in ("0.0.0.0", "::"):
        # Envoy listens on every address; talk to it over loopback.
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return AdminAddress(host=host, port=port)


#: A bootstrap up to this size is parsed whole (as Kuma's `remote_bootstrap.go` parses it into the Bootstrap
#: proto), so a malformed one fails before Envoy starts. A YAML parse costs about 100x the text in time and
#: 10-40x in memory (a 40 MB bootstrap: minutes and GBs on a busy node), so a bigger one is read by its
#: top-level keys and only its `admin` section is parsed; Envoy validates the rest when it loads the file.
FULL_PARSE_MAX_BYTES = 1024 * 1024

# A top-level key line of block-style YAML (as kuma-cp and `bootstrap.render` write it): column 0, a plain or
# quoted key, a colon followed by a space or the end of the line.
_TOP_KEY = re.compile(r"""^(?:"([^"\n]*)"|'([^'\n]*)'|([A-Za-z_][\w.-]*))[ \t]*:(?:[ \t]|$)""", re.M)
# Any other line at column 0 that is not a comment, a blank, a block-sequence item or a document marker.
_OTHER_COL0 = re.compile(r"^(?![ \t#\r\n-]|\.\.\.|$).", re.M)


class BootstrapFormatError(ValueError):
    """The bootstrap text is not an Envoy bootstrap we can use; the message says why and what to do."""


def _parse_yaml(text: str) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise BootstrapFormatError(f"not valid YAML: {exc}") from None
    except RecursionError:
        raise BootstrapFormatError("not valid YAML: nested too deeply") from None


def parse_bootstrap(data: bytes | str) -> dict[str, Any]:
    """The bootstrap as a mapping, within bounded time and memory whatever its size.

    Up to FULL_PARSE_MAX_BYTES the whole document is parsed. Above, the result maps every top-level key to
    None except `admin`, which is parsed: the agent needs only the admin address, and the file is handed to
    Envoy as it is. A large bootstrap must then be block-style YAML (what kuma-cp renders); anything else is
    refused with a BootstrapFormatError rather than parsed at unbounded cost.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BootstrapFormatError(f"not UTF-8 text: {exc}") from None
    else:
        text = data
    if len(text) <= FULL_PARSE_MAX_BYTES:
        doc = _parse_yaml(text)
        if not isinstance(doc, dict):
            raise BootstrapFormatError("not a YAML mapping")
        return doc
    keys = list(_TOP_KEY.finditer(text))
    if not keys or _OTHER_COL0.search(text[: keys[0].start()]):
        raise BootstrapFormatError(
            f"a bootstrap of {len(text)} bytes (over {FULL_PARSE_MAX_BYTES} bytes) must be block-style YAML "
            "with its top-level keys at column 0, as kuma-cp renders it"
        )
    out: dict[str, Any] = {}
    for i, match in enumerate(keys):
        name = next(g for g in match.groups() if g is not None)
        out[name] = None
        if name != "admin":
            continue
        end = keys[i + 1].start() if i + 1 < len(keys) else len(text)
        section = text[match.start() : end]
        if len(section) > FULL_PARSE_MAX_BYTES:
            raise BootstrapFormatError(f"its admin section has {len(section)} bytes; far more than needed")
        parsed = _parse_yaml(section)
        out["admin"] = parsed.get(name) if isinstance(parsed, dict) else None
    return out


def load_bootstrap(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a bootstrap YAML/JSON file with `parse_bootstrap` (bounded whatever its size)."""
    try:
        return parse_bootstrap(Path(path).read_bytes())
    except BootstrapFormatError as exc:
        raise AdminError(f"{path} is not an Envoy bootstrap: {exc}") from None


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _parse_response(raw: bytes) -> HttpResponse:
    """A whole admin response held in memory (kept for the unit tests of the parser)."""
    try:
        return parse_response(raw)
    except HttpError as exc:
        raise AdminError(str(exc)) from exc


async def http_request(
    address: AdminAddress,
    method: str,
    target: str,
    *,
    timeout: float = 1.0,
    host_header: str | None = None,
) -> HttpResponse:
    """One request on a fresh connection. Raises AdminError on connect/read failure or timeout."""
    headers = {"User-Agent": "kuma-dp"}
    if host_header:
        headers["Host"] = host_header
    from kuma_dp._http import request

    try:
        return await request(
            method,
            target,
            host=address.host,
            port=address.port,
            unix_path=address.socket_path,
            headers=headers,
            timeout=timeout,
        )
    except HttpError as exc:
        raise AdminError(f"{method} {target} on {address}: {exc}", exc.errno) from exc


class AdminClient:
    """The admin calls the agent makes; each returns the response or raises AdminError."""

    def __init__(self, address: AdminAddress, *, timeout: float = 1.0) -> None:
        self.address = address
        self.timeout = timeout

    async def get(self, target: str) -> HttpResponse:
        return await http_request(self.address, "GET", target, timeout=self.timeout)

    async def post(self, target: str) -> HttpResponse:
        return await http_request(self.address, "POST", target, timeout=self.timeout)

    async def ready(self) -> HttpResponse:
        return await self.get("/ready")

    async def healthcheck_fail(self) -> HttpResponse:
        return await self.post("/healthcheck/fail")

    async def drain_inbound(self) -> HttpResponse:
        return await self.post("/drain_listeners?inboundonly&graceful&skip_exit")

    async def server_info(self) -> dict[str, Any]:
        import json

        resp = await self.get("/server_info")
        if resp.status != 200:
            raise AdminError(f"GET /server_info on {self.address}: HTTP {resp.status}")
        data: dict[str, Any] = json.loads(resp.body)
        return data
