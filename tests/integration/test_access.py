"""Who may use the proxy and how many at once: `forward.allow_clients` and `forward.max_connections`, against a
real proxy process. Loopback has a whole /8 on Linux, so clients bound to 127.0.0.2 are "other hosts" here."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.helpers import http
from tests.helpers.origin import RawOrigin
from tests.helpers.proxy_process import ProxyFactory

pytestmark = pytest.mark.asyncio


async def open_from(address: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0), limit=1 << 20), http.TIMEOUT
    )


async def refused_from(address: str, port: int, request: bytes) -> http.RawResponse:
    reader, writer = await open_from(address, port)
    try:
        writer.write(request)
        response = await http.read_response(reader)
        await http.expect_eof(reader)
        return response
    finally:
        await http.close_writer(writer)


async def test_clients_outside_allow_clients_get_403_and_nothing_is_forwarded(
    proxy_factory: ProxyFactory, raw_origin: RawOrigin
) -> None:
    """With allow_clients = ["127.0.0.1/32"], a client from 127.0.0.2 gets a 403 naming the key, for a request and
    for a CONNECT alike; nothing reaches the origin; the refusals are logged, not once per connection; a client
    from 127.0.0.1 is served."""
    proxy = proxy_factory({"forward": {"allow_clients": ["127.0.0.1/32"]}})
    for _ in range(20):
        response = await refused_from("127.0.0.2", proxy.port, http.get(raw_origin.url("/stranger")))
        assert response.status == 403, response
        assert b"127.0.0.2" in response.body and b"forward.allow_clients" in response.body
        assert (response.header(b"proxy-status") or b"").startswith(b"trace-proxy; error=http_request_denied")
    connect = b"CONNECT %b HTTP/1.1\r\nHost: %b\r\n\r\n" % (raw_origin.authority, raw_origin.authority)
    assert (await refused_from("127.0.0.2", proxy.port, connect)).status == 403
    assert raw_origin.conns == []

    response = await http.exchange(proxy.port, http.get(raw_origin.url("/friend")))
    assert (response.status, response.body) == (200, b"ok /friend")
    lines = [line for line in proxy.stderr.splitlines() if "refused a client from 127.0.0.2" in line]
    assert 1 <= len(lines) <= 2, lines  # rate-limited: one line per 10 s, with a count of the others


async def test_allowed_network_serves_all_its_addresses(proxy_factory: ProxyFactory, raw_origin: RawOrigin) -> None:
    proxy = proxy_factory({"forward": {"allow_clients": ["127.0.0.0/30"]}})
    for address in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        reader, writer = await open_from(address, proxy.port)
        try:
            writer.write(http.get(raw_origin.url(f"/from/{address}")))
            assert (await http.read_response(reader)).status == 200
        finally:
            await http.close_writer(writer)
    assert (await refused_from("127.0.0.4", proxy.port, http.get(raw_origin.url("/x")))).status == 403


async def test_connections_past_max_connections_are_closed_at_once(
    proxy_factory: ProxyFactory, raw_origin: RawOrigin
) -> None:
    """max_connections = 5: five open connections are served, a sixth is closed at once without a byte (and said
    so in the log), and once one of the five has gone a new connection is served again."""
    proxy = proxy_factory({"forward": {"max_connections": 5, "header_timeout": 60.0}})
    held = [await http.open_raw(proxy.port) for _ in range(5)]
    try:
        for i, (reader, writer) in enumerate(held):  # each is a real, served connection
            writer.write(http.get(raw_origin.url(f"/held/{i}")))
            assert (await http.read_response(reader)).status == 200
        reader, writer = await http.open_raw(proxy.port)
        try:
            writer.write(http.get(raw_origin.url("/surplus")))
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), http.TIMEOUT) == b""
        finally:
            await http.close_writer(writer)
        await http.close_writer(held.pop()[1])
        body = b""
        for _ in range(100):  # the proxy learns of the close asynchronously: retry until it has room again
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionResetError):
                body = (await http.exchange(proxy.port, http.get(raw_origin.url("/room-again")))).body
                break
        assert body == b"ok /room-again"
    finally:
        for _, writer in held:
            await http.close_writer(writer)
    assert b"/surplus" not in raw_origin.received
    assert "forward.max_connections (5) reached" in proxy.stderr
