"""Playbook tests of errors and stalls: requests the proxy refuses, origins that misbehave, and the timeouts of the
idle and header sweep (see tests/helpers/playbook.py)."""

from __future__ import annotations

import pytest

from tests.helpers.playbook import Origin, Playbook, error_response

GET = b"GET http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\n\r\n"
GET_UP = b"GET /a HTTP/1.1\r\nHost: origin.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def in_flight(pb: Playbook) -> Origin:
    pb.client_sends(GET)
    origin = pb.connects[0].succeed()
    assert origin.take() == GET_UP
    return origin


# -- requests the proxy refuses --------------------------------------------------------------------------------


def test_malformed_request_is_400_and_lingers(pb: Playbook) -> None:
    pb.client_sends(b"GET\x00 / HTTP/1.1\r\n\r\n")
    assert pb.client.written == error_response(
        400, "malformed request: Expected space after method", "http_request_error"
    )
    assert pb.client.eof_written and not pb.client.closed
    pb.client_sends(b"more garbage")  # read and dropped
    assert pb.fire_timers() == 1
    assert pb.client.closed
    assert pb.connects == []
    assert pb.counts() == {"rejected": {400: 1}}


def test_malformed_request_after_a_good_one_is_answered_after_it(pb: Playbook) -> None:
    pb.client_sends(GET + b"BAD\x00\r\n\r\n")
    origin = pb.connects[0].succeed()
    assert pb.client.written == b""
    origin.sends(OK)
    assert pb.client.written.startswith(OK + b"HTTP/1.1 400 Bad Request\r\n")
    assert pb.client.eof_written


