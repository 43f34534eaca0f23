"""Playbook tests of CONNECT tunnels: established and relayed, half-closed from either side, failures to connect,
refused targets and loops back into the proxy (see tests/helpers/playbook.py)."""

from __future__ import annotations

from collections.abc import Callable

from tests.helpers.playbook import Origin, Playbook, error_response

CONNECT = b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n"
ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def tunnel(pb: Playbook) -> Origin:
    pb.client_sends(CONNECT)
    assert [(c.host, c.port, c.tunnel) for c in pb.connects] == [("origin.test", 443, True)]
    target = pb.connects[0].succeed()
    assert pb.client.take() == ESTABLISHED
    return target


def test_connect_relays_both_ways(pb: Playbook) -> None:
    target = tunnel(pb)
    pb.client_sends(b"\x16\x03\x01hello")
    assert target.take() == b"\x16\x03\x01hello"
    target.sends(b"\x16\x03\x03server")
    assert pb.client.take() == b"\x16\x03\x03server"
    assert pb.counts() == {"tunnels": 1}


def test_bytes_after_the_connect_head_go_to_the_target_once_connected(pb: Playbook) -> None:
    pb.client_sends(CONNECT + b"client hello")
    pb.client_sends(b" and more")
    target = pb.connects[0].succeed()
    assert target.written == b"client hello and more"
    assert pb.client.written == ESTABLISHED


def test_target_speaking_first_comes_after_the_200(pb: Playbook) -> None:
    pb.client_sends(CONNECT)
    target = pb.connects[0].succeed(first=b"SSH-2.0-banner\r\n")
    assert pb.client.written == ESTABLISHED + b"SSH-2.0-banner\r\n"
    assert target.written == b""


def test_target_that_speaks_and_half_closes_before_the_tunnel_is_up(pb: Playbook) -> None:
    pb.client_sends(CONNECT)
    target = pb.connects[0].succeed(first=b"bye", then_eof=True)
    assert pb.client.written == ESTABLISHED + b"bye"
    assert pb.client.eof_written and not pb.client.ended
    pb.client_eof()
    assert target.eof_written
    assert pb.client.closed


def test_client_half_close_then_target_half_close(pb: Playbook) -> None:
    target = tunnel(pb)
    pb.client_eof()
    assert target.eof_written and not pb.client.ended and not target.ended
    target.sends(b"response")
    assert pb.client.take() == b"response"
    target.eof()
    assert pb.client.eof_written
    assert pb.client.closed


def test_target_half_close_then_client_half_close(pb: Playbook) -> None:
    target = tunnel(pb)
    target.eof()
    assert pb.client.eof_written and not pb.client.ended
    pb.client_sends(b"more")
    assert target.take() == b"more"
    pb.client_eof()
    assert target.eof_written
    assert pb.client.closed


def test_client_half_close_before_the_tunnel_is_up_is_passed_on(pb: Playbook) -> None:
    pb.client_sends(CONNECT + b"req")
    pb.client_eof()
    target = pb.connects[0].succeed()
    assert target.written == b"req"
    assert target.eof_written
    target.sends(b"resp")
    target.eof()
    assert pb.client.written == ESTABLISHED + b"resp"
    assert pb.client.closed


def test_target_close_closes_the_client(pb: Playbook) -> None:
    target = tunnel(pb)
    target.lost()
    assert pb.client.closed


def test_client_close_closes_the_target(pb: Playbook) -> None:
    target = tunnel(pb)
    pb.client_lost()
    assert target.closed


def test_client_gone_before_the_connect_completes(pb: Playbook) -> None:
    pb.client_sends(CONNECT)
    pb.client_lost()
    target = pb.connects[0].succeed()
    assert target.closed
    assert target.written == b""


def test_tunnel_is_not_timed_out(pb: Playbook) -> None:
    target = tunnel(pb)
    pb.tick(300)
    assert not pb.client.ended and not target.ended


