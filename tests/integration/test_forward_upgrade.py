"""`Upgrade` on plain http:// (WebSocket): the handshake is proxied like any request (trace headers included),
then both directions are relayed as bytes; a refused upgrade is an ordinary response."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.helpers import http
from tests.helpers.data import payload
from tests.helpers.origin import Origin, RawConn, RawOriginFactory, Recorded
from tests.helpers.proxy_process import ProxyProcess

pytestmark = pytest.mark.asyncio


async def ws_echo(request: web.Request, record: Recorded) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str("hello from origin")
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            await ws.send_str("echo:" + message.data)
        elif message.type is WSMsgType.BINARY:
            await ws.send_bytes(message.data[::-1])
    return ws


async def ws_refused(request: web.Request, record: Recorded) -> web.StreamResponse:
    return web.Response(status=403, text="websockets are not allowed here\n")


async def check_websocket(proxy: ProxyProcess, origin: Origin, scheme: str) -> None:
    origin.route("/ws", ws_echo)
    origin.watched_pid = proxy.pid
    big = payload(1024 * 1024, seed=31)
    async with aiohttp.ClientSession() as session:
        ws = await asyncio.wait_for(session.ws_connect(origin.url("/ws", scheme), proxy=proxy.url), http.TIMEOUT)
        try:
            assert (await ws.receive_str(timeout=http.TIMEOUT)) == "hello from origin"
            for i in range(20):
                await ws.send_str(f"message {i}")
                assert (await ws.receive_str(timeout=http.TIMEOUT)) == f"echo:message {i}"
            await ws.send_bytes(big)
            assert (await ws.receive_bytes(timeout=http.TIMEOUT)) == big[::-1]
        finally:
            await asyncio.wait_for(ws.close(), http.TIMEOUT)
        assert ws.close_code == aiohttp.WSCloseCode.OK
    [record] = origin.requests
    assert record.raw_path == "/ws"
    assert record.header("Upgrade") == "websocket"
    assert "upgrade" in (record.header("Connection") or "").lower()
    assert record.header("Sec-WebSocket-Key") is not None
    record.assert_proxied()
    assert record.from_watched_pid is True


async def test_websocket_through_proxy(proxy: ProxyProcess, origin: Origin) -> None:
    """aiohttp `ws_connect(http://..., proxy=)` opens a WebSocket through the proxy: the origin's first message
    arrives, text and binary messages (including 1 MB) go both ways, and the close handshake completes. The
    handshake request carried the proxy's trace headers and the upgrade pair."""
    await check_websocket(proxy, origin, "http")


async def test_websocket_ws_scheme_through_proxy(proxy: ProxyProcess, origin: Origin) -> None:
    """The same with a ws:// URL, as services usually write it: aiohttp then sends `GET ws://host:port/ws` to the
    proxy, which must be proxied like http:// (RFC 6455 ws URIs map to HTTP on the same port)."""
    await check_websocket(proxy, origin, "ws")


async def test_refused_websocket_upgrade_is_a_normal_response(proxy: ProxyProcess, origin: Origin) -> None:
    """An origin refusing the upgrade (403) gets its 403 and body to the client; no tunnel is opened."""
    origin.route("/ws-refused", ws_refused)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await asyncio.wait_for(session.ws_connect(origin.url("/ws-refused"), proxy=proxy.url), http.TIMEOUT)
    assert info.value.status == 403
    [record] = origin.requests
    record.assert_proxied()

    reader, writer = await http.open_raw(proxy.port)
    writer.write(
        b"GET %b HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" % origin.url("/ws-refused").encode()
    )
    response = await http.read_response(reader)
    assert response.status == 403
    assert response.body == b"websockets are not allowed here\n"
    await http.expect_eof(reader)
    await http.close_writer(writer)


async def test_raw_upgrade_relays_bytes_both_ways(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """After `101 Switching Protocols`, bytes flow unchanged both ways: the origin's bytes sent in the same
    segment as its 101, and the client's bytes sent right behind its request head, before the 101."""

    async def switch(conn: RawConn) -> None:
        request = await conn.read_head()
        assert request is not None
        await conn.send(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo/1\r\n\r\norigin-first"
        )
        early = await conn.read_exactly(len(b"client-early"))
        await conn.send(b"[" + early + b"]")
        while True:
            await conn.send(b"[" + await conn.read_some() + b"]")

    origin = await raw_origin_factory(switch)
    reader, writer = await http.open_raw(proxy.port)
    writer.write(
        b"GET %b HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: echo/1\r\n\r\nclient-early"
        % origin.url("/up").encode()
    )
    head = await http.read_head(reader)
    assert head.startswith(b"HTTP/1.1 101 ")
    _, headers = http.parse_head(head)
    assert http.header_values(headers, b"upgrade") == [b"echo/1"]
    assert await asyncio.wait_for(reader.readexactly(len(b"origin-first")), http.TIMEOUT) == b"origin-first"
    assert await asyncio.wait_for(reader.readexactly(len(b"[client-early]")), http.TIMEOUT) == b"[client-early]"
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(6), http.TIMEOUT) == b"[ping]"
    await http.close_writer(writer)
    [request] = origin.requests
    assert request.values(b"upgrade") == [b"echo/1"]
    request.assert_proxied()
