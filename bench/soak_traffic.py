"""The soak test's traffic: local origins, and clients sending a mix of requests through the proxy, every request
counted by kind and outcome.

The origins (`Origins`, all on 127.0.0.1): an aiohttp HTTP origin serving bodies of any size (Content-Length or
chunked), answering POSTs with the length and SHA-256 of the body it received, and, on `/reset/…`, resetting the
connection (RST) before or in the middle of its response; and a TCP echo target for CONNECT tunnels.

The clients (`Client`, one per connection the soak keeps busy) each hold one keep-alive connection to the proxy and
pick, at random by `WEIGHTS`, one kind of request after the other (see `KINDS`). Each request ends in one outcome:

- `ok`: the exchange completed and was right (the body intact, the origin's hash of an upload equal to the client's,
  the echo equal to what was sent);
- an outcome of the faults the clients inject (`FAULT_OUTCOMES`): `aborted` (the client itself closed or reset the
  connection in the middle of an upload or a download), `cut` (the origin reset the connection after its response
  began, and the proxy cut the response off: the bytes that did arrive are checked to be the start of the right
  body) and `502` (the origin reset the connection before its response began, and the proxy said so);
- anything else (`error: …`) is a failure of the proxy under test: a wrong status, a wrong body or hash, a connection
  closed or reset on a request that had no fault in it, a timeout, a response to a reset request that is complete or
  missing altogether.

Bodies are built by `tagged_body`, unique per request, so that a body belonging to another exchange, or bytes
shifted, dropped or repeated, never pass for the right one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web

from tests.helpers import data
from tests.helpers.http import (
    RawResponse,
    close_writer,
    open_raw,
    parse_head,
    read_chunked,
    read_head,
    read_response,
)

HOST = "127.0.0.1"
READ_TIMEOUT = 10.0  # one read of a response
REQUEST_TIMEOUT = 30.0  # one whole request, tunnel or abort
LARGE_BODY = 100_000  # "about 100 KB": responses above the proxy's 24 KiB splice threshold
DOWNLOAD_ABORT_BODY = 2 << 20  # more than the socket buffers hold, so that the abort lands in the middle of the body
UPLOAD_ABORT_BODY = 1 << 20
MAX_BODY = DOWNLOAD_ABORT_BODY
STAMP_EVERY = 4096  # tagged_body writes the request's tag this often

FAULT_OUTCOMES = frozenset({"aborted", "cut", "502"})

_base: bytes | None = None


def tagged_body(tag: int, size: int) -> bytes:
    """`size` bytes of a fixed pseudo-random payload (tests/helpers/data.py: position-dependent, so shifted,
    dropped or repeated bytes show) with the request's 16-hex-digit `tag` written over it every 4 KiB (so a body
    meant for another request shows). Cheap enough to build for every request of a long run."""
    global _base
    if _base is None:
        _base = data.payload(MAX_BODY, seed=0x50AC)
    body = bytearray(_base[:size])
    stamp = b"%016x" % tag
    for offset in range(0, size, STAMP_EVERY):
        body[offset : offset + 16] = stamp[: size - offset]
    return bytes(body)


def _tag(request: web.Request) -> int:
    return int(request.query.get("tag", "0"))


def _abort_with_reset(request: web.Request) -> None:
    """Close the origin's side of the connection with an RST (SO_LINGER 0), dropping anything not yet sent."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Origins:
    """The soak's origins on 127.0.0.1: the HTTP origin (`http_port`) and the CONNECT echo target (`echo_port`).

    `busy` is how many requests the HTTP origin is handling at this moment (its part of the pool estimate);
    `uploads_cut` counts request bodies that ended early at the origin (the proxy passing a client's abort on)."""

    def __init__(self) -> None:
        self.http_port = 0
        self.echo_port = 0
        self.busy = 0
        self.uploads_cut = 0
        self.resets = 0
        self._runner: web.AppRunner | None = None
        self._echo: asyncio.Server | None = None

    @web.middleware
    async def _count_busy(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.busy += 1
        try:
            return await handler(request)
        finally:
            self.busy -= 1

    async def _bytes(self, request: web.Request) -> web.StreamResponse:
        """GET /bytes/SIZE?tag=T[&chunked=1]: tagged_body(T, SIZE), framed by Content-Length or chunked."""
        size = int(request.match_info["size"])
        body = tagged_body(_tag(request), size)
        if request.query.get("chunked") != "1":
            return web.Response(body=body)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for offset in range(0, size, 32768):
            await response.write(body[offset : offset + 32768])
        await response.write_eof()
        return response

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        """POST /upload: answers `LENGTH SHA256` of the body received."""
        try:
            body = await request.read()
        except ConnectionError:  # aiohttp's "Connection lost": the proxy passed a client's abort on
            self.uploads_cut += 1
            raise web.HTTPBadRequest(text="upload cut off") from None  # never sent; an HTTP error is not logged
        return web.Response(text=f"{len(body)} {hashlib.sha256(body).hexdigest()}")

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        """GET /reset/SIZE?tag=T&after=N: a response head announcing tagged_body(T, SIZE) and its first N bytes,
        then an RST; N = -1 resets before the head."""
        size = int(request.match_info["size"])
        after = int(request.query.get("after", "-1"))
        self.resets += 1
        if after < 0:
            _abort_with_reset(request)
            return web.Response()  # never sent: the transport is gone
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        if after:
            await response.write(tagged_body(_tag(request), size)[:after])
        _abort_with_reset(request)
        return response

    async def start(self) -> None:
        app = web.Application(client_max_size=4 << 20, middlewares=[self._count_busy])
        app.router.add_get(r"/bytes/{size:\d+}", self._bytes)
        app.router.add_post("/upload", self._upload)
        app.router.add_get(r"/reset/{size:\d+}", self._reset)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0, backlog=1024)
        await site.start()
        self.http_port = self._runner.addresses[0][1]
        loop = asyncio.get_running_loop()
        self._echo = await loop.create_server(_Echo, HOST, 0, backlog=1024)
        self.echo_port = self._echo.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._echo is not None:
            self._echo.close()
        if self._runner is not None:
            await self._runner.cleanup()


