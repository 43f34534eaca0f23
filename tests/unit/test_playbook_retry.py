"""Playbook tests of the retry rule: a request on a reused pooled connection that the origin closed before sending
anything is sent again, once, on a new connection, if it is idempotent and has no body (see
tests/helpers/playbook.py)."""

from __future__ import annotations

import pytest

from tests.helpers.playbook import Playbook, error_response

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
TERMINATED = error_response(
    502, "origin.test:80 closed the connection before sending a response", "connection_terminated"
)


def request(method: bytes, body: bytes = b"") -> bytes:
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    return b"%b http://origin.test/r HTTP/1.1\r\nHost: origin.test\r\n%b\r\n%b" % (method, length, body)


def upstream(method: bytes) -> bytes:
    return b"%b /r HTTP/1.1\r\nHost: origin.test\r\n\r\n" % method


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"])
def test_idempotent_request_on_a_closed_pooled_connection_is_sent_again(pb: Playbook, method: bytes) -> None:
    pooled = pb.pooled_origin("origin.test")
    pb.client_sends(request(method))
    assert pooled.written == upstream(method)
    pooled.eof()  # the origin had closed it: nothing came back
    assert [(c.host, c.port, c.tunnel) for c in pb.connects] == [("origin.test", 80, False)]
    assert pb.client.written == b""
    fresh = pb.connects[0].succeed()
    assert fresh.written == upstream(method)
    fresh.sends(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert pb.client.written == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert pb.origins == [pooled, fresh]
    assert pb.counts() == {"requests": 1, "by_status": {200: 1}}


def test_reset_counts_as_closed(pb: Playbook) -> None:
    pooled = pb.pooled_origin("origin.test")
    pb.client_sends(request(b"GET"))
    pooled.lost()
    assert len(pb.connects) == 1


def test_post_is_not_sent_again(pb: Playbook) -> None:
    pooled = pb.pooled_origin("origin.test")
    pb.client_sends(request(b"POST"))
    pooled.eof()
    assert pb.connects == []
    assert pb.client.written == TERMINATED
    assert pb.client.eof_written
    assert pb.counts() == {"requests": 1, "by_status": {502: 1}}


def test_get_with_a_body_is_not_sent_again(pb: Playbook) -> None:
    pooled = pb.pooled_origin("origin.test")
    pb.client_sends(request(b"GET", b"abc"))
    pooled.eof()
    assert pb.connects == []
    assert pb.client.written == TERMINATED


def test_fresh_connection_is_not_retried(pb: Playbook) -> None:
    pb.client_sends(request(b"GET"))
    origin = pb.connects[0].succeed()
    origin.eof()
    assert len(pb.connects) == 1
    assert pb.client.written == TERMINATED
    assert pb.counts() == {"requests": 1, "by_status": {502: 1}}


def test_second_failure_is_not_retried(pb: Playbook) -> None:
    pooled = pb.pooled_origin("origin.test")
    pb.client_sends(request(b"GET"))
    pooled.eof()
    pb.connects[0].succeed().eof()
    assert len(pb.connects) == 1
    assert pb.client.written == TERMINATED
    assert pb.counts() == {"requests": 1, "by_status": {502: 1}}


def test_retry_that_cannot_connect_answers_502(pb: Playbook) -> None:
    pooled = pb.pooled_origin("origin.test")
    pb.client_sends(request(b"GET"))
    pooled.eof()
    pb.connects[0].refuse()
    assert pb.client.written == error_response(502, "connection to origin.test:80 refused", "connection_refused")


def test_pooled_connection_that_answered_part_is_not_retried(pb: Playbook) -> None:
    pooled = pb.pooled_origin("origin.test")
    pb.client_sends(request(b"GET"))
    pooled.sends(b"HTTP/1.1 200 OK\r\n")  # a head begun, not complete
    pooled.eof()
    assert pb.connects == []
    assert pb.client.written == TERMINATED


def test_second_pooled_connection_is_taken_before_connecting(pb: Playbook) -> None:
    older = pb.pooled_origin("origin.test")
    newer = pb.pooled_origin("origin.test")
    pb.client_sends(request(b"GET"))
    assert pb.origins == [newer]  # most recently used first
    newer.eof()
    # The retry connects anew rather than trusting another pooled connection of the same age.
    assert len(pb.connects) == 1
    assert older.written == b""
    pb.connects[0].succeed().sends(OK)
    assert pb.client.written == OK
