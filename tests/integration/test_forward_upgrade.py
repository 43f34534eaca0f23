"""`Upgrade` on plain http:// (WebSocket): the handshake is proxied like any request (trace headers included),
then both directions are relayed as bytes; a refused upgrade is an ordinary response."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.helpers import http
from tests.helpers.data import payload
from tests.helpers.origin import Origin, RawConn, RawOrigin, RawOriginFactory, Recorded
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
    assert response.header(b"connection") is None  # still HTTP, and kept open
    writer.write(http.get(origin.url("/after-refusal")))
    following = await http.read_response(reader)
    await http.close_writer(writer)
    assert following.status == 200
    assert [r.raw_path for r in origin.requests] == ["/ws-refused", "/ws-refused", "/after-refusal"]


UPGRADE_WITH_BODY = (
    b"POST %b HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\nhello"
)


async def test_upgrade_request_body_reaches_the_origin_and_its_answer_the_client(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """An Upgrade request with a Content-Length body, to an origin that ignores the upgrade and answers the whole
    request: the origin gets the body exactly as framed, the client its answer, and the request the client
    pipelined right behind (sent before the answer came) is parsed and proxied as the next request, on the same
    connection, not relayed as the new protocol's bytes."""
    origin = await raw_origin_factory()
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(UPGRADE_WITH_BODY % origin.url("/up").encode() + http.get(origin.url("/next")))
        answer = await http.read_response(reader)
        following = await http.read_response(reader)
        writer.write(http.get(origin.url("/third")))
        third = await http.read_response(reader)
    finally:
        await http.close_writer(writer)
    assert (answer.status, answer.body) == (200, b"ok /up")
    assert (following.status, following.body) == (200, b"ok /next")
    assert third.body == b"ok /third"
    assert [r.target for r in origin.requests] == [b"/up", b"/next", b"/third"]
    up = origin.requests[0]
    assert up.body == b"hello"
    assert up.header(b"content-length") == b"5"
    assert up.values(b"upgrade") == [b"h2c"]
    for request in origin.requests:
        request.assert_proxied()  # parsed and rewritten by the proxy: trace headers added
    assert origin.framing_errors == []


UPGRADE = b"GET %b HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"


@pytest.mark.parametrize(
    ("first", "second"),
    [(UPGRADE, UPGRADE), (b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n", UPGRADE)],
    ids=["two-upgrades", "request-then-upgrade"],
)
async def test_refused_upgrade_pipelined_then_the_client_closes(
    proxy: ProxyProcess, raw_origin: RawOrigin, first: bytes, second: bytes
) -> None:
    """Two requests in one write, the second (or both) asking to upgrade, then the client's half-close: both are
    answered in order and the connection closes after the second (the half-close was lost when it came while a
    refused Upgrade was in flight; an Upgrade queued behind a request was never started)."""
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(first % raw_origin.url("/one").encode() + second % raw_origin.url("/two").encode())
        writer.write_eof()
        answers = [await http.read_response(reader), await http.read_response(reader)]
        await http.expect_eof(reader)
    finally:
        await http.close_writer(writer)
    assert [a.body for a in answers] == [b"ok /one", b"ok /two"]


async def test_upgrade_in_http10_is_ignored(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """An HTTP/1.0 request asking to upgrade (with a body, kept alive): the origin gets it without the upgrade and
    with its body, and the request behind it is parsed as the next one (RFC 9110 §7.8: Upgrade is ignored)."""
    request = (
        b"POST %b HTTP/1.0\r\nConnection: upgrade, keep-alive\r\nUpgrade: websocket\r\nContent-Length: 3\r\n\r\nabc"
        % raw_origin.url("/ten").encode()
    )
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(request + b"GET %b HTTP/1.0\r\n\r\n" % raw_origin.url("/next").encode())
        first = await http.read_response(reader)
        second = await http.read_response(reader)
    finally:
        await http.close_writer(writer)
    assert (first.body, second.body) == (b"ok /ten", b"ok /next")
    ten = raw_origin.requests[0]
    assert ten.body == b"abc"
    assert ten.values(b"upgrade") == []


async def test_upgrade_request_body_split_over_reads(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """The same body arriving a byte at a time after the head: all of it, and only it, is the body."""
    origin = await raw_origin_factory()
    reader, writer = await http.open_raw(proxy.port)
    request = UPGRADE_WITH_BODY % origin.url("/slow").encode()
    try:
        writer.write(request[:-5])
        await writer.drain()
        for byte in b"hello":
            await origin.wait_for(lambda: bool(origin.conns))
            writer.write(bytes([byte]))
            await writer.drain()
        answer = await http.read_response(reader)
    finally:
        await http.close_writer(writer)
    assert answer.body == b"ok /slow"
    assert origin.requests[0].body == b"hello"


async def test_upgrade_request_whose_body_never_comes(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """An Upgrade request announcing a body, then the client's half-close without it: a 400 at once, as for any
    request whose body the client cut short (found by the fuzzer: it waited for the body forever)."""
    head = b"GET %b HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 1000\r\n\r\n"
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(head % raw_origin.url("/never").encode() + b"partial")
        writer.write_eof()
        response = await http.read_response(reader)
        await http.expect_eof(reader)
    finally:
        await http.close_writer(writer)
    assert response.status == 400
    assert b"before the request body ended" in response.body


async def test_upgrade_accepted_after_the_body(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """An origin that reads the body, then switches: the body was the request's, what follows is tunnelled."""

    async def switch_after_body(conn: RawConn) -> None:
        request = await conn.read_request()
        assert request is not None and request.body == b"hello"
        await conn.send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        while True:
            await conn.send(b"<" + await conn.read_some() + b">")

    origin = await raw_origin_factory(switch_after_body)
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(UPGRADE_WITH_BODY % origin.url("/switch").encode())
        head = await http.read_head(reader)
        assert head.startswith(b"HTTP/1.1 101 ")
        writer.write(b"tunnelled")
        assert await asyncio.wait_for(reader.readexactly(11), http.TIMEOUT) == b"<tunnelled>"
    finally:
        await http.close_writer(writer)


async def test_upgrade_request_with_a_chunked_body_is_refused(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    response = await http.answer_then_close(
        proxy.port,
        b"POST %b HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n" % raw_origin.url("/chunked-up").encode(),
    )
    assert response.status == 400
    assert b"Upgrade request with a chunked body" in response.body
    assert raw_origin.received == b""


async def test_bytes_after_a_refused_upgrade_are_never_relayed_as_a_tunnel(
    proxy: ProxyProcess, raw_origin: RawOrigin
) -> None:
    """A client that sent the new protocol's bytes right behind its request, but the origin refused the upgrade:
    those bytes are parsed as HTTP (here: garbage, 400) and none of them reaches the origin."""
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(
            b"GET %b HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: echo/1\r\n\r\n\x00\x01 new protocol"
            % raw_origin.url("/refuse").encode()
        )
        answer = await http.read_response(reader)
        refused = await http.read_response(reader)
        await http.expect_eof(reader)
    finally:
        await http.close_writer(writer)
    assert answer.body == b"ok /refuse"
    assert refused.status == 400
    assert raw_origin.received == raw_origin.requests[0].head


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
