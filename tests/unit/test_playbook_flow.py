"""Playbook tests of flow control (full write buffers pause the other side's reading), of clients that disconnect in
the middle of an exchange, and of the counters each kind of ending leaves (see tests/helpers/playbook.py)."""

from __future__ import annotations

from tests.helpers.playbook import Origin, Playbook

GET = b"GET http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\n\r\n"
GET_UP = b"GET /a HTTP/1.1\r\nHost: origin.test\r\n\r\n"
POST = b"POST http://origin.test/u HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 6\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HEAD_10 = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
CONNECT = b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n"


def in_flight(pb: Playbook, request: bytes = GET) -> Origin:
    pb.client_sends(request)
    return pb.connects[0].succeed()


def responding(pb: Playbook) -> Origin:
    origin = in_flight(pb)
    origin.sends(HEAD_10 + b"abc")
    return origin


# -- flow control ----------------------------------------------------------------------------------------------


def test_full_client_buffer_pauses_reading_the_origin(pb: Playbook) -> None:
    origin = responding(pb)
    pb.client_buffer_full()
    assert not origin.reading
    origin.sends(b"defg")  # waits in the origin's socket
    assert pb.client.written == HEAD_10 + b"abc"
    pb.client_drained()
    assert origin.reading
    assert pb.client.written == HEAD_10 + b"abcdefg"
    origin.sends(b"hij")
    assert pb.counts() == {"requests": 1, "by_status": {200: 1}}


def test_full_origin_buffer_pauses_reading_the_client(pb: Playbook) -> None:
    origin = in_flight(pb, POST + b"ab")
    origin.buffer_full()
    assert not pb.client.reading
    pb.client_sends(b"cd")  # waits in the client's socket
    assert origin.written.endswith(b"\r\n\r\nab")
    origin.drained()
    assert pb.client.reading
    assert origin.written.endswith(b"\r\n\r\nabcd")


def test_reading_resumes_only_when_every_reason_is_gone(pb: Playbook) -> None:
    pb.client_sends(POST + b"abcdef" + GET)  # the GET waits behind the POST: reading paused
    origin = pb.connects[0].succeed()
    origin.buffer_full()
    origin.sends(OK)  # the GET starts on the same connection: its buffer is still full
    assert origin.written.endswith(b"abcdef" + GET_UP)
    assert not pb.client.reading
    origin.drained()
    assert pb.client.reading


def test_full_buffer_to_the_previous_origin_does_not_hold_the_next_exchange(pb: Playbook) -> None:
    pb.client_sends(POST + b"abcdef" + b"GET http://other.test/ HTTP/1.1\r\nHost: other.test\r\n\r\n")
    first = pb.connects[0].succeed()
    first.buffer_full()  # the body is still in its buffer when it answers
    first.sends(OK)
    second = pb.connects[1].succeed()
    second.sends(OK)
    first.drained()
    assert pb.client.written == OK + OK
    assert pb.client.reading  # the client may send its next request


def test_full_client_buffer_in_a_tunnel_pauses_the_target(pb: Playbook) -> None:
    pb.client_sends(CONNECT)
    target = pb.connects[0].succeed()
    pb.client_buffer_full()
    assert not target.reading
    pb.client_drained()
    assert target.reading


def test_full_target_buffer_in_a_tunnel_pauses_the_client(pb: Playbook) -> None:
    pb.client_sends(CONNECT)
    target = pb.connects[0].succeed()
    target.buffer_full()
    assert not pb.client.reading
    target.drained()
    assert pb.client.reading


def test_full_client_buffer_with_nothing_in_flight_is_harmless(pb: Playbook) -> None:
    pb.client_buffer_full()
    pb.client_drained()
    pb.client_sends(GET)
    assert len(pb.connects) == 1


# -- client disconnects --------------------------------------------------------------------------------------------


def test_client_gone_while_waiting_for_the_response_closes_the_origin(pb: Playbook) -> None:
    origin = in_flight(pb)
    pb.client_lost()
    assert origin.closed
    origin.sends(OK)  # too late: nothing is relayed, nothing pooled
    assert pb.idle_origins() == 0


