"""CONNECT tunnels: the port policy, TLS end to end through the tunnel, and raw bytes relayed both ways with
half-close.

Every test that uses the module's `proxy` runs twice: with the tunnels relayed inside the kernel by splice(2)
(`forward.splice_tunnels = true`, the default on Linux) and through the event loop's transports (`false`).

Tunnelled traffic carries no trace headers the proxy could add, so these tests prove the path through the proxy
by the origin's peer socket: it must belong to the proxy process (`from_watched_pid`), or by curl's record of the
proxy's CONNECT answer (`%{http_connect}`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import http
from tests.helpers.clients import curl
from tests.helpers.data import MB, payload
from tests.helpers.origin import (
    EndOfStream,
    GreetingServer,
    HalfClosingTarget,
    Origin,
    RawConn,
    RawOrigin,
    RawOriginFactory,
    Recorded,
)
from tests.helpers.proxy_process import ProxyFactory, ProxyProcess, launch_proxy, stop_and_check, tcp_sockets
from tests.helpers.tls import TlsCa

pytestmark = pytest.mark.asyncio
RELAYS = {"splice": True, "transports": False}


@pytest.fixture(scope="module", params=list(RELAYS))
def relay(request: pytest.FixtureRequest) -> str:
    """How the module's proxy relays tunnels: "splice" or "transports"."""
    return str(request.param)


@pytest.fixture(scope="module")
def _module_proxy(
    relay: str, tmp_path_factory: pytest.TempPathFactory, unused_tcp_port_factory: Callable[[], int]
) -> Iterator[ProxyProcess]:
    """The module's proxy (see conftest.py), once per way of relaying tunnels."""
    overrides = {"forward": {"splice_tunnels": RELAYS[relay]}}
    proxy = launch_proxy(tmp_path_factory.mktemp("proxy"), unused_tcp_port_factory, overrides)
    try:
        yield proxy
    finally:
        stop_and_check(proxy)


def pipe_fds(pid: int) -> int:
    """How many pipe ends process `pid` holds open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("pipe:")
        except OSError:
            continue  # closed while listing
    return count


BODY = payload(1 * MB + 5, seed=21)


async def big_body(request: web.Request, record: Recorded) -> web.StreamResponse:
    return web.Response(body=BODY, headers={"X-Sha256": hashlib.sha256(BODY).hexdigest()})


def connect_head(port: int, host: bytes = b"127.0.0.1") -> bytes:
    return b"CONNECT %b:%d HTTP/1.1\r\nHost: %b:%d\r\n\r\n" % (host, port, host, port)


async def open_tunnel(proxy: ProxyProcess, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A raw CONNECT through the proxy; returns the streams and the proxy's answer head (asserted 200)."""
    reader, writer = await http.open_raw(proxy.port)
    writer.write(connect_head(port))
    head = await http.read_head(reader)
    assert head.startswith(b"HTTP/1.1 200 "), head
    return reader, writer, head


