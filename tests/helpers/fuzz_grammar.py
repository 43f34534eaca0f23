"""Hypothesis strategies for what a forward proxy's clients may send: HTTP/1.x requests, well-formed or not.

A request is built from a grammar (method, target, version, header fields, the framing fields and a body) whose
every choice is known to be either *clean* (RFC 9112 and the README say the proxy must forward it) or not. A
connection is a few requests pipelined, then optionally mutated byte by byte. Generation does not know the ports of
the servers it will be sent to, so a request is a sequence of `Piece`s in which ports and the marker path are
slots, filled in by `render`; slots render at a fixed width, so that Content-Length values and chunk sizes can be
computed here.

Every request aimed at the recording origin carries a marker path `/fuzz/<example>/<connection>/<index>/`, and so
does every request hidden in a body (index `INNER + ...`), which lets the test attribute each request the origin
received to the client connection and the request it came from. Mutations never touch the marker, nor the
authority of a target (a changed host name would be looked up in the DNS, a changed port could reach another
server on the machine); `protected` pieces are left alone too.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from hypothesis import strategies as st

INNER = 1000  # marker indices of requests hidden inside bodies start here
PORT_WIDTH = 5
MARKER_WIDTH = len(b"/fuzz/000000/0/0000/")
ACCEPT_UPGRADE = b"accept-upgrade/"  # after the marker: the origin accepts this request's Upgrade


class Slot(enum.Enum):
    """A value known only when the example runs."""

    ORIGIN_PORT = "origin"
    SINK_PORT = "sink"
    PROXY_PORT = "proxy"


class Marker(NamedTuple):
    """The marker path of request `number` of the connection it is sent on."""

    number: int


class Piece(NamedTuple):
    """A run of a request's bytes: literal (left alone by mutations when `protected`), or a port or marker slot
    (always protected)."""

    content: bytes | Slot | Marker
    protected: bool = False

    def __repr__(self) -> str:  # long values stay readable in Hypothesis's report of a failing example
        content = self.content
        if isinstance(content, bytes) and len(content) > 80:
            return f"Piece({content[:60]!r}...{len(content)} bytes, {self.protected})"
        return f"Piece({content!r}, {self.protected})"


class Ports(NamedTuple):
    """The ports the slots stand for in one example."""

    origin: int
    sink: int
    proxy: int


def lit(data: bytes) -> Piece:
    """Bytes that mutations may change."""
    return Piece(data)


def fixed(data: bytes) -> Piece:
    """Bytes that mutations leave alone (host names, ports, framing a known-bug exclusion needs intact)."""
    return Piece(data, True)


def marker(example: int, conn: int, index: int) -> bytes:
    """The path that names request `index` of client connection `conn` in `example`; fixed width."""
    return b"/fuzz/%06d/%d/%04d/" % (example, conn, index)


def width(pieces: Sequence[Piece]) -> int:
    """The length of `pieces` once rendered."""
    total = 0
    for piece in pieces:
        content = piece.content
        if isinstance(content, Slot):
            total += PORT_WIDTH
        elif isinstance(content, Marker):
            total += MARKER_WIDTH
        else:
            total += len(content)
    return total


def render(pieces: Sequence[Piece], ports: Ports, example: int, conn: int) -> tuple[bytes, bytearray]:
    """The bytes of `pieces`, and a mask that is 1 for every byte a mutation must not change."""
    out = bytearray()
    mask = bytearray()
    for piece in pieces:
        content = piece.content
        if isinstance(content, Slot):
            port = {Slot.ORIGIN_PORT: ports.origin, Slot.SINK_PORT: ports.sink, Slot.PROXY_PORT: ports.proxy}[content]
            data = b"%0*d" % (PORT_WIDTH, port)
            protected = True
        elif isinstance(content, Marker):
            data = marker(example, conn, content.number)
            protected = True
        else:
            data = content
            protected = piece.protected
        out += data
        mask += (b"\x01" if protected else b"\x00") * len(data)
    return bytes(out), mask


@dataclass(frozen=True)
class Request:
    """One generated request.

    `clean`: every choice in it is one the proxy must accept and forward. `ends`: a clean request after which the
    connection carries no further request (Connection: close, HTTP/1.0 without keep-alive, an Upgrade, CONNECT).
    `tunnel`: a clean CONNECT (answered by the proxy with 200 and a tunnel). `inner`: marker indices of the
    requests hidden in its body, which must never reach the origin as requests while the framing is intact.
    """

    index: int
    pieces: tuple[Piece, ...]
    clean: bool
    ends: bool = False
    tunnel: bool = False
    inner: tuple[int, ...] = ()
    summary: str = ""


class Mutation(NamedTuple):
    """A byte-level change: `position` counts among the bytes the op may touch (modulo their number)."""

    op: str  # flip, replace, insert, delete, duplicate
    position: int
    value: int
    length: int


@dataclass(frozen=True)
class Connection:
    """Requests pipelined on one client connection, the mutations applied to their bytes, and the offsets at which
    the bytes are split into separate writes."""

    requests: tuple[Request, ...]
    mutations: tuple[Mutation, ...]
    cuts: tuple[int, ...]

    def pieces(self) -> list[Piece]:
        return [piece for request in self.requests for piece in request.pieces]


def mutate(data: bytes, mask: bytearray, mutations: Sequence[Mutation]) -> bytes:
    """Apply `mutations` to the bytes not protected by `mask`. An insertion or a copy goes only between two
    unprotected bytes (or at either end of the data), so a protected run never grows at its edges."""
    buf = bytearray(data)
    prot = bytearray(mask)
    for mutation in mutations:
        n = len(buf)
        if mutation.op == "insert":
            allowed = [i for i in range(n + 1) if (i == 0 or not prot[i - 1]) and (i == n or not prot[i])]
        else:
            allowed = [i for i in range(n) if not prot[i]]
        if not allowed:
            continue
        at = allowed[mutation.position % len(allowed)]
        if mutation.op == "flip":
            buf[at] ^= mutation.value or 1
        elif mutation.op == "replace":
            buf[at] = mutation.value
        elif mutation.op == "insert":
            buf[at:at] = bytes([mutation.value])
            prot[at:at] = b"\x00"
        elif mutation.op == "delete":
            del buf[at]
            del prot[at]
        elif mutation.op == "duplicate":
            end = at
            while end < n and end - at < mutation.length and not prot[end]:
                end += 1
            if end < n and prot[end]:
                continue  # the copy would go right before a protected run
            span = bytes(buf[at:end])
            buf[end:end] = span
            prot[end:end] = b"\x00" * len(span)
    return bytes(buf)


# -- vocabulary --------------------------------------------------------------------------------------------------

CLEAN_METHODS = (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE")
ODD_METHODS: tuple[bytes, ...] = (
    b"get",
    b"Get",
    b"gET",
    b"PROPFIND",
    b"PURGE",
    b"MKCOL",
    b"SEARCH",
    b"QUERY",
    b"FOO",
    b"BREW",
    b"PRI",
)
ODD_METHODS += (b"G", b"GETT", b"-", b"CONNECTX", b"connect", b"GET/", b"\xc7ET", b"", b"POST\x00", b"M-SEARCH")
ODD_VERSIONS: tuple[bytes, ...] = (
    b"HTTP/1.2",
    b"HTTP/2.0",
    b"HTTP/0.9",
    b"http/1.1",
    b"HTTP/1.1 ",
    b"HTTP/1",
    b"HTTP/11",
    b"HTTP/3",
)
ODD_VERSIONS += (b"HTTP/1.01", b"HTTP/ 1.1", b"", b"HTTP/1.1\x00", b"HTTP/1.x", b"HTTPS/1.1", b"HTTP/1.0 x")

# The parts of a request that can be made odd; a request makes none, one or two of them odd. The framing, where
# smuggling happens, three times as often as the others.
COMPONENTS: tuple[str, ...] = (
    "framing",
    "method",
    "target",
    "framing",
    "version",
    "line",
    "host",
    "connection",
    "expect",
    "framing",
)
COMPONENTS += ("fields", "end")

# Per-character text costs a draw a character: names and values come from vocabularies instead.
tokens = st.sampled_from(
    (b"A", b"Foo", b"x-y", b"Trace", b"a.b", b"_u", b"~t", b"!#$%&'*+-.^_`|~", b"Accept", b"Cookie", b"Referer")
)
clean_text = st.sampled_from(
    (b"", b"v", b"text/html", b"a, b", b'"quoted"', b"x=1; y=2", b"gzip", b"ABC def", b"()<>@,;:\\/[]?={}", b"~")
)


def sentinel_request(origin_port: int, mark: bytes) -> bytes:
    """The plain request the test sends after every example to see that the proxy still serves."""
    return b"GET http://127.0.0.1:%d%b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % (origin_port, mark)


# -- targets -----------------------------------------------------------------------------------------------------

_CLEAN_PATH_PARTS = st.sampled_from(
    (b"a/", b"b", b"%20", b"%2F", b"%00", b"%ff", b"%C3%A9", b"../", b"./", b"//", b";p=1", b"-._~!$&'()*+,;=:@")
) | st.sampled_from((b"?", b"?a=1&b=2", b"?q=/x?y", b"?%7E", b"#", b"#frag", b"#f/?g", b"?a#b"))
_ODD_PATH_PARTS = st.sampled_from(
    (
        b'"',
        b"<",
        b">",
        b"\\",
        b"^",
        b"`",
        b"{",
        b"|",
        b"}",
        b" ",
        b"\x00",
        b"\x7f",
        b"\xc3\xa9",
        b"\t",
        b"\r",
        b"\n",
        b"[",
    )
)


@st.composite
def path_suffixes(draw: st.DrawFn, odd: bool) -> bytes:
    """What follows the marker: path segments, escapes, a query, a fragment; `odd`: with a byte or escape that
    RFC 3986 does not allow."""
    parts = draw(st.lists(_CLEAN_PATH_PARTS, max_size=3))
    if odd:
        parts.insert(draw(st.integers(0, len(parts))), draw(_ODD_PATH_PARTS))
    return b"".join(parts)


ODD_ORIGIN_AUTHORITIES = (
    b"localhost:",  # from /etc/hosts; whether it is ::1 first depends on the machine
    b"127.1:",
    b"2130706433:",
    b"[::ffff:127.0.0.1]:",
    b"127.000.000.001:",
)


@st.composite
def targets(draw: st.DrawFn, index: int, odd: bool) -> tuple[list[Piece], str]:
    """A request target and its kind. Clean: absolute-form to the origin with the marker. Odd: another spelling
    of the origin's address, an odd path, or a form or destination the proxy refuses."""
    mark = Piece(Marker(index))
    if not odd:
        scheme = draw(st.sampled_from([b"http://", b"http://", b"HTTP://", b"Http://"]))
        return [
            lit(scheme),
            fixed(b"127.0.0.1:"),
            Piece(Slot.ORIGIN_PORT),
            mark,
            lit(draw(path_suffixes(False))),
        ], "origin"
    kinds = ("origin", "elsewhere", "bad-authority", "form", "idna")
    kind = draw(st.sampled_from(kinds))
    suffix = lit(draw(path_suffixes(False)))
    if kind == "origin":
        variant = draw(st.sampled_from(["path", "scheme", "host"]))
        scheme = b"ws://" if variant == "scheme" else b"http://"
        host = draw(st.sampled_from(ODD_ORIGIN_AUTHORITIES)) if variant == "host" else b"127.0.0.1:"
        if variant == "path":
            suffix = lit(draw(path_suffixes(True)))
        return [lit(scheme), fixed(host), Piece(Slot.ORIGIN_PORT), mark, suffix], "origin"
    if kind == "elsewhere":
        # Answered by the proxy itself: refused, a loop, an https:// URL, or IPv6 where nothing listens.
        choice = draw(st.sampled_from(["refused", "https", "v6", "loop"]))
        authority = {
            "refused": [fixed(b"127.0.0.1:1")],
            "loop": [fixed(b"127.0.0.1:"), Piece(Slot.PROXY_PORT)],
            "https": [fixed(b"127.0.0.1:"), Piece(Slot.ORIGIN_PORT)],
            "v6": [fixed(b"[::1]:"), Piece(Slot.ORIGIN_PORT)],
        }[choice]
        scheme = b"https://" if choice == "https" else b"http://"
        return [lit(scheme), *authority, mark, suffix], choice
    if kind == "bad-authority":
        options: list[list[Piece]] = [
            [fixed(b"127.0.0.1:0")],
            [fixed(b"127.0.0.1:65536")],
            [fixed(b"127.0.0.1:99999")],
            [fixed(b"127.0.0.1:")],
            [fixed(b"127.0.0.1:-1")],
            [fixed(b"127.0.0.1:+"), Piece(Slot.ORIGIN_PORT)],
            [fixed(b"127.0.0.1:0x50")],
            [fixed(b"127.0.0.1:"), Piece(Slot.ORIGIN_PORT), fixed(b"x")],
            [fixed(b"user:pw@127.0.0.1:"), Piece(Slot.ORIGIN_PORT)],
            [fixed(b"@127.0.0.1:"), Piece(Slot.ORIGIN_PORT)],
            [fixed(b":"), Piece(Slot.ORIGIN_PORT)],
            [fixed(b"")],
            [fixed(b"[::1")],
            [fixed(b"[::1]x:"), Piece(Slot.ORIGIN_PORT)],
            [fixed(b"[]:"), Piece(Slot.ORIGIN_PORT)],
            [fixed(b"127.0.0.1%2e:"), Piece(Slot.ORIGIN_PORT)],
            [fixed(b"127.0.0.1\\:"), Piece(Slot.ORIGIN_PORT)],
        ]
        return [lit(b"http://"), *draw(st.sampled_from(options)), mark, suffix], "bad-authority"
    if kind == "idna":
        # Host names that the idna codec refuses (a label over 63 characters, an empty label): before any DNS query.
        host = draw(st.sampled_from([b"a" * 64 + b".example", b"a" * 200, b"a..b", b".a", b"x." + b"b" * 70]))
        return [lit(b"http://"), fixed(host + b":"), Piece(Slot.ORIGIN_PORT), mark, suffix], "idna"
    # Forms a forward proxy refuses outright: origin-form, authority-form, asterisk, other schemes.
    form = draw(st.sampled_from(["origin-form", "authority-form", "asterisk", "ftp", "no-scheme"]))
    pieces = {
        "origin-form": [mark, suffix],
        "authority-form": [fixed(b"127.0.0.1:"), Piece(Slot.ORIGIN_PORT)],
        "asterisk": [lit(b"*")],
        "ftp": [lit(b"ftp://"), fixed(b"127.0.0.1:"), Piece(Slot.ORIGIN_PORT), mark],
        "no-scheme": [fixed(b"//127.0.0.1:"), Piece(Slot.ORIGIN_PORT), mark],
    }[form]
    return pieces, form


