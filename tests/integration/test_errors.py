"""Errors the proxy answers itself: status, a short plain-text body naming the cause, the connection closed after
it, nothing sent to the origin when the request was refused, and no effect on other clients."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio

from tests.helpers import http
from tests.helpers.clients import curl, requests_session
from tests.helpers.data import MB, payload
from tests.helpers.origin import RawConn, RawOrigin, RawOriginFactory
from tests.helpers.proxy_process import ProxyFactory, ProxyProcess, launch_proxy, stop_and_check

pytestmark = pytest.mark.asyncio


def get(url: str | bytes, extra: bytes = b"") -> bytes:
    if isinstance(url, str):
        url = url.encode()
    return b"GET %b HTTP/1.1\r\nHost: h\r\n%b\r\n" % (url, extra)


def assert_error(response: http.RawResponse, status: int, *needles: str) -> None:
    """A short plain-text error naming the cause, and the connection marked for closing."""
    assert response.status == status, response
    assert (response.header(b"content-type") or b"").startswith(b"text/plain"), response.headers
    assert response.header(b"connection") == b"close"
    assert (response.header(b"proxy-status") or b"").startswith(b"trace-proxy; error="), response.headers
    assert 0 < len(response.body) < 2048, response.body
    for needle in needles:
        assert needle.lower() in response.text.lower(), response.text


async def error_exchange(port: int, data: bytes, status: int, *needles: str) -> http.RawResponse:
    """Send `data`, check the error response (see assert_error), then that the proxy closes the connection."""
    response = await http.answer_then_close(port, data)
    assert_error(response, status, *needles)
    return response


async def assert_still_serving(proxy: ProxyProcess, origin: RawOrigin, path: str = "/still-ok") -> None:
    response = await http.exchange(proxy.port, get(origin.url(path)), timeout=5)
    assert (response.status, response.body) == (200, b"ok " + path.encode())
    origin.requests[-1].assert_proxied()


async def never_answer(conn: RawConn) -> None:
    """Accepts and reads the request, then never says a word."""
    await conn.read_head()
    await asyncio.Event().wait()


@pytest.mark.parametrize(
    "request_line",
    [b"GET / HTTP/1.1", b"GET /some/path?q=1 HTTP/1.1", b"OPTIONS * HTTP/1.1", b"POST /form HTTP/1.0"],
)
async def test_origin_form_request_explains_how_to_use_a_proxy(proxy: ProxyProcess, request_line: bytes) -> None:
    """A request in origin form sent to the proxy port (someone pointed a browser or a base URL at it) is a 400
    that says this is a forward proxy and how to use it."""
    await error_exchange(
        proxy.port,
        request_line + b"\r\nHost: 127.0.0.1:%d\r\n\r\n" % proxy.port,
        400,
        "forward proxy",
        "absolute",
        "http_proxy",
    )


async def test_origin_form_with_curl_directly(proxy: ProxyProcess) -> None:
    """curl http://PROXY/ (no -x) shows the explanation to the user."""
    result = await curl("-o", "-", "-w", "%{http_code}", proxy.url + "/", proxy=None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(b"400")
    assert b"forward proxy" in result.stdout


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not http\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS ClientHello sent to the plain port
        b"GET\r\n\r\n",
        b"GET http://127.0.0.1:1/ HTTP/1.1 extra\r\nHost: h\r\n\r\n",
        b"G@T http://127.0.0.1:1/ HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET http://127.0.0.1:1/ HTTP/1.1\r\nno colon here\r\n\r\n",
    ],
    ids=["words", "tls-hello", "no-target", "extra-token", "bad-method", "header-no-colon"],
)
async def test_malformed_request_is_400(proxy: ProxyProcess, raw_origin: RawOrigin, garbage: bytes) -> None:
    """Bytes that are not an HTTP request get a 400 saying so, and the connection is closed."""
    await error_exchange(proxy.port, garbage, 400)
    await assert_still_serving(proxy, raw_origin)


OVER_LIMIT = 64 * 1024 + 64  # bytes of request head: just over the 64 KiB limit


