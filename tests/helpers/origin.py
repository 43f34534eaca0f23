"""Origin servers that record what reached them.

`Origin` is a real aiohttp server with per-test routes; every request is recorded (method, raw target, raw
header list in order, connection, peer, body). `RawOrigin` is a bare asyncio server that records every byte each
connection received and parses requests itself, for tests that need exact bytes or misbehaving origins.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from tests.helpers.http import Headers, header_values, parse_head
from tests.helpers.proxy_process import local_tcp_ports
from tests.helpers.trace import SentryTrace, assert_added_by_proxy

TIMEOUT = 10.0


# -- aiohttp origin -----------------------------------------------------------------------------------------------


@dataclass
class Recorded:
    """One request as the aiohttp origin received it."""

    method: str
    raw_path: str
    version: str
    headers: list[tuple[str, str]]
    conn: int
    peer_port: int
    body: bytes | None = None
    from_watched_pid: bool | None = None  # the peer socket belongs to Origin.watched_pid (None: not watched)

    def values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def header(self, name: str) -> str | None:
        values = self.values(name)
        assert len(values) <= 1, f"{name} appears {len(values)} times: {values}"
        return values[0] if values else None

    def assert_proxied(self, *, dsc: bool = True) -> SentryTrace:
        """This request came through the proxy under test: it carries the trace headers the proxy writes."""
        return assert_added_by_proxy(self.values("sentry-trace"), self.values("baggage"), dsc=dsc)


Handler = Callable[[web.Request, Recorded], Awaitable[web.StreamResponse]]


async def echo_handler(request: web.Request, record: Recorded) -> web.StreamResponse:
    """Reads the whole body and answers 200 `ok <sha256 of the body>`."""
    body = await request.read()
    record.body = body
    return web.Response(text=f"ok {hashlib.sha256(body).hexdigest()}", headers={"X-Origin": "aiohttp"})


class Origin:
    """An aiohttp origin on 127.0.0.1; unknown paths are answered by `echo_handler`."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.routes: dict[str, Handler] = {}
        self._protocols: list[object] = []
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.watched_pid: int | None = None
        self.scheme = "http"
        self.ssl_context: ssl.SSLContext | None = None

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def url(self, path: str = "/", scheme: str | None = None) -> str:
        return f"{scheme or self.scheme}://127.0.0.1:{self.port}{path}"

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """How many distinct TCP connections carried the requests so far."""
        return len(self._protocols)

    async def wait_for_requests(self, count: int, timeout: float = TIMEOUT) -> None:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.requests) >= count), timeout)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        protocol = request.protocol
        for index, known in enumerate(self._protocols):
            if known is protocol:
                conn = index
                break
        else:
            self._protocols.append(protocol)  # kept alive, so identities are never reused
            conn = len(self._protocols) - 1
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else ("", 0)
        record = Recorded(
            method=request.method,
            raw_path=request.raw_path,
            version=f"{request.version.major}.{request.version.minor}",
            headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.raw_headers],
            conn=conn,
            peer_port=peer[1],
        )
        if self.watched_pid is not None:
            record.from_watched_pid = peer[1] in local_tcp_ports(self.watched_pid)
        self.requests.append(record)
        async with self._arrived:
            self._arrived.notify_all()
        handler = self.routes.get(request.path, echo_handler)
        return await handler(request, record)

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        """Listen on 127.0.0.1 (HTTPS with `ssl_context`)."""
        if ssl_context is not None:
            self.ssl_context = ssl_context
            self.scheme = "https"
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# -- raw origin ---------------------------------------------------------------------------------------------------


@dataclass
class RawRequest:
    """One request as a raw origin parsed it; `head` is the exact bytes of the request head."""

    head: bytes
    method: bytes
    target: bytes
    version: bytes
    headers: Headers
    body: bytes = b""
    chunked: bool = False

    def values(self, name: bytes) -> list[bytes]:
        return header_values(self.headers, name)

    def header(self, name: bytes) -> bytes | None:
        values = self.values(name)
        assert len(values) <= 1, f"{name!r} appears {len(values)} times"
        return values[0] if values else None

    def assert_proxied(self, *, dsc: bool = True) -> SentryTrace:
        """This request came through the proxy under test: it carries the trace headers the proxy writes."""
        return assert_added_by_proxy(
            [v.decode("latin-1") for v in self.values(b"sentry-trace")],
            [v.decode("latin-1") for v in self.values(b"baggage")],
            dsc=dsc,
        )


