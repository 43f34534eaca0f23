"""Playbook tests of plain HTTP exchanges: one request and its response, keep-alive reuse, HTTP/1.0 clients, bodiless
responses and close-delimited bodies (see tests/helpers/playbook.py)."""

from __future__ import annotations

from collections.abc import Callable

from tests.helpers.playbook import Playbook

GET_A = b"GET http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\nAccept: */*\r\n\r\n"
GET_A_UP = b"GET /a HTTP/1.1\r\nHost: origin.test\r\nAccept: */*\r\n\r\n"
GET_B = b"GET http://origin.test/b HTTP/1.1\r\nHost: origin.test\r\n\r\n"
GET_B_UP = b"GET /b HTTP/1.1\r\nHost: origin.test\r\n\r\n"
OK_HI = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


def test_get_is_forwarded_in_origin_form_and_answered(pb: Playbook) -> None:
    pb.client_sends(GET_A)
    assert [(c.host, c.port, c.tunnel) for c in pb.connects] == [("origin.test", 80, False)]
    origin = pb.connects[0].succeed()
    assert origin.written == GET_A_UP
    origin.sends(OK_HI)
    assert pb.client.written == OK_HI
    assert not pb.client.ended and not origin.ended
    assert pb.idle_origins() == 1
    assert pb.counts() == {"requests": 1, "by_status": {200: 1}}


def test_response_in_pieces_is_relayed_as_it_comes(pb: Playbook) -> None:
    pb.client_sends(GET_A)
    origin = pb.connects[0].succeed()
    origin.sends(b"HTTP/1.1 200 OK\r\nContent-")
    assert pb.client.written == b""
    origin.sends(b"Length: 4\r\n\r\nab")
    assert pb.client.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"
    assert pb.counts() == {}
    origin.sends(b"cd")
    assert pb.client.take() == b"cd"
    assert pb.counts() == {"requests": 1, "by_status": {200: 1}}


def test_explicit_port_and_query(pb: Playbook) -> None:
    pb.client_sends(b"GET http://origin.test:8080/p?q=1 HTTP/1.1\r\nHost: origin.test:8080\r\n\r\n")
    assert [(c.host, c.port) for c in pb.connects] == [("origin.test", 8080)]
    origin = pb.connects[0].succeed()
    assert origin.written == b"GET /p?q=1 HTTP/1.1\r\nHost: origin.test:8080\r\n\r\n"


def test_trace_headers_are_added_for_a_matching_target(pb: Playbook) -> None:
    pb.client_sends(b"GET http://api.example/x HTTP/1.1\r\nHost: api.example\r\n\r\n")
    origin = pb.connects[0].succeed()
    trace = "00000000000000000000000000000001"
    assert origin.written == (
        b"GET /x HTTP/1.1\r\nHost: api.example\r\n"
        b"sentry-trace: " + trace.encode() + b"-0000000000000002-1\r\n"
        b"baggage: sentry-trace_id=" + trace.encode() + b",sentry-public_key=abc123,sentry-org_id=42,"
        b"sentry-environment=production,sentry-sample_rate=1.0,sentry-sampled=true,sentry-sample_rand=0.250000\r\n"
        b"\r\n"
    )


