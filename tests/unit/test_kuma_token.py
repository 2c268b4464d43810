"""Kuma v2.14.3's `app/kuma-dp/pkg/config/validate_test.go` (ValidateTokenPath), case by case, and the rest of
the wording Kuma's token check produces (golang-jwt v5.3.1, Go's base64 and encoding/json).

`validate_token_file` returns Kuma's full start-up message (`dataplane token is invalid, ...: <reason>`, from
app/kuma-dp/cmd/context.go); the Kuma table checks the reason alone, so the prefix is removed here.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kuma_dp.token import TOKEN_INVALID_PREFIX, TokenError, resolve_token, validate_token_file
from tests.conftest import REPO

pytestmark = pytest.mark.unit

#: The token of Kuma's table (a valid HS256 JWT with claims {"Name":"test","Mesh":"default",...}).
TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJOYW1lIjoidGVzdCIsIk1lc2giOiJkZWZhdWx0IiwiVGFncyI6e30sIlR5cGUiOiIifQ"
    ".rdQ6l_6hzT93Kbk9kO-kZYY7BaexUH8QknvbdRy_f6s"
)


def _reason(path: str) -> str | None:
    """ValidateTokenPath's error text for the file, or None when the token is accepted."""
    try:
        validate_token_file(path)
    except TokenError as exc:
        text = str(exc)
        assert text.startswith(TOKEN_INVALID_PREFIX + ": ")
        return text[len(TOKEN_INVALID_PREFIX) + 2 :]
    return None


def test_empty_path_is_no_token(tmp_path: Path) -> None:
    """ "should pass validation for empty path"."""
    assert resolve_token("", "", tmp_path, "dp-1") is None


def test_non_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ "should fail for non existing file": Go's `stat <file>: no such file or directory`."""
    monkeypatch.chdir(tmp_path)
    assert _reason("nonexistingfile") == (
        "could not read file nonexistingfile: stat nonexistingfile: no such file or directory"
    )


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("", "token under file {} is empty"),
        (
            TOKEN[1:],
            "not valid JWT token. Can't parse it.: token is malformed: could not JSON decode header: "
            "invalid character 'È' looking for beginning of value",
        ),
        (
            TOKEN.rsplit(".", 1)[0],
            "not valid JWT token. Can't parse it.: token is malformed: token contains an invalid number of "
            "segments",
        ),
        (TOKEN + "\n", None),
        ("\n" + TOKEN + "\n", None),
        (
            TOKEN[:32] + "\n" + TOKEN[32:] + "\n",
            "Token shouldn't contain line breaks within the token, only at the start or end",
        ),
    ],
    ids=[
        "empty file",
        "can't parse token",
        "need 3 segments",
        "new line in the end",
        "new line at the start",
        "new line in the middle",
    ],
)
def test_kuma_token_table(tmp_path: Path, token: str, expected: str | None) -> None:
    """ "should fail with invalid token": Kuma's six entries, `{}` standing for the file's path."""
    path = tmp_path / "token"
    path.write_text(token)
    want = None if expected is None else expected.replace("{}", str(path))
    assert _reason(str(path)) == want


