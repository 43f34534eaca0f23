"""Bodies through the proxy: every framing both ways, streamed (never buffered whole), large ones intact.

Every test that uses the module's `proxy` runs twice: with large response bodies spliced inside the kernel
(`forward.splice_bodies = true`, the default on Linux) and with every body read and written by the proxy (`false`).
What a client or an origin sees must not differ.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import http
from tests.helpers.clients import curl, requests_session
from tests.helpers.data import MB, ablocks, blocks, payload, sha256_of
from tests.helpers.origin import (
    Handler,
    Origin,
    RawConn,
    RawOrigin,
    RawOriginFactory,
    Recorded,
    ok_response,
    serve_special,
)
from tests.helpers.proxy_process import ProxyProcess, launch_proxy, peak_rss_kib, stop_and_check

pytestmark = pytest.mark.asyncio
BODY_RELAYS = {"splice": True, "copy": False}


@pytest.fixture(scope="module", params=list(BODY_RELAYS))
def body_relay(request: pytest.FixtureRequest) -> str:
    """How the module's proxy relays response bodies: "splice" or "copy"."""
    return str(request.param)


@pytest.fixture(scope="module")
def _module_proxy(
    body_relay: str, tmp_path_factory: pytest.TempPathFactory, unused_tcp_port_factory: Callable[[], int]
) -> Iterator[ProxyProcess]:
    """The module's proxy (see conftest.py), once per way of relaying response bodies."""
    overrides = {"forward": {"splice_bodies": BODY_RELAYS[body_relay]}}
    proxy = launch_proxy(tmp_path_factory.mktemp("proxy"), unused_tcp_port_factory, overrides)
    try:
        yield proxy
    finally:
        stop_and_check(proxy)


LARGE = 50 * MB
# A proxy that held a 50 MB body would grow by at least that much; streaming needs a few socket buffers.
RSS_GROWTH_LIMIT_KIB = 24 * 1024


