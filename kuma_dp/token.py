"""The dataplane token: where it comes from, where it lives, and Kuma's sanity checks.

`--dataplane-token` (inline) is written to `<workdir>/<dataplane name>` with mode 0600 and then treated like
`--dataplane-token-file`, as Kuma does, so Envoy (reloadable tokens) and the CP see a path. The token is a
credential: it is registered with the log redactor, never formatted into a message or exception, and only
its path appears in logs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from kuma_dp.fsutil import atomic_write
from kuma_dp.goparse import go_path_error, json_syntax_error, raw_url_b64decode

TOKEN_INVALID_PREFIX = (
    "dataplane token is invalid, in Kubernetes you must mount a serviceAccount token, in universal you must "
    "start your proxy with a generated token."
)


class TokenError(ValueError):
    """A token problem; str() is Kuma's wrapped message and never contains the token itself."""


@dataclass(frozen=True)
class Token:
    """The token as the request carries it: trimmed value (hidden from repr) and its path."""

    path: str
    value: str = field(repr=False)


#: The `alg` values golang-jwt v5.3.1 registers (HMAC, RSA, RSA-PSS, ECDSA, EdDSA and `none`).
_SIGNING_METHODS = frozenset(
    {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    | {"ES256", "ES384", "ES512", "EdDSA", "none"}
)

#: Go's unicode.IsSpace, what strings.TrimSpace trims (Python's str.strip also trims \x1c-\x1f).
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)


def _json_object_error(data: bytes, go_type: str) -> str | None:
    """json.Unmarshal(data, &<map>): Go's syntax error, or its type error (neither object nor null)."""
    syntax = json_syntax_error(data)
    if syntax is not None:
        return syntax
    first = data.lstrip(b" \t\r\n")[:1]
    kind = {b"[": "array", b'"': "string", b"t": "bool", b"f": "bool"}.get(first, "number")
    if first in (b"{", b"n"):
        return None
    return f"json: cannot unmarshal {kind} into Go value of type {go_type}"


def check_jwt(token: str) -> str | None:
    """golang-jwt v5.3.1 `Parser.ParseUnverified` (with `&jwt.MapClaims{}`): its error text, or None if OK.

    The three segments are decoded as Go's base64.RawURLEncoding and the header and claims as Go's
    encoding/json, so the detail after `token is malformed: ` is Go's to the character.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return "token is malformed: token contains an invalid number of segments"
    raw = [part.encode("utf-8", "surrogateescape") for part in parts]
    try:
        header_bytes = raw_url_b64decode(raw[0])
    except ValueError as exc:
        return f"token is malformed: could not base64 decode header: {exc}"
    problem = _json_object_error(header_bytes, "map[string]interface {}")
    if problem is not None:
        return f"token is malformed: could not JSON decode header: {problem}"
    try:
        claim_bytes = raw_url_b64decode(raw[1])
    except ValueError as exc:
        return f"token is malformed: could not base64 decode claim: {exc}"
    problem = _json_object_error(claim_bytes, "jwt.MapClaims")
    if problem is not None:
        return f"token is malformed: could not JSON decode claim: {problem}"
    header = json.loads(header_bytes.decode("utf-8", "replace")) if header_bytes.strip() != b"null" else None
    alg = header.get("alg") if isinstance(header, dict) else None
    if not isinstance(alg, str):
        return "token is unverifiable: signing method (alg) is unspecified"
    if alg not in _SIGNING_METHODS:
        return "token is unverifiable: signing method (alg) is unavailable"
    try:
        raw_url_b64decode(raw[2])
    except ValueError as exc:
        return f"token is malformed: could not base64 decode signature: {exc}"
    return None


def validate_token_file(path: str) -> str:
    """Kuma's ValidateTokenPath (app/kuma-dp/pkg/config/validate.go): the trimmed token, or TokenError with
    Kuma's message (`could not read file <path>: stat <path>: no such file or directory`, ...)."""
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        reason = go_path_error("stat", path, exc)
        raise TokenError(f"{TOKEN_INVALID_PREFIX}: could not read file {path}: {reason}") from None
    if size == 0:
        raise TokenError(f"{TOKEN_INVALID_PREFIX}: token under file {path} is empty")
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        # Go opens a directory fine and fails on read; anything else fails on open.
        reason = go_path_error("read" if isinstance(exc, IsADirectoryError) else "open", path, exc)
        raise TokenError(
            f"{TOKEN_INVALID_PREFIX}: could not read the token in the file {path}: {reason}"
        ) from None
    if len(raw) > _MAX_TOKEN_BYTES:
        # Ours: Kuma reads any size; a token is a few kilobytes, so a huge file is a wrong path, not a token.
        raise TokenError(
            f"{TOKEN_INVALID_PREFIX}: the file {path} is larger than {_MAX_TOKEN_BYTES} bytes; "
            "point --dataplane-token-file at the token"
        )
    text = raw.decode("utf-8", "surrogateescape").strip(_GO_SPACE)
    if any(c in text for c in "\x00\n\r"):
        raise TokenError(
            f"{TOKEN_INVALID_PREFIX}: Token shouldn't contain line breaks within the token, "
            "only at the start or end"
        )
    reason = check_jwt(text)
    if reason is not None:
        raise TokenError(f"{TOKEN_INVALID_PREFIX}: not valid JWT token. Can't parse it.: {reason}")
    return text


#: A token file larger than this is refused (memory bound); real tokens are a few kilobytes.
_MAX_TOKEN_BYTES = 1 << 20


def token_file_name(dataplane_name: str) -> str:
    """The file name of an inline token; refuse names that would escape the work dir."""
    bad = dataplane_name in ("", ".", "..") or "/" in dataplane_name or "\x00" in dataplane_name
    if bad:
        raise TokenError(
            f"cannot store --dataplane-token: dataplane name {dataplane_name!r} is not a valid file name; "
            "pass --dataplane-token-file instead"
        )
    return dataplane_name


def resolve_token(
    token: str, token_path: str, work_dir: str | os.PathLike[str], dataplane_name: str
) -> Token | None:
    """Inline token -> `<work_dir>/<name>` (0600, atomic), then validate the file; None without a token."""
    if token:
        target = Path(work_dir) / token_file_name(dataplane_name)
        atomic_write(target, token.encode(), mode=0o600)
        token_path = str(target)
    if not token_path:
        return None
    value = validate_token_file(token_path)
    try:
        from kuma_dp import logs

        logs.add_secret(value)
    except ImportError:  # logging module not there: nothing to register with
        pass
    return Token(path=token_path, value=value)