async def test_connect_to_port_not_allowed_is_403(
    proxy_factory: ProxyFactory, tls_origin: Origin, tls_ca: TlsCa
) -> None:
    """CONNECT to a port outside `connect_ports` is refused with 403 naming the rule; nothing reaches the target
    (raw client and curl alike)."""
    strict = proxy_factory({"forward": {"connect_ports": [443, tls_origin.port + 1]}})
    response = await http.exchange(strict.port, connect_head(tls_origin.port))
    assert response.status == 403
    assert "not allowed" in response.text and "connect_ports" in response.text, response.text
    assert (response.header(b"content-type") or b"").startswith(b"text/plain")

    result = await curl(
        "--cacert", str(tls_ca.pem), "-o", "/dev/null", "-w", "%{http_connect}", tls_origin.url("/"),
        proxy=strict.url,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stdout == b"403"
    assert tls_origin.requests == []


async def test_connect_allowed_port_tunnels_tls_for_curl(
    proxy_factory: ProxyFactory, tls_origin: Origin, tls_ca: TlsCa
) -> None:
    """With the port in `connect_ports`, curl gets `200` to its CONNECT and then talks TLS to the origin through
    the tunnel: certificate verified against the test CA, 1 MB body intact."""
    allowed = proxy_factory({"forward": {"connect_ports": [tls_origin.port]}})
    tls_origin.route("/big", big_body)
    tls_origin.watched_pid = allowed.pid
    result = await curl(
        "--cacert", str(tls_ca.pem), "-o", "-", "-w", "%{http_connect}", tls_origin.url("/big"),
        proxy=allowed.url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout[-3:] == b"200"
    assert result.stdout[:-3] == BODY
    [record] = tls_origin.requests
    assert record.from_watched_pid is True
    assert record.values("sentry-trace") == []  # inside TLS the proxy cannot, and must not, touch headers
    # curl has closed its end: the tunnel ends once the origin, served by this test's event loop, has seen the
    # close and closed its own. Let the loop run until then: the teardown's drain, which runs without it, must
    # find no connection (on a loaded machine it found the tunnel still open and waited out the grace).
    await until_only_listening(allowed.pid)


async def until_only_listening(pid: int, timeout: float = 5.0) -> None:
    """Poll (the kernel's socket table is the only witness) until process `pid` holds no TCP connection."""
    deadline = time.monotonic() + timeout
    while any(s.state != "LISTEN" for s in tcp_sockets(pid)):
        assert time.monotonic() < deadline, f"process {pid} still holds connections: {tcp_sockets(pid)}"
        await asyncio.sleep(0.02)


async def test_aiohttp_https_through_proxy(proxy: ProxyProcess, tls_origin: Origin, tls_ca: TlsCa) -> None:
    """aiohttp with `proxy=` reaches an HTTPS origin through the tunnel, several requests on one tunnel."""
    tls_origin.route("/big", big_body)
    tls_origin.watched_pid = proxy.pid
    connector = aiohttp.TCPConnector(limit=1, ssl=tls_ca.client_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(3):
            async with session.get(tls_origin.url("/big"), proxy=proxy.url) as resp:
                assert resp.status == 200
                assert await resp.read() == BODY
    assert len(tls_origin.requests) == 3
    assert tls_origin.connections == 1
    assert all(r.from_watched_pid for r in tls_origin.requests)


async def test_raw_connect_then_tls(proxy: ProxyProcess, tls_origin: Origin, tls_ca: TlsCa) -> None:
    """A hand-made CONNECT gets `HTTP/1.1 200` with an empty body, after which the same socket carries a TLS
    handshake and an HTTPS request to the origin."""
    tls_origin.watched_pid = proxy.pid
    reader, writer, head = await open_tunnel(proxy, tls_origin.port)
    assert b"content-length" not in head.lower() and b"transfer-encoding" not in head.lower()
    await asyncio.wait_for(writer.start_tls(tls_ca.client_context(), server_hostname="127.0.0.1"), http.TIMEOUT)
    writer.write(b"GET /inside?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    response = await http.read_response(reader)
    await http.close_writer(writer)
    assert response.status == 200
    [record] = tls_origin.requests
    assert record.raw_path == "/inside?x=1"
    assert record.from_watched_pid is True


async def reply_after_eof(conn: RawConn) -> None:
    """Reads until the client half-closes, then answers with the length and hash of what it got, and closes."""
    data = await conn.read_to_eof()
    await conn.send(b"got %d bytes, sha256 %s" % (len(data), hashlib.sha256(data).hexdigest().encode()))


async def test_tunnel_half_close(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """The client's half-close (shutdown SHUT_WR) travels through the tunnel as EOF; the server, which answers
    only after EOF, still gets its answer back to the client, followed by the close."""
    origin = await raw_origin_factory(reply_after_eof)
    origin.watched_pid = proxy.pid
    data = payload(200_000, seed=22)
    reader, writer, _ = await open_tunnel(proxy, origin.port)
    writer.write(data)
    await writer.drain()
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), http.TIMEOUT)
    await http.close_writer(writer)
    assert answer == b"got %d bytes, sha256 %s" % (len(data), hashlib.sha256(data).hexdigest().encode())
    [conn] = origin.conns
    assert conn.from_watched_pid is True


async def test_bytes_sent_with_the_connect_head_are_delivered(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """Bytes a client sends right behind the CONNECT head, before the proxy's 200 (and even an immediate
    half-close), reach the target once the tunnel is up."""
    origin = await raw_origin_factory(reply_after_eof)
    reader, writer = await http.open_raw(proxy.port)
    writer.write(connect_head(origin.port) + b"early bytes")
    writer.write_eof()
    head = await http.read_head(reader)
    assert head.startswith(b"HTTP/1.1 200 ")
    answer = await asyncio.wait_for(reader.read(), http.TIMEOUT)
    await http.close_writer(writer)
    assert answer == b"got 11 bytes, sha256 %s" % hashlib.sha256(b"early bytes").hexdigest().encode()


async def echo(conn: RawConn) -> None:
    """Echoes everything as it arrives; half-closes after the client's EOF."""
    while True:
        try:
            data = await conn.read_some()
        except EndOfStream:
            conn.writer.write_eof()
            return
        await conn.send(data)


async def test_tunnel_streams_both_ways(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """8 MB through an echo server: written and read concurrently (flow control both ways), intact, in order."""
    origin = await raw_origin_factory(echo)
    origin.watched_pid = proxy.pid
    total = 8 * MB
    data = payload(total, seed=23)
    reader, writer, _ = await open_tunnel(proxy, origin.port)

    async def send() -> None:
        for offset in range(0, total, 64 * 1024):
            writer.write(data[offset : offset + 64 * 1024])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    received = await asyncio.wait_for(reader.read(), 30)  # until the echo server's EOF
    await asyncio.wait_for(sender, http.TIMEOUT)
    await http.close_writer(writer)
    assert len(received) == total
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    assert origin.conns[0].from_watched_pid is True


async def test_connect_interactive_round_trips(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """A tunnel carries a conversation (request, answer, request...) without waiting for either side to close:
    here, plain HTTP keep-alive requests spoken through a CONNECT tunnel reach the origin untouched."""
    reader, writer, _ = await open_tunnel(proxy, raw_origin.port)
    for i in range(3):
        writer.write(b"GET /t/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        response = await http.read_response(reader)
        assert response.body == b"ok /t/%d" % i
    await http.close_writer(writer)
    assert all(r.values(b"sentry-trace") == [] for r in raw_origin.requests)
    assert [r.head for r in raw_origin.requests] == [b"GET /t/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3)]


@pytest.mark.parametrize(
    ("target", "status", "needle"),
    [
        ("closed", 502, "refused"),
        ("nonexistent.invalid:443", 502, "nonexistent.invalid"),
        ("127.0.0.1:0", 400, "port"),
        ("127.0.0.1", 400, "port"),
    ],
)
async def test_connect_failures(
    proxy: ProxyProcess, unused_tcp_port_factory: Callable[[], int], target: str, status: int, needle: str
) -> None:
    """CONNECT to a closed port or an unknown host is a 502 naming the cause; a target without a valid port
    is a 400; the client connection is closed after the answer."""
    if target == "closed":
        target = f"127.0.0.1:{unused_tcp_port_factory()}"
    reader, writer = await http.open_raw(proxy.port)
    writer.write(b"CONNECT %b HTTP/1.1\r\nHost: %b\r\n\r\n" % (target.encode(), target.encode()))
    response = await http.read_response(reader)
    await http.expect_eof(reader)
    await http.close_writer(writer)
    assert response.status == status
    assert needle in response.text, response.text


async def test_tunnel_half_close_from_the_server_first(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """The target half-closes first (answer, then SHUT_WR) and still receives what the client sends after that;
    the client sees the answer then EOF, and the tunnel ends once both sides are done."""
    got_from_client = asyncio.Event()
    received: list[bytes] = []

    async def answer_then_listen(conn: RawConn) -> None:
        assert await conn.read_exactly(5) == b"hello"
        await conn.send(b"answer")
        conn.writer.write_eof()
        received.append(await conn.read_to_eof())
        got_from_client.set()

    origin = await raw_origin_factory(answer_then_listen)
    reader, writer, _ = await open_tunnel(proxy, origin.port)
    try:
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.read(), http.TIMEOUT) == b"answer"  # until the target's EOF
        writer.write(b"late words from the client")
        await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(got_from_client.wait(), http.TIMEOUT)
    finally:
        await http.close_writer(writer)
    assert received == [b"late words from the client"]


async def test_target_that_half_closes_at_once_still_hears_the_client(proxy: ProxyProcess) -> None:
    """A target that half-closes the moment it accepts, often before the proxy has attached the client to the
    tunnel: the client sees the EOF, and what it sends after it still reaches the target, every time (the
    target's EOF was taken for the client's, and the target's side half-closed too: the bytes were lost)."""
    rounds = 40
    with HalfClosingTarget() as target:
        for i in range(rounds):
            reader, writer, _ = await open_tunnel(proxy, target.port)
            try:
                assert await asyncio.wait_for(reader.read(), http.TIMEOUT) == b""  # the target's half-close
                writer.write(b"hello %d" % i)
                await writer.drain()
                writer.write_eof()
                assert await asyncio.to_thread(target.done.acquire, True, http.TIMEOUT)
            finally:
                await http.close_writer(writer)
        assert target.received == [b"hello %d" % i for i in range(rounds)]


async def test_target_that_speaks_first(proxy_factory: ProxyFactory) -> None:
    """A CONNECT target that sends its greeting the moment it accepts (SMTP, SSH, MySQL...): every tunnel
    delivers the greeting and the conversation after it; afterwards no tunnel is left behind (SIGTERM exits
    at once)."""
    attempts = 100
    tunnel_proxy = proxy_factory({"forward": {"shutdown_grace": 1.0}})
    failures: list[str] = []
    try:
        with GreetingServer() as target:
            for i in range(attempts):
                reader, writer, _ = await open_tunnel(tunnel_proxy, target.port)
                try:
                    greeting = await asyncio.wait_for(reader.readexactly(len(GreetingServer.GREETING)), 2)
                    writer.write(b"ping %d" % i)
                    answer = await asyncio.wait_for(reader.read(), 2)
                    if (greeting, answer) != (GreetingServer.GREETING, b"echo:ping %d" % i):
                        failures.append(f"{i}: {greeting!r} {answer!r}")
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
                    failures.append(f"{i}: {exc!r}")
                finally:
                    await http.close_writer(writer)
                if len(failures) >= 3:
                    break
        code = await asyncio.to_thread(tunnel_proxy.stop)
    finally:
        tunnel_proxy.kill()
    assert failures == [], f"tunnels that lost the greeting: {failures}"
    assert code == 0
    assert "shutdown grace" not in tunnel_proxy.stderr, tunnel_proxy.stderr


async def test_tunnel_relay_releases_its_descriptors(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory, relay: str
) -> None:
    """A spliced tunnel holds two pipes (four ends) while it is open and none once both sides have closed; relayed
    through the transports it holds none. A long-running proxy must not leak a descriptor per tunnel."""
    origin = await raw_origin_factory(echo)
    before = pipe_fds(proxy.pid)
    reader, writer, _ = await open_tunnel(proxy, origin.port)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), http.TIMEOUT) == b"ping"
    during = pipe_fds(proxy.pid)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), http.TIMEOUT) == b""  # the echo server's EOF, passed on
    await http.close_writer(writer)
    deadline = time.monotonic() + http.TIMEOUT
    while (after := pipe_fds(proxy.pid)) != before and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # the proxy closes its side after the client's close: nothing to wait on
    assert during - before == (4 if RELAYS[relay] else 0)
    assert after == before


async def test_tunnel_to_a_client_with_a_tiny_receive_buffer(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """A target that sends 8 MB at once to a client whose socket takes 4 KiB at a time: the proxy must hold the
    target back (back-pressure) rather than lose or reorder bytes, and pass on the close after the last byte."""
    data = payload(8 * MB, seed=24)

    async def flood(conn: RawConn) -> None:
        await conn.send(data)
        conn.writer.close()

    origin = await raw_origin_factory(flood)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.port)), http.TIMEOUT)
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    try:
        writer.write(connect_head(origin.port))
        assert (await http.read_head(reader)).startswith(b"HTTP/1.1 200 ")
        received = await asyncio.wait_for(reader.read(), 60)
    finally:
        await http.close_writer(writer)
    assert len(received) == len(data)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("relay", list(RELAYS))
async def test_shutdown_cuts_an_open_tunnel_after_the_grace(
    proxy_factory: ProxyFactory, raw_origin_factory: RawOriginFactory, relay: str
) -> None:
    """SIGTERM with a tunnel open: the tunnel keeps working during forward.shutdown_grace, then the proxy closes
    it, both ends see the connection end, and the proxy exits 0."""
    tunnel_proxy = proxy_factory({"forward": {"shutdown_grace": 0.5, "splice_tunnels": RELAYS[relay]}})
    origin_done = asyncio.Event()

    async def echo_until_cut(conn: RawConn) -> None:
        try:
            await echo(conn)
        finally:
            origin_done.set()

    origin = await raw_origin_factory(echo_until_cut)
    reader, writer, _ = await open_tunnel(tunnel_proxy, origin.port)
    try:
        tunnel_proxy.send_signal(signal.SIGTERM)
        writer.write(b"still here")
        assert await asyncio.wait_for(reader.readexactly(10), http.TIMEOUT) == b"still here"
        try:
            rest = await asyncio.wait_for(reader.read(), http.TIMEOUT)
        except ConnectionResetError:
            rest = b""
        assert rest == b""
        await asyncio.wait_for(origin_done.wait(), http.TIMEOUT)
        code = await asyncio.to_thread(tunnel_proxy.wait)
    finally:
        await http.close_writer(writer)
    assert code == 0, tunnel_proxy.stderr
    assert "shutdown grace of 0.5s over: closing 1 connections" in tunnel_proxy.stderr