CONNECT_TARGETS: tuple[tuple[Piece, ...], ...] = (
    (fixed(b"127.0.0.1:"), Piece(Slot.PROXY_PORT)),  # loop
    (fixed(b"127.0.0.1:1"),),  # refused
    (fixed(b"[::1]:"), Piece(Slot.SINK_PORT)),  # nothing listens there
    (fixed(b"127.0.0.1"),),  # no port
    (fixed(b"127.0.0.1:0"),),
    (fixed(b"127.0.0.1:99999"),),
    (fixed(b"http://127.0.0.1:"), Piece(Slot.SINK_PORT), fixed(b"/")),
    (fixed(b"user@127.0.0.1:"), Piece(Slot.SINK_PORT)),
    (fixed(b"/"),),
    (fixed(b"*"),),
)


# -- header fields -----------------------------------------------------------------------------------------------


@st.composite
def field_values(draw: st.DrawFn, odd: bool) -> bytes:
    """A field value: clean (text, whitespace around it, HTAB inside, long) or with a byte a value may not hold,
    obs-text, or too long for any head."""
    if not odd:
        kind = draw(st.sampled_from(["text", "text", "text", "ows", "tab", "long"]))
        if kind == "text":
            return draw(clean_text)
        if kind == "ows":
            return draw(st.sampled_from([b" ", b"\t", b"  "])) + draw(clean_text) + draw(st.sampled_from([b" ", b"\t"]))
        if kind == "tab":
            return b"a\tb"
        return b"v" * draw(st.sampled_from([1000, 8000, 30000]))
    kind = draw(st.sampled_from(["byte", "byte", "obs-text", "huge"]))
    if kind == "huge":
        return b"v" * draw(st.sampled_from([65536, 70000]))
    if kind == "obs-text":
        return b"caf\xc3\xa9 \xff\x80"
    odd_byte = draw(st.sampled_from([b"\x00", b"\x01", b"\x1f", b"\x7f", b"\r", b"\n", b"\x0b", b"\x0c", b"\r\r"]))
    return b"a" + odd_byte + b"b"