def test_client_gone_during_the_response_closes_the_origin(pb: Playbook) -> None:
    origin = responding(pb)
    pb.client_lost()
    assert origin.closed
    assert pb.idle_origins() == 0


def test_client_gone_while_connecting_keeps_the_new_connection_for_reuse(pb: Playbook) -> None:
    pb.client_sends(GET)
    pb.client_lost()
    origin = pb.connects[0].succeed()
    assert origin.written == b""
    assert not origin.ended
    assert pb.idle_origins() == 1  # unused, clean


def test_client_close_after_a_response_leaves_the_origin_pooled(pb: Playbook) -> None:
    in_flight(pb).sends(OK)
    pb.client_eof()
    assert pb.client.closed
    assert pb.idle_origins() == 1


# -- counters: every request ends exactly once, with an outcome --------------------------------------------


def assert_one_request_ended(pb: Playbook) -> None:
    counts = pb.counts()
    assert counts.get("requests") == 1
    by_status = counts.get("by_status")
    assert isinstance(by_status, dict) and sum(by_status.values()) == 1


def test_client_gone_while_waiting_is_counted(pb: Playbook) -> None:
    in_flight(pb)
    pb.client_lost()
    assert_one_request_ended(pb)
    assert pb.outcomes() == [("client_gone", 0)]


def test_client_gone_during_the_response_is_counted(pb: Playbook) -> None:
    responding(pb)
    pb.client_lost()
    assert_one_request_ended(pb)
    assert pb.outcomes() == [("client_gone", 200)]


def test_client_gone_while_connecting_is_counted(pb: Playbook) -> None:
    pb.client_sends(GET)
    pb.client_lost()
    pb.connects[0].succeed()
    assert_one_request_ended(pb)
    assert pb.outcomes() == [("client_gone", 0)]


def test_completed_exchange_is_counted_once(pb: Playbook) -> None:
    in_flight(pb).sends(OK)
    pb.client_lost()
    assert pb.counts() == {"requests": 1, "by_status": {200: 1}}


def test_origin_close_mid_body_is_counted_once(pb: Playbook) -> None:
    responding(pb).lost()
    pb.client_lost()
    assert pb.counts() == {"requests": 1, "by_status": {200: 1}}


def test_tunnel_is_counted_as_a_tunnel_not_a_request(pb: Playbook) -> None:
    pb.client_sends(CONNECT)
    target = pb.connects[0].succeed()
    target.lost()
    assert pb.counts() == {"tunnels": 1}


def test_accepted_upgrade_is_a_request_with_status_101(pb: Playbook) -> None:
    pb.client_sends(
        b"GET http://origin.test/ws HTTP/1.1\r\nHost: origin.test\r\nConnection: Upgrade\r\nUpgrade: ws\r\n\r\n"
    )
    origin = pb.connects[0].succeed()
    origin.sends(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ws\r\n\r\n")
    origin.lost()
    assert pb.counts() == {"requests": 1, "by_status": {101: 1}}


def test_buffer_filled_by_the_last_write_of_a_response_and_drained_later(pb: Playbook) -> None:
    origin = in_flight(pb)
    pb.client.buffer_fills_at(len(OK))
    origin.sends(OK)  # the whole response in one read, and the write fills the client's buffer
    assert pb.client.written == OK
    assert pb.idle_origins() == 1
    pb.client_drained()
    pb.client_sends(GET)
    assert origin.written == GET_UP + GET_UP  # the pooled connection, reused
    origin.sends(OK)
    assert pb.client.written == OK + OK


def test_buffer_filled_by_a_response_write_pauses_the_origin(pb: Playbook) -> None:
    origin = in_flight(pb)
    pb.client.buffer_fills_at(len(HEAD_10) + 3)
    origin.sends(HEAD_10 + b"abc")
    assert not origin.reading
    pb.client_drained()
    assert origin.reading
