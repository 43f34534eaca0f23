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

import proxy.server.downstream
import proxy.server.routing
from proxy.app import _forward_server
from proxy.config import Settings
from proxy.server.listener import Listener
from tests.helpers import http
from tests.helpers.origin import RawConn, RawOrigin, serve_ok

COMPILED = proxy.server.downstream.__file__.endswith(".so")


class Injected(RuntimeError):
    """The fault a test injects; anything else in the log is a real failure."""


def start_settings(**forward: Any) -> Settings:
    return Settings.model_validate(
        {
            "forward": {"listen": "127.0.0.1:1", "idle_timeout": 5.0, "connect_ports": [], **forward},
            "sentry": {"traces_sample_rate": 1.0},
        }
    )


Scenario = Callable[[Listener, RawOrigin], Awaitable[None]]


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
            server.services.close()
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


async def assert_still_serving(server: Listener, origin: RawOrigin) -> None:
    response = await http.exchange(server.port, http.get(origin.url("/after")))
    assert (response.status, response.body) == (200, b"ok /after")


class FaultyConnection:
    """Stands in the connection set for a connection whose idle handling raises, every time."""

    def __init__(self) -> None:
        self.last_active = 0.0
        self.head_since = 0.0
        self.current = None
        self.calls = 0
        self.transport = self

    def in_tunnel(self) -> bool:
        return False

    def close_if_idle(self) -> None:
        self.calls += 1
        raise Injected("idle handling failed")

    def abort(self) -> None:
        pass


def test_sweeper_survives_a_failing_connection(errors: Callable[[], list[logging.LogRecord]]) -> None:
    """A connection whose idle timeout raises is logged and dropped; the sweeper goes on, tick after tick, and still
    closes the other idle connections (it stopped for good at the first exception)."""

    async def scenario(server: Listener, origin: RawOrigin) -> None:
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


skip_compiled = pytest.mark.skipif(COMPILED, reason="functions of compiled modules cannot be replaced")


def injected_once(errors: Callable[[], list[logging.LogRecord]]) -> None:
    """Exactly one log line, with the injected exception's traceback."""
    found = errors()
    assert len(found) == 1, [r.getMessage() for r in found]
    assert found[0].exc_info is not None and isinstance(found[0].exc_info[1], Injected)


def assert_internal_error(response: http.RawResponse, stage: str) -> None:
    assert response.status == 500, response
    assert (response.header(b"proxy-status") or b"").startswith(b"trace-proxy; error=proxy_internal_error")
    assert stage.encode() in response.body


def answered_500(path: str, stage: str) -> Scenario:
    """A GET of `path` is answered with the internal error of `stage`; the next request is served as usual."""

    async def scenario(server: Listener, origin: RawOrigin) -> None:
        response = await http.exchange(server.port, http.get(origin.url(path)))
        assert_internal_error(response, stage)
        await assert_still_serving(server, origin)

    return scenario


@skip_compiled
def test_planning(monkeypatch: pytest.MonkeyPatch, errors: Callable[[], list[logging.LogRecord]]) -> None:
    real = proxy.server.routing.plan_request

    def plan_request(method: bytes, target: bytes, *args: Any) -> Any:
        if b"/fault" in target:
            raise Injected("planning failed")
        return real(method, target, *args)

    monkeypatch.setattr(proxy.server.routing, "plan_request", plan_request)

    run(answered_500("/fault", "handling the request"))
    injected_once(errors)