async def hashing_upload(request: web.Request, record: Recorded) -> web.StreamResponse:
    """Hash the request body as it streams in; answer `<length> <sha256>`."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        digest.update(chunk)
        size += len(chunk)
    return web.Response(text=f"{size} {digest.hexdigest()}")


def download_handler(total: int, chunked: bool) -> Handler:
    """A route streaming `total` deterministic bytes with Content-Length or chunked coding."""

    async def handler(request: web.Request, record: Recorded) -> web.StreamResponse:
        response = web.StreamResponse()
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = total
        await response.prepare(request)
        for piece in blocks(total, seed=7):
            await response.write(piece)
        await response.write_eof()
        return response

    return handler


async def test_request_body_with_content_length(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """A Content-Length request body reaches the origin with the same Content-Length and every byte."""
    origin = await raw_origin_factory()
    body = payload(3 * MB + 17, seed=3)

    def call() -> tuple[int, bytes]:
        with requests_session(proxy.url) as session:
            resp = session.put(origin.url("/cl"), data=body, timeout=30)
            return resp.status_code, resp.content

    status, content = await asyncio.to_thread(call)
    assert (status, content) == (200, b"ok /cl")
    [request] = origin.requests
    assert request.values(b"content-length") == [str(len(body)).encode()]
    assert request.values(b"transfer-encoding") == []
    assert request.body == body
    request.assert_proxied()


async def test_request_body_chunked(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """A chunked request body (requests with a generator) reaches the origin chunked, every byte in order."""
    origin = await raw_origin_factory()
    pieces = [b"a", b"", b"bc" * 1000, payload(300_000, seed=4), b"\r\n0\r\n\r\n", b"end"]

    def gen() -> Iterator[bytes]:
        yield from pieces

    def call() -> tuple[int, bytes]:
        with requests_session(proxy.url) as session:
            resp = session.post(origin.url("/chunked"), data=gen(), timeout=30)
            return resp.status_code, resp.content

    status, content = await asyncio.to_thread(call)
    assert (status, content) == (200, b"ok /chunked")
    [request] = origin.requests
    assert request.chunked
    assert request.values(b"content-length") == []
    assert request.body == b"".join(pieces)
    request.assert_proxied()


CHUNKS = [b"first", b"x" * 70_000, b"\r\n", b"0\r\n\r\n", b"last"]


async def chunked_origin(conn: RawConn) -> None:
    """Answers each request with a chunked body of odd chunk sizes (including bytes that look like framing)."""
    while (request := await conn.read_request()) is not None:
        body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in CHUNKS) + b"0\r\n\r\n"
        await conn.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Target: %b\r\n\r\n%b" % (request.target, body)
        )


async def test_chunked_response_to_http11_client(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """A chunked response reaches an HTTP/1.1 client chunked, byte for byte, framed exactly: the next request on
    the same client connection is answered normally."""
    origin = await raw_origin_factory(chunked_origin)
    reader, writer = await http.open_raw(proxy.port)
    for path in (b"/one", b"/two"):
        writer.write(b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url(path.decode()).encode())
        response = await http.read_response(reader)
        assert response.status == 200
        assert response.chunked
        assert response.body == b"".join(CHUNKS)
        assert response.header(b"x-target") == path
    await http.close_writer(writer)
    assert len(origin.conns) == 1
    for request in origin.requests:
        request.assert_proxied()


async def test_chunked_response_to_http10_client(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """An HTTP/1.0 client never sees chunked coding: the body arrives decoded and delimited by the close."""
    origin = await raw_origin_factory(chunked_origin)
    reader, writer = await http.open_raw(proxy.port)
    writer.write(b"GET %b HTTP/1.0\r\n\r\n" % origin.url("/old").encode())
    response = await http.read_response(reader)
    await http.close_writer(writer)
    assert response.status == 200
    assert response.header(b"transfer-encoding") is None
    assert response.header(b"content-length") is None
    assert response.body == b"".join(CHUNKS)
    origin.requests[0].assert_proxied()


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK"])
async def test_read_until_close_response(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory, status_line: bytes
) -> None:
    """A response without Content-Length or chunked coding (body ends when the origin closes) reaches the client
    complete, and the client connection is closed after it, as that is the only way to delimit it."""
    body = payload(2 * MB + 3, seed=5)

    async def respond(conn: RawConn) -> None:
        assert await conn.read_request() is not None
        await conn.send(b"%b\r\nContent-Type: application/octet-stream\r\n\r\n" % status_line)
        for offset in range(0, len(body), 100_000):
            await conn.send(body[offset : offset + 100_000])
        conn.writer.close()

    origin = await raw_origin_factory(respond)
    reader, writer = await http.open_raw(proxy.port)
    writer.write(b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/eof").encode())
    response = await http.read_response(reader)
    assert response.status == 200
    assert response.header(b"connection") == b"close"
    assert hashlib.sha256(response.body).digest() == hashlib.sha256(body).digest()
    await http.close_writer(writer)
    origin.requests[0].assert_proxied()

    curl_origin = await raw_origin_factory(respond)
    result = await curl("-o", "-", curl_origin.url("/eof-curl"), proxy=proxy.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == body
    curl_origin.requests[0].assert_proxied()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_large_upload_is_streamed(proxy: ProxyProcess, origin: Origin, framing: str) -> None:
    """A 50 MB upload reaches the origin intact (sha256) while the proxy's peak memory grows far less than the body
    size."""
    big_proxy = proxy
    origin.route("/upload", hashing_upload)
    before = peak_rss_kib(big_proxy.pid)
    headers = {"Content-Length": str(LARGE)} if framing == "content-length" else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(origin.url("/upload"), data=ablocks(LARGE, seed=9), headers=headers, proxy=big_proxy.url) as resp,
    ):
        text = await resp.text()
    assert resp.status == 200
    assert text == f"{LARGE} {sha256_of(LARGE, seed=9)}"
    [record] = origin.requests
    record.assert_proxied()
    if framing == "content-length":
        assert record.header("Content-Length") == str(LARGE)
    else:
        assert record.header("Transfer-Encoding") == "chunked"
    growth = peak_rss_kib(big_proxy.pid) - before
    assert growth < RSS_GROWTH_LIMIT_KIB, f"proxy peak RSS grew by {growth} KiB during a 50 MB upload"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_large_download_is_streamed(proxy: ProxyProcess, origin: Origin, framing: str) -> None:
    """A 50 MB download reaches the client intact (sha256, read as it streams) while the proxy's peak memory grows
    far less than the body size."""
    big_proxy = proxy
    origin.route("/download", download_handler(LARGE, framing == "chunked"))
    before = peak_rss_kib(big_proxy.pid)
    digest = hashlib.sha256()
    size = 0
    async with (
        aiohttp.ClientSession() as session,
        session.get(origin.url("/download"), proxy=big_proxy.url) as resp,
    ):
        assert resp.status == 200
        if framing == "content-length":
            assert resp.headers["Content-Length"] == str(LARGE)
        else:
            assert resp.headers["Transfer-Encoding"] == "chunked"
        async for chunk in resp.content.iter_chunked(1 << 16):
            digest.update(chunk)
            size += len(chunk)
    assert size == LARGE
    assert digest.hexdigest() == sha256_of(LARGE, seed=7)
    origin.requests[0].assert_proxied()
    growth = peak_rss_kib(big_proxy.pid) - before
    assert growth < RSS_GROWTH_LIMIT_KIB, f"proxy peak RSS grew by {growth} KiB during a 50 MB download"


async def test_streaming_response_reaches_client_before_it_ends(proxy: ProxyProcess, origin: Origin) -> None:
    """The first chunk of a response reaches the client while the origin has not yet sent the last one (the
    origin blocks until the client has seen the first chunk)."""
    client_saw_first = asyncio.Event()

    async def stream(request: web.Request, record: Recorded) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"first-chunk;")
        await asyncio.wait_for(client_saw_first.wait(), 10)
        await response.write(b"last-chunk")
        await response.write_eof()
        return response

    origin.route("/stream", stream)
    async with (
        aiohttp.ClientSession() as session,
        session.get(origin.url("/stream"), proxy=proxy.url) as resp,
    ):
        assert resp.status == 200
        first = await asyncio.wait_for(resp.content.readuntil(b";"), 5)
        assert first == b"first-chunk;"
        client_saw_first.set()
        rest = await asyncio.wait_for(resp.read(), 5)
    assert rest == b"last-chunk"
    origin.requests[0].assert_proxied()


async def test_streaming_request_reaches_origin_before_it_ends(proxy: ProxyProcess, origin: Origin) -> None:
    """The first chunk of a request body reaches the origin while the client has not yet sent the last one."""
    origin_saw_first = asyncio.Event()

    async def consume(request: web.Request, record: Recorded) -> web.StreamResponse:
        first = await request.content.readuntil(b";")
        origin_saw_first.set()
        rest = await request.content.read()
        return web.Response(text=(first + rest).decode())

    origin.route("/upload-stream", consume)
    reader, writer = await http.open_raw(proxy.port)
    writer.write(
        b"POST %b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nc\r\nfirst-chunk;\r\n"
        % origin.url("/upload-stream").encode()
    )
    await writer.drain()
    await asyncio.wait_for(origin_saw_first.wait(), 5)
    writer.write(b"a\r\nlast-chunk\r\n0\r\n\r\n")
    response = await http.read_response(reader)
    await http.close_writer(writer)
    assert response.status == 200
    assert response.body == b"first-chunk;last-chunk"
    origin.requests[0].assert_proxied()


BACKPRESSURE_WINDOW = 1.5  # seconds a stalled side is watched; a buffering proxy lets 50 MB through far sooner


async def test_slow_client_applies_backpressure_to_the_origin(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """A client that does not read stalls the origin (the proxy stops reading it instead of buffering): a 50 MB
    response cannot be written completely while the client reads nothing; once the client reads, every byte
    arrives intact."""
    origin_done = asyncio.Event()

    async def send_large(conn: RawConn) -> None:
        assert await conn.read_request() is not None
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % LARGE)
        for piece in blocks(LARGE, seed=13):
            await conn.send(piece)
        origin_done.set()

    origin = await raw_origin_factory(send_large)
    before = peak_rss_kib(proxy.pid)
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/large").encode())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(origin_done.wait(), BACKPRESSURE_WINDOW)
        head = await http.read_head(reader)
        assert head.startswith(b"HTTP/1.1 200")
        digest, size = hashlib.sha256(), 0
        while size < LARGE:
            chunk = await asyncio.wait_for(reader.read(1 << 20), http.TIMEOUT)
            assert chunk
            digest.update(chunk)
            size += len(chunk)
    finally:
        await http.close_writer(writer)
    assert size == LARGE
    assert digest.hexdigest() == sha256_of(LARGE, seed=13)
    await asyncio.wait_for(origin_done.wait(), http.TIMEOUT)
    assert peak_rss_kib(proxy.pid) - before < RSS_GROWTH_LIMIT_KIB
    origin.requests[0].assert_proxied()


async def test_slow_origin_applies_backpressure_to_the_client(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """An origin that does not read its request body stalls the client's upload; once the origin reads, the whole
    50 MB arrives intact."""
    start_reading = asyncio.Event()

    async def read_late(conn: RawConn) -> None:
        request = await conn.read_head()
        assert request is not None
        await start_reading.wait()
        digest, size = hashlib.sha256(), 0
        while size < LARGE:
            chunk = await conn.read_some()
            digest.update(chunk)
            size += len(chunk)
        await conn.send(ok_response(b"%d %s" % (size, digest.hexdigest().encode())))

    origin = await raw_origin_factory(read_late)
    before = peak_rss_kib(proxy.pid)
    reader, writer = await http.open_raw(proxy.port)
    client_done = asyncio.Event()

    async def upload() -> None:
        writer.write(b"POST %b HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (origin.url("/up").encode(), LARGE))
        for piece in blocks(LARGE, seed=14):
            writer.write(piece)
            await writer.drain()
        client_done.set()

    uploading = asyncio.ensure_future(upload())
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(client_done.wait()), BACKPRESSURE_WINDOW)
        start_reading.set()
        await asyncio.wait_for(uploading, 30)
        response = await http.read_response(reader, timeout=30)
    finally:
        start_reading.set()
        uploading.cancel()
        await http.close_writer(writer)
    assert response.body == b"%d %s" % (LARGE, sha256_of(LARGE, seed=14).encode())
    assert peak_rss_kib(proxy.pid) - before < RSS_GROWTH_LIMIT_KIB
    origin.requests[0].assert_proxied()


async def test_response_trailers_pass_through(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """A chunked response with trailer fields reaches the client with its body and its trailers intact (the
    proxy relays the chunked framing as the origin wrote it), and the connection carries the next request."""
    trailers = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
    )
    origin = await raw_origin_factory(serve_special({b"/trailers": trailers}))
    response, following = await http.exchanges(
        proxy.port, [http.get(origin.url("/trailers")), http.get(origin.url("/after"))]
    )
    assert response.body == b"hello world"
    assert response.header(b"trailer") == b"X-Checksum"
    assert response.trailers == [b"X-Checksum: abc", b"X-Other: 1"]
    assert following.body == b"ok /after"
    for request in origin.requests:
        request.assert_proxied()


async def test_request_trailers_never_become_headers(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """Trailer fields of a chunked request body are dropped: the origin gets the body, and neither that request
    nor the next one on the connection carries the trailer fields as headers."""
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(
            b"POST %b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-Trailer-Injected: 1\r\nHost: evil.example\r\n\r\n" % raw_origin.url("/tr").encode()
        )
        first = await http.read_response(reader)
        writer.write(b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % raw_origin.url("/next").encode())
        second = await http.read_response(reader)
    finally:
        await http.close_writer(writer)
    assert (first.body, second.body) == (b"ok /tr", b"ok /next")
    posted, following = raw_origin.requests
    assert posted.body == b"hello"
    for request in (posted, following):
        assert request.values(b"x-trailer-injected") == []
        assert request.values(b"host") == [raw_origin.authority]
        request.assert_proxied()


async def test_response_head_arriving_in_small_pieces(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """A response head (after an interim 103) written a few bytes at a time is reassembled exactly."""
    answer = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nX-One: 1\r\nX-Two: two words\r\nContent-Length: 5\r\n\r\nhello"
    )

    async def dribble(conn: RawConn) -> None:
        assert await conn.read_request() is not None
        for offset in range(0, len(answer), 3):
            await conn.send(answer[offset : offset + 3])

    origin = await raw_origin_factory(dribble)
    response = await http.exchange(proxy.port, b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/d").encode())
    assert response.status == 200
    assert response.headers == [(b"X-One", b"1"), (b"X-Two", b"two words"), (b"Content-Length", b"5")]
    assert response.body == b"hello"
    assert response.interim == [b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"]
    origin.requests[0].assert_proxied()


async def test_client_abort_mid_download_does_not_poison_the_pool(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """A client that hangs up in the middle of a large response: the rest of that response is never delivered
    to anyone; the next client gets its own, correct answer."""

    async def large_or_small(conn: RawConn) -> None:
        while (request := await conn.read_request()) is not None:
            if request.target == b"/large":
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (20 * MB))
                for piece in blocks(20 * MB, seed=15):
                    await conn.send(piece)
            else:
                await conn.send(ok_response(b"ok " + request.target))

    origin = await raw_origin_factory(large_or_small)
    reader, writer = await http.open_raw(proxy.port)
    writer.write(b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/large").encode())
    await http.read_head(reader)
    await asyncio.wait_for(reader.readexactly(100_000), http.TIMEOUT)
    writer.transport.abort()
    for i in range(3):
        response = await http.exchange(
            proxy.port, b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url(f"/s{i}").encode()
        )
        assert (response.status, response.body) == (200, b"ok /s%d" % i)
    for request in origin.requests:
        request.assert_proxied()


# -- Content-Length bodies large enough to splice ----------------------------------------------------------------

# Around the sizes where the proxy changes how it relays a body: a small read (4 KiB), the size from which a body is
# large (24 KiB), a pipe-full (256 KiB) and beyond; small ones behind large ones (read in a small read, their rest
# spliced) and the other way round (read in one large read).
SPLICE_SIZES = [0, 1, 4000, 4096, 16384, 24575, 24576, 24577, 65536, 5000, 262144, 1, 262145, 300_000, 10_000, MB]


async def serve_sized(conn: RawConn) -> None:
    """Answer `/<anything>/<size>` with a `size`-byte Content-Length body, `payload(size, size % 97)`."""
    while (request := await conn.read_request()) is not None:
        size = int(request.target.rsplit(b"/", 1)[1])
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (size, payload(size, size % 97)))


async def test_content_length_bodies_of_every_size_on_one_connection(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """Bodies from empty to 1 MB, one after the other on one client connection and one origin connection, arrive
    byte for byte: however a body was relayed, the next response is read from the right place."""

    origin = await raw_origin_factory(serve_sized)
    reader, writer = await http.open_raw(proxy.port)
    try:
        for size in SPLICE_SIZES:
            writer.write(b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url(f"/bytes/{size}").encode())
            response = await http.read_response(reader)
            assert response.status == 200
            assert response.header(b"content-length") == b"%d" % size
            assert response.body == payload(size, seed=size % 97), f"{size}-byte body differs"
    finally:
        await http.close_writer(writer)
    assert len(origin.conns) == 1, "the origin connection was not reused after a large body"
    for request in origin.requests:
        request.assert_proxied()


async def test_pipelined_requests_with_large_responses_in_order(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """Requests pipelined in one write get their large and small responses in order, each intact."""
    sizes = [100_000, 20_000, 10, 70_000, 300_000]

    origin = await raw_origin_factory(serve_sized)
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(
            b"".join(b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url(f"/p/{size}").encode() for size in sizes)
        )
        for size in sizes:
            response = await http.read_response(reader)
            assert response.body == payload(size, seed=size % 97), f"{size}-byte body differs"
    finally:
        await http.close_writer(writer)


async def test_large_body_arriving_in_pieces_is_streamed(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """A Content-Length body the origin sends piece by piece, each only after the client has received all before
    it: every piece is passed on at once (the origin would wait forever otherwise), the body arrives intact, and the
    next response on the same connections is read correctly."""
    pieces = [b"a" * 100, b"b" * 20_000, b"c" * 30_000, b"d" * 5, b"e" * 40_000]
    body = b"".join(pieces)
    client_has = asyncio.Condition()
    received = 0

    async def piecewise(conn: RawConn) -> None:
        request = await conn.read_request()
        assert request is not None
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        sent = 0
        for piece in pieces:
            await conn.send(piece)
            sent += len(piece)
            async with client_has:
                await asyncio.wait_for(client_has.wait_for(lambda sent=sent: received >= sent), http.TIMEOUT)
        await serve_rest(conn)

    async def serve_rest(conn: RawConn) -> None:
        while (request := await conn.read_request()) is not None:
            await conn.send(ok_response(b"ok " + request.target))

    origin = await raw_origin_factory(piecewise)
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/pieces").encode())
        head = await http.read_head(reader)
        assert head.startswith(b"HTTP/1.1 200")
        got = bytearray()
        while len(got) < len(body):
            chunk = await asyncio.wait_for(reader.read(len(body) - len(got)), http.TIMEOUT)
            assert chunk, "the proxy closed the connection in the middle of the body"
            got += chunk
            async with client_has:
                received = len(got)
                client_has.notify_all()
        assert bytes(got) == body
        writer.write(b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/after").encode())
        after = await http.read_response(reader)
    finally:
        await http.close_writer(writer)
    assert after.body == b"ok /after"
    assert len(origin.conns) == 1


async def test_bytes_after_a_large_body_never_reach_the_client(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """An origin that sends a whole extra response right behind a 100 kB body: the client gets exactly the body,
    its next request gets the origin's real answer, and the connection that misbehaved is not used again."""
    body = payload(100_000, seed=21)

    injected = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED"
    large = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b%b" % (len(body), body, injected)
    origin = await raw_origin_factory(serve_special({b"/inject": large}))
    first, second = await http.exchanges(proxy.port, [http.get(origin.url("/inject")), http.get(origin.url("/real"))])
    assert first.body == body
    assert second.body == b"ok /real"
    assert [[r.target for r in c.requests] for c in origin.conns] == [[b"/inject"], [b"/real"]]