def test_connect_refused_is_502(pb: Playbook) -> None:
    pb.client_sends(CONNECT)
    pb.connects[0].refuse()
    assert pb.client.written == error_response(502, "connection to origin.test:443 refused", "connection_refused")
    assert pb.client.eof_written
    # A CONNECT is an exchange of its own kind, that ends when the tunnel opens or cannot.
    assert pb.counts() == {"tunnels": 1}
    assert pb.by_kind() == {"connect origin_failed": 1}
    assert pb.outcomes() == [("origin_failed", 502)]
    pb.fire_timers()
    assert pb.client.closed


def test_connect_timed_out_in_the_kernel_is_504(pb: Playbook) -> None:
    pb.client_sends(CONNECT)
    pb.connects[0].time_out()
    # (OSError(ETIMEDOUT) is a TimeoutError: the message is the connect timeout's, whichever timer ran out.)
    assert pb.client.written.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert b"Proxy-Status: trace-proxy; error=connection_timeout; " in pb.client.written
    assert pb.counts() == {"tunnels": 1}
    assert pb.outcomes() == [("origin_failed", 504)]


def test_connect_timeout_is_504(pb: Playbook) -> None:
    pb.client_sends(CONNECT)
    pb.tick(4)
    assert pb.client.written == b""
    pb.tick(2)
    assert pb.client.written == error_response(
        504, "connecting to origin.test:443 timed out after 5s", "connection_timeout"
    )


def test_dns_failure_is_502(pb: Playbook) -> None:
    pb.client_sends(CONNECT)
    pb.connects[0].fail_dns()
    assert pb.client.written == error_response(
        502, "DNS lookup of origin.test failed: Name or service not known", "dns_error"
    )


def test_port_not_allowed_is_403(pb: Playbook) -> None:
    pb.client_sends(b"CONNECT origin.test:22 HTTP/1.1\r\nHost: origin.test:22\r\n\r\n")
    assert pb.connects == []
    assert pb.client.written == error_response(
        403, "CONNECT to port 22 is not allowed (forward.connect_ports: 443)", "destination_ip_prohibited"
    )
    assert pb.counts() == {"rejected": {403: 1}}


def test_connect_pipelined_behind_a_request_is_400_after_its_answer(pb: Playbook) -> None:
    pb.client_sends(b"GET http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\n\r\n" + CONNECT)
    assert [c.tunnel for c in pb.connects] == [False]
    pb.connects[0].succeed().sends(OK)
    assert pb.client.written == OK + error_response(
        400, "CONNECT must not be pipelined behind another request", "http_request_error"
    )
    assert pb.counts() == {"requests": 1, "by_status": {200: 1}, "rejected": {400: 1}}


def test_connect_back_into_the_proxy_is_508(make_pb: Callable[..., Playbook]) -> None:
    pb = make_pb(connect_ports=())
    pb.client_sends(b"CONNECT localhost:3128 HTTP/1.1\r\nHost: localhost:3128\r\n\r\n")
    assert pb.connects == []
    assert pb.client.written == error_response(
        508, "CONNECT to localhost:3128 would loop back into trace-proxy", "proxy_loop_detected"
    )
    assert pb.counts() == {"rejected": {508: 1}}


def test_request_back_into_the_proxy_is_508(pb: Playbook) -> None:
    pb.client_sends(b"GET http://127.0.0.1:3128/stats HTTP/1.1\r\nHost: 127.0.0.1:3128\r\n\r\n")
    assert pb.connects == []
    assert pb.client.written == error_response(
        508, "request to 127.0.0.1:3128 would loop back into trace-proxy", "proxy_loop_detected"
    )
    assert pb.counts() == {"rejected": {508: 1}}  # answered by the proxy, never forwarded
    assert pb.outcomes() == [("refused", 508)]
    assert pb.state == "LINGERING"


def test_request_to_the_proxy_port_on_another_host_is_forwarded(pb: Playbook) -> None:
    pb.client_sends(b"GET http://origin.test:3128/ HTTP/1.1\r\nHost: origin.test:3128\r\n\r\n")
    assert [(c.host, c.port) for c in pb.connects] == [("origin.test", 3128)]
