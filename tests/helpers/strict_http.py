"""Strict readers of the HTTP/1.1 byte streams on either side of the proxy, for the fuzzer.

A lenient reader guesses where a malformed message ends, the way some origin might, and so can agree with a proxy
that passed on something ambiguous. These readers accept only what RFC 9112 lets a sender write (plus the limits a
proxy that re-frames every message must keep: one Host, one framing, origin-form targets, chunks without
extensions) and stop at the first byte that is not that, naming it. Nothing after such a byte can be read with
confidence, so the stream is not read further.

`read_requests` reads what an origin received on one connection; `read_responses` what a client received.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.helpers.http import Headers, header_values

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FIELD_CHAR = rb"[\x21-\x7e\x80-\xff]"
# name ":" OWS value OWS, where the value is field-vchars with single SP/HTAB runs between them (RFC 9110 §5.5)
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _FIELD_CHAR + rb"(?:[ \t]*" + _FIELD_CHAR + rb")*)?[ \t]*")
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") (\S+) HTTP/1\.1")
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) ([\t \x21-\x7e\x80-\xff]*)")
_ORIGIN_FORM = re.compile(rb"/[\x21\x22\x24-\x7e]*")  # VCHAR but '#': a fragment never goes to an origin
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]{1,5})?")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,15}")
# Request fields that never travel past a proxy as the client wrote them (RFC 9110 §7.6.1).
_HOP_BY_HOP = frozenset({b"proxy-connection", b"keep-alive", b"te", b"trailer", b"proxy-authorization"})


class Malformed(Exception):
    """The stream is not strict HTTP/1.1 at `offset`."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(f"at byte {offset}: {message}")
        self.offset = offset


class Incomplete(Exception):
    """The stream ends inside a message."""


@dataclass
class Message:
    """One request or response read from a stream: `start` and `end` are its offsets in the stream."""

    start: int
    end: int
    start_line: bytes
    headers: Headers
    body: bytes = b""
    chunked: bool = False
    trailers: Headers = field(default_factory=list)

    def values(self, name: bytes) -> list[bytes]:
        return header_values(self.headers, name)


@dataclass
class Request(Message):
    method: bytes = b""
    target: bytes = b""


@dataclass
class Response(Message):
    status: int = 0
    tunnel: bool = False  # the bytes after this response are a tunnel's (101, or a CONNECT's 200)


@dataclass
class Stream:
    """What a strict reader made of one connection's bytes."""

    messages: list[Request] | list[Response]
    problem: str | None = None  # why reading stopped early (None: read to the end or into a tunnel)
    incomplete: bool = False  # the bytes end inside a message
    tunnel_at: int | None = None  # offset where the tunnelled bytes begin

    @property
    def at_boundary(self) -> bool:
        """The bytes so far end exactly after a whole message (or went into a tunnel), with nothing wrong."""
        return self.problem is None and not self.incomplete


def _head(data: bytes, start: int) -> tuple[bytes, list[bytes], int]:
    """The start line and field lines of the head beginning at `start`, and where the head ends."""
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        tail = data[start:]
        _check_line_ends(tail[:-1] if tail.endswith(b"\r") else tail, start)  # a final CR may begin a CRLF
        raise Incomplete
    head = data[start:end]
    _check_line_ends(head, start)
    lines = head.split(b"\r\n")
    return lines[0], lines[1:], end + 4


def _check_line_ends(head: bytes, start: int) -> None:
    """No CR or LF in `head` but as CRLF pairs."""
    stripped = head.replace(b"\r\n", b"  ")
    for char, name in ((b"\r", "CR"), (b"\n", "LF")):
        at = stripped.find(char)
        if at >= 0:
            raise Malformed(start + at, f"bare {name} in a head")


def _fields(lines: list[bytes], start: int) -> Headers:
    headers: Headers = []
    for line in lines:
        match = _FIELD_LINE.fullmatch(line)
        if match is None:
            raise Malformed(start, f"malformed field line {line[:120]!r}")
        headers.append((match.group(1), match.group(2) or b""))
    return headers


def _one(headers: Headers, name: bytes, start: int) -> bytes | None:
    values = header_values(headers, name)
    if len(values) > 1:
        raise Malformed(start, f"{len(values)} {name.decode()} fields: {values!r}")
    return values[0] if values else None


def _framing(headers: Headers, start: int) -> tuple[bool, int]:
    """(chunked, content length) of a message's body: one framing or none, never both, never a doubtful one."""
    te = _one(headers, b"transfer-encoding", start)
    length = _one(headers, b"content-length", start)
    if te is not None:
        if length is not None:
            raise Malformed(start, "Content-Length together with Transfer-Encoding")
        if te.lower().rsplit(b",", 1)[-1].strip(b" \t") != b"chunked":
            raise Malformed(start, f"Transfer-Encoding {te!r} does not end in chunked")
        return True, 0
    if length is not None:
        if _DIGITS.fullmatch(length) is None:
            raise Malformed(start, f"Content-Length {length!r} is not 1 to 18 digits")
        return False, int(length)
    return False, 0


