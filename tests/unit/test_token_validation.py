"""Dataplane tokens: inline -> <workdir>/<name> 0600, Kuma's checks, and the token never in a message."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from kuma_dp.token import TOKEN_INVALID_PREFIX, Token, TokenError, check_jwt, resolve_token
from tests.helpers.fake_cp import make_token

pytestmark = pytest.mark.unit


def test_inline_token_is_written_0600_under_the_dataplane_name(tmp_path: Path) -> None:
    tok = make_token()
    got = resolve_token(tok, "", tmp_path, "dp-1")
    assert got == Token(path=str(tmp_path / "dp-1"), value=tok)
    f = tmp_path / "dp-1"
    assert f.read_text() == tok
    assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_inline_token_wins_over_the_file(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text(make_token({"Name": "other"}))
    tok = make_token()
    got = resolve_token(tok, str(other), tmp_path, "dp-1")
    assert got is not None and got.value == tok and got.path == str(tmp_path / "dp-1")


def test_token_file_is_trimmed_and_its_path_kept(tmp_path: Path) -> None:
    tok = make_token()
    f = tmp_path / "token"
    f.write_text(f"\n  {tok}\n")
    assert resolve_token("", str(f), tmp_path, "dp-1") == Token(path=str(f), value=tok)


def test_no_token_is_none(tmp_path: Path) -> None:
    assert resolve_token("", "", tmp_path, "dp-1") is None


def test_empty_file(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("")
    with pytest.raises(TokenError) as exc:
        resolve_token("", str(f), tmp_path, "dp-1")
    assert str(exc.value) == f"{TOKEN_INVALID_PREFIX}: token under file {f} is empty"


def test_line_break_inside(tmp_path: Path) -> None:
    tok = make_token()
    f = tmp_path / "token"
    f.write_text(tok[:10] + "\n" + tok[10:])
    with pytest.raises(TokenError) as exc:
        resolve_token("", str(f), tmp_path, "dp-1")
    assert str(exc.value) == (
        f"{TOKEN_INVALID_PREFIX}: Token shouldn't contain line breaks within the token, "
        "only at the start or end"
    )
    assert tok[10:] not in str(exc.value)


@pytest.mark.parametrize(
    "bad",
    ["not-a-jwt-secretvalue", "a.b", "Zm9v.e30.sig", "eyJ0eXAiOiJKV1QifQ.e30.sig"],
)
def test_not_a_jwt(tmp_path: Path, bad: str) -> None:
    with pytest.raises(TokenError) as exc:
        resolve_token(bad, "", tmp_path, "dp-1")
    msg = str(exc.value)
    assert msg.startswith(f"{TOKEN_INVALID_PREFIX}: not valid JWT token. Can't parse it.")
    assert bad not in msg


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match=r"could not read file .*missing"):
        resolve_token("", str(tmp_path / "missing"), tmp_path, "dp-1")


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ""])
def test_name_that_would_escape_the_work_dir(tmp_path: Path, name: str) -> None:
    with pytest.raises(TokenError, match="not a valid file name"):
        resolve_token(make_token(), "", tmp_path / "wd", name)
    assert not (tmp_path / "evil").exists()


def test_token_not_in_repr_and_not_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tok = make_token({"Name": "dp-1", "secret": "s3cr3t-claim"})
    with caplog.at_level(logging.DEBUG):
        got = resolve_token(tok, "", tmp_path, "dp-1")
    assert got is not None and tok not in repr(got)
    assert all(tok not in r.getMessage() for r in caplog.records)


def test_check_jwt_accepts_a_structurally_valid_token() -> None:
    assert check_jwt(make_token()) is None
    assert check_jwt(make_token(alg="")) is not None
