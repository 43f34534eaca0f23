"""Playbook tests of the client connection's states (connection_state.py) after each event, and of the one end of
every exchange: each request the proxy read ends exactly once, with its outcome, whatever way it ends."""

from __future__ import annotations

from proxy.server.connection_state import NAMES, TRANSITIONS, InvalidTransition, check_transition
from tests.helpers.playbook import Playbook, error_response

GET = b"GET http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\n\r\n"
GET_B = b"GET http://origin.test/b HTTP/1.1\r\nHost: origin.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
UPGRADE = (
    b"GET http://origin.test/ws HTTP/1.1\r\nHost: origin.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
)
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
CONNECT = b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n"


def test_a_request_takes_the_connection_from_idle_to_active_and_back(pb: Playbook) -> None:
    assert pb.state == "IDLE"
    pb.client_sends(GET)
    assert pb.state == "ACTIVE"
    origin = pb.connects[0].succeed()
    assert pb.state == "ACTIVE"
    origin.sends(OK)
    assert pb.state == "IDLE"
    assert pb.outcomes() == [("complete", 200)]


def test_pipelined_requests_keep_it_active_until_the_last_answer(pb: Playbook) -> None:
    pb.client_sends(GET + GET_B)
    origin = pb.connects[0].succeed()
    origin.sends(OK)
    assert pb.state == "ACTIVE"
    origin.sends(OK)
    assert pb.state == "IDLE"
    assert pb.outcomes() == [("complete", 200), ("complete", 200)]


def test_an_upgrade_holds_then_tunnels(pb: Playbook) -> None:
    pb.client_sends(UPGRADE + b"early")
    assert pb.state == "UPGRADING"
    origin = pb.connects[0].succeed()
    origin.sends(SWITCHING)
    assert pb.state == "TUNNEL"
    assert pb.outcomes() == [("upgraded", 101)]


def test_a_refused_upgrade_goes_back_to_http(pb: Playbook) -> None:
    pb.client_sends(UPGRADE)
    origin = pb.connects[0].succeed()
    origin.sends(OK)
    assert pb.state == "IDLE"
    pb.client_sends(GET_B)
    assert pb.state == "ACTIVE"


def test_connect_is_connecting_then_a_tunnel(pb: Playbook) -> None:
    pb.client_sends(CONNECT)
    assert pb.state == "CONNECTING"
    pb.connects[0].succeed()
    assert pb.state == "TUNNEL"
    assert pb.counts() == {"tunnels": 1}


def test_a_failed_connect_lingers_then_closes(pb: Playbook) -> None:
    pb.client_sends(CONNECT)
    pb.connects[0].refuse()
    assert pb.state == "LINGERING"
    assert pb.outcomes() == [("origin_failed", 502)]
    pb.fire_timers()
    assert pb.state == "CLOSED"


def test_a_malformed_request_lingers(pb: Playbook) -> None:
    pb.client_sends(b"GET http://origin.test/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert pb.state == "LINGERING"
    assert pb.outcomes() == [("refused", 400)]


def test_client_gone_with_requests_queued_ends_each_once(pb: Playbook) -> None:
    pb.client_sends(GET + GET_B + GET)
    pb.connects[0].succeed()
    pb.client_lost()
    assert pb.state == "CLOSED"
    assert pb.outcomes() == [("client_gone", 0), ("client_gone", 0), ("client_gone", 0)]


def test_requests_behind_a_failed_one_are_dropped(pb: Playbook) -> None:
    pb.client_sends(GET + GET_B)
    pb.connects[0].refuse()
    assert pb.client.written == error_response(502, "connection to origin.test:80 refused", "connection_refused")
    assert pb.outcomes() == [("origin_failed", 502), ("dropped", 0)]


def test_the_drain_ends_what_is_in_flight(pb: Playbook) -> None:
    pb.client_sends(GET)
    pb.connects[0].succeed()
    pb.client.protocol.drained()
    assert pb.client.aborted
    assert pb.outcomes() == [("drained", 0)]


def test_an_exchange_carries_its_times(pb: Playbook) -> None:
    pb.client_sends(GET)
    origin = pb.connects[0].succeed()
    pb.now += 0.25
    origin.sends(OK)
    (exchange,) = pb.ended
    assert exchange.ended - exchange.started == 0.25
    assert exchange.ended_wall - exchange.started_wall == 0.25
    assert exchange.started_wall == exchange.started + 1_700_000_000.0  # the wall clock the harness gave


def test_the_transition_table_closes_from_everywhere_and_leaves_closed_nowhere() -> None:
    assert all("CLOSED" in targets for targets in TRANSITIONS.values())
    assert TRANSITIONS["CLOSED"] == frozenset({"CLOSED"})
    assert TRANSITIONS["TUNNEL"] == frozenset({"CLOSED"})
    for old, name in enumerate(NAMES):
        for new, target in enumerate(NAMES):
            if target in TRANSITIONS[name]:
                check_transition(old, new)
            else:
                try:
                    check_transition(old, new)
                except InvalidTransition as exc:
                    assert f"from {name} to {target}" in str(exc)
                else:
                    raise AssertionError(f"{name} -> {target} was allowed")