ODD_NAMES = (b"X-A ", b"X A", b"X\x00A", b"X(A)", b"X@A", b"", b"\xffX", b"X\tA", b"X:A", b" X-A", b"X\rA", b"X\nA")


@st.composite
def generic_fields(draw: st.DrawFn, odd: bool) -> list[Piece]:
    """One field line that means nothing to the proxy; `odd`: its name, value or line ending is malformed."""
    part = draw(st.sampled_from(["name", "value", "ending"])) if odd else ""
    name = draw(st.sampled_from(ODD_NAMES)) if part == "name" else b"X-" + draw(tokens)
    value = draw(field_values(part == "value"))
    ending = b"\r\n"
    if part == "ending":
        ending = draw(st.sampled_from([b"\n", b"\r\n folded\r\n", b"\r\n\tfolded\r\n", b"\r", b"\r\n \r\n"]))
    return [lit(name + b":" + draw(st.sampled_from([b" ", b""])) + value + ending)]


_TRACE_ID = b"771a43a4192642f0b136d5159a501700"
_SENTRY_TRACES = (
    b"sentry-trace: " + _TRACE_ID + b"-b7c1a8c2f6e04e43-1",
    b"sentry-trace: " + _TRACE_ID + b"-b7c1a8c2f6e04e43",
    b"sentry-trace: " + _TRACE_ID + b"-b7c1a8c2f6e04e43-0",
    b"sentry-trace: zz-b7c1a8c2f6e04e43-1",
    b"sentry-trace: " + b"0" * 32 + b"-b7c1a8c2f6e04e43-1",
    b"sentry-trace: ",
)
_BAGGAGES = (
    b"baggage: sentry-trace_id=" + _TRACE_ID + b",sentry-public_key=abc123,sentry-sampled=true,vendor=acme",
    b"baggage: sentry-sample_rand=0.5,other=1",
    b"baggage: sentry-org_id=42",
    b"baggage: vendor=acme,sentry-sampled=false",
    b"baggage: =,,sentry-trace_id",
    b"baggage: ",
    b"baggage: sentry-release=a%401.0,sentry-environment=prod%20x",
)
_REPEATED_BAGGAGES = (
    b"baggage: sentry-sampled=true,sentry-sampled=false",
    b"baggage: sentry-trace_id=" + _TRACE_ID + b",vendor=1,sentry-trace_id=" + _TRACE_ID,
)
_TRACEPARENT = b"traceparent: 00-" + _TRACE_ID + b"-b7c1a8c2f6e04e43-01"


