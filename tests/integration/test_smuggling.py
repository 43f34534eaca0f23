"""Request smuggling and strict parsing: every ambiguous or malformed request head is refused with 400 and not one
byte of it reaches the origin (a raw origin records every byte it receives, and a sentinel request sent afterwards
must be the only thing it ever saw). Response-side: an origin cannot make the proxy deliver a second response."""

from __future__ import annotations

import pytest

from tests.helpers import http
from tests.helpers.origin import RawOrigin, RawOriginFactory, ok_response, serve_special
from tests.helpers.proxy_process import ProxyProcess

pytestmark = pytest.mark.asyncio

# `{U}` is replaced by the raw origin's absolute URL (http://127.0.0.1:PORT/smuggle), `{A}` by its authority.
CASES: dict[str, bytes] = {
    "cl-and-te": b"POST {U} HTTP/1.1\r\nHost: h\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nSMUGGLED",
    "te-and-cl": b"POST {U} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 13\r\n\r\n"
    b"0\r\n\r\nSMUGGLED",
    "two-different-cl": b"POST {U} HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl-list": b"POST {U} HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello",
    "cl-plus": b"POST {U} HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
    "cl-negative": b"POST {U} HTTP/1.1\r\nHost: h\r\nContent-Length: -5\r\n\r\nhello",
    "cl-hex": b"POST {U} HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello",
    "obs-fold": b"GET {U} HTTP/1.1\r\nHost: h\r\nX-Folded: first\r\n second\r\n\r\n",
    "obs-fold-tab": b"GET {U} HTTP/1.1\r\nHost: h\r\nX-Folded: first\r\n\tsecond\r\n\r\n",
    "bare-cr-in-value": b"GET {U} HTTP/1.1\r\nHost: h\r\nX-Cr: a\rb\r\n\r\n",
    "nul-in-value": b"GET {U} HTTP/1.1\r\nHost: h\r\nX-Nul: a\x00b\r\n\r\n",
    "ctl-in-value": b"GET {U} HTTP/1.1\r\nHost: h\r\nX-Ctl: a\x01b\r\n\r\n",
    "bare-lf-everywhere": b"GET {U} HTTP/1.1\nHost: h\n\n",
    "bare-lf-in-headers": b"GET {U} HTTP/1.1\r\nHost: h\nX-A: 1\r\n\r\n",
    "te-on-http10": b"POST {U} HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-gzip": b"POST {U} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    "te-identity": b"POST {U} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\nhello",
    "te-chunked-then-gzip": b"POST {U} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\nhello",
    "http-2.0": b"GET {U} HTTP/2.0\r\nHost: h\r\n\r\n",
    "http-2.0-keep-alive": b"GET {U} HTTP/2.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
    "http-0.9-keep-alive": b"GET {U} HTTP/0.9\r\nHost: h\r\nProxy-Connection: keep-alive\r\n\r\n",
    "http-1.2": b"GET {U} HTTP/1.2\r\nHost: h\r\n\r\n",
    "http-0.9-style": b"GET {U}\r\n\r\n",
    "port-too-big": b"GET http://127.0.0.1:99999/smuggle HTTP/1.1\r\nHost: h\r\n\r\n",
    "port-zero": b"GET http://127.0.0.1:0/smuggle HTTP/1.1\r\nHost: h\r\n\r\n",
    "port-not-digits": b"GET http://{A}x/smuggle HTTP/1.1\r\nHost: h\r\n\r\n",
    "userinfo-in-url": b"GET http://user:pw@{A}/smuggle HTTP/1.1\r\nHost: h\r\n\r\n",
    "missing-host-11": b"GET {U} HTTP/1.1\r\nX-A: 1\r\n\r\n",
    "two-hosts": b"GET {U} HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    "space-before-colon": b"GET {U} HTTP/1.1\r\nHost : h\r\n\r\n",
    "space-before-colon-cl": b"POST {U} HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello",
    "space-in-name": b"GET {U} HTTP/1.1\r\nHost: h\r\nX Bad: 1\r\n\r\n",
}


def render(template: bytes, origin: RawOrigin) -> bytes:
    return template.replace(b"{U}", origin.url("/smuggle").encode()).replace(b"{A}", origin.authority)


async def assert_origin_saw_only_a_sentinel(proxy: ProxyProcess, origin: RawOrigin) -> None:
    """After the refused request's connection closed, a sentinel request on a new connection is the only request,
    and the only bytes, the origin ever received."""
    sentinel = b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/sentinel").encode()
    response = await http.exchange(proxy.port, sentinel)
    assert (response.status, response.body) == (200, b"ok /sentinel")
    assert [r.target for r in origin.requests] == [b"/sentinel"]
    assert len(origin.conns) == 1
    assert origin.received == origin.requests[0].head
    assert origin.framing_errors == []
    origin.requests[0].assert_proxied()