@skip_compiled
def test_connecting(monkeypatch: pytest.MonkeyPatch, errors: Callable[[], list[logging.LogRecord]]) -> None:
    from proxy.server.upstream import UpstreamPool

    real = UpstreamPool.connect
    calls = 0

    async def connect(self: UpstreamPool, host: str, port: int, **options: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Injected("connect failed")
        return await real(self, host, port, **options)

    monkeypatch.setattr(UpstreamPool, "connect", connect)

    run(answered_500("/first", "connecting to the origin"))
    injected_once(errors)


@skip_compiled
def test_relaying_a_request_body(
    monkeypatch: pytest.MonkeyPatch, errors: Callable[[], list[logging.LogRecord]]
) -> None:
    from proxy.server.downstream import DownstreamConnection

    real = DownstreamConnection._send_body

    def send_body(self: DownstreamConnection, exchange: Any, data: bytes) -> None:
        if b"FAULT" in data:
            raise Injected("request body relay failed")
        real(self, exchange, data)

    monkeypatch.setattr(DownstreamConnection, "_send_body", send_body)

    async def scenario(server: Listener, origin: RawOrigin) -> None:
        data = b"POST %b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nFAULT" % origin.url("/upload").encode()
        response = await http.exchange(server.port, data)
        assert_internal_error(response, "handling the request")  # in llhttp's body callback
        await assert_still_serving(server, origin)

    run(scenario)
    injected_once(errors)


@skip_compiled
@pytest.mark.parametrize("splice_bodies", [True, False], ids=["splice", "copy"])
def test_relaying_a_response_body(
    monkeypatch: pytest.MonkeyPatch, errors: Callable[[], list[logging.LogRecord]], splice_bodies: bool
) -> None:
    """The fault strikes after the response head went out: the client's response is cut, never completed."""
    from proxy.server.upstream import UpstreamConnection

    real = UpstreamConnection._received

    def received(self: UpstreamConnection, data: bytes) -> None:
        if b"FAULT" in data:
            raise Injected("response relay failed")
        real(self, data)

    monkeypatch.setattr(UpstreamConnection, "_received", received)
    head_seen = asyncio.Event()

    async def two_parts(conn: RawConn) -> None:
        while (request := await conn.read_request()) is not None:
            if request.target != b"/fault":
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok /after")
                continue
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst part ")
            await head_seen.wait()
            await conn.send(b"FAULT" + b"x" * 84)

    async def scenario(server: Listener, origin: RawOrigin) -> None:
        reader, writer = await http.open_raw(server.port)
        try:
            writer.write(http.get(origin.url("/fault")))
            head = await http.read_head(reader)
            assert head.startswith(b"HTTP/1.1 200 ")
            head_seen.set()
            rest = b""
            try:
                while chunk := await asyncio.wait_for(reader.read(65536), http.TIMEOUT):
                    rest += chunk
            except ConnectionResetError:
                pass
        finally:
            await http.close_writer(writer)
        assert len(rest) < 100 and b"FAULT" not in rest
        await assert_still_serving(server, origin)

    run(scenario, two_parts, splice_bodies=splice_bodies)
    injected_once(errors)


async def echo(conn: RawConn) -> None:
    while True:
        await conn.send(await conn.read_some())


async def assert_tunnels_still_work(server: Listener, origin: RawOrigin) -> None:
    reader, writer = await http.open_raw(server.port)
    try:
        writer.write(b"CONNECT %b HTTP/1.1\r\nHost: %b\r\n\r\n" % (origin.authority, origin.authority))
        assert (await http.read_head(reader)).startswith(b"HTTP/1.1 200 ")
        writer.write(b"again")
        assert await asyncio.wait_for(reader.readexactly(5), http.TIMEOUT) == b"again"
    finally:
        await http.close_writer(writer)


@skip_compiled
def test_opening_a_tunnel(monkeypatch: pytest.MonkeyPatch, errors: Callable[[], list[logging.LogRecord]]) -> None:
    from proxy.server.tunnel import Tunnel

    def start(self: Tunnel, loop: Any) -> None:
        raise Injected("tunnel start failed")

    monkeypatch.setattr(Tunnel, "start", start)

    async def scenario(server: Listener, origin: RawOrigin) -> None:
        reader, writer = await http.open_raw(server.port)
        try:
            writer.write(b"CONNECT %b HTTP/1.1\r\nHost: %b\r\n\r\n" % (origin.authority, origin.authority))
            head = await http.read_head(reader)
            assert head.startswith(b"HTTP/1.1 200 ")  # already out when the fault struck: the tunnel is cut
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), http.TIMEOUT)
        finally:
            await http.close_writer(writer)
        monkeypatch.undo()
        await assert_tunnels_still_work(server, origin)

    run(scenario, echo)
    injected_once(errors)


@skip_compiled
def test_relaying_a_spliced_tunnel(
    monkeypatch: pytest.MonkeyPatch, errors: Callable[[], list[logging.LogRecord]]
) -> None:
    from proxy.server import splice

    if not splice.AVAILABLE:
        pytest.skip("splice(2) is Linux only")
    real = splice.SpliceTunnel._read
    reads = 0

    def read(self: splice.SpliceTunnel, way: Any) -> None:
        nonlocal reads
        reads += 1
        if reads == 3:  # the client's second message (after the ping's two ways)
            raise Injected("tunnel relay failed")
        real(self, way)

    monkeypatch.setattr(splice.SpliceTunnel, "_read", read)

    async def scenario(server: Listener, origin: RawOrigin) -> None:
        reader, writer = await http.open_raw(server.port)
        try:
            writer.write(b"CONNECT %b HTTP/1.1\r\nHost: %b\r\n\r\n" % (origin.authority, origin.authority))
            assert (await http.read_head(reader)).startswith(b"HTTP/1.1 200 ")
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), http.TIMEOUT) == b"ping"  # reads 1 and 2...
            writer.write(b"pong")
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), http.TIMEOUT)
        finally:
            await http.close_writer(writer)
        await assert_tunnels_still_work(server, origin)

    run(scenario, echo, splice_tunnels=True)
    injected_once(errors)