class EndOfStream(Exception):
    """The peer closed the connection."""


@dataclass(eq=False)
class RawConn:
    """One connection accepted by a RawOrigin; every byte read from it is kept in `received`."""

    id: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    origin: RawOrigin
    received: bytearray = field(default_factory=bytearray)
    requests: list[RawRequest] = field(default_factory=list)
    from_watched_pid: bool | None = None  # the peer socket belongs to RawOrigin.watched_pid (None: not watched)
    _buf: bytearray = field(default_factory=bytearray)

    async def _more(self) -> None:
        data = await self.reader.read(1 << 16)
        if not data:
            raise EndOfStream
        self.received += data
        self._buf += data
        self.origin.data_arrived()

    async def read_until(self, separator: bytes) -> bytes:
        while (end := self._buf.find(separator)) < 0:
            await self._more()
        end += len(separator)
        data = bytes(self._buf[:end])
        del self._buf[:end]
        return data

    async def read_exactly(self, size: int) -> bytes:
        while len(self._buf) < size:
            await self._more()
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    async def read_some(self) -> bytes:
        """Whatever is buffered, else the next bytes that arrive."""
        if not self._buf:
            await self._more()
        data = bytes(self._buf)
        self._buf.clear()
        return data

    async def read_to_eof(self) -> bytes:
        try:
            while True:
                await self._more()
        except EndOfStream:
            data = bytes(self._buf)
            self._buf.clear()
            return data

    async def read_head(self) -> RawRequest | None:
        """The next request head, or None if the connection closed cleanly before one began."""
        if not self._buf:
            try:
                await self._more()
            except EndOfStream:
                return None
        head = await self.read_until(b"\r\n\r\n")
        start, headers = parse_head(head)
        method, target, version = start.split(b" ")
        request = RawRequest(head, method, target, version, headers)
        self.requests.append(request)
        self.origin.request_arrived()
        return request

    async def read_body(self, request: RawRequest) -> bytes:
        """The body as framed by Content-Length or chunked coding (stored on the request)."""
        te = request.header(b"transfer-encoding")
        length = request.header(b"content-length")
        if te is not None:
            if te.lower().rsplit(b",", 1)[-1].strip() != b"chunked" or length is not None:
                # Framing no origin can read reliably: note it (tests assert on it) and drop the connection.
                self.origin.framing_errors.append(request)
                raise EndOfStream
            request.chunked = True
            body = bytearray()
            while True:
                size = int((await self.read_until(b"\r\n"))[:-2], 16)
                if size == 0:
                    assert await self.read_until(b"\r\n") == b"\r\n"
                    break
                body += (await self.read_exactly(size + 2))[:-2]
            request.body = bytes(body)
        elif length is not None:
            request.body = await self.read_exactly(int(length))
        return request.body

    async def read_request(self) -> RawRequest | None:
        request = await self.read_head()
        if request is not None:
            await self.read_body(request)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


RawHandler = Callable[[RawConn], Awaitable[None]]