@pytest.mark.parametrize("case", list(CASES))
async def test_ambiguous_request_is_400_and_never_forwarded(
    proxy: ProxyProcess, raw_origin: RawOrigin, case: str
) -> None:
    """Each ambiguous or malformed request gets 400 with a plain-text cause, the connection is closed, and the
    origin receives nothing of it."""
    response = await http.answer_then_close(proxy.port, render(CASES[case], raw_origin))
    assert response.status == 400, response
    assert (response.header(b"content-type") or b"").startswith(b"text/plain")
    assert response.body.strip(), "the 400 must say why"
    await assert_origin_saw_only_a_sentinel(proxy, raw_origin)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST {U} HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        b"POST {U} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST {U} HTTP/1.1\r\nHost: h\r\ncontent-length:5\r\n\r\nhello",
        b"POST {U} HTTP/1.1\r\nHost: h\r\nContent-Length:  5 \r\n\r\nhello",
        b"POST {U} HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
    ],
    ids=["content-length", "chunked", "no-space", "ows-around-value", "http10"],
)
async def test_unambiguous_framing_is_accepted(
    proxy: ProxyProcess, raw_origin: RawOrigin, request_bytes: bytes
) -> None:
    """The controls: the same requests framed unambiguously are forwarded with their exact body (so the refusals
    above are about ambiguity, not about the harness)."""
    response = await http.exchange(proxy.port, render(request_bytes, raw_origin) + b"")
    assert (response.status, response.body) == (200, b"ok /smuggle")
    [request] = raw_origin.requests
    assert request.body == b"hello"
    request.assert_proxied()


async def behind_a_valid_request(proxy: ProxyProcess, origin: RawOrigin, bad: bytes) -> http.RawResponse:
    """Send a valid GET and `bad` in one write; the GET is answered `ok /first`, then the proxy answers `bad` and
    closes the connection. Returns that answer."""
    valid = b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/first").encode()
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(valid + bad)
        first = await http.read_response(reader)
        second = await http.read_response(reader)
        await http.expect_eof(reader)
    finally:
        await http.close_writer(writer)
    assert (first.status, first.body) == (200, b"ok /first")
    return second


async def test_malformed_request_pipelined_behind_a_valid_one(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """A valid request followed in the same segment by an ambiguous one: the first is answered, the second gets
    400 after it, the connection closes, and only the first reached the origin."""
    second = await behind_a_valid_request(proxy, raw_origin, render(CASES["two-different-cl"], raw_origin))
    assert second.status == 400
    assert [r.target for r in raw_origin.requests] == [b"/first"]
    raw_origin.requests[0].assert_proxied()


@pytest.mark.parametrize(
    "bad_chunk", [b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n", b"5;\x01\r\nhello\r\n0\r\n\r\n"]
)
async def test_malformed_chunked_body_pipelined_behind_a_valid_request(
    proxy: ProxyProcess, raw_origin: RawOrigin, bad_chunk: bytes
) -> None:
    """A valid request, then in the same segment a chunked POST whose body turns out malformed while the first is
    still in flight: the first is answered, the POST gets its 400 after it and the connection closes, and not a
    byte of the POST reaches the origin (it was queued, and must be dropped from the queue, not started)."""
    post = b"POST %b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" % raw_origin.url("/bad").encode()
    second = await behind_a_valid_request(proxy, raw_origin, post + bad_chunk)
    assert second.status == 400, second
    assert b"malformed" in second.body
    assert [r.target for r in raw_origin.requests] == [b"/first"]
    assert raw_origin.received == raw_origin.requests[0].head


async def test_chunked_body_cannot_hide_a_request(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """A request smuggled inside a chunked body stays body: the origin gets one request whose body contains it,
    re-framed by the proxy, and the client gets exactly one response."""
    inner = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
    data = b"POST %b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (
        raw_origin.url("/outer").encode(),
        len(inner),
        inner,
    )
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(data)
        response = await http.read_response(reader)
        writer.write(b"GET %b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % raw_origin.url("/next").encode())
        following = await http.read_response(reader)
    finally:
        await http.close_writer(writer)
    assert response.body == b"ok /outer"
    assert following.body == b"ok /next"
    assert [r.target for r in raw_origin.requests] == [b"/outer", b"/next"]
    assert raw_origin.requests[0].body == inner
    for request in raw_origin.requests:
        request.assert_proxied()


async def test_origin_cannot_inject_a_second_response(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """Bytes an origin sends after a complete response (here, a whole extra response) never reach the client as
    the answer to its next request: that request gets the origin's real answer."""

    injected = ok_response(b"ok") + b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED"
    origin = await raw_origin_factory(serve_special({b"/inject": injected}))
    first, second = await http.exchanges(proxy.port, [http.get(origin.url("/inject")), http.get(origin.url("/real"))])
    assert first.body == b"ok"
    assert second.body == b"ok /real"
    for request in origin.requests:
        request.assert_proxied()