async def test_origin_closing_in_the_middle_of_a_large_body_cuts_the_client(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """An origin that closes after 200 kB of a 1 MB body: the client's connection is cut after what arrived, so the
    response cannot pass for complete; other clients are served."""
    partial = payload(200_000, seed=22)

    async def half(conn: RawConn) -> None:
        while (request := await conn.read_request()) is not None:
            if request.target == b"/half":
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (MB, partial))
                return
            await conn.send(ok_response(b"ok " + request.target))

    origin = await raw_origin_factory(half)
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/half").encode())
        head = await http.read_head(reader)
        assert b"Content-Length: %d" % MB in head
        got = bytearray()
        try:
            while chunk := await asyncio.wait_for(reader.read(1 << 20), http.TIMEOUT):
                got += chunk
        except ConnectionResetError:
            pass
    finally:
        await http.close_writer(writer)
    assert len(got) < MB
    assert bytes(got) == partial[: len(got)]
    response = await http.exchange(proxy.port, b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/next").encode())
    assert response.body == b"ok /next"


async def test_large_body_to_http10_client(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """An HTTP/1.0 client gets a 300 kB Content-Length body intact, then the close it asked for."""
    body = payload(300_000, seed=23)

    async def large(conn: RawConn) -> None:
        while await conn.read_request() is not None:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))

    origin = await raw_origin_factory(large)
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(b"GET %b HTTP/1.0\r\n\r\n" % origin.url("/old").encode())
        response = await http.read_response(reader)
        await http.expect_eof(reader)
    finally:
        await http.close_writer(writer)
    assert response.version == b"HTTP/1.1"
    assert response.body == body


async def test_head_answer_with_large_content_length_then_get(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """HEAD answered with a large Content-Length and no body, then GET for the same on one connection: the HEAD
    response ends at its head, the GET one gets the whole body."""
    body = payload(200_000, seed=24)

    async def head_then_get(conn: RawConn) -> None:
        while (request := await conn.read_request()) is not None:
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
            await conn.send(head if request.method == b"HEAD" else head + body)

    origin = await raw_origin_factory(head_then_get)
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(b"HEAD %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/r").encode())
        first = await http.read_response(reader, method=b"HEAD")
        writer.write(b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/r").encode())
        second = await http.read_response(reader)
    finally:
        await http.close_writer(writer)
    assert first.header(b"content-length") == b"200000"
    assert first.body == b""
    assert second.body == body
    assert len(origin.conns) == 1