# (sentry-trace, baggage, traceparent) combinations, one draw each: most requests carry none or one of each.
_TRACE_COMBINATIONS = st.sampled_from(
    [
        (),
        *((t,) for t in _SENTRY_TRACES),
        *((_SENTRY_TRACES[i % len(_SENTRY_TRACES)], b) for i, b in enumerate(_BAGGAGES)),
        *((b,) for b in _BAGGAGES[:3]),
        (_SENTRY_TRACES[0], _SENTRY_TRACES[3]),
        (_SENTRY_TRACES[3], _SENTRY_TRACES[0], _BAGGAGES[0]),
        (_TRACEPARENT,),
        (_SENTRY_TRACES[0], _BAGGAGES[0], _TRACEPARENT),
        (_SENTRY_TRACES[3], _TRACEPARENT),
    ]
)
_ANY_TRACE_COMBINATION = _TRACE_COMBINATIONS | st.sampled_from(
    [
        *((_SENTRY_TRACES[0], b) for b in _REPEATED_BAGGAGES),
        (_SENTRY_TRACES[0], _BAGGAGES[0], _BAGGAGES[0]),
        (_BAGGAGES[1], _BAGGAGES[2]),
    ]
)


@st.composite
def trace_fields(draw: st.DrawFn) -> list[Piece]:
    """Incoming trace headers, valid or not: the proxy reads and replaces them, and must cope with any. Two
    baggage fields may repeat a sentry-* key between them."""
    combination = draw(_ANY_TRACE_COMBINATION)
    return [lit(f + b"\r\n") for f in combination]