def test_head_over_64_kib_is_431(pb: Playbook) -> None:
    pb.client_sends(b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nX-Big: " + b"a" * (64 * 1024))
    assert pb.client.written == error_response(431, "request head larger than 64 KiB", "http_request_error")
    assert pb.connects == []
    assert pb.counts() == {"rejected": {431: 1}}


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (b"a..b", "invalid host 'a..b': an empty label"),
        (b"origin.test:99999", "invalid port in 'origin.test:99999'"),
        (b"[::1", "malformed IPv6 authority '[::1'"),
        (b"user@origin.test", "request target has no host or carries user info"),
    ],
)
def test_bad_host_in_the_target_is_400(pb: Playbook, target: bytes, message: str) -> None:
    pb.client_sends(b"GET http://" + target + b"/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
    assert pb.client.written == error_response(400, message, "http_request_error")
    assert pb.connects == []


def test_missing_host_header_is_400(pb: Playbook) -> None:
    pb.client_sends(b"GET http://origin.test/ HTTP/1.1\r\n\r\n")
    assert pb.client.written == error_response(400, "HTTP/1.1 request without a Host header", "http_request_error")


def test_two_host_headers_is_400(pb: Playbook) -> None:
    pb.client_sends(b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nHost: other.test\r\n\r\n")
    assert pb.client.written == error_response(400, "more than one Host header", "http_request_error")


def test_origin_form_request_is_400(pb: Playbook) -> None:
    pb.client_sends(b"GET /relative HTTP/1.1\r\nHost: origin.test\r\n\r\n")
    assert pb.client.written.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"send requests in absolute form" in pb.client.written
    assert pb.connects == []


# -- origins that misbehave ------------------------------------------------------------------------------------


def test_malformed_response_is_502(pb: Playbook) -> None:
    origin = in_flight(pb)
    origin.sends(b"HTTP/1.1 abc\r\n\r\n")
    assert pb.client.written == error_response(
        502, "origin.test:80 sent a malformed response: Invalid status code", "http_protocol_error"
    )
    assert origin.aborted
    assert pb.counts() == {"requests": 1, "by_status": {502: 1}}


def test_response_head_over_64_kib_is_502(pb: Playbook) -> None:
    origin = in_flight(pb)
    origin.sends(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (64 * 1024))
    assert pb.client.written == error_response(
        502, "origin.test:80 sent a malformed response: response head larger than 64 KiB", "http_protocol_error"
    )


def test_origin_closes_before_the_response_is_502(pb: Playbook) -> None:
    origin = in_flight(pb)
    origin.sends(b"HTTP/1.1 200 OK\r\nContent-")
    origin.eof()
    assert pb.client.written == error_response(
        502, "origin.test:80 closed the connection before sending a response", "connection_terminated"
    )
    assert pb.counts() == {"requests": 1, "by_status": {502: 1}}


def test_origin_closes_mid_body_aborts_the_client(pb: Playbook) -> None:
    origin = in_flight(pb)
    origin.sends(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    origin.eof()
    assert pb.client.written == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    assert pb.client.aborted
    assert pb.counts() == {"requests": 1, "by_status": {200: 1}}


def test_origin_closes_mid_chunked_body_aborts_the_client(pb: Playbook) -> None:
    origin = in_flight(pb)
    origin.sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
    origin.lost()
    assert pb.client.aborted
    assert not pb.client.written.endswith(b"0\r\n\r\n")


def test_malformed_chunk_after_the_head_aborts_the_client(pb: Playbook) -> None:
    origin = in_flight(pb)
    origin.sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    origin.sends(b"zz\r\n")
    assert pb.client.written == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert pb.client.aborted and origin.aborted


def test_bytes_after_a_complete_response_end_the_origin_connection(pb: Playbook) -> None:
    origin = in_flight(pb)
    origin.sends(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")
    assert pb.client.written == OK
    assert origin.closed
    assert pb.idle_origins() == 0
    assert not pb.client.ended
    pb.client_sends(GET)
    assert len(pb.connects) == 2


def test_bytes_after_a_complete_chunked_response_are_502(pb: Playbook) -> None:
    origin = in_flight(pb)
    origin.sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    origin.sends(b"2\r\nok\r\n0\r\n\r\nGARBAGE")
    assert pb.client.written == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert pb.client.aborted  # never a complete-looking response with stray bytes
    assert pb.idle_origins() == 0


def test_bytes_from_an_idle_pooled_connection_are_discarded(pb: Playbook) -> None:
    pooled = pb.pooled_origin("origin.test")
    pooled.sends(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert pooled.closed
    assert pb.idle_origins() == 0
    assert pb.client.written == b""
    pb.client_sends(GET)
    assert len(pb.connects) == 1
    assert pooled.written == b""


def test_pooled_connection_closed_by_the_origin_leaves_the_pool(pb: Playbook) -> None:
    pooled = pb.pooled_origin("origin.test")
    pooled.eof()
    assert pb.idle_origins() == 0
    pb.client_sends(GET)
    assert len(pb.connects) == 1


def test_connect_failure_of_a_request_is_502(pb: Playbook) -> None:
    pb.client_sends(GET)
    pb.connects[0].refuse()
    assert pb.client.written == error_response(502, "connection to origin.test:80 refused", "connection_refused")
    assert pb.counts() == {"requests": 1, "by_status": {502: 1}}


def test_connect_timeout_of_a_request_is_504(pb: Playbook) -> None:
    pb.client_sends(GET)
    pb.tick(6)
    assert pb.client.written == error_response(
        504, "connecting to origin.test:80 timed out after 5s", "connection_timeout"
    )
    assert pb.counts() == {"requests": 1, "by_status": {504: 1}}


# -- stalls ------------------------------------------------------------------------------------------------------


def test_incomplete_head_gets_408(pb: Playbook) -> None:
    pb.client_sends(b"GET http://origin.test/ HTTP/1.1\r\nHost: orig")
    pb.tick(9)
    assert pb.client.written == b""
    pb.tick(3)
    assert pb.client.written == error_response(
        408, "request head not complete within 10s (forward.header_timeout)", "http_request_error"
    )
    assert pb.counts() == {"rejected": {408: 1}}
    pb.fire_timers()
    assert pb.client.closed


def test_silent_new_connection_gets_408(pb: Playbook) -> None:
    pb.tick(12)
    assert pb.client.written.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


def test_dribbled_head_still_times_out(pb: Playbook) -> None:
    pb.client_sends(b"GET http://origin.test/ HTTP/1.1\r\n")
    for _ in range(6):
        pb.tick(2)
        pb.client_sends(b"X: y\r\n")
    assert pb.client.written.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


def test_no_response_within_idle_timeout_is_504(pb: Playbook) -> None:
    origin = in_flight(pb)
    pb.tick(29)
    assert pb.client.written == b""
    pb.tick(3)
    assert pb.client.written == error_response(
        504, "origin.test:80 sent no response within 30s (forward.idle_timeout)", "http_response_timeout"
    )
    assert origin.aborted
    assert pb.counts() == {"requests": 1, "by_status": {504: 1}}


def test_slow_but_moving_response_is_not_timed_out(pb: Playbook) -> None:
    origin = in_flight(pb)
    origin.sends(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    for piece in (b"a", b"b", b"c"):
        pb.tick(20)
        origin.sends(piece)
    assert not pb.client.ended and not origin.ended
    origin.sends(b"d")
    assert pb.client.written.endswith(b"abcd")


def test_stall_after_the_response_began_aborts_both(pb: Playbook) -> None:
    origin = in_flight(pb)
    origin.sends(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    pb.tick(32)
    assert pb.client.aborted and origin.aborted
    assert pb.client.written == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"


def test_stall_after_the_response_began_is_counted(pb: Playbook) -> None:
    origin = in_flight(pb)
    origin.sends(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    pb.tick(32)
    assert pb.counts() == {"requests": 1, "by_status": {200: 1}}  # as when the origin closes mid-body
    assert pb.outcomes() == [("stalled", 200)]


def test_idle_keep_alive_client_is_closed_after_idle_timeout(pb: Playbook) -> None:
    pb.client_sends(GET)
    pb.connects[0].succeed().sends(OK)
    pb.tick(29)
    assert not pb.client.ended
    pb.tick(3)
    assert pb.client.closed and not pb.client.aborted
    assert pb.client.written == OK


def test_idle_pooled_origin_is_closed_after_idle_timeout(pb: Playbook) -> None:
    pooled = pb.pooled_origin("origin.test")
    pb.tick(29)
    assert not pooled.ended
    pb.tick(3)
    assert pooled.closed
    assert pb.idle_origins() == 0


def test_client_sending_a_body_slowly_is_not_timed_out(pb: Playbook) -> None:
    pb.client_sends(b"POST http://origin.test/u HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 3\r\n\r\n")
    origin = pb.connects[0].succeed()
    for piece in (b"a", b"b"):
        pb.tick(20)
        pb.client_sends(piece)
    assert not pb.client.ended and not origin.ended


def test_client_eof_inside_a_head_closes_without_an_answer(pb: Playbook) -> None:
    pb.client_sends(b"GET http://origin.test/ HTTP/1.1\r\nHo")
    pb.client_eof()
    assert pb.client.closed
    assert pb.client.written == b""
    assert pb.connects == []