def _chunked(data: bytes, pos: int, message: Message) -> int:
    """Read a chunked body strictly (sizes in hex without extensions, CRLF after each chunk, trailer fields that
    are well-formed); returns where it ends."""
    body = bytearray()
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            if b"\n" in data[pos:] or len(data) - pos > 17:
                raise Malformed(pos, f"malformed chunk size line {data[pos : pos + 40]!r}")
            raise Incomplete
        size_text = data[pos:eol]
        if _CHUNK_SIZE.fullmatch(size_text) is None:
            raise Malformed(pos, f"malformed chunk size line {size_text[:40]!r}")
        size = int(size_text, 16)
        pos = eol + 2
        if size == 0:
            break
        if len(data) < pos + size + 2:
            raise Incomplete
        body += data[pos : pos + size]
        if data[pos + size : pos + size + 2] != b"\r\n":
            raise Malformed(pos + size, "chunk data not followed by CRLF")
        pos += size + 2
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise Incomplete
        line = data[pos:eol]
        _check_line_ends(line, pos)
        pos = eol + 2
        if not line:
            break
        message.trailers.extend(_fields([line], pos))
    message.body = bytes(body)
    message.chunked = True
    return pos


def _body(data: bytes, pos: int, message: Message, chunked: bool, length: int) -> int:
    if chunked:
        return _chunked(data, pos, message)
    if len(data) < pos + length:
        raise Incomplete
    message.body = data[pos : pos + length]
    return pos + length


def _request(data: bytes, start: int) -> Request:
    start_line, lines, pos = _head(data, start)
    match = _REQUEST_LINE.fullmatch(start_line)
    if match is None:
        raise Malformed(start, f"malformed request line {start_line[:200]!r}")
    method, target = match.group(1), match.group(2)
    if not (_ORIGIN_FORM.fullmatch(target) or (target == b"*" and method == b"OPTIONS")):
        raise Malformed(start, f"request target {target[:200]!r} is not in origin form")
    headers = _fields(lines, start)
    host = header_values(headers, b"host")
    if len(host) != 1 or _HOST.fullmatch(host[0]) is None:
        raise Malformed(start, f"Host fields {host!r}: not exactly one valid authority")
    for name, value in headers:
        lname = name.lower()
        if lname in _HOP_BY_HOP:
            raise Malformed(start, f"hop-by-hop field {name.decode()}: {value!r} was forwarded")
    connection = header_values(headers, b"connection")
    upgrade = header_values(headers, b"upgrade")
    # The one Connection a proxy writes towards an origin is its own upgrade pair.
    if (connection or upgrade) and (connection != [b"Upgrade"] or len(upgrade) != 1):
        raise Malformed(start, f"Connection {connection!r} / Upgrade {upgrade!r} is not one upgrade pair")
    chunked, length = _framing(headers, start)
    request = Request(start, 0, start_line, headers, method=method, target=target)
    request.end = _body(data, pos, request, chunked, length)
    return request


def _read_all(data: bytes, one: Callable[[bytes, int], Any], tunnel_after: Callable[[Any], bool]) -> Stream:
    """The messages `one` reads from `data`, one after the other, up to the first problem, the end of the bytes,
    or a message after which they are a tunnel's."""
    stream = Stream(messages=[])
    messages: list[Any] = []
    stream.messages = messages
    pos = 0
    while pos < len(data):
        try:
            message = one(data, pos)
        except Malformed as exc:
            stream.problem = str(exc)
            return stream
        except Incomplete:
            stream.incomplete = True
            return stream
        messages.append(message)
        pos = message.end
        if tunnel_after(message):
            stream.tunnel_at = pos
            return stream
    return stream


def read_requests(data: bytes, tunnel_after: Callable[[Request], bool] = lambda request: False) -> Stream:
    """The requests in the bytes an origin received on one connection. After a request for which `tunnel_after`
    is true (an upgrade the origin accepted) the rest is a tunnel's and is not read."""
    return _read_all(data, _request, tunnel_after)


def _response(data: bytes, start: int) -> Response:
    start_line, lines, pos = _head(data, start)
    match = _STATUS_LINE.fullmatch(start_line)
    if match is None:
        raise Malformed(start, f"malformed status line {start_line[:200]!r}")
    status = int(match.group(1))
    headers = _fields(lines, start)
    response = Response(start, pos, start_line, headers, status=status)
    has_framing = bool(header_values(headers, b"transfer-encoding") or header_values(headers, b"content-length"))
    if status == 101 or (status == 200 and match.group(2) == b"Connection Established" and not has_framing):
        response.tunnel = True
        return response
    if 100 <= status < 200 or status in (204, 304):
        return response
    if not has_framing:
        raise Malformed(start, "response without Content-Length or Transfer-Encoding")
    chunked, length = _framing(headers, start)
    response.end = _body(data, pos, response, chunked, length)
    return response


def read_responses(data: bytes) -> Stream:
    """The responses in the bytes a client received on one connection, up to a tunnel if one was opened."""
    return _read_all(data, _response, lambda response: bool(response.tunnel))