def _seg(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


HEADER = _seg(b'{"alg":"HS256","typ":"JWT"}')
CLAIMS = _seg(b'{"Name":"test"}')
MALFORMED = "not valid JWT token. Can't parse it.: token is malformed: "
UNVERIFIABLE = "not valid JWT token. Can't parse it.: token is unverifiable: "


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (f"{HEADER}.{CLAIMS}.sig", None),
        (f"{HEADER}.{CLAIMS}.", None),  # the signature is not checked, only decoded
        ("a.b.c.d", MALFORMED + "token contains an invalid number of segments"),
        (
            f"{HEADER}=.{CLAIMS}.sig",
            MALFORMED + f"could not base64 decode header: illegal base64 data at input byte {len(HEADER)}",
        ),
        ("a.b.c", MALFORMED + "could not base64 decode header: illegal base64 data at input byte 0"),
        ("e+J9.b.c", MALFORMED + "could not base64 decode header: illegal base64 data at input byte 1"),
        (
            _seg(b"{}x") + "." + CLAIMS + ".s",
            MALFORMED + "could not JSON decode header: invalid character 'x' after top-level value",
        ),
        (
            _seg(b'{"a":}') + "." + CLAIMS + ".s",
            MALFORMED + "could not JSON decode header: invalid character '}' looking for beginning of value",
        ),
        (
            _seg(b'{"alg"') + "." + CLAIMS + ".s",
            MALFORMED + "could not JSON decode header: unexpected end of JSON input",
        ),
        (
            _seg(b"[1]") + "." + CLAIMS + ".s",
            MALFORMED
            + "could not JSON decode header: json: cannot unmarshal array into Go value of type "
            + "map[string]interface {}",
        ),
        (
            HEADER + "." + _seg(b"tru") + ".s",
            MALFORMED + "could not JSON decode claim: invalid character ' ' in literal true (expecting 'e')",
        ),
        (
            HEADER + "." + _seg(b'"x"') + ".s",
            MALFORMED
            + "could not JSON decode claim: json: cannot unmarshal string into Go value of type "
            + "jwt.MapClaims",
        ),
        (
            HEADER + "." + _seg(b"1") + ".s",
            MALFORMED
            + "could not JSON decode claim: json: cannot unmarshal number into Go value of type "
            + "jwt.MapClaims",
        ),
        (
            f"{HEADER}.{CLAIMS}.s=",
            MALFORMED + "could not base64 decode signature: illegal base64 data at input byte 1",
        ),
        (_seg(b'{"typ":"JWT"}') + "." + CLAIMS + ".s", UNVERIFIABLE + "signing method (alg) is unspecified"),
        (_seg(b"null") + "." + CLAIMS + ".s", UNVERIFIABLE + "signing method (alg) is unspecified"),
        (_seg(b'{"alg":1}') + "." + CLAIMS + ".s", UNVERIFIABLE + "signing method (alg) is unspecified"),
        (_seg(b'{"alg":"XX1"}') + "." + CLAIMS + ".s", UNVERIFIABLE + "signing method (alg) is unavailable"),
        (_seg(b'{"alg":"none"}') + "." + _seg(b"null") + ".", None),
        (
            f"{HEADER}\x00.{CLAIMS}.s",
            "Token shouldn't contain line breaks within the token, only at the start or end",
        ),
    ],
)
def test_go_wording_of_every_parse_error(tmp_path: Path, token: str, expected: str | None) -> None:
    """golang-jwt's ParseUnverified errors, each with Go's detail (base64 offsets, encoding/json messages)."""
    path = tmp_path / "token"
    path.write_text(token)
    assert _reason(str(path)) == expected


def test_trims_what_go_trims_only(tmp_path: Path) -> None:
    """strings.TrimSpace: Unicode spaces yes (NBSP), ASCII file/group separators no (Python's strip would)."""
    path = tmp_path / "token"
    path.write_text(f"\u00a0 {TOKEN}\t\r\n")
    assert validate_token_file(str(path)) == TOKEN
    path.write_text(f"{TOKEN}\x1c")
    assert _reason(str(path)) == (
        MALFORMED + "could not base64 decode signature: illegal base64 data at input byte 43"
    )


def test_a_directory_fails_on_read_as_in_go(tmp_path: Path) -> None:
    """os.Stat of a directory succeeds (size > 0), os.ReadFile fails: `read <dir>: is a directory`."""
    assert _reason(str(tmp_path)) == (
        f"could not read the token in the file {tmp_path}: read {tmp_path}: is a directory"
    )


def test_unreadable_file_fails_on_open_as_in_go(short_tmp: Path) -> None:
    """os.Stat succeeds, os.ReadFile's open fails: `open <file>: permission denied` (uid 5678 when root)."""
    path = short_tmp / "token"
    path.write_text(TOKEN)
    path.chmod(0)
    expected = (
        TOKEN_INVALID_PREFIX
        + f": could not read the token in the file {path}: open {path}: permission denied"
    )
    code = (
        "import sys\nfrom kuma_dp.token import TokenError, validate_token_file\n"
        "try:\n    validate_token_file(sys.argv[1])\nexcept TokenError as exc:\n    print(exc)\n"
    )
    as_user = {"user": 5678} if os.geteuid() == 0 else {}
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        **as_user,
    )
    assert out.stdout.strip() == expected


def test_huge_file_is_refused_on_purpose(tmp_path: Path) -> None:
    """Ours: Kuma reads a token file of any size; we stop at 1 MiB (bounded memory) and say which file."""
    path = tmp_path / "token"
    path.write_bytes(b"a" * ((1 << 20) + 1))
    reason = _reason(str(path))
    assert reason is not None and "larger than 1048576 bytes" in reason and str(path) in reason


def test_jwt_header_bytes_round_trip_the_kuma_token() -> None:
    """The table's token decodes to the JSON Kuma generated (a sanity check of the test data itself)."""
    header = base64.urlsafe_b64decode(TOKEN.split(".")[0] + "==")
    assert json.loads(header) == {"alg": "HS256", "typ": "JWT"}
