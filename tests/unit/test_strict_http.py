"""The fuzzer's strict readers (tests/helpers/strict_http.py) refuse each doubtful byte stream the proxy must never
send on: a checker that accepted them would make the fuzzer's property 2 hold whatever the proxy did."""

from __future__ import annotations

import pytest

from tests.helpers.strict_http import Request, Response, read_requests, read_responses

HEAD = b"GET /x HTTP/1.1\r\nHost: o:1\r\n"
GOOD = (
    HEAD + b"\r\n",
    b"POST /y?q=1 HTTP/1.1\r\nHost: o:1\r\nContent-Length: 5\r\nX-Tab: a\tb\r\nX-Obs: caf\xc3\xa9\r\n\r\nhello",
    b"PUT /z HTTP/1.1\r\nHost: o:1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    b"5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
)


def test_well_formed_requests_are_read_whole() -> None:
    stream = read_requests(b"".join(GOOD))
    assert stream.at_boundary, stream.problem
    requests = [m for m in stream.messages if isinstance(m, Request)]
    assert [(r.method, r.target, r.body) for r in requests] == [
        (b"GET", b"/x", b""),
        (b"POST", b"/y?q=1", b"hello"),
        (b"PUT", b"/z", b"hello0123456789"),
        (b"OPTIONS", b"*", b""),
    ]
    assert requests[2].chunked and requests[2].trailers == []


@pytest.mark.parametrize(
    "data",
    [
        b"GET /x HTTP/1.1\nHost: o:1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: o:1\r\nX: a\rb\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: o:1\r\nX: a\x00b\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: o:1\r\nX: a\x7fb\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: o:1\r\nX: a\r\n b\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: o:1\r\nX : a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: o:1\r\nX(y): a\r\n\r\n",
        b"GET /x HTTP/1.1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET http://o:1/x HTTP/1.1\r\nHost: o:1\r\n\r\n",
        b"GET /x#frag HTTP/1.1\r\nHost: o:1\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: o:1\r\n\r\n",
        b"GET /x HTTP/1.0\r\nHost: o:1\r\n\r\n",
        b"GET /x  HTTP/1.1\r\nHost: o:1\r\n\r\n",
        HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        HEAD + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        HEAD + b"Content-Length: +5\r\n\r\nhello",
        HEAD + b"Content-Length: 5, 5\r\n\r\nhello",
        HEAD + b"Content-Length: 18446744073709551615\r\n\r\n",
        HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX T: 1\r\n\r\n",
        HEAD + b"Keep-Alive: timeout=5\r\n\r\n",
        HEAD + b"Proxy-Connection: keep-alive\r\n\r\n",
        HEAD + b"TE: trailers\r\n\r\n",
        HEAD + b"Connection: close\r\n\r\n",
        HEAD + b"Upgrade: websocket\r\n\r\n",
    ],
)
def test_doubtful_requests_are_refused(data: bytes) -> None:
    stream = read_requests(GOOD[0] + data + GOOD[0])
    assert stream.problem is not None, data
    assert len(stream.messages) == 1, "the reader stops at the doubtful message"


@pytest.mark.parametrize(
    "data",
    [
        b"GET /x HTTP/1.1\r\nHost: o:1\r\n",
        b"GET /x HTTP/1.1\r\nHost: o:1\r\n\r",
        HEAD + b"Content-Length: 5\r\n\r\nhel",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r",
    ],
)
def test_a_stream_cut_inside_a_message_is_incomplete(data: bytes) -> None:
    stream = read_requests(GOOD[0] + data)
    assert (stream.problem, stream.incomplete, len(stream.messages)) == (None, True, 1)


def test_the_bytes_after_an_accepted_upgrade_are_not_read() -> None:
    upgrade = b"GET /ws HTTP/1.1\r\nHost: o:1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    stream = read_requests(upgrade + b"\x81\x05hello not http", lambda r: r.target == b"/ws")
    assert stream.at_boundary and stream.tunnel_at == len(upgrade)


def test_responses() -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x01 tunnelled"
    )
    stream = read_responses(data)
    responses = [m for m in stream.messages if isinstance(m, Response)]
    assert stream.at_boundary and [(r.status, r.body, r.tunnel) for r in responses] == [
        (100, b"", False),
        (200, b"ok", False),
        (200, b"ok", False),
        (200, b"", True),
    ]
    assert read_responses(b"HTTP/1.1 200 OK\r\n\r\nbody until close").problem is not None
    assert read_responses(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok").problem
    assert read_responses(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok").incomplete
