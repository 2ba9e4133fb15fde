"""The benchmark's echo server (the floor every Funnel figure is compared with), in this process on port 0."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.echo import create_server, echo_once


@pytest.fixture()
def echo_address() -> Iterator[str]:
    server, port = create_server("127.0.0.1:0", max_workers=4)
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_echo_returns_the_request_bytes(echo_address: str) -> None:
    payload = bytes(range(256)) * 3
    assert echo_once(echo_address, payload) == payload
    assert echo_once(echo_address, b"") == b""
