"""Playbook tests of pipelined requests and request bodies (see tests/helpers/playbook.py)."""

from __future__ import annotations

from tests.helpers.playbook import Playbook, error_response


def get(path: bytes) -> bytes:
    return b"GET http://origin.test" + path + b" HTTP/1.1\r\nHost: origin.test\r\n\r\n"


def upstream_get(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: origin.test\r\n\r\n"


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


POST_HEAD = b"POST http://origin.test/u HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 5\r\n\r\n"
POST_HEAD_UP = b"POST /u HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 5\r\n\r\n"
CHUNKED_HEAD = b"POST http://origin.test/u HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKED_HEAD_UP = b"POST /u HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n"

# -- pipelining ----------------------------------------------------------------------------------------------------


def test_two_pipelined_requests_are_answered_in_order(pb: Playbook) -> None:
    pb.client_sends(get(b"/1") + get(b"/2"))
    origin = pb.connects[0].succeed()
    assert origin.take() == upstream_get(b"/1")  # the second waits for the first's answer
    assert not pb.client.reading
    origin.sends(ok(b"one"))
    assert origin.take() == upstream_get(b"/2")
    assert pb.client.reading
    origin.sends(ok(b"two"))
    assert pb.client.written == ok(b"one") + ok(b"two")
    assert len(pb.connects) == 1
    assert pb.counts() == {"requests": 2, "by_status": {200: 2}}


def test_three_pipelined_requests_in_one_read(pb: Playbook) -> None:
    pb.client_sends(get(b"/1") + get(b"/2") + get(b"/3"))
    origin = pb.connects[0].succeed()
    for n in (b"1", b"2", b"3"):
        assert origin.take() == upstream_get(b"/" + n)
        assert pb.client.reading is (n == b"3")  # reading resumes as the last waiting request starts
        origin.sends(ok(n))
    assert pb.client.written == ok(b"1") + ok(b"2") + ok(b"3")
    assert pb.counts() == {"requests": 3, "by_status": {200: 3}}


def test_request_sent_while_one_is_in_flight_waits(pb: Playbook) -> None:
    pb.client_sends(get(b"/1"))
    origin = pb.connects[0].succeed()
    pb.client_sends(get(b"/2"))
    assert not pb.client.reading
    assert origin.take() == upstream_get(b"/1")
    pb.client_sends(get(b"/3"))  # held by the paused transport: not read yet
    origin.sends(ok(b"1"))
    assert origin.take() == upstream_get(b"/2")
    assert not pb.client.reading  # resumed, read /3, which waits in turn
    origin.sends(ok(b"2"))
    assert origin.take() == upstream_get(b"/3")
    assert pb.client.reading


def test_pipelined_requests_to_two_origins(pb: Playbook) -> None:
    pb.client_sends(get(b"/1") + b"GET http://other.test/2 HTTP/1.1\r\nHost: other.test\r\n\r\n")
    first = pb.connects[0].succeed()
    first.sends(ok(b"1"))
    assert [(c.host, c.port) for c in pb.connects] == [("origin.test", 80), ("other.test", 80)]
    second = pb.connects[1].succeed()
    assert second.written == b"GET /2 HTTP/1.1\r\nHost: other.test\r\n\r\n"
    second.sends(ok(b"2"))
    assert pb.client.written == ok(b"1") + ok(b"2")
    assert pb.idle_origins() == 2


def test_more_than_max_queued_gets_503_after_the_earlier_answers(pb: Playbook) -> None:
    pb.client_sends(get(b"/0") + b"".join(get(b"/q") for _ in range(100)) + get(b"/over"))
    origin = pb.connects[0].succeed()
    for _ in range(101):
        origin.sends(ok(b"."))
    answer = error_response(
        503, "more than 100 pipelined requests waiting: send the rest once these are answered", "http_request_error"
    )
    assert pb.client.written == ok(b".") * 101 + answer
    assert upstream_get(b"/over") not in origin.written
    assert origin.written.count(b"GET ") == 101
    assert pb.client.eof_written
    assert pb.counts() == {"requests": 101, "by_status": {200: 101}, "rejected": {503: 1}}
    pb.fire_timers()
    assert pb.client.closed


def test_http10_request_ends_the_pipeline(pb: Playbook) -> None:
    pb.client_sends(b"GET http://origin.test/a HTTP/1.0\r\n\r\n" + get(b"/never"))
    origin = pb.connect_and_respond(ok(b"x"))
    assert pb.client.written.endswith(b"\r\n\r\nx")
    assert pb.client.closed
    assert b"/never" not in origin.written


# -- request bodies --------------------------------------------------------------------------------------------


def test_content_length_body_is_forwarded(pb: Playbook) -> None:
    pb.client_sends(POST_HEAD + b"he")
    origin = pb.connects[0].succeed()
    assert origin.take() == POST_HEAD_UP + b"he"
    pb.client_sends(b"llo")
    assert origin.take() == b"llo"
    origin.sends(ok(b"done"))
    assert pb.client.written == ok(b"done")
    assert not pb.client.ended
    assert pb.idle_origins() == 1


def test_chunked_body_is_rechunked_to_the_origin(pb: Playbook) -> None:
    pb.client_sends(CHUNKED_HEAD + b"5\r\nhello\r\n")
    origin = pb.connects[0].succeed()
    assert origin.take() == CHUNKED_HEAD_UP + b"5\r\nhello\r\n"
    pb.client_sends(b"6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    assert origin.take() == b"6\r\n world\r\n0\r\n\r\n"
    origin.sends(ok(b""))
    pb.client_sends(get(b"/next"))
    assert origin.take() == upstream_get(b"/next")


def test_body_before_the_origin_connection_is_held_and_sent_with_the_head(pb: Playbook) -> None:
    pb.client_sends(POST_HEAD)
    pb.client_sends(b"hel")
    pb.client_sends(b"lo")
    origin = pb.connects[0].succeed()
    assert origin.transport.chunks == [POST_HEAD_UP + b"hello"]  # one write
    origin.sends(ok(b""))
    assert pb.counts() == {"requests": 1, "by_status": {200: 1}}


def test_large_pending_body_pauses_the_client_until_sent(pb: Playbook) -> None:
    size = (1 << 20) + 10
    pb.client_sends(b"POST http://origin.test/u HTTP/1.1\r\nHost: origin.test\r\nContent-Length: %d\r\n\r\n" % size)
    pb.client_sends(b"a" * (1 << 19))
    assert pb.client.reading
    pb.client_sends(b"a" * (1 << 19) + b"a")
    assert not pb.client.reading
    origin = pb.connects[0].succeed()
    assert origin.written.endswith(b"\r\n\r\n" + b"a" * ((1 << 20) + 1))
    assert pb.client.reading
    pb.client_sends(b"a" * 9)
    origin.sends(ok(b""))
    assert pb.client.written == ok(b"")


def test_early_response_before_the_body_ended_lingers_then_closes(pb: Playbook) -> None:
    pb.client_sends(POST_HEAD + b"he")
    origin = pb.connects[0].succeed()
    origin.sends(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
    assert pb.client.written == b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    assert pb.client.eof_written and not pb.client.closed
    assert origin.closed  # half a request on it: never reused
    assert pb.idle_origins() == 0
    pb.client_sends(b"llo")  # read and dropped
    assert origin.written == POST_HEAD_UP + b"he"
    assert pb.counts() == {"requests": 1, "by_status": {413: 1}}
    assert pb.fire_timers() == 1
    assert pb.client.closed


def test_body_of_a_pipelined_request_waits_for_its_turn(pb: Playbook) -> None:
    pb.client_sends(get(b"/1") + POST_HEAD + b"hello")
    origin = pb.connects[0].succeed()
    assert origin.take() == upstream_get(b"/1")
    origin.sends(ok(b"1"))
    assert origin.take() == POST_HEAD_UP + b"hello"
    origin.sends(ok(b"2"))
    assert pb.client.written == ok(b"1") + ok(b"2")


def test_client_eof_inside_a_body_is_400(pb: Playbook) -> None:
    pb.client_sends(POST_HEAD + b"he")
    origin = pb.connects[0].succeed()
    pb.client_eof()
    assert pb.client.written == error_response(
        400, "the client closed its side before the request body ended", "http_request_error"
    )
    assert origin.aborted
    # Counted once, as a request the proxy refused (it had been counted both as forwarded and as refused).
    assert pb.counts() == {"rejected": {400: 1}}
    assert pb.outcomes() == [("refused", 400)]


def test_chunked_body_before_the_origin_connection_is_held(pb: Playbook) -> None:
    pb.client_sends(CHUNKED_HEAD + b"3\r\nabc\r\n0\r\n\r\n")
    origin = pb.connects[0].succeed()
    assert origin.transport.chunks == [CHUNKED_HEAD_UP + b"3\r\nabc\r\n0\r\n\r\n"]


def test_transfer_encoding_in_an_http10_request_is_400(pb: Playbook) -> None:
    pb.client_sends(b"POST http://origin.test/u HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert pb.connects == []
    assert pb.client.written == error_response(
        400, "Transfer-Encoding is not allowed in an HTTP/1.0 request", "http_request_error"
    )
