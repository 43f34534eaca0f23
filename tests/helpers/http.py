"""Raw HTTP/1.x over asyncio streams: read exactly one response, with its framing, and nothing beyond it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

TIMEOUT = 10.0
Headers = list[tuple[bytes, bytes]]


def parse_head(head: bytes) -> tuple[bytes, Headers]:
    """The start line and the header list (names and values as sent, in order) of a head ending in CRLFCRLF."""
    assert head.endswith(b"\r\n\r\n"), head[-200:]
    lines = head[:-4].split(b"\r\n")
    headers: Headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        assert sep and name and name == name.strip(), f"malformed header line {line!r}"
        headers.append((name, value.strip(b" \t")))
    return lines[0], headers


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of `name` (case-insensitive), in order."""
    lname = name.lower()
    return [v for n, v in headers if n.lower() == lname]


@dataclass
class RawResponse:
    """One response as the client received it."""

    version: bytes
    status: int
    reason: bytes
    headers: Headers
    head: bytes
    body: bytes = b""
    chunked: bool = False
    interim: list[bytes] = field(default_factory=list)  # 1xx heads received before this one
    trailers: list[bytes] = field(default_factory=list)  # trailer field lines of a chunked body

    def header(self, name: bytes) -> bytes | None:
        values = header_values(self.headers, name)
        assert len(values) <= 1, f"{name!r} appears {len(values)} times"
        return values[0] if values else None

    def values(self, name: bytes) -> list[bytes]:
        return header_values(self.headers, name)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def read_head(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)


async def read_chunked(
    reader: asyncio.StreamReader, timeout: float = TIMEOUT, trailers: list[bytes] | None = None
) -> bytes:
    """A chunked body, strictly framed (sizes in hex, CRLF after each chunk); trailer lines go to `trailers`
    (none are expected when it is not given)."""
    body = bytearray()
    while True:
        size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
        size = int(size_line[:-2].split(b";", 1)[0], 16)
        if size == 0:
            while (line := await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)) != b"\r\n":
                assert trailers is not None, f"unexpected trailer {line!r}"
                trailers.append(line[:-2])
            return bytes(body)
        body += await asyncio.wait_for(reader.readexactly(size + 2), timeout)
        assert body[-2:] == b"\r\n", "chunk not followed by CRLF"
        del body[-2:]


async def read_response(
    reader: asyncio.StreamReader, *, method: bytes = b"GET", timeout: float = TIMEOUT, skip_interim: bool = True
) -> RawResponse:
    """Read one complete response: 1xx heads are collected (or returned when `skip_interim` is False)."""
    interim: list[bytes] = []
    while True:
        head = await read_head(reader, timeout)
        start, headers = parse_head(head)
        version, status_text, reason = ([*start.split(b" ", 2), b""])[:3]
        status = int(status_text)
        if 100 <= status < 200 and status != 101 and skip_interim:
            interim.append(head)
            continue
        break
    response = RawResponse(version, status, reason, headers, head, interim=interim)
    if method == b"HEAD" or status < 200 or status in (204, 304):
        return response
    te = response.header(b"transfer-encoding")
    length = response.header(b"content-length")
    if te is not None:
        assert te.lower() == b"chunked", f"unexpected Transfer-Encoding {te!r}"
        assert length is None, "Content-Length together with Transfer-Encoding"
        response.body = await read_chunked(reader, timeout, response.trailers)
        response.chunked = True
    elif length is not None:
        response.body = await asyncio.wait_for(reader.readexactly(int(length)), timeout)
    else:
        response.body = await asyncio.wait_for(reader.read(), timeout)  # read until close
    return response


async def expect_eof(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> None:
    """The peer closes the connection without sending anything more."""
    rest = await asyncio.wait_for(reader.read(), timeout)
    assert rest == b"", f"expected the connection to close, got {rest[:200]!r}"


async def open_raw(port: int, timeout: float = TIMEOUT) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=1 << 20), timeout)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), TIMEOUT)


async def exchange(port: int, data: bytes, *, method: bytes = b"GET", timeout: float = TIMEOUT) -> RawResponse:
    """Send `data` on a new connection and read one response (a `Connection: close` exchange)."""
    reader, writer = await open_raw(port, timeout)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader, method=method, timeout=timeout)
    finally:
        await close_writer(writer)


async def answer_then_close(port: int, data: bytes, *, timeout: float = TIMEOUT) -> RawResponse:
    """Send `data` on a new connection, read one response, and check that the proxy then closes the connection
    without another byte (how it ends an exchange it refused)."""
    reader, writer = await open_raw(port, timeout)
    try:
        writer.write(data)
        await writer.drain()
        response = await read_response(reader, timeout=timeout)
        await expect_eof(reader, timeout)
        return response
    finally:
        await close_writer(writer)


def get(url: str) -> bytes:
    """A keep-alive absolute-form GET of `url`, as a client sends it to a proxy."""
    return b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % url.encode()


async def exchanges(port: int, requests: Sequence[bytes], timeout: float = TIMEOUT) -> list[RawResponse]:
    """Send `requests` one after the other on one connection, each once the response before it was read."""
    reader, writer = await open_raw(port, timeout)
    responses = []
    try:
        for request in requests:
            writer.write(request)
            responses.append(await read_response(reader, timeout=timeout))
    finally:
        await close_writer(writer)
    return responses