def test_keep_alive_reuses_the_origin_connection(pb: Playbook) -> None:
    pb.client_sends(GET_A)
    origin = pb.connect_and_respond(OK_HI)
    pb.client.take()
    pb.client_sends(GET_B)
    assert len(pb.connects) == 1
    assert origin.take() == GET_A_UP + GET_B_UP
    origin.sends(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert pb.client.take() == b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    assert pb.counts() == {"requests": 2, "by_status": {200: 1, 404: 1}}


def test_pooled_connection_is_used_first(pb: Playbook) -> None:
    pooled = pb.pooled_origin("origin.test", 80)
    pb.client_sends(GET_A)
    assert pb.connects == []
    assert pb.origins == [pooled]
    assert pooled.written == GET_A_UP


def test_pooled_connection_to_another_origin_is_not_used(pb: Playbook) -> None:
    pb.pooled_origin("other.test", 80)
    pb.client_sends(GET_A)
    assert [(c.host, c.port) for c in pb.connects] == [("origin.test", 80)]


def test_connection_close_from_the_client_closes_after_the_response(pb: Playbook) -> None:
    pb.client_sends(b"GET http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
    origin = pb.connects[0].succeed()
    assert origin.written == b"GET /a HTTP/1.1\r\nHost: origin.test\r\n\r\n"
    origin.sends(OK_HI)
    assert pb.client.written == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    assert pb.client.closed
    assert pb.idle_origins() == 1  # the origin connection is still good


def test_connection_close_from_the_origin_is_not_pooled(pb: Playbook) -> None:
    pb.client_sends(GET_A)
    origin = pb.connect_and_respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
    assert pb.client.written == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    assert origin.closed and not pb.client.ended
    assert pb.idle_origins() == 0
    pb.client_sends(GET_B)
    assert len(pb.connects) == 2


def test_http10_client_gets_a_decoded_chunked_body_and_a_close(pb: Playbook) -> None:
    pb.client_sends(b"GET http://origin.test/a HTTP/1.0\r\n\r\n")
    origin = pb.connects[0].succeed()
    assert origin.written == b"GET /a HTTP/1.1\r\nHost: origin.test\r\n\r\n"
    origin.sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n3\r\n th\r\n0\r\n\r\n")
    assert pb.client.written == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhi th"
    assert pb.client.closed
    assert pb.counts() == {"requests": 1, "by_status": {200: 1}}


def test_http10_keep_alive_client_stays_open_for_a_length_response(pb: Playbook) -> None:
    pb.client_sends(b"GET http://origin.test/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    origin = pb.connects[0].succeed()
    origin.sends(OK_HI)
    assert pb.client.written.endswith(b"\r\n\r\nhi")
    assert b"keep-alive" in pb.client.written.lower()
    assert not pb.client.ended


def test_head_response_has_no_body(pb: Playbook) -> None:
    pb.client_sends(b"HEAD http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\n\r\n")
    origin = pb.connects[0].succeed()
    assert origin.written == b"HEAD /a HTTP/1.1\r\nHost: origin.test\r\n\r\n"
    origin.sends(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    assert pb.client.written == b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    assert pb.idle_origins() == 1  # complete: nothing more is awaited
    pb.client_sends(GET_B)
    assert origin.take().endswith(GET_B_UP)


def test_head_response_chunked_has_no_body(pb: Playbook) -> None:
    pb.client_sends(b"HEAD http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\n\r\n")
    pb.connect_and_respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert pb.client.written == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert pb.counts() == {"requests": 1, "by_status": {200: 1}}


def test_204_and_304_have_no_body(pb: Playbook) -> None:
    pb.client_sends(GET_A)
    origin = pb.connect_and_respond(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert pb.client.take() == b"HTTP/1.1 204 No Content\r\n\r\n"
    pb.client_sends(GET_B)
    origin.sends(b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n')
    assert pb.client.take() == b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n'
    assert pb.counts() == {"requests": 2, "by_status": {204: 1, 304: 1}}
    assert pb.idle_origins() == 1


def test_close_delimited_response_ends_with_the_origin_close(pb: Playbook) -> None:
    pb.client_sends(GET_A)
    origin = pb.connect_and_respond(b"HTTP/1.1 200 OK\r\n\r\nall of ")
    assert pb.client.written == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of "
    assert pb.counts() == {}
    origin.sends(b"it")
    origin.eof()
    assert pb.client.written.endswith(b"all of it")
    assert pb.client.closed and not pb.client.aborted
    assert pb.counts() == {"requests": 1, "by_status": {200: 1}}


def test_interim_100_continue_is_relayed(pb: Playbook) -> None:
    pb.client_sends(
        b"POST http://origin.test/u HTTP/1.1\r\nHost: origin.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    origin = pb.connect_and_respond(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert pb.client.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    pb.client_sends(b"ok")
    assert origin.written.endswith(b"\r\n\r\nok")
    origin.sends(OK_HI)
    assert pb.client.take() == OK_HI
    assert pb.counts() == {"requests": 1, "by_status": {200: 1}}


def test_client_half_close_after_the_request_still_gets_the_response(pb: Playbook) -> None:
    pb.client_sends(GET_A)
    pb.client_eof()
    assert not pb.client.ended
    pb.connect_and_respond(OK_HI)
    assert pb.client.written == OK_HI
    assert pb.client.closed


def test_hop_by_hop_headers_are_not_forwarded(pb: Playbook) -> None:
    pb.client_sends(
        b"GET http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\nProxy-Connection: keep-alive\r\n"
        b"Connection: X-Hop\r\nX-Hop: 1\r\nX-Kept: 2\r\n\r\n"
    )
    origin = pb.connects[0].succeed()
    assert origin.written == b"GET /a HTTP/1.1\r\nHost: origin.test\r\nX-Kept: 2\r\n\r\n"


def test_client_from_outside_allow_clients_gets_403(make_pb: Callable[..., Playbook]) -> None:
    pb = make_pb(peer=("10.1.2.3", 5555))
    assert pb.client.written.startswith(b"HTTP/1.1 403 ")
    assert b"error=http_request_denied" in pb.client.written
    assert pb.client.eof_written
    assert pb.counts() == {"rejected": {403: 1}}
    pb.client_sends(GET_A)
    assert pb.connects == []
    pb.fire_timers()
    assert pb.client.closed
