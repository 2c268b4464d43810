"""The bounds of the agent's parsers (issue: hardening): HTTP bodies are refused from their declared size or
as they stream, and a bootstrap of any size is read in bounded time and memory."""

from __future__ import annotations

import asyncio

import pytest

from kuma_dp import _http
from kuma_dp.envoy import (
    FULL_PARSE_MAX_BYTES,
    BootstrapFormatError,
    admin_address_from_bootstrap,
    parse_bootstrap,
)


class _Feed:
    """A StreamReader fed `head` then `body` in pieces while the parser reads; `fed` counts the pieces."""

    def __init__(self, head: bytes, pieces: int, piece: bytes) -> None:
        self.head, self.pieces, self.piece = head, pieces, piece
        self.fed = 0

    async def run(self, limit: int) -> _http.Response:
        reader = asyncio.StreamReader(limit=_http.MAX_HEADER_BYTES)
        reader.feed_data(self.head)

        async def feed() -> None:
            for _ in range(self.pieces):
                reader.feed_data(self.piece)
                self.fed += 1
                await asyncio.sleep(0)
            reader.feed_eof()

        feeder = asyncio.create_task(feed())
        try:
            return await _http.read_response(reader, limit=limit, peer="app:9090")
        finally:
            feeder.cancel()


def test_body_to_eof_is_refused_while_it_streams() -> None:
    feed = _Feed(b"HTTP/1.1 200 OK\r\n\r\n", pieces=10_000, piece=b"x" * 4096)  # 40 MB offered
    with pytest.raises(_http.BodyTooLarge, match=r"app:9090 exceeds the 1 MiB limit \(no Content-Length"):
        asyncio.run(feed.run(limit=1024 * 1024))
    assert feed.fed < 1000  # stopped at about 1 MiB of the 40 offered, not at EOF


def test_declared_length_and_chunks_are_checked_before_reading() -> None:
    big = _http.MAX_BODY_BYTES + 1
    with pytest.raises(_http.BodyTooLarge, match=f"Content-Length {big}"):
        _http.parse_response(f"HTTP/1.1 200 OK\r\nContent-Length: {big}\r\n\r\n".encode())
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"10\r\n" + b"y" * 16 + b"\r\n"
    with pytest.raises(_http.BodyTooLarge, match="chunked"):
        asyncio.run(_http.read_response(_http._Buffer(chunked + b"0\r\n\r\n"), limit=8))
    with pytest.raises(_http.HttpError, match="negative"):
        _http.parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n")


def test_a_body_within_the_limit_is_read_whole() -> None:
    resp = _http.parse_response(b"HTTP/1.1 200 OK\r\n\r\nhello")
    assert resp.body == b"hello"


ADMIN = "admin:\n  address:\n    socketAddress:\n      address: 127.0.0.1\n      portValue: 9901\n"


def _large(body_line: str) -> str:
    filler = body_line * (FULL_PARSE_MAX_BYTES // len(body_line) + 10)
    return filler


def test_large_block_yaml_bootstrap_is_read_by_its_top_level_keys() -> None:
    clusters = _large("  - name: c\n    type: STATIC\n")
    text = "# comment\n" + ADMIN + "staticResources:\n  clusters:\n" + clusters
    text += '"node":\n  id: default.dp\n'
    doc = parse_bootstrap(text.encode())
    assert set(doc) == {"admin", "staticResources", "node"}
    assert str(admin_address_from_bootstrap(doc)) == "127.0.0.1:9901"


def test_large_flow_style_bootstrap_is_refused_with_the_reason() -> None:
    text = '{"admin": {}, "x": [' + _large('"a", ') + '"b"]}'
    with pytest.raises(BootstrapFormatError, match="must be block-style YAML"):
        parse_bootstrap(text)


def test_small_bootstrap_is_parsed_whole_and_checked() -> None:
    assert parse_bootstrap(ADMIN)["admin"]["address"]["socketAddress"]["portValue"] == 9901
    with pytest.raises(BootstrapFormatError, match="not a YAML mapping"):
        parse_bootstrap(b"- a\n- b\n")
    with pytest.raises(BootstrapFormatError, match="not valid YAML"):
        parse_bootstrap(b"admin: [\n")
    with pytest.raises(BootstrapFormatError, match=r"nested too deeply|not valid YAML"):
        parse_bootstrap(b"[" * 100_000)
