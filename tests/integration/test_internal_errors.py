"""No silent failure: an unexpected exception anywhere on a connection's path becomes an answer (500 with a
`Proxy-Status` naming an internal error, when no response has begun; a cut connection when one has) and one log
line with its traceback, and every other connection carries on.

These tests inject the exception, so they run the proxy in this process, on uvloop and real sockets, with one
function of the stage under test replaced. Replacing a function only works on the interpreted modules: in the run
against the compiled hot path (CI's second pytest run) they are skipped; the code they test is the same source.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvloop

import proxy.server.forward
from proxy.app import _forward_server
from proxy.config import Settings
from proxy.server.listener import ForwardServer
from tests.helpers import http
from tests.helpers.origin import RawConn, RawOrigin, serve_ok

COMPILED = proxy.server.forward.__file__.endswith(".so")


class Injected(RuntimeError):
    """The fault a test injects; anything else in the log is a real failure."""


def start_settings(**forward: Any) -> Settings:
    return Settings.model_validate(
        {
            "forward": {"listen": "127.0.0.1:1", "idle_timeout": 5.0, "connect_ports": [], **forward},
            "sentry": {"traces_sample_rate": 1.0},
        }
    )


Scenario = Callable[[ForwardServer, RawOrigin], Awaitable[None]]


def run(scenario: Scenario, origin_handler: Callable[[RawConn], Awaitable[None]] = serve_ok, **forward: Any) -> None:
    """Run `scenario` on uvloop against an in-process proxy (port chosen by the OS) and a raw origin."""

    async def main() -> None:
        server = _forward_server(start_settings(**forward), asyncio.get_running_loop(), reuse_port=False)
        server._port = 0  # the OS picks it
        await server.start()
        origin = RawOrigin(origin_handler)
        await origin.start()
        try:
            await asyncio.wait_for(scenario(server, origin), 30)
        finally:
            await server.drain(0)
            await origin.close()

    uvloop.run(main())


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[logging.LogRecord]]]:
    """The ERROR records logged so far (each must carry its traceback)."""
    caplog.set_level(logging.ERROR)

    def records() -> list[logging.LogRecord]:
        found = [r for r in caplog.records if r.levelno >= logging.ERROR]
        for record in found:
            assert record.exc_info is not None, record.getMessage()
        return found

    yield records


async def assert_still_serving(server: ForwardServer, origin: RawOrigin) -> None:
    response = await http.exchange(server.port, http.get(origin.url("/after")))
    assert (response.status, response.body) == (200, b"ok /after")


class FaultyConnection:
    """Stands in the connection set for a connection whose idle handling raises, every time."""

    def __init__(self) -> None:
        self.last_active = 0.0
        self.tunnel_peer = None
        self.current = None
        self.calls = 0
        self.transport = self

    def close_if_idle(self) -> None:
        self.calls += 1
        raise Injected("idle handling failed")

    def abort(self) -> None:
        pass


def test_sweeper_survives_a_failing_connection(errors: Callable[[], list[logging.LogRecord]]) -> None:
    """A connection whose idle timeout raises is logged and dropped; the sweeper goes on, tick after tick, and still
    closes the other idle connections (it stopped for good at the first exception)."""

    async def scenario(server: ForwardServer, origin: RawOrigin) -> None:
        faulty = FaultyConnection()
        server.connections.add(faulty)  # type: ignore[arg-type]
        reader, writer = await http.open_raw(server.port)
        try:
            await http.expect_eof(reader, timeout=5)  # closed by the idle timeout of 0.4 s
        finally:
            await http.close_writer(writer)
        assert faulty.calls >= 1
        server.connections.discard(faulty)  # type: ignore[arg-type]

    run(scenario, idle_timeout=0.4)
    assert errors() and all("idle timeout" in r.getMessage() for r in errors())