class _Echo(asyncio.Protocol):
    """The CONNECT target: sends back every byte it receives, and closes when the peer has."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close our side too


# -- clients -------------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Every request's outcome by kind, and the first few unexpected errors with their details."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    max_examples: int = 50

    def add(self, kind: str, outcome: str) -> None:
        self.counts.setdefault(kind, Counter())[outcome] += 1

    def unexpected(self, kind: str, outcome: str, detail: str, at: float) -> None:
        self.add(kind, outcome)
        if len(self.examples) < self.max_examples:
            self.examples.append({"at_s": round(at, 1), "kind": kind, "outcome": outcome, "detail": detail[:500]})

    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def by_class(self) -> dict[str, int]:
        """Requests that were `ok`, ended by an injected fault, or failed."""
        totals = {"ok": 0, "fault": 0, "unexpected": 0}
        for outcomes in self.counts.values():
            for outcome, n in outcomes.items():
                totals["ok" if outcome == "ok" else "fault" if outcome in FAULT_OUTCOMES else "unexpected"] += n
        return totals


class Unexpected(Exception):
    """The proxy answered wrongly: `str(self)` is the outcome, `detail` what was seen."""

    def __init__(self, outcome: str, detail: str = "") -> None:
        super().__init__(outcome)
        self.detail = detail


def _mismatch(got: bytes, want: bytes) -> str:
    """Where two bodies differ, for the error report."""
    for offset in range(min(len(got), len(want))):
        if got[offset] != want[offset]:
            return (
                f"{len(got)} bytes, expected {len(want)}; first difference at {offset}: {got[offset : offset + 24]!r}"
            )
    return f"{len(got)} bytes, expected {len(want)}"


def _keeps_alive(response: RawResponse) -> bool:
    values = b",".join(response.values(b"connection") + response.values(b"proxy-connection")).lower()
    if b"close" in values:
        return False
    return response.version != b"HTTP/1.0" or b"keep-alive" in values


async def _rest_of_response(head: bytes, reader: asyncio.StreamReader) -> RawResponse:
    """The response whose head was already read: its body, framed by Content-Length or chunked."""
    start, headers = parse_head(head)
    version, status, reason = [*start.split(b" ", 2), b""][:3]
    response = RawResponse(version, int(status), reason, headers, head)
    length = response.header(b"content-length")
    if response.header(b"transfer-encoding") is not None:
        response.body = await read_chunked(reader, READ_TIMEOUT)
    elif length is not None:
        response.body = await asyncio.wait_for(reader.readexactly(int(length)), READ_TIMEOUT)
    else:
        response.body = await asyncio.wait_for(reader.read(), READ_TIMEOUT)
    return response


class Client:
    """One client connection kept busy through the proxy until `stop` is set; see the module docstring."""

    def __init__(self, proxy_port: int, origins: Origins, tally: Tally, rng: random.Random, clock: Callable[[], float]):
        self.proxy_port = proxy_port
        self.origins = origins
        self.tally = tally
        self.rng = rng
        self.clock = clock
        self.next_tag = rng.getrandbits(40) << 20
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    # -- connection and request building

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._conn is None or self._conn[0].at_eof() or self._conn[1].is_closing():
            await self._drop()
            self._conn = await open_raw(self.proxy_port, READ_TIMEOUT)
        return self._conn

    async def _drop(self, *, reset: bool = False) -> None:
        """Close the keep-alive connection (with an RST when `reset`)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        writer = conn[1]
        if reset:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        await close_writer(writer)

    def _tag(self) -> int:
        self.next_tag += 1
        return self.next_tag

    def _url(self, path: str) -> bytes:
        return f"http://{HOST}:{self.origins.http_port}{path}".encode()

    def _head(self, method: bytes, path: str, *extra: bytes) -> bytes:
        host = b"Host: %s:%d\r\n" % (HOST.encode(), self.origins.http_port)
        return b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method, self._url(path), host, b"".join(extra))

    async def _finish(self, response: RawResponse) -> None:
        if not _keeps_alive(response):
            await self._drop()

    # -- the kinds of request

    async def get(self, size: int, *, chunked: bool = False) -> str:
        """A keep-alive GET of `size` bytes; the body must be exactly the one the origin sent."""
        reader, writer = await self._connection()
        tag = self._tag()
        writer.write(self._head(b"GET", f"/bytes/{size}?tag={tag}" + ("&chunked=1" if chunked else "")))
        response = await read_response(reader, timeout=READ_TIMEOUT)
        if response.status != 200:
            raise Unexpected(f"error: status {response.status}", response.head[:200].decode("latin-1"))
        want = tagged_body(tag, size)
        if response.body != want:
            raise Unexpected("error: wrong body", _mismatch(response.body, want))
        await self._finish(response)
        return "ok"

    async def get_small(self) -> str:
        return await self.get(self.rng.randrange(0, 16384))

    async def get_large(self) -> str:
        return await self.get(LARGE_BODY + self.rng.randrange(0, 8192))

    async def get_chunked(self) -> str:
        return await self.get(self.rng.randrange(0, 2 * LARGE_BODY), chunked=True)

    async def post(self, *, chunked: bool = False) -> str:
        """A POST of 1 B to 256 KiB (Content-Length, or chunked in random pieces); the origin's hash must match."""
        reader, writer = await self._connection()
        size = self.rng.randrange(1, 256 << 10)
        body = tagged_body(self._tag(), size)
        if chunked:
            writer.write(self._head(b"POST", "/upload", b"Transfer-Encoding: chunked\r\n"))
            offset = 0
            while offset < size:
                piece = body[offset : offset + self.rng.randrange(1, 65536)]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                offset += len(piece)
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(self._head(b"POST", "/upload", b"Content-Length: %d\r\n" % size) + body)
        await writer.drain()
        response = await read_response(reader, timeout=READ_TIMEOUT)
        if response.status != 200:
            raise Unexpected(f"error: status {response.status}", response.head[:200].decode("latin-1"))
        want = f"{size} {hashlib.sha256(body).hexdigest()}".encode()
        if response.body != want:
            raise Unexpected("error: origin received a different body", f"{response.body[:100]!r}, expected {want!r}")
        await self._finish(response)
        return "ok"

    async def post_length(self) -> str:
        return await self.post()

    async def post_chunked(self) -> str:
        return await self.post(chunked=True)

    async def connect(self) -> str:
        """A CONNECT tunnel to the echo target on a connection of its own, 1-5 echo round trips of up to 64 KiB."""
        reader, writer = await open_raw(self.proxy_port, READ_TIMEOUT)
        try:
            authority = b"%s:%d" % (HOST.encode(), self.origins.echo_port)
            writer.write(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority))
            head = await read_head(reader, READ_TIMEOUT)
            if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                raise Unexpected("error: CONNECT refused", head[:200].decode("latin-1"))
            for _ in range(self.rng.randint(1, 5)):
                message = tagged_body(self._tag(), self.rng.randrange(1, 65536))
                writer.write(message)
                echoed = await asyncio.wait_for(reader.readexactly(len(message)), READ_TIMEOUT)
                if echoed != message:
                    raise Unexpected("error: wrong echo", _mismatch(echoed, message))
        finally:
            await close_writer(writer)
        return "ok"

    async def abort_upload(self) -> str:
        """A POST announcing 1 MiB, of which the client sends a random part, then closes or resets the connection."""
        _, writer = await self._connection()
        body = tagged_body(self._tag(), UPLOAD_ABORT_BODY)
        sent = self.rng.randrange(0, UPLOAD_ABORT_BODY // 2)
        writer.write(self._head(b"POST", "/upload", b"Content-Length: %d\r\n" % UPLOAD_ABORT_BODY) + body[:sent])
        await writer.drain()
        await self._drop(reset=self.rng.random() < 0.5)
        return "aborted"

    async def abort_download(self) -> str:
        """A GET of 2 MiB; the client reads the head and a random part of the body (checked), then closes or resets
        the connection."""
        reader, writer = await self._connection()
        tag = self._tag()
        writer.write(self._head(b"GET", f"/bytes/{DOWNLOAD_ABORT_BODY}?tag={tag}"))
        head = await read_head(reader, READ_TIMEOUT)
        if not head.startswith(b"HTTP/1.1 200"):
            raise Unexpected("error: status", head[:200].decode("latin-1"))
        part = await asyncio.wait_for(reader.readexactly(self.rng.randrange(0, DOWNLOAD_ABORT_BODY // 2)), READ_TIMEOUT)
        want = tagged_body(tag, len(part))
        if part != want:
            raise Unexpected("error: wrong body", _mismatch(part, want))
        await self._drop(reset=self.rng.random() < 0.5)
        return "aborted"

    async def origin_reset(self) -> str:
        """A GET the origin answers with an RST before its head, right after it or within the body: the client
        must get a 502, or a response cut off whose bytes are the start of the right body."""
        reader, writer = await self._connection()
        tag = self._tag()
        size = LARGE_BODY
        # before the head, right after it, within the first 4 KiB (what the proxy reads before splicing), or later
        after = self.rng.choice((-1, 0, self.rng.randrange(1, 4096), self.rng.randrange(4096, size)))
        writer.write(self._head(b"GET", f"/reset/{size}?tag={tag}&after={after}"))
        try:
            head = await read_head(reader, READ_TIMEOUT)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise Unexpected("error: closed without a response", f"after={after}: {exc!r}") from None
        if head.startswith(b"HTTP/1.1 502"):
            response = await _rest_of_response(head, reader)
            await self._finish(response)
            return "502"
        if not head.startswith(b"HTTP/1.1 200"):
            raise Unexpected("error: status", f"after={after}: {head[:200].decode('latin-1')}")
        try:
            got = await asyncio.wait_for(reader.readexactly(size), READ_TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            got = exc.partial
        except ConnectionError:
            got = b""  # reset: what had arrived is gone with the connection
        await self._drop()
        if len(got) == size:
            raise Unexpected("error: a complete body from an origin that reset", f"after={after}")
        want = tagged_body(tag, size)[: len(got)]
        if got != want:
            raise Unexpected("error: cut body differs", f"after={after}: {_mismatch(got, want)}")
        return "cut"

    # -- the loop

    async def run(self, stop: asyncio.Event) -> None:
        kinds = list(WEIGHTS)
        weights = list(WEIGHTS.values())
        while not stop.is_set():
            kind = self.rng.choices(kinds, weights)[0]
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    outcome = await KINDS[kind](self)
            except Unexpected as exc:
                await self._drop()
                self.tally.unexpected(kind, str(exc), exc.detail, self.clock())
                continue
            except Exception as exc:  # anything else on a request is the proxy's failure too
                await self._drop()
                self.tally.unexpected(kind, f"error: {type(exc).__name__}", repr(exc), self.clock())
                continue
            self.tally.add(kind, outcome)
        await self._drop()


# The kinds of request, and how often each is picked (relative weights).
KINDS: dict[str, Callable[[Client], Awaitable[str]]] = {
    "get_small": Client.get_small,
    "get_large": Client.get_large,
    "get_chunked": Client.get_chunked,
    "post": Client.post_length,
    "post_chunked": Client.post_chunked,
    "connect": Client.connect,
    "abort_upload": Client.abort_upload,
    "abort_download": Client.abort_download,
    "origin_reset": Client.origin_reset,
}
WEIGHTS: dict[str, float] = {
    "get_small": 30,
    "get_large": 15,
    "get_chunked": 5,
    "post": 15,
    "post_chunked": 5,
    "connect": 10,
    "abort_upload": 4,
    "abort_download": 4,
    "origin_reset": 6,
}