# -- framing and bodies ------------------------------------------------------------------------------------------


@st.composite
def payloads(draw: st.DrawFn, index: int) -> tuple[list[Piece], tuple[int, ...]]:
    """Body bytes: random, or a request for the origin hidden in them (smuggled if the framing is misread)."""
    pieces: list[Piece] = []
    inner: list[int] = []
    for k in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            pieces.append(lit(draw(st.binary(max_size=24))))
        else:
            mark = INNER + 10 * index + k
            inner.append(mark)
            pieces += [
                lit(b"GET http://"),
                fixed(b"127.0.0.1:"),
                Piece(Slot.ORIGIN_PORT),
                Piece(Marker(mark)),
                lit(b" HTTP/1.1\r\nHost: h\r\n\r\n"),
            ]
    return pieces, tuple(inner)


def _length_field(value: bytes, name: bytes = b"Content-Length", sep: bytes = b": ") -> Piece:
    return lit(name + sep + value + b"\r\n")


CHUNK_FAULTS = ("size", "crlf", "lf", "overflow", "ext", "trailer", "short", "no-last")


@st.composite
def chunked_bodies(draw: st.DrawFn, index: int, odd: bool) -> tuple[list[Piece], tuple[int, ...]]:
    """A chunked body: clean (sizes in either case, leading zeros, extensions, trailer fields), or with one
    malformed part when `odd`."""
    fault = draw(st.sampled_from(CHUNK_FAULTS)) if odd else None
    pieces: list[Piece] = []
    inner: list[int] = []
    chunks = draw(st.integers(1 if fault in ("size", "crlf", "lf", "overflow", "ext", "short") else 0, 3))
    faulty = draw(st.integers(0, max(chunks - 1, 0)))
    for c in range(chunks):
        data, hidden = draw(payloads(index))
        inner += hidden
        size = width(data)
        if size == 0:
            data, size = [lit(b"x")], 1  # a chunk of size 0 is the last chunk
        size_text = draw(st.sampled_from([b"%x" % size, b"%X" % size, b"0%x" % size]))
        ext = draw(st.sampled_from([b"", b"", b"", b";a=b", b";a", b";a=b;c=d"]))
        crlf = b"\r\n"
        if c == faulty:
            if fault == "size":
                size_text = draw(st.sampled_from([b"g", b"-1", b"0x%x" % size, b" %x" % size, b"%x " % size]))
            elif fault == "overflow":
                size_text = b"1" + b"0" * draw(st.integers(16, 20))
            elif fault == "crlf":
                crlf = draw(st.sampled_from([b"", b"\r", b"xx"]))
            elif fault == "lf":
                crlf = b"\n"
            elif fault == "short":
                size_text = b"%x" % (size + draw(st.integers(1, 64)))
            elif fault == "ext":
                ext = draw(st.sampled_from([b";", b"; a=b", b';a="q"', b";\x00", b";a=b\n"]))
        pieces += [lit(size_text + ext + b"\r\n"), *data, lit(crlf)]
    if fault == "no-last":
        return pieces, tuple(inner)
    last = draw(st.sampled_from([b"0", b"0", b"00", b"0;x=y"]))
    trailer = draw(st.sampled_from([b"", b"", b"", b"X-Trailer: v\r\n"]))
    if fault == "trailer":
        # Content-Length is one of the fields a sender must not put in a trailer (RFC 9110 §6.5.1)
        trailer = draw(st.sampled_from([b"X T: v\r\n", b"X: \x00\r\n", b"X: v\n", b"X\r\n", b"Content-Length: 5\r\n"]))
    pieces += [lit(last + b"\r\n"), lit(trailer + b"\r\n")]
    return pieces, tuple(inner)


