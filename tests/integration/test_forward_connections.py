"""Connections through the proxy: keep-alive on both sides, upstream reuse, pipelining, 100-continue, bodiless
responses; after each, the same client connection must still carry a normal request."""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import http
from tests.helpers.clients import curl, requests_session
from tests.helpers.data import payload
from tests.helpers.origin import Origin, RawConn, RawOrigin, RawOriginFactory, Recorded, ok_response
from tests.helpers.proxy_process import ProxyFactory, ProxyProcess
from tests.helpers.trace import parse_sentry_trace

pytestmark = pytest.mark.asyncio

N = 5


def get(origin: RawOrigin | Origin, path: str, extra: bytes = b"") -> bytes:
    return b"GET %b HTTP/1.1\r\nHost: h\r\n%b\r\n" % (origin.url(path).encode(), extra)


async def test_sequential_requests_reuse_one_origin_connection(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """N requests in turn on one client connection get N responses on that connection, and the proxy carries them
    all on a single origin connection; each request still gets its own trace."""
    reader, writer = await http.open_raw(proxy.port)
    for i in range(N):
        writer.write(get(raw_origin, f"/seq/{i}"))
        response = await http.read_response(reader)
        assert (response.status, response.body) == (200, b"ok /seq/%d" % i)
        assert response.header(b"connection") is None
    await http.close_writer(writer)
    assert len(raw_origin.conns) == 1
    assert [r.target for r in raw_origin.requests] == [b"/seq/%d" % i for i in range(N)]
    spans = {parse_sentry_trace(r.values(b"sentry-trace")[0].decode()).span_id for r in raw_origin.requests}
    assert len(spans) == N


async def test_aiohttp_keep_alive_uses_one_connection_each_side(proxy: ProxyProcess, origin: Origin) -> None:
    """An aiohttp client with a one-connection pool sends N requests over one proxy connection; the origin sees them
    on one connection too."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(N):
            async with session.get(origin.url(f"/ka/{i}"), proxy=proxy.url) as resp:
                assert resp.status == 200
                await resp.read()
    assert len(origin.requests) == N
    assert origin.connections == 1
    for request in origin.requests:
        request.assert_proxied()


async def test_requests_session_keep_alive(proxy: ProxyProcess, origin: Origin) -> None:
    """A requests Session reuses its proxy connection, and the proxy its origin connection, for N requests."""

    def call() -> list[int]:
        with requests_session(proxy.url) as session:
            return [session.get(origin.url(f"/rq/{i}"), timeout=30).status_code for i in range(N)]

    assert await asyncio.to_thread(call) == [200] * N
    assert origin.connections == 1
    for request in origin.requests:
        request.assert_proxied()


async def test_upstream_connection_reused_across_client_connections(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """A second client connection, opened after the first finished, reuses the pooled origin connection."""
    for i in range(3):
        response = await http.exchange(proxy.port, get(raw_origin, f"/pool/{i}"))
        assert response.status == 200
    assert len(raw_origin.conns) == 1
    assert len(raw_origin.requests) == 3
    for request in raw_origin.requests:
        request.assert_proxied()


async def test_origin_closing_a_pooled_connection_is_not_an_error(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """An origin that closes its keep-alive connection after a response does not fail the next request: the
    proxy opens a new connection."""

    async def one_per_connection(conn: RawConn) -> None:
        request = await conn.read_request()
        assert request is not None
        await conn.send(ok_response(b"ok " + request.target))
        conn.writer.close()

    origin = await raw_origin_factory(one_per_connection)
    reader, writer = await http.open_raw(proxy.port)
    for i in range(3):
        writer.write(get(origin, f"/closing/{i}"))
        response = await http.read_response(reader)
        assert (response.status, response.body) == (200, b"ok /closing/%d" % i)
    await http.close_writer(writer)
    assert len(origin.requests) == 3
    for request in origin.requests:
        request.assert_proxied()


async def test_pipelined_requests_answered_in_order(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """Requests pipelined in one segment (including one with a body) get their responses in order."""
    body = b"pipelined body"
    data = (
        get(raw_origin, "/p/1")
        + b"POST %b HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%b"
        % (raw_origin.url("/p/2").encode(), len(body), body)
        + get(raw_origin, "/p/3")
    )
    reader, writer = await http.open_raw(proxy.port)
    writer.write(data)
    bodies = [(await http.read_response(reader)).body for _ in range(3)]
    await http.close_writer(writer)
    assert bodies == [b"ok /p/1", b"ok /p/2", b"ok /p/3"]
    assert [r.target for r in raw_origin.requests] == [b"/p/1", b"/p/2", b"/p/3"]
    assert raw_origin.requests[1].body == body
    for request in raw_origin.requests:
        request.assert_proxied()


async def test_pipelined_requests_to_different_origins(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """Pipelined requests for two origins are each answered by the right origin, in order."""
    first = await raw_origin_factory()
    second = await raw_origin_factory()
    reader, writer = await http.open_raw(proxy.port)
    writer.write(get(first, "/a") + get(second, "/b") + get(first, "/c"))
    bodies = [(await http.read_response(reader)).body for _ in range(3)]
    await http.close_writer(writer)
    assert bodies == [b"ok /a", b"ok /b", b"ok /c"]
    assert [r.target for r in first.requests] == [b"/a", b"/c"]
    assert [r.target for r in second.requests] == [b"/b"]
    for request in first.requests + second.requests:
        request.assert_proxied()


async def test_http10_keep_alive(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """An HTTP/1.0 client asking for keep-alive gets `Connection: keep-alive` and can send another request; one
    that does not ask gets its connection closed after the response."""
    reader, writer = await http.open_raw(proxy.port)
    for i in range(2):
        writer.write(b"GET %b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % raw_origin.url(f"/ka10/{i}").encode())
        response = await http.read_response(reader)
        assert (response.status, response.body) == (200, b"ok /ka10/%d" % i)
        assert response.header(b"connection") == b"keep-alive"
    writer.write(b"GET %b HTTP/1.0\r\n\r\n" % raw_origin.url("/last").encode())
    response = await http.read_response(reader)
    assert (response.status, response.body) == (200, b"ok /last")
    await http.expect_eof(reader)
    await http.close_writer(writer)
    for request in raw_origin.requests:
        assert request.head.split(b"\r\n")[0].endswith(b" HTTP/1.1")  # the proxy speaks 1.1 upstream
        request.assert_proxied()


async def test_connection_close_from_client(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """`Connection: close` from an HTTP/1.1 client: the response says so and the proxy closes after it."""
    reader, writer = await http.open_raw(proxy.port)
    writer.write(get(raw_origin, "/bye", b"Connection: close\r\n"))
    response = await http.read_response(reader)
    assert response.status == 200
    assert response.header(b"connection") == b"close"
    await http.expect_eof(reader)
    await http.close_writer(writer)
    assert raw_origin.requests[0].values(b"connection") == []
    raw_origin.requests[0].assert_proxied()


async def expect_origin(conn: RawConn) -> None:
    """Sends `100 Continue` after a head with `Expect: 100-continue` (and only then reads the body)."""
    while (request := await conn.read_head()) is not None:
        if request.header(b"expect") is not None:
            await conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await conn.read_body(request)
        await conn.send(ok_response(b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())))


async def test_expect_100_continue_raw(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """A client sending `Expect: 100-continue` receives `100 Continue` before it sends the body (it waits for
    it), then the final response; the origin got the Expect header and the whole body."""
    origin = await raw_origin_factory(expect_origin)
    body = payload(100_000, seed=11)
    reader, writer = await http.open_raw(proxy.port)
    writer.write(
        b"PUT %b HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
        % (origin.url("/expect").encode(), len(body))
    )
    interim = await http.read_response(reader, skip_interim=False)
    assert interim.status == 100
    writer.write(body)
    response = await http.read_response(reader)
    assert response.status == 200
    assert response.body == b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
    writer.write(get(origin, "/after-expect"))
    assert (await http.read_response(reader)).status == 200
    await http.close_writer(writer)
    [request, _] = origin.requests
    assert request.values(b"expect") == [b"100-continue"]
    request.assert_proxied()


async def test_expect_100_continue_curl(proxy: ProxyProcess, origin: Origin) -> None:
    """curl with `Expect: 100-continue` gets the 100 through the proxy and uploads its body intact."""
    body = payload(300_000, seed=12)
    result = await curl(
        "-v", "-H", "Expect: 100-continue", "--expect100-timeout", "20", "--data-binary", "@-",
        origin.url("/curl-expect"), proxy=proxy.url, stdin=body,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ok {hashlib.sha256(body).hexdigest()}".encode()
    assert "< HTTP/1.1 100 Continue" in result.stderr, result.stderr
    [record] = origin.requests
    assert record.header("Expect") == "100-continue"
    assert record.body == body
    record.assert_proxied()


async def test_expect_refused_by_origin(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """An origin answering `Expect: 100-continue` with a final status (no 100) gets that status to the client,
    which never had to send its body."""

    async def refuse(conn: RawConn) -> None:
        request = await conn.read_head()
        assert request is not None
        await conn.send(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n\r\ntoo big\n")

    origin = await raw_origin_factory(refuse)
    reader, writer = await http.open_raw(proxy.port)
    writer.write(
        b"PUT %b HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\n\r\n"
        % origin.url("/refuse").encode()
    )
    response = await http.read_response(reader)
    await http.close_writer(writer)
    assert (response.status, response.body) == (413, b"too big\n")
    assert response.interim == []
    origin.requests[0].assert_proxied()


NO_BODY_CASES = {
    "head-length": (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n"),
    "head-chunked": (b"HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    "head-no-length": (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"),
    "204": (b"GET", b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n"),
    "204-delete": (b"DELETE", b"HTTP/1.1 204 No Content\r\n\r\n"),
    "304": (b"GET", b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n'),
}


@pytest.mark.parametrize("case", list(NO_BODY_CASES))
async def test_responses_without_body_keep_the_connection_usable(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory, case: str
) -> None:
    """HEAD, 204 and 304 responses reach the client without a body (even when they announce a length), and the
    next request on the same client connection, and on the same origin connection, is answered normally."""
    method, first_response = NO_BODY_CASES[case]

    async def origin_handler(conn: RawConn) -> None:
        while (request := await conn.read_request()) is not None:
            if request.target == b"/nobody":
                await conn.send(first_response)
            else:
                await conn.send(ok_response(b"ok " + request.target))

    origin = await raw_origin_factory(origin_handler)
    reader, writer = await http.open_raw(proxy.port)
    writer.write(b"%b %b HTTP/1.1\r\nHost: h\r\n\r\n" % (method, origin.url("/nobody").encode()))
    response = await http.read_response(reader, method=method)
    status = int(first_response.split(b" ")[1])
    assert response.status == status
    for name in (b"content-length", b"etag", b"x-kind", b"transfer-encoding"):
        expected = http.header_values(http.parse_head(first_response)[1], name)
        assert response.values(name) == expected, name
    writer.write(get(origin, "/next"))
    following = await http.read_response(reader)
    await http.close_writer(writer)
    assert (following.status, following.body) == (200, b"ok /next")
    assert [r.method for r in origin.requests] == [method, b"GET"]
    for request in origin.requests:
        request.assert_proxied()
    if case != "head-no-length":
        assert len(origin.conns) == 1


async def test_head_through_aiohttp_origin(proxy: ProxyProcess, origin: Origin) -> None:
    """HEAD through a real server: headers of the GET, no body, and the connection reused for a GET after it."""

    async def resource(request: web.Request, record: Recorded) -> web.StreamResponse:
        return web.Response(body=b"x" * 5000, headers={"X-Res": "1"})

    origin.route("/res", resource)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.head(origin.url("/res"), proxy=proxy.url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == "5000"
            assert await resp.read() == b""
        async with session.get(origin.url("/res"), proxy=proxy.url) as resp:
            assert await resp.read() == b"x" * 5000
    assert [r.method for r in origin.requests] == ["HEAD", "GET"]
    assert origin.connections == 1
    for record in origin.requests:
        record.assert_proxied()


async def test_client_half_close_after_request_still_gets_the_response(
    proxy: ProxyProcess, raw_origin: RawOrigin
) -> None:
    """A client that shuts down its sending side right after the request (`shutdown(SHUT_WR)`) still receives
    the whole response, then the proxy closes the connection."""
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(get(raw_origin, "/half"))
        writer.write_eof()
        response = await http.read_response(reader)
        await http.expect_eof(reader)
    finally:
        await http.close_writer(writer)
    assert (response.status, response.body) == (200, b"ok /half")
    raw_origin.requests[0].assert_proxied()


async def test_many_pipelined_requests(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """Fifty requests pipelined in one write get fifty responses, in order, on the same connection."""
    count = 50
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(b"".join(get(raw_origin, f"/many/{i}") for i in range(count)))
        bodies = [(await http.read_response(reader)).body for _ in range(count)]
    finally:
        await http.close_writer(writer)
    assert bodies == [b"ok /many/%d" % i for i in range(count)]
    for request in raw_origin.requests:
        request.assert_proxied()


async def test_pipelining_is_bounded(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """150 requests in one write: the one in flight and the 100 that may wait behind it are answered in order, the
    next gets a 503 saying why, the connection closes, and nothing past the bound reaches the origin."""
    count = 150
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(b"".join(get(raw_origin, f"/many/{i}") for i in range(count)))
        answered = [await http.read_response(reader) for _ in range(101)]
        refused = await http.read_response(reader)
        await http.expect_eof(reader)
    finally:
        await http.close_writer(writer)
    assert [r.body for r in answered] == [b"ok /many/%d" % i for i in range(101)]
    assert refused.status == 503
    assert b"pipelined" in refused.body
    assert [r.target for r in raw_origin.requests] == [b"/many/%d" % i for i in range(101)]


@pytest.mark.parametrize(("version", "forwarded"), [(b"1.1", True), (b"1.0", False)])
async def test_interim_responses(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory, version: bytes, forwarded: bool
) -> None:
    """Interim 1xx responses (103 Early Hints) are passed to HTTP/1.1 clients before the final response and
    withheld from HTTP/1.0 clients, which cannot parse them."""

    async def hints(conn: RawConn) -> None:
        assert await conn.read_request() is not None
        await conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + ok_response(b"final"))

    origin = await raw_origin_factory(hints)
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(b"GET %b HTTP/%b\r\nHost: h\r\n\r\n" % (origin.url("/hints").encode(), version))
        response = await http.read_response(reader)
    finally:
        await http.close_writer(writer)
    assert (response.status, response.body) == (200, b"final")
    expected = [b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"] if forwarded else []
    assert response.interim == expected
    origin.requests[0].assert_proxied()


async def test_origin_connection_close_header(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """An origin answering `Connection: close` ends only its own connection: the client's keep-alive
    connection stays open (the header is hop-by-hop) and the next request goes on a new origin connection."""

    async def closing(conn: RawConn) -> None:
        request = await conn.read_request()
        assert request is not None
        await conn.send(ok_response(b"ok " + request.target, b"Connection: close\r\n"))

    origin = await raw_origin_factory(closing)
    reader, writer = await http.open_raw(proxy.port)
    try:
        for i in range(3):
            writer.write(get(origin, f"/cc/{i}"))
            response = await http.read_response(reader)
            assert (response.status, response.body) == (200, b"ok /cc/%d" % i)
            assert response.header(b"connection") is None
    finally:
        await http.close_writer(writer)
    assert len(origin.conns) == 3
    for request in origin.requests:
        request.assert_proxied()


async def test_idle_connections_closed_after_idle_timeout(
    proxy_factory: ProxyFactory, raw_origin_factory: RawOriginFactory
) -> None:
    """Keep-alive connections idle for idle_timeout are closed on both sides: the client's, and the pooled one
    to the origin."""
    origin_closed = asyncio.Event()

    async def serve_then_note_close(conn: RawConn) -> None:
        request = await conn.read_request()
        assert request is not None
        await conn.send(ok_response(b"ok"))
        await conn.read_to_eof()
        origin_closed.set()

    fast = proxy_factory({"forward": {"idle_timeout": 0.5}})
    origin = await raw_origin_factory(serve_then_note_close)
    reader, writer = await http.open_raw(fast.port)
    try:
        writer.write(get(origin, "/idle"))
        assert (await http.read_response(reader)).status == 200
        started = time.monotonic()
        await http.expect_eof(reader, timeout=5)
        assert time.monotonic() - started > 0.3
        await asyncio.wait_for(origin_closed.wait(), 5)
    finally:
        await http.close_writer(writer)
    origin.requests[0].assert_proxied()
