"""The dataplane token: where it comes from, where it lives, and Kuma's sanity checks.

`--dataplane-token` (inline) is written to `<workdir>/<dataplane name>` with mode 0600 and then treated like
`--dataplane-token-file`, as Kuma does, so Envoy (reloadable tokens) and the CP see a path. The token is a
credential: it is registered with the log redactor, never formatted into a message or exception, and only
its path appears in logs.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from kuma_dp.fsutil import atomic_write

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


def _b64url(segment: str) -> bytes:
    padded = segment + "=" * (-len(segment) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii"))


def check_jwt(token: str) -> str | None:
    """jwt.ParseUnverified's structural checks (3 segments, JSON header with `alg`); None if OK."""
    parts = token.split(".")
    if len(parts) != 3:
        return "token contains an invalid number of segments"
    try:
        header = json.loads(_b64url(parts[0]))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return "token is malformed: could not JSON decode header"
    if not isinstance(header, dict):
        return "token is malformed: could not JSON decode header"
    try:
        json.loads(_b64url(parts[1]))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return "token is malformed: could not JSON decode claim"
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        return "token is unverifiable: signing method (alg) is unspecified"
    return None


def validate_token_file(path: str) -> str:
    """Kuma's ValidateTokenPath; returns the trimmed token, raises TokenError with Kuma's wrapped reason."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise TokenError(
            f"{TOKEN_INVALID_PREFIX}: could not read file {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    if not raw:
        raise TokenError(f"{TOKEN_INVALID_PREFIX}: token under file {path} is empty")
    text = raw.decode("utf-8", "replace").strip()
    if "\n" in text or "\r" in text:
        raise TokenError(
            f"{TOKEN_INVALID_PREFIX}: Token shouldn't contain line breaks within the token, "
            "only at the start or end"
        )
    reason = check_jwt(text)
    if reason is not None:
        raise TokenError(f"{TOKEN_INVALID_PREFIX}: not valid JWT token. Can't parse it.: {reason}")
    return text


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