def head_of_size(shape: str, url: bytes, size: int) -> bytes:
    """A complete GET head of exactly `size` bytes, made large by one header, many headers, or the URL."""
    if shape == "one-huge-header":
        head = get(url, b"X-Big: \r\n")
        return get(url, b"X-Big: " + b"a" * (size - len(head)) + b"\r\n")
    if shape == "many-headers":
        lines = b"".join(b"X-H-%05d: %b\r\n" % (i, b"v" * 40) for i in range(size // 60))
        head = get(url, lines + b"X-Pad: \r\n")
        return get(url, lines + b"X-Pad: " + b"p" * (size - len(head)) + b"\r\n")
    head = get(url + b"?q=")
    return get(url + b"?q=" + b"q" * (size - len(head)))


@pytest.mark.parametrize(
    "shape",
    [
        "one-huge-header",
        "many-headers",
        "huge-url",
    ],
)
async def test_request_head_over_64_kib_is_431(proxy: ProxyProcess, raw_origin: RawOrigin, shape: str) -> None:
    """A complete request head larger than 64 KiB, however it is made up, is refused with 431; the origin gets
    nothing of it."""
    data = head_of_size(shape, raw_origin.url("/big-head").encode(), OVER_LIMIT)
    assert len(data) == OVER_LIMIT
    await error_exchange(proxy.port, data, 431, "64 KiB")
    await assert_still_serving(proxy, raw_origin)
    assert [r.target for r in raw_origin.requests] == [b"/still-ok"]


async def test_endless_request_head_is_431(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """A head that keeps growing (sent in 4 KiB pieces, never finished) is cut off with 431 as soon as it is over
    64 KiB, without waiting for its end; the origin gets nothing of it. (The client stops one byte past the limit,
    so the proxy has read everything it was sent when it answers.)"""
    start = b"GET %b HTTP/1.1\r\nHost: h\r\nX-Endless: " % raw_origin.url("/endless").encode()
    data = start + b"e" * (64 * 1024 + 1 - len(start))
    reader, writer = await http.open_raw(proxy.port)
    try:
        for offset in range(0, len(data), 4096):
            writer.write(data[offset : offset + 4096])
            await writer.drain()
        response = await http.read_response(reader)
        assert_error(response, 431, "64 KiB")
        await http.expect_eof(reader)
    finally:
        await http.close_writer(writer)
    await assert_still_serving(proxy, raw_origin)
    assert [r.target for r in raw_origin.requests] == [b"/still-ok"]


async def test_request_head_under_64_kib_is_forwarded(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """A head just under the limit (60 KiB of headers) is forwarded whole."""
    big = b"b" * (60 * 1024)
    response = await http.exchange(proxy.port, get(raw_origin.url("/near-limit"), b"X-Big: " + big + b"\r\n"))
    assert response.status == 200
    [request] = raw_origin.requests
    assert request.values(b"x-big") == [big]
    request.assert_proxied()


async def test_dns_failure_is_502(proxy: ProxyProcess) -> None:
    """A host that does not resolve is a 502 naming the host and DNS."""
    await error_exchange(proxy.port, get("http://nonexistent.invalid/path"), 502, "nonexistent.invalid", "dns")


LONG_LABEL_HOST = "a" * 300 + ".example"


@pytest.mark.parametrize(
    ("host", "words"),
    [(LONG_LABEL_HOST, "longer than 253"), ("b" * 64 + ".example", "label longer than 63"), ("a..b", "empty label")],
)
async def test_host_no_resolver_can_encode_is_a_prompt_400(proxy: ProxyProcess, host: str, words: str) -> None:
    """A target host the resolver cannot even encode (IDNA: a label over 63 characters, over 253 in all, an empty
    label) is malformed: 400 at once, naming why, never a connection left waiting."""
    await error_exchange(proxy.port, get(f"http://{host}/x"), 400, "invalid host", words)


async def test_connect_to_a_host_no_resolver_can_encode_is_a_prompt_400(proxy: ProxyProcess) -> None:
    """The same for a CONNECT tunnel (which was never answered, and held the drain on shutdown)."""
    data = b"CONNECT %b:443 HTTP/1.1\r\nHost: %b:443\r\n\r\n" % ((b"c" * 64 + b".example",) * 2)
    await error_exchange(proxy.port, data, 400, "label longer than 63")


async def refuse_upload(conn: RawConn) -> None:
    """Answers 413 as soon as the head arrives, before reading the body (then discards it until the proxy closes)."""
    assert await conn.read_head() is not None
    await conn.send(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 19\r\n\r\nupload.invalid says")
    await conn.read_to_eof()


@pytest.mark.parametrize("target", ["unreachable", "refusing-origin"])
async def test_client_still_uploading_gets_the_error(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory, target: str
) -> None:
    """A client (requests) still uploading an 8 MB body when the answer is already known (the origin is
    unreachable: 502; the origin refused the upload early: its 413) receives that answer."""
    body = payload(8 * MB, seed=41)
    if target == "unreachable":
        url, expected = "http://nonexistent.invalid/upload", 502
    else:
        url, expected = (await raw_origin_factory(refuse_upload)).url("/upload"), 413

    def call() -> tuple[int, str]:
        with requests_session(proxy.url) as session:
            resp = session.post(url, data=body, timeout=30)
            return resp.status_code, resp.text

    status, text = await asyncio.to_thread(call)
    assert status == expected
    assert "invalid" in text


async def test_client_closing_inside_its_request_body_is_answered_at_once(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """A client that half-closes after 1,000 of the 1,000,000 body bytes it announced: its request can never be
    completed, so it gets a 400 saying so, at once (not a 504 blaming the origin after idle_timeout), and the
    origin's half request is dropped (its connection ends before the body does)."""
    ended = asyncio.Event()

    async def read_the_body(conn: RawConn) -> None:
        request = await conn.read_head()
        assert request is not None
        try:
            await conn.read_body(request)
        finally:
            ended.set()

    origin = await raw_origin_factory(read_the_body)
    head = b"POST %b HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n" % origin.url("/cut").encode()
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(head + b"b" * 1000)
        await origin.wait_for(lambda: len(origin.received) >= 1000)
        writer.write_eof()
        response = await http.read_response(reader)
        await http.expect_eof(reader)
    finally:
        await http.close_writer(writer)
    assert_error(response, 400, "closed its side before the request body ended")
    await asyncio.wait_for(ended.wait(), http.TIMEOUT)
    assert len(origin.received) < len(head) + 1_000_000


async def test_uploading_client_can_finish_sending_before_reading_the_error(proxy: ProxyProcess) -> None:
    """A simple client that sends its whole request (16 MB body) before reading is not reset half-way: the proxy
    drains the unwanted body (lingering close, RFC 9112 9.6) and the client then reads the 502."""
    body = b"u" * (16 * MB)
    head = b"POST http://nonexistent.invalid/upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body)

    def send_then_read() -> bytes:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=http.TIMEOUT) as sock:
            sock.sendall(head + body)
            return sock.recv(65536)

    answer = await asyncio.to_thread(send_then_read)
    assert answer.startswith(b"HTTP/1.1 502 ")


async def test_connection_refused_is_502(proxy: ProxyProcess, unused_tcp_port_factory: Callable[[], int]) -> None:
    """An origin port where nothing listens is a 502 saying the connection was refused."""
    port = unused_tcp_port_factory()
    await error_exchange(proxy.port, get(f"http://127.0.0.1:{port}/"), 502, "refused", f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def fast_proxy(
    tmp_path_factory: pytest.TempPathFactory, unused_tcp_port_factory: Callable[[], int]
) -> Iterator[ProxyProcess]:
    """A proxy with connect_timeout and idle_timeout of 0.5 s, so timeouts can be observed quickly."""
    fast = launch_proxy(
        tmp_path_factory.mktemp("fast"),
        unused_tcp_port_factory,
        {"forward": {"connect_timeout": 0.5, "idle_timeout": 0.5}},
    )
    try:
        yield fast
    finally:
        stop_and_check(fast)


@pytest_asyncio.fixture
async def unanswered_port() -> AsyncIterator[int]:
    """A port whose accept queue is full: new connection attempts get no answer at all (SYN dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    loop = asyncio.get_running_loop()
    try:
        for _ in range(16):
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            try:
                await asyncio.wait_for(loop.sock_connect(filler, ("127.0.0.1", port)), 0.3)
            except TimeoutError:
                break  # this attempt hangs: the queue is full
        else:
            pytest.skip("cannot fill the accept queue of a listening socket on this machine")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_connect_timeout_is_504(fast_proxy: ProxyProcess, unanswered_port: int) -> None:
    """An origin that does not complete the TCP handshake within connect_timeout is a 504 naming the timeout."""
    started = time.monotonic()
    await error_exchange(
        fast_proxy.port, get(f"http://127.0.0.1:{unanswered_port}/"), 504, "timed out", f"127.0.0.1:{unanswered_port}"
    )
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 5, elapsed


async def test_origin_that_never_answers_is_504_after_idle_timeout(
    fast_proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """An origin that accepts the request but never answers gets the client a 504 once idle_timeout passed."""
    origin = await raw_origin_factory(never_answer)
    started = time.monotonic()
    await error_exchange(fast_proxy.port, get(origin.url("/silent")), 504, "no response", "idle_timeout")
    elapsed = time.monotonic() - started
    assert 0.45 < elapsed < 5, elapsed
    assert [r.target for r in origin.requests] == [b"/silent"]
    origin.requests[0].assert_proxied()


async def test_origin_stalling_mid_body_cuts_the_client(
    fast_proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """An origin that stops in the middle of a body for longer than idle_timeout: the client's connection is cut,
    so it sees a truncated response rather than one that looks complete."""

    async def stall(conn: RawConn) -> None:
        await conn.read_head()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await asyncio.Event().wait()

    origin = await raw_origin_factory(stall)
    reader, writer = await http.open_raw(fast_proxy.port)
    writer.write(get(origin.url("/stall")))
    head = await http.read_head(reader)
    assert head.startswith(b"HTTP/1.1 200")
    try:
        rest = await asyncio.wait_for(reader.read(), http.TIMEOUT)
    except ConnectionResetError:
        rest = b""
    await http.close_writer(writer)
    assert len(rest) < 100


@pytest.mark.parametrize("when", ["at-accept", "after-head"])
async def test_origin_closing_without_response_is_502(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory, when: str
) -> None:
    """An origin that closes without answering (at once on accept, or after reading the request head) is a 502
    saying so, not a hang."""

    async def hang_up(conn: RawConn) -> None:
        if when == "after-head":
            await conn.read_head()

    origin = await raw_origin_factory(hang_up)
    await error_exchange(proxy.port, get(origin.url("/hangup")), 502, "closed the connection")


@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: evil\r\n\r\n",
    ],
    ids=["garbage", "cl-and-te", "two-lengths", "unrequested-101"],
)
async def test_malformed_origin_response_is_502(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory, answer: bytes
) -> None:
    """An origin answering with something that is not a valid response head (or with an ambiguous framing, or a
    101 to a request that asked for no upgrade) gets the client a 502, never the origin's bytes."""

    async def bad(conn: RawConn) -> None:
        await conn.read_head()
        await conn.send(answer)
        await conn.read_to_eof()

    origin = await raw_origin_factory(bad)
    await error_exchange(proxy.port, get(origin.url("/bad-answer")), 502, "malformed")


async def test_malformed_chunked_body_is_400_at_once(
    proxy_factory: ProxyFactory, raw_origin_factory: RawOriginFactory
) -> None:
    """A chunked request body that turns out malformed half-way (after the head went to the origin) gets the
    client a prompt 400 naming the problem, and the origin connection carrying the cut-off body is closed."""
    origin_saw_eof = asyncio.Event()

    async def wait_for_body(conn: RawConn) -> None:
        # The proxy may have sent the head (then it must drop the connection: the body never completes) or, when
        # the bad chunk arrived before the origin connection was up, nothing at all.
        if await conn.read_head() is not None:
            await conn.read_to_eof()
        origin_saw_eof.set()

    proxy = proxy_factory({"forward": {"idle_timeout": 1.0}})
    origin = await raw_origin_factory(wait_for_body)
    started = time.monotonic()
    await error_exchange(
        proxy.port,
        b"POST %b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n"
        % origin.url("/bad-chunk").encode(),
        400,
        "malformed",
    )
    assert time.monotonic() - started < 0.9  # well before idle_timeout
    await asyncio.wait_for(origin_saw_eof.wait(), http.TIMEOUT)


async def test_response_head_over_64_kib_is_502(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """An origin answering with a head larger than 64 KiB gets the client a 502 naming the limit, not the head."""

    async def huge_head(conn: RawConn) -> None:
        assert await conn.read_request() is not None
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: \r\n\r\n"
        padding = b"a" * (OVER_LIMIT - len(head))
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: " + padding + b"\r\n\r\nok")
        await conn.read_to_eof()

    origin = await raw_origin_factory(huge_head)
    await error_exchange(proxy.port, get(origin.url("/huge-response-head")), 502, "64 KiB")


async def test_https_url_in_absolute_form_is_400(proxy: ProxyProcess) -> None:
    """`GET https://...` sent in the clear is refused with a hint to use CONNECT."""
    await error_exchange(proxy.port, get("https://127.0.0.1:1/x"), 400, "CONNECT")


async def test_request_to_the_proxy_itself_is_refused(proxy: ProxyProcess) -> None:
    """A request whose target is the proxy's own address would loop forever: it is refused (508)."""
    await error_exchange(proxy.port, get(f"http://127.0.0.1:{proxy.port}/loop"), 508, "loop")


async def test_nothing_pipelined_behind_a_loop_request_is_forwarded(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """A request to the proxy itself (508) with another request right behind it in the same write: the 508 ends
    the connection, and the request behind it never reaches the origin (it was started, with the 508 answered in
    the same read). A pooled origin connection is idle first, as the fuzzer found it."""
    await assert_still_serving(proxy, raw_origin, "/warm")
    loop = b"POST http://127.0.0.1:%d/ HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n" % proxy.port
    response = await http.answer_then_close(proxy.port, loop + get(raw_origin.url("/behind")))
    assert_error(response, 508, "loop")
    await assert_still_serving(proxy, raw_origin, "/after")
    assert [r.target for r in raw_origin.requests] == [b"/warm", b"/after"]


async def test_a_refusal_ends_the_read_it_came_in(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """An HTTP/1.0 request to the proxy itself (508, closing) with a body, then more bytes in the same write: llhttp
    goes on parsing after the refusal and finds data after a request that closes the connection. The 508 is the
    one answer, and nothing is written after it (the write after the half-close logged tracebacks)."""
    loop = b"PATCH http://127.0.0.1:%d/ HTTP/1.0\r\nContent-Length: 4\r\n\r\nbody" % proxy.port
    response = await http.answer_then_close(proxy.port, loop + get(raw_origin.url("/behind")))
    assert_error(response, 508, "loop")
    await assert_still_serving(proxy, raw_origin, "/after")
    assert [r.target for r in raw_origin.requests] == [b"/after"]


async def test_bad_connections_do_not_disturb_other_clients(
    proxy_factory: ProxyFactory, raw_origin_factory: RawOriginFactory
) -> None:
    """While one client dribbles an incomplete head, one waits on a silent origin and one sent garbage, other
    clients are served at once."""
    busy = proxy_factory({"forward": {"idle_timeout": 30.0}})
    silent = await raw_origin_factory(never_answer)
    healthy = await raw_origin_factory()
    slow_reader, slow_writer = await http.open_raw(busy.port)
    slow_writer.write(b"GET " + healthy.url("/slowloris").encode() + b" HTTP/1.1\r\nHost: h\r\nX-Partial: ")
    stuck_reader, stuck_writer = await http.open_raw(busy.port)
    stuck_writer.write(get(silent.url("/stuck")))
    await silent.wait_for_requests(1)
    garbage_reader, garbage_writer = await http.open_raw(busy.port)
    garbage_writer.write(b"\x00\x01\x02 garbage\r\n\r\n")
    assert (await http.read_response(garbage_reader)).status == 400
    try:
        for i in range(5):
            started = time.monotonic()
            await assert_still_serving(busy, healthy, f"/other/{i}")
            assert time.monotonic() - started < 2
        assert not stuck_reader.at_eof()
        assert not slow_reader.at_eof()
    finally:
        for writer in (slow_writer, stuck_writer, garbage_writer):
            await http.close_writer(writer)
    assert [r.target for r in healthy.requests] == [f"/other/{i}".encode() for i in range(5)]
