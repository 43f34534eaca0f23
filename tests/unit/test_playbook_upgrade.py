"""Playbook tests of Upgrade requests: accepted (101, then a byte relay), refused (an ordinary response, and the
connection stays HTTP), with a body (see tests/helpers/playbook.py)."""

from __future__ import annotations

from tests.helpers.playbook import Origin, Playbook, error_response

UPGRADE = (
    b"GET http://origin.test/ws HTTP/1.1\r\nHost: origin.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
)
UPGRADE_UP = b"GET /ws HTTP/1.1\r\nHost: origin.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
GET_B = b"GET http://origin.test/b HTTP/1.1\r\nHost: origin.test\r\n\r\n"
GET_B_UP = b"GET /b HTTP/1.1\r\nHost: origin.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno"


def upgraded(pb: Playbook) -> Origin:
    pb.client_sends(UPGRADE)
    origin = pb.connects[0].succeed()
    assert origin.take() == UPGRADE_UP
    origin.sends(SWITCHING)
    assert pb.client.take() == SWITCHING
    return origin


def test_accepted_upgrade_relays_both_ways(pb: Playbook) -> None:
    origin = upgraded(pb)
    pb.client_sends(b"ping")
    assert origin.take() == b"ping"
    origin.sends(b"pong")
    assert pb.client.take() == b"pong"
    assert pb.counts() == {"requests": 1, "by_status": {101: 1}}


def test_bytes_with_the_101_and_after_the_request_are_relayed(pb: Playbook) -> None:
    pb.client_sends(UPGRADE + b"early")
    origin = pb.connects[0].succeed()
    assert origin.take() == UPGRADE_UP  # held until the origin agrees
    origin.sends(SWITCHING + b"hello")
    assert pb.client.written == SWITCHING + b"hello"
    assert origin.take() == b"early"


def test_upgraded_half_closes_from_the_client_then_the_origin(pb: Playbook) -> None:
    origin = upgraded(pb)
    pb.client_eof()
    assert origin.eof_written and not origin.ended and not pb.client.ended
    origin.sends(b"last words")
    assert pb.client.take() == b"last words"
    origin.eof()
    assert pb.client.eof_written
    assert pb.client.closed


def test_upgraded_half_closes_from_the_origin_then_the_client(pb: Playbook) -> None:
    origin = upgraded(pb)
    origin.eof()
    assert pb.client.eof_written and not pb.client.ended
    pb.client_sends(b"still")
    assert origin.take() == b"still"
    pb.client_eof()
    assert origin.eof_written
    assert pb.client.closed


def test_upgraded_origin_close_closes_the_client(pb: Playbook) -> None:
    origin = upgraded(pb)
    origin.lost()
    assert pb.client.closed


def test_upgraded_client_close_closes_the_origin(pb: Playbook) -> None:
    origin = upgraded(pb)
    pb.client_lost()
    assert origin.closed
    assert pb.idle_origins() == 0


def test_refused_upgrade_then_held_bytes_are_the_next_request(pb: Playbook) -> None:
    pb.client_sends(UPGRADE + GET_B)
    origin = pb.connects[0].succeed()
    assert origin.take() == UPGRADE_UP
    origin.sends(OK)
    assert pb.client.take() == OK
    assert origin.take() == GET_B_UP
    origin.sends(OK)
    assert pb.client.take() == OK
    assert pb.counts() == {"requests": 2, "by_status": {200: 2}}


def test_refused_upgrade_then_a_held_request_and_eof(pb: Playbook) -> None:
    """The held bytes start a request and the client had half-closed: that request is served, then the connection
    closes (the compiled build raised TypeError here: mypy had `current` narrowed to None across the parse)."""
    pb.client_sends(UPGRADE + GET_B)
    pb.client_eof()
    origin = pb.connects[0].succeed()
    origin.sends(OK)
    assert origin.take() == UPGRADE_UP + GET_B_UP
    assert pb.state == "ACTIVE"
    origin.sends(OK)
    assert pb.client.written == OK + OK
    assert pb.client.closed
    assert pb.outcomes() == [("complete", 200), ("complete", 200)]


def test_refused_upgrade_then_eof_closes_after_the_response(pb: Playbook) -> None:
    pb.client_sends(UPGRADE)
    pb.client_eof()
    origin = pb.connects[0].succeed()
    origin.sends(OK)
    assert pb.client.written == OK
    assert pb.client.closed


def test_upgrade_with_a_content_length_body(pb: Playbook) -> None:
    head = UPGRADE[:-2] + b"Content-Length: 4\r\n\r\n"
    pb.client_sends(head + b"bo")
    origin = pb.connects[0].succeed()
    assert origin.take() == (
        b"GET /ws HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 4\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"\r\nbo"
    )
    pb.client_sends(b"dyAFTER")
    assert origin.take() == b"dy"  # the body exactly; what follows waits for the answer
    origin.sends(SWITCHING)
    assert origin.take() == b"AFTER"
    assert pb.client.written == SWITCHING


def test_upgrade_with_a_chunked_body_is_refused(pb: Playbook) -> None:
    pb.client_sends(UPGRADE[:-2] + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert pb.connects == []
    assert pb.client.written == error_response(
        400,
        "an Upgrade request with a chunked body is not forwarded (send a Content-Length)",
        "http_request_error",
    )
    assert pb.counts() == {"rejected": {400: 1}}


def test_101_without_a_requested_upgrade_is_a_protocol_error(pb: Playbook) -> None:
    pb.client_sends(GET_B)
    origin = pb.connects[0].succeed()
    origin.sends(SWITCHING)
    assert pb.client.written == error_response(
        502,
        "origin.test:80 sent a malformed response: 101 Switching Protocols without a requested Upgrade",
        "http_protocol_error",
    )
    assert origin.aborted


def test_upgraded_connection_is_not_timed_out(pb: Playbook) -> None:
    origin = upgraded(pb)
    pb.tick(120)
    assert not pb.client.ended and not origin.ended


def test_refused_upgrade_with_a_body_then_the_next_request(pb: Playbook) -> None:
    pb.client_sends(UPGRADE[:-2] + b"Content-Length: 3\r\n\r\nabc" + GET_B)
    origin = pb.connects[0].succeed()
    assert origin.take().endswith(b"\r\n\r\nabc")
    origin.sends(OK)
    assert origin.take() == GET_B_UP
    origin.sends(OK)
    assert pb.client.written == OK + OK
