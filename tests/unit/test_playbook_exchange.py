"""Playbook tests of what an exchange records for the metrics and access logs: its kind, when its response head
went to the client (`responded`, on the fake clock), and the bytes written each way; and the bytes tunnels relay
(see tests/helpers/playbook.py)."""

from __future__ import annotations

import pytest

from proxy.server.exchange import CONNECT, HTTP, UPGRADE, Exchange
from tests.helpers.playbook import Playbook, error_response

GET = b"GET http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def only_exchange(pb: Playbook) -> Exchange:
    [exchange] = pb.ended
    return exchange


def test_get_records_its_times_and_bytes(pb: Playbook) -> None:
    pb.client_sends(GET)
    pb.tick(0.25)  # the origin takes a quarter of a second to accept
    origin = pb.connects[0].succeed()
    pb.tick(0.5)  # and half a second more to answer
    origin.sends(OK)
    exchange = only_exchange(pb)
    assert exchange.kind == HTTP
    assert exchange.responded - exchange.started == pytest.approx(0.75)
    assert exchange.ended == exchange.responded
    assert exchange.bytes_to_origin == len(origin.written)
    assert exchange.bytes_to_client == len(pb.client.written) == len(OK)
    assert pb.server.stats.duration_counts[-1] == 0 and sum(pb.server.stats.duration_counts) == 1
    assert pb.server.stats.upstream_connect.counts[-1] == 0 and sum(pb.server.stats.upstream_connect.counts) == 1


def test_responded_is_when_the_head_went_out_not_the_end(pb: Playbook) -> None:
    pb.client_sends(GET)
    origin = pb.connects[0].succeed()
    pb.tick(0.1)
    origin.sends(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
    pb.tick(2.0)
    origin.sends(b"56789")
    exchange = only_exchange(pb)
    assert exchange.responded - exchange.started == pytest.approx(0.1)
    assert exchange.ended - exchange.started == pytest.approx(2.1)
    assert exchange.bytes_to_client == len(pb.client.written)


def test_request_body_bytes_count_as_re_framed(pb: Playbook) -> None:
    pb.client_sends(
        b"POST http://origin.test/u HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    )
    origin = pb.connects[0].succeed()  # the head and the body so far, held until connected
    pb.client_sends(b"2\r\nde\r\n0\r\n\r\n")  # then written straight to the origin
    origin.sends(OK)
    exchange = only_exchange(pb)
    assert exchange.bytes_to_origin == len(origin.written)
    assert origin.written.endswith(b"0\r\n\r\n")


def test_an_error_the_proxy_answers_is_counted_and_timed(pb: Playbook) -> None:
    pb.client_sends(GET)
    pb.tick(0.5)
    pb.connects[0].refuse()
    exchange = only_exchange(pb)
    assert pb.client.written == error_response(502, "connection to origin.test:80 refused", "connection_refused")
    assert exchange.bytes_to_client == len(pb.client.written)
    assert exchange.bytes_to_origin == 0
    assert exchange.responded == exchange.ended
    assert exchange.responded - exchange.started == pytest.approx(0.5)


def test_a_refusal_before_planning_counts_its_answer(pb: Playbook) -> None:
    pb.client_sends(b"GET /origin-form HTTP/1.1\r\nHost: origin.test\r\n\r\n")
    exchange = only_exchange(pb)
    assert exchange.status == 400
    assert exchange.bytes_to_client == len(pb.client.written) > 0


def test_connect_is_an_exchange_and_its_tunnel_bytes_are_counted(pb: Playbook) -> None:
    pb.client_sends(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\nearly")
    pb.tick(0.2)
    target = pb.connects[0].succeed()
    exchange = only_exchange(pb)
    assert (exchange.kind, exchange.status, str(exchange.outcome)) == (CONNECT, 200, "complete")
    assert exchange.plan.origin == ("origin.test", 443)
    assert exchange.bytes_to_client == len(pb.client.written)
    assert exchange.responded - exchange.started == pytest.approx(0.2)
    pb.client_sends(b"hello")
    target.sends(b"server says hi")
    assert target.written == b"earlyhello"
    assert pb.server.stats.tunnel_bytes == [len(b"earlyhello"), len(b"server says hi")]
    assert pb.by_kind() == {"connect complete": 1}


def test_connect_refused_by_policy_counts_as_a_connect(pb: Playbook) -> None:
    pb.client_sends(b"CONNECT origin.test:22 HTTP/1.1\r\nHost: origin.test:22\r\n\r\n")
    assert pb.by_kind() == {"connect refused": 1}


def test_upgrade_is_its_own_kind_and_counts_the_101(pb: Playbook) -> None:
    switching = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    pb.client_sends(
        b"GET http://origin.test/ws HTTP/1.1\r\nHost: origin.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    origin = pb.connects[0].succeed()
    origin.sends(switching + b"first")
    exchange = only_exchange(pb)
    assert (exchange.kind, exchange.status) == (UPGRADE, 101)
    assert exchange.bytes_to_client == len(switching + b"first")
    origin.sends(b"then")
    pb.client_sends(b"up")
    assert pb.server.stats.tunnel_bytes == [2, 4]
    assert pb.by_kind() == {"upgrade upgraded": 1}


def test_connect_that_fails_inside_the_proxy_ends_as_an_internal_error(pb: Playbook) -> None:
    pb.expect_errors = True
    pb.client_sends(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
    pb.connects[0].fail(RuntimeError("a bug while connecting"))
    assert pb.client.written.startswith(b"HTTP/1.1 500 ")
    assert pb.outcomes() == [("internal_error", 500)]
    assert pb.by_kind() == {"connect internal_error": 1}
    assert only_exchange(pb).bytes_to_client == len(pb.client.written)
