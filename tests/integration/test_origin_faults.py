"""Origins that fail while the proxy relays for them: the client always learns the truth (a cut response, a 502
naming the cause), never gets another request's bytes, and no request is sent twice that may not be.

The other faults of this kind live with the errors they cause (tests/integration/test_errors.py): an origin that
answers garbage or an ambiguous framing (502 naming it), closes before answering (502), accepts but never answers
(504 after `forward.idle_timeout`), or stalls in the middle of a body (the client is cut off).
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from tests.helpers import http
from tests.helpers.origin import RawConn, RawOriginFactory, ok_response
from tests.helpers.proxy_process import ProxyProcess

pytestmark = pytest.mark.asyncio


def reset(conn: RawConn) -> None:
    """Close `conn` with a TCP reset (SO_LINGER 0), the way a crashing origin or a load balancer drops it."""
    sock: socket.socket = conn.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.writer.transport.abort()


async def test_origin_reset_mid_response_cuts_the_client_and_nothing_follows(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """The origin resets after the head and part of a 100 kB body. The client gets a beginning of that response,
    cut off (or, if the reset overtook the bytes at the proxy, a 502 saying so), then the close; the request it
    pipelined behind is not answered at all, least of all with bytes of another response."""
    sent = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"p" * 3000

    async def reset_mid_body(conn: RawConn) -> None:
        assert await conn.read_request() is not None
        await conn.send(sent)
        reset(conn)

    origin = await raw_origin_factory(reset_mid_body)
    reader, writer = await http.open_raw(proxy.port)
    received = b""
    try:
        writer.write(http.get(origin.url("/cut")) + http.get(origin.url("/after")))
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), http.TIMEOUT):
                received += chunk
        except ConnectionResetError:
            pass  # the proxy aborted the connection: a close, as a FIN is
    finally:
        await http.close_writer(writer)
    if received.startswith(b"HTTP/1.1 502 "):
        assert b"closed the connection" in received
        assert received.endswith(b"\n") and received.count(b"HTTP/1.1") == 1
    else:
        assert received.startswith(b"HTTP/1.1 200 OK\r\n"), received[:200]  # the head, as with the copy relay
        assert sent.startswith(received), received[:200]
    assert [r.target for r in origin.requests] == [b"/cut"]


class PooledCloseRace:
    """An origin whose first connection answers the first request (keep-alive), then reads the next request on that
    connection and closes without answering: what a client sees when an origin closes an idle keep-alive connection
    just as the proxy reuses it. Later connections answer normally."""

    def __init__(self) -> None:
        self.first = True

    async def __call__(self, conn: RawConn) -> None:
        if self.first:
            self.first = False
            request = await conn.read_request()
            assert request is not None
            await conn.send(ok_response(b"ok " + request.target))
            await conn.read_request()
            return  # closed by the origin's teardown of this handler, unanswered
        while (request := await conn.read_request()) is not None:
            await conn.send(ok_response(b"ok " + request.method + b" " + request.target))


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS"])
async def test_idempotent_request_on_a_pooled_connection_the_origin_closed_is_retried_once(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory, method: bytes
) -> None:
    origin = await raw_origin_factory(PooledCloseRace())
    warm = http.get(origin.url("/warm"))
    again = b"%b %b HTTP/1.1\r\nHost: h\r\n\r\n" % (method, origin.url("/again").encode())
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(warm)
        assert (await http.read_response(reader)).body == b"ok /warm"
        writer.write(again)
        response = await http.read_response(reader, method=method)
    finally:
        await http.close_writer(writer)
    assert response.status == 200
    if method != b"HEAD":
        assert response.body == b"ok %b /again" % method
    assert [(r.method, r.target) for r in origin.requests] == [
        (b"GET", b"/warm"),
        (method, b"/again"),
        (method, b"/again"),
    ]
    assert len(origin.conns) == 2


@pytest.mark.parametrize("method", [b"POST", b"PATCH"])
async def test_non_idempotent_request_is_never_sent_twice(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory, method: bytes
) -> None:
    """The same race for a bodyless POST or PATCH: the origin may have acted on it, so it is not repeated; the client
    gets a 502 saying the origin closed the connection."""
    origin = await raw_origin_factory(PooledCloseRace())
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(http.get(origin.url("/warm")))
        assert (await http.read_response(reader)).body == b"ok /warm"
        writer.write(b"%b %b HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n" % (method, origin.url("/once").encode()))
        response = await http.read_response(reader)
        await http.expect_eof(reader)
    finally:
        await http.close_writer(writer)
    assert response.status == 502
    assert b"closed the connection" in response.body
    assert (response.header(b"proxy-status") or b"").startswith(b"trace-proxy; error=connection_terminated")
    assert [(r.method, r.target) for r in origin.requests] == [(b"GET", b"/warm"), (method, b"/once")]


async def test_origin_answering_before_reading_the_body(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """An origin that answers 413 as soon as it has the head of a 4 MB upload: the client gets the 413, marked
    `Connection: close`, can go on sending the rest of its body without being reset (the proxy reads and drops it,
    RFC 9112 §9.6), and then sees the connection close."""
    body_size = 4 << 20

    async def refuse_early(conn: RawConn) -> None:
        assert await conn.read_head() is not None
        await conn.send(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n\r\ntoo big!")
        await conn.read_to_eof()

    origin = await raw_origin_factory(refuse_early)
    head = b"POST %b HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (origin.url("/up").encode(), body_size)
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(head + b"x" * 65536)
        response = await http.read_response(reader)
        assert (response.status, response.body) == (413, b"too big!")
        assert response.header(b"connection") == b"close"
        for _ in range(body_size // 65536 - 1):
            writer.write(b"x" * 65536)
            await writer.drain()
        await http.expect_eof(reader)
    finally:
        await http.close_writer(writer)