BAD_TE = (
    [b"Transfer-Encoding: gzip"],
    [b"Transfer-Encoding: identity"],
    [b"Transfer-Encoding: chunked, gzip"],
    [b"Transfer-Encoding: chunked, chunked"],
    [b"Transfer-Encoding: ,chunked"],
    [b"Transfer-Encoding: xchunked"],
    [b"Transfer-Encoding: chunked;q=1"],
    [b'Transfer-Encoding: "chunked"'],
    [b"Transfer-Encoding: chunk"],
    [b"Transfer-Encoding: \x0bchunked"],
    [b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"],
    [b"Transfer-Encoding : chunked"],
    [b"Transfer-Encoding:\r\n chunked"],
    [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
)


@st.composite
def framings(draw: st.DrawFn, index: int, http11: bool, odd: bool) -> tuple[list[Piece], list[Piece], tuple[int, ...]]:
    """The framing fields and the body: (field lines, body pieces, inner markers). Clean: none, a Content-Length
    or chunked (HTTP/1.1). Odd: a doubtful length, a Transfer-Encoding that is not chunked last, both framings, a
    malformed chunked body, or bytes after a head that has no framing."""
    kinds = ["none", "length", "chunked"] if http11 else ["none", "length"]
    if odd:
        kinds = ["bad-length", "bad-te", "both", "unframed", "bad-chunks", "bad-chunks"]
        kinds += [] if http11 else ["chunked"]  # Transfer-Encoding in HTTP/1.0
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return [], [], ()
    if kind == "unframed":
        # Bytes after a head without framing are the start of the next request, not a body.
        return [], [lit(draw(st.sampled_from([b"x", b"\r\n", b"\r\n\r\n", b"hello", b"\x00"])))], ()
    if kind in ("length", "bad-length"):
        body, inner = draw(payloads(index))
        n = width(body)
        if kind == "length":
            name = draw(st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH"]))
            value = draw(st.sampled_from([b"%d" % n, b"%d" % n, b" %d " % n, b"00%d" % n, b"%d\t" % n]))
            return [lit(name + b":"), lit(b" " + value), lit(b"\r\n")], body, inner
        options = [
            [_length_field(b"+%d" % n)],
            [_length_field(b"-%d" % n)],
            [_length_field(b"0x%x" % n)],
            [_length_field(b"%d, %d" % (n, n))],
            [_length_field(b"%d,%d" % (n, n + 1))],
            [_length_field(b"%d" % n), _length_field(b"%d" % n)],
            [_length_field(b"%d" % n), _length_field(b"%d" % (n + 1))],
            [_length_field(b"%d %d" % (n, n))],
            [_length_field(b"")],
            [_length_field(b"%d;" % n)],
            [_length_field(b"%de0" % n)],
            [_length_field(b"%d\x00" % n)],
            [_length_field(b"18446744073709551616")],
            [_length_field(b"99999999999999999999999")],
            [_length_field(b"%d" % n, b"Content-Length", b" : ")],
            [_length_field(b"%d" % n, b"Content-Length", b":\r\n ")],
            [_length_field(b"18446744073709551615")],
            [_length_field(b"1000000000000")],
            [_length_field(b"%d" % (n + draw(st.integers(1, 50))))],
        ]
        return draw(st.sampled_from(options)), body, inner
    body, inner = draw(chunked_bodies(index, kind == "bad-chunks"))
    if kind in ("chunked", "bad-chunks"):
        value = draw(st.sampled_from([b"chunked", b"chunked", b"Chunked", b"CHUNKED", b"gzip, chunked", b" chunked "]))
        name = draw(st.sampled_from([b"Transfer-Encoding", b"transfer-encoding"]))
        return [lit(name + b": " + value + b"\r\n")], body, inner
    if kind == "bad-te":
        return [lit(f + b"\r\n") for f in draw(st.sampled_from(BAD_TE))], body, inner
    # Both framings: the classic CL.TE / TE.CL shapes.
    n = width(body)
    length = draw(st.sampled_from([b"%d" % n, b"0", b"4", b"%d" % max(n - 5, 0)]))
    cl = lit(b"Content-Length: " + length + b"\r\n")
    te = lit(b"Transfer-Encoding: chunked\r\n")
    return ([cl, te] if draw(st.booleans()) else [te, cl]), body, inner


# -- requests ----------------------------------------------------------------------------------------------------


@st.composite
def requests(draw: st.DrawFn, index: int, first: bool) -> Request:
    """Request `index` of a connection (`first` on it, or pipelined behind others): clean but for the components
    it makes odd (most requests: none)."""
    if draw(st.sampled_from([False] * 4 + [True])):
        return draw(connect_requests(index, first))
    faults = draw(st.sampled_from((0, 0, 0, 0, 0, 1, 1, 2)))
    odd = {draw(st.sampled_from(COMPONENTS)) for _ in range(faults)}

    method = draw(st.sampled_from(ODD_METHODS if "method" in odd else CLEAN_METHODS))
    target, target_kind = draw(targets(index, "target" in odd))
    if "version" in odd:
        version = draw(st.sampled_from(ODD_VERSIONS))
    else:
        version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    http11 = version != b"HTTP/1.0"
    sep, eol = b" ", b"\r\n"
    if "line" in odd:
        sep, eol = draw(st.sampled_from([(b"  ", eol), (b"\t", eol), (b" \t", eol), (sep, b"\n"), (sep, b"\r")]))

    fields: list[list[Piece]] = []
    if "host" in odd:
        hosts = draw(st.sampled_from([[b"h", b"h"], [b"h", b"example.com"], [b""], [b"a b"], [b"h\x00"], [b"h:"]]))
        if http11 and draw(st.booleans()):  # HTTP/1.1 without Host is odd too
            hosts = []
    else:
        hosts = [draw(st.sampled_from([b"h", b"example.com", b"127.0.0.1:1"]))] if http11 or draw(st.booleans()) else []
    fields += [[lit(b"Host: " + h + b"\r\n")] for h in hosts]

    connection: bytes | None = None
    upgrade: bytes | None = None
    if "connection" in odd:
        choice = draw(st.sampled_from(["connection-only", "upgrade-only", "proxy-connection-10", "odd-token"]))
        if choice == "connection-only":
            connection = b"upgrade"
        elif choice == "upgrade-only":
            upgrade = b"websocket"
        elif choice == "odd-token":
            connection = draw(st.sampled_from([b"close\x00", b"cl ose", b",", b"close, close, keep-alive"]))
        else:
            fields.append([lit(b"Proxy-Connection: keep-alive\r\n")])
            version, http11 = b"HTTP/1.0", False
    else:
        connection = draw(
            st.sampled_from([None, None, None, b"keep-alive", b"close", b"Close", b"x-hop", b"keep-alive, x-hop"])
        )
        if draw(st.sampled_from([False] * 5 + [True])):
            connection, upgrade = b"upgrade", draw(st.sampled_from([b"websocket", b"h2c"]))
        if http11 and draw(st.sampled_from([False] * 5 + [True])):
            fields.append([lit(b"Proxy-Connection: keep-alive\r\n")])
    is_upgrade = connection == b"upgrade" and upgrade is not None
    if connection is not None:
        fields.append([lit(b"Connection: " + connection + b"\r\n")])
        if b"x-hop" in connection:
            fields.append([lit(b"X-Hop: must not reach the origin\r\n")])
    if upgrade is not None:
        fields.append([lit(b"Upgrade: " + upgrade + b"\r\n")])
    accepted = is_upgrade and http11 and target_kind == "origin" and draw(st.booleans())
    if accepted:
        target = [*target[:4], fixed(ACCEPT_UPGRADE), *target[4:]]

    expect = draw(st.sampled_from([b"100-Continue", b"foo", b"100-continue, foo"])) if "expect" in odd else None
    if "expect" not in odd and draw(st.sampled_from([False] * 4 + [True])):
        expect = b"100-continue"
    if expect is not None:
        fields.append([lit(b"Expect: " + expect + b"\r\n")])

    frame_fields, body, inner = draw(framings(index, http11, "framing" in odd))
    fields.append(frame_fields)
    fields.append(draw(trace_fields()))
    generic = [draw(generic_fields(False)) for _ in range(draw(st.integers(0, 2)))]
    if "fields" in odd:
        generic.append(draw(generic_fields(True)))
    fields += generic
    ordered = draw(st.permutations(fields)) if draw(st.sampled_from((False, False, True))) else fields
    head_end = b"\n" if "end" in odd else b"\r\n"

    line = [lit(method + sep), *target, lit((sep + version if version else b"") + eol)]
    pieces = (*line, *(p for f in ordered for p in f), lit(head_end), *body)
    clean = not odd and not (method == b"TRACE" and body)  # a TRACE must not carry content (RFC 9110 §9.3.8)
    # The proxy refuses an Upgrade request with a chunked body (README): it would have to count chunks itself.
    clean = clean and not (
        is_upgrade and any(b"chunked" in p.content.lower() for p in frame_fields if isinstance(p.content, bytes))
    )
    if http11:
        keep_alive = connection not in (b"close", b"Close")
    else:
        keep_alive = connection in (b"keep-alive", b"keep-alive, x-hop")
    summary = f"{method!r} {target_kind} {version!r}" + (f" odd {sorted(odd)}" if odd else "")
    # An Upgrade the origin refuses leaves an ordinary HTTP connection; one it accepts ends the HTTP.
    return Request(index, pieces, clean, ends=clean and (accepted or not keep_alive), inner=inner, summary=summary)


@st.composite
def connect_requests(draw: st.DrawFn, index: int, first: bool) -> Request:
    """CONNECT to the tunnel sink (clean when it is the first request), or somewhere it is refused."""
    clean = draw(st.booleans())
    if clean:
        target: tuple[Piece, ...] = (fixed(b"127.0.0.1:"), Piece(Slot.SINK_PORT))
        version = b"HTTP/1.1"
        host = [fixed(b"Host: 127.0.0.1:"), Piece(Slot.SINK_PORT), lit(b"\r\n")]
    else:
        target = draw(st.sampled_from(CONNECT_TARGETS))  # a CONNECT loop is refused before anything is queued
        version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0"]))
        host = draw(st.sampled_from([[], [lit(b"Host: h\r\n")]]))
    tail = draw(st.sampled_from([b"", b"", b"tunnelled bytes", b"GET / HTTP/1.1\r\n\r\n"]))
    pieces = (lit(b"CONNECT "), *target, lit(b" " + version + b"\r\n"), *host, lit(b"\r\n"), lit(tail))
    clean = clean and first
    return Request(index, pieces, clean, ends=clean, tunnel=clean, summary="CONNECT")


mutations = st.builds(
    Mutation,
    op=st.sampled_from(["flip", "replace", "insert", "delete", "duplicate"]),
    position=st.integers(0, 1 << 16),
    value=st.sampled_from([0x0D, 0x0A, 0x00, 0x20, 0x09, 0x3A, 0x2C, 0x3B, 0x30, 0x41, 0x7F, 0xFF])
    | st.integers(0, 255),
    length=st.integers(1, 16),
)


@st.composite
def connections(draw: st.DrawFn) -> Connection:
    """One to four requests on one connection, mutated or not, sent in one to three writes."""
    count = draw(st.integers(1, 4))
    reqs = tuple(draw(requests(i, i == 0)) for i in range(count))
    muts = draw(
        st.sampled_from([0, 0, 0, 0, 1, 1, 2, 3]).flatmap(lambda n: st.lists(mutations, min_size=n, max_size=n))
    )
    cuts = tuple(draw(st.lists(st.integers(1, 1 << 16), max_size=2)))
    return Connection(reqs, tuple(muts), cuts)


def examples() -> st.SearchStrategy[list[Connection]]:
    """One fuzz example: one to three client connections used at the same time."""
    return st.lists(connections(), min_size=1, max_size=3)