def ok_response(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


async def serve_ok(conn: RawConn) -> None:
    """Answer every request `200 ok <target>` with Content-Length, on a keep-alive connection."""
    while (request := await conn.read_request()) is not None:
        await conn.send(ok_response(b"ok " + request.target))
        if (request.header(b"connection") or b"").lower() == b"close":
            return


def serve_special(answers: Mapping[bytes, bytes]) -> RawHandler:
    """A handler that sends the bytes in `answers` for those targets (well-formed or not), and answers every other
    target as `serve_ok` does, on a keep-alive connection."""

    async def handler(conn: RawConn) -> None:
        while (request := await conn.read_request()) is not None:
            answer = answers.get(request.target)
            await conn.send(ok_response(b"ok " + request.target) if answer is None else answer)

    return handler


class RawOriginFactory(Protocol):
    """The `raw_origin_factory` fixture: a started RawOrigin running `handler` per connection."""

    async def __call__(self, handler: RawHandler = serve_ok) -> RawOrigin: ...


class RawOrigin:
    """A bare asyncio origin on 127.0.0.1 running `handler` per connection and recording every byte."""

    def __init__(self, handler: RawHandler = serve_ok) -> None:
        self.handler = handler
        self.conns: list[RawConn] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._changed = asyncio.Condition()
        self.errors: list[BaseException] = []
        self.framing_errors: list[RawRequest] = []  # requests the proxy sent with unreadable framing
        self.watched_pid: int | None = None

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def authority(self) -> bytes:
        return b"127.0.0.1:%d" % self.port

    @property
    def received(self) -> bytes:
        return b"".join(bytes(c.received) for c in self.conns)

    @property
    def requests(self) -> list[RawRequest]:
        return [r for c in self.conns for r in c.requests]

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        task = asyncio.get_running_loop().create_task(notify())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def data_arrived(self) -> None:
        self._notify()

    def request_arrived(self) -> None:
        self._notify()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    async def wait_for_requests(self, count: int, timeout: float = TIMEOUT) -> None:
        await self.wait_for(lambda: len(self.requests) >= count, timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = RawConn(len(self.conns), reader, writer, self)
        if self.watched_pid is not None:
            conn.from_watched_pid = writer.get_extra_info("peername")[1] in local_tcp_ports(self.watched_pid)
        self.conns.append(conn)
        self._notify()
        serving = asyncio.current_task()
        assert serving is not None
        self._serving.add(serving)
        handler = asyncio.ensure_future(self.handler(conn))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({handler, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not handler.done():
                handler.cancel()
                await asyncio.gather(handler, return_exceptions=True)
            elif not handler.cancelled():
                exc = handler.exception()
                if exc is not None and not isinstance(exc, EndOfStream | ConnectionError):
                    self.errors.append(exc)  # surfaced by the fixture's teardown
            writer.close()
            self._serving.discard(serving)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._closing.set()  # handlers still running are cancelled by their connection's task
        if self._serving:
            await asyncio.wait(list(self._serving), timeout=TIMEOUT)
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), TIMEOUT)


# -- a target that speaks first ------------------------------------------------------------------------------------


class GreetingServer:
    """A blocking TCP server in a thread that greets every connection the instant it is accepted (as SMTP, SSH or
    MySQL servers do), then echoes one message prefixed with `echo:` and closes. A thread, so the greeting leaves
    without waiting for the test's event loop."""

    GREETING = b"220 greetings from the target\r\n"

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._workers: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    def __enter__(self) -> GreetingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        self._listener.close()
        self._thread.join(TIMEOUT)
        for conn in self._conns:  # wakes workers still waiting for a message that will not come
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for worker in self._workers:
            worker.join(TIMEOUT)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.settimeout(TIMEOUT)
            self._conns.append(conn)
            try:
                self._greet(conn)
            except OSError:
                conn.close()
                continue
            worker = threading.Thread(target=self._converse, args=(conn,), daemon=True)
            self._workers.append(worker)
            worker.start()

    def _greet(self, conn: socket.socket) -> None:
        conn.sendall(self.GREETING)

    def _converse(self, conn: socket.socket) -> None:
        self._echo_once(conn)

    @staticmethod
    def _echo_once(conn: socket.socket) -> None:
        with conn:
            try:
                data = conn.recv(65536)
                if data:
                    conn.sendall(b"echo:" + data)
            except OSError:
                pass


class HalfClosingTarget(GreetingServer):
    """A target that half-closes (SHUT_WR) the instant it accepts, then reads what the client sends until its EOF:
    `received` holds what each connection got, in the order they closed."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []
        self.done = threading.Semaphore(0)  # released once per connection read to its end

    def _greet(self, conn: socket.socket) -> None:
        conn.shutdown(socket.SHUT_WR)

    def _converse(self, conn: socket.socket) -> None:
        data = b""
        with conn:
            try:
                while chunk := conn.recv(65536):
                    data += chunk
            except OSError:
                pass
        self.received.append(data)
        self.done.release()
