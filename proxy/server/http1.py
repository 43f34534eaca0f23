"""HTTP/1.x head rewriting for a forward proxy, without I/O.

llhttp (through httptools) does the byte-level parsing and rejects the ambiguous framings (Content-Length with
Transfer-Encoding, duplicate or malformed lengths, obs-fold, bare CR/LF, control bytes).  This module takes what it
produced (method, target, version, the header list) and decides everything a proxy must decide per message: where
the request goes, the one head the origin receives (origin-form target, hop-by-hop headers removed, trace headers
rewritten), how each body is framed on the way out, and whether each side stays open.  Keeping it free of sockets
means every one of those decisions is tested with plain data, as h11 and mitmproxy do.

Both directions are re-framed by the proxy: the origin and the client only ever receive messages whose framing the
proxy itself wrote, so a message two parsers could read differently never crosses it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from proxy.server import grammar
from proxy.server.grammar import CONNECTION_OPTIONS, FRAMING_NAMES, REQUEST_SPECIAL, connection_tokens
from proxy.tracing import UNTOUCHED_DECISION, Decision, Propagator

MAX_HEAD_BYTES = 64 * 1024
_MAX_CONTENT_LENGTH = (1 << 63) - 1

_new_tuple: Final = tuple.__new__  # a NamedTuple built without its Python-level __new__ (hot path)

ORIGIN_FORM_HELP = (
    "trace-proxy is an HTTP forward proxy: send requests in absolute form (GET http://host:port/path), "
    "for example by setting http_proxy=http://HOST:PORT for the client; https:// goes through CONNECT"
)

_REASONS = {  # every status the proxy answers with itself
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    508: "Loop Detected",
}


class Framing(enum.Enum):
    """How a message body ends: this decides both re-framing and connection reuse."""

    NONE = 0  # no body (GET without length, HEAD responses, 204, 304, 1xx)
    LENGTH = 1  # Content-Length bytes
    CHUNKED = 2  # chunked transfer coding
    CLOSE = 3  # response read until the origin closes


class RequestRejected(Exception):
    """A request the proxy answers itself with an error status instead of forwarding it."""

    def __init__(self, status: int, message: str, proxy_error: str = "http_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.proxy_error = proxy_error


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """What request planning needs from the configuration, prepared once at start-up."""

    propagator: Propagator
    trace_names: frozenset[bytes]  # the propagator's strip_names, as the bytes the parser yields
    connect_ports: frozenset[int]  # empty = any
    # Lowercase names that never go out as they came: hop-by-hop, framing, Host, and the trace headers.
    special_names: frozenset[bytes] = REQUEST_SPECIAL

    @classmethod
    def create(cls, propagator: Propagator, connect_ports: Sequence[int]) -> RequestPolicy:
        names = frozenset(n.encode("ascii") for n in propagator.strip_names)
        return cls(
            propagator=propagator,
            trace_names=names,
            connect_ports=frozenset(connect_ports),
            special_names=REQUEST_SPECIAL | names,
        )


class PlanCache:
    """What planning remembers between requests, so as not to do the same work on every one: an object the I/O side
    owns (one per process, in `ConnectionServices`) and passes in; without one, planning remembers nothing.

    - `authorities`: a sidecar talks to few origins, so a request target's authority is parsed once, not per
      request (only authorities `split_authority` accepted; at most AUTHORITIES_MAX, then it starts over).
    - `responses`: what `plan_response` found for the usual heads it relays unchanged, by the head's bytes. An
      origin's responses to the same requests differ in their Date line only, from one second to the next: their
      head is then scanned once a second, not once a request (hashing it costs a tenth of scanning it). Heads longer
      than RESPONSE_HEAD_MAX are not kept, so the memory this takes stays under RESPONSES_MAX x 2 KiB.
    """

    __slots__ = ("authorities", "responses")

    AUTHORITIES_MAX: Final = 4096
    RESPONSES_MAX: Final = 256
    RESPONSE_HEAD_MAX: Final = 2048

    def __init__(self) -> None:
        self.authorities: dict[bytes, tuple[str, int]] = {}
        self.responses: dict[bytes, tuple[Framing, int]] = {}


class RequestPlan(NamedTuple):
    """Everything the I/O layer needs to forward one request."""

    origin: tuple[str, int]  # (host, port): where it goes, and the key of the upstream pool
    head: bytes
    body: Framing
    method_is_head: bool
    upgrade: bool
    keep_alive: bool
    http11: bool
    decision: Decision

    @property
    def host(self) -> str:
        return self.origin[0]

    @property
    def port(self) -> int:
        return self.origin[1]


class ResponsePlan(NamedTuple):
    """How one response head goes to the client and how its body is framed on each side.

    When `head` is the very object `plan_response` was given, the origin's head goes out byte for byte (the I/O
    layer can then relay it together with the body, without a copy).
    """

    head: bytes
    upstream_framing: Framing
    content_length: int  # the body's length when upstream_framing is LENGTH
    dechunk: bool  # a chunked body goes to an HTTP/1.0 client decoded, and the connection closes after it
    close_client: bool


def error_response(status: int, message: str, proxy_error: str = "http_request_error") -> bytes:
    """A complete short plain-text response that names the cause; the connection closes after it.

    `Proxy-Status` (RFC 9209) carries a machine-readable error type for clients and logs.
    """
    message = "".join(c if c >= " " and c != "\x7f" else " " for c in message)  # no CR/LF/controls anywhere
    body = (message + "\n").encode("utf-8", "replace")
    # Cut before escaping, so the quoted string always ends well-formed.
    detail = message[:256].replace("\\", "\\\\").replace('"', '\\"').encode("ascii", "replace")
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Error").encode()),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b'Proxy-Status: trace-proxy; error=%s; details="%s"\r\n' % (proxy_error.encode(), detail),
            b"Connection: close\r\n\r\n",
            body,
        )
    )


def split_authority(authority: bytes, default_port: int | None) -> tuple[str, int]:
    """`host[:port]` or `[v6]:port` from a request target, by the rules of `grammar.split_authority`; a 400 when
    it breaks them. User info (``user@``) belongs to the URI, not to an authority, and is named as such."""
    if not authority or b"@" in authority:
        raise RequestRejected(400, "request target has no host or carries user info")
    try:
        return grammar.split_authority(authority.decode("ascii"), default_port)
    except UnicodeDecodeError:
        raise RequestRejected(400, "request target host is not ASCII") from None
    except grammar.AuthorityError as exc:
        raise RequestRejected(400, str(exc)) from None


def plan_connect(target: bytes, allowed_ports: frozenset[int]) -> tuple[str, int]:
    """Where a CONNECT goes, or why it may not (403 for ports outside `connect_ports`)."""
    host, port = split_authority(target, None)
    if allowed_ports and port not in allowed_ports:
        allowed = ", ".join(str(p) for p in sorted(allowed_ports))
        raise RequestRejected(
            403,
            f"CONNECT to port {port} is not allowed (forward.connect_ports: {allowed})",
            "destination_ip_prohibited",
        )
    return host, port


def plan_request(
    method: bytes,
    target: bytes,
    http11: bool,
    keep_alive: bool,
    upgrade: bool,
    headers: Sequence[tuple[bytes, bytes]],
    policy: RequestPolicy,
    dropped: frozenset[bytes] = frozenset(),
    cache: PlanCache | None = None,
) -> RequestPlan:
    """Validate an absolute-form request and write the head the origin receives.

    The origin gets an HTTP/1.1 request in origin form with `Host` set from the target (RFC 9112 §3.2.2), no
    hop-by-hop header, the body framing the proxy will write, and the trace headers the propagator decided.
    `dropped`: the field names the request's Connection header named (found on a first pass; rare). `cache`: what
    to remember parsed authorities in (see PlanCache).
    """
    start = 7 if target.startswith(b"http://") else _scheme_length(target)
    slash = target.find(b"/", start)
    authority = target[start:slash] if slash >= 0 else target[start:]
    # Only authorities that split_authority accepted are cached, and it refuses `?` and `#`: for one seen before, the
    # path starts at the first `/`. A new one is searched for a `?` or `#` that ends it sooner.
    known = _NOTHING_KNOWN if cache is None else cache.authorities
    origin = known.get(authority)
    if origin is None:
        for stop in (target.find(b"?", start), target.find(b"#", start)):
            if stop >= 0 and (slash < 0 or stop < slash):
                slash = stop
        authority = target[start:slash] if slash >= 0 else target[start:]
        origin = known.get(authority)
        if origin is None:
            origin = split_authority(authority, 80)
            if cache is not None:
                if len(known) >= PlanCache.AUTHORITIES_MAX:
                    known.clear()
                known[authority] = origin
    path = target[slash:] if slash >= 0 else b""
    if path:
        # find, not `in`: bytes.__contains__ first tries its argument as an int and formats a TypeError for it.
        fragment = path.find(b"#")
        if fragment >= 0:
            path = path[:fragment]
        if path[:1] == b"?":
            path = b"/" + path
    if not path:
        # An empty path is `/`, except for OPTIONS, which then asks about the server itself (RFC 9112 §3.2.4).
        path = b"*" if method == b"OPTIONS" else b"/"
    propagator = policy.propagator
    # The URL as the client wrote it, default port or not: what sentry-sdk matches for an absolute URL too.
    matches = propagator.match_all or propagator.matches(target.decode("latin-1"))
    special = policy.special_names if matches else REQUEST_SPECIAL
    if dropped:
        special = special | dropped

    parts: list[bytes] = [method, b" ", path, b" HTTP/1.1\r\nHost: ", authority, b"\r\n"]
    carrier: dict[str, list[str]] | None = None  # the trace headers the propagator reads, when there are any
    body = Framing.NONE
    hosts = 0
    te_value = b""
    upgrade_value = b""
    named: list[bytes] | None = None
    for name, value in headers:
        lname = name.lower()
        if lname not in special:
            parts += (name, b": ", value, b"\r\n")
        elif lname == b"host":
            hosts += 1
        elif lname == b"content-length":
            if value != b"0":
                body = Framing.LENGTH
                if len(value) > 18 and value.strip().isdigit() and int(value) > _MAX_CONTENT_LENGTH:
                    # llhttp takes up to 2^64-1; an origin reading a signed 64-bit length would read another framing.
                    raise RequestRejected(400, "Content-Length larger than 2^63-1")
            parts += (name, b": ", value, b"\r\n")
        elif lname == b"transfer-encoding":
            if not http11:
                raise RequestRejected(400, "Transfer-Encoding is not allowed in an HTTP/1.0 request")
            # The proxy re-chunks the body; the codings before `chunked` are kept.
            body = Framing.CHUNKED
            te_value = te_value + b", " + value if te_value else value
        elif lname == b"expect":
            if http11:
                parts += (name, b": ", value, b"\r\n")
        elif lname == b"connection" or lname == b"proxy-connection":
            tokens = [t for t in connection_tokens(value) if t not in CONNECTION_OPTIONS]
            named = tokens if named is None else named + tokens
        elif lname == b"upgrade":
            upgrade_value = value
        elif lname in policy.trace_names:
            if carrier is None:
                carrier = {}
            carrier.setdefault(lname.decode("ascii"), []).append(value.decode("latin-1"))
    if named and not dropped:
        # Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1): plan again without them.
        dropped = frozenset(named) - FRAMING_NAMES
        if dropped:
            return plan_request(method, target, http11, keep_alive, upgrade, headers, policy, dropped, cache)
    if hosts != 1 and (hosts > 1 or http11):
        raise RequestRejected(400, "more than one Host header" if hosts else "HTTP/1.1 request without a Host header")
    if body is Framing.CHUNKED:
        if te_value.rsplit(b",", 1)[-1].strip().lower() != b"chunked":
            # llhttp reports this only after the head is complete, i.e. after it was planned: refuse it here.
            raise RequestRejected(400, "Transfer-Encoding of a request must end in chunked (RFC 9112 §6.3)")
        parts += (b"Transfer-Encoding: ", te_value, b"\r\n")
    if upgrade and upgrade_value and http11:  # an Upgrade in an HTTP/1.0 request is ignored (RFC 9110 §7.8)
        parts += (b"Connection: Upgrade\r\nUpgrade: ", upgrade_value, b"\r\n")
    else:
        upgrade = False
    if matches:
        decision = propagator.decide_matched(carrier or _NO_CARRIER)
        parts += (b"sentry-trace: ", decision.sentry_trace.encode(), b"\r\n")  # type: ignore[union-attr]
        if decision.baggage:
            parts += (b"baggage: ", decision.baggage.encode("latin-1"), b"\r\n")
        if decision.traceparent:
            parts += (b"traceparent: ", decision.traceparent.encode(), b"\r\n")
    else:
        decision = UNTOUCHED_DECISION
    parts.append(b"\r\n")
    return _new_tuple(
        RequestPlan, (origin, b"".join(parts), body, method == b"HEAD", upgrade, keep_alive, http11, decision)
    )


def _scheme_length(target: bytes) -> int:
    """The length of the `http://` (any case) or `ws://` prefix of an absolute-form target, or why it has none."""
    scheme = target[:7].lower()
    if scheme == b"http://":
        return 7
    if scheme[:5] == b"ws://":
        return 5  # a WebSocket URI is HTTP on the same port (RFC 6455 §3); aiohttp sends these to proxies
    if target[:1] == b"/" or target == b"*":
        raise RequestRejected(400, ORIGIN_FORM_HELP)
    if target[:8].lower() == b"https://" or scheme[:6] == b"wss://":
        raise RequestRejected(400, "https:// and wss:// must be tunnelled with CONNECT (use https_proxy)")
    raise RequestRejected(400, "request target must be an absolute http:// URL")


_NO_CARRIER: dict[str, list[str]] = {}  # never written to
_NOTHING_KNOWN: Final[dict[bytes, tuple[str, int]]] = {}  # planning without a cache: never written to


# A response head line that is hop-by-hop (`grammar.HOP_BY_HOP`, a unit test checks they agree), with the CRLF
# before it, searched in the lowercased head (Trailer stays: chunked bodies and their trailer fields are relayed as
# the origin wrote them). llhttp has already checked the grammar (token names, no whitespace before the colon, CRLF
# line ends), so the search is exact; the alternation is factored by first letter because it runs for every
# response.
_HOP_NAMES_BUT_CONNECTION = (
    rb"p(?:roxy-(?:connection|authenticate|authorization))|keep-alive|t(?:e|ransfer-encoding)|upgrade"
)
_HOP_LINE = re.compile(rb"\r\n(?:connection|" + _HOP_NAMES_BUT_CONNECTION + rb"):[^\r]*")
# The same but an exact `Connection: keep-alive` line, the one hop-by-hop line the usual response carries and which
# may go out unchanged (see `plan_response`): the usual response is checked with this one search.
_HOP_LINE_BUT_KEEP_ALIVE = re.compile(
    rb"\r\n(?:connection(?!: keep-alive\r)|" + _HOP_NAMES_BUT_CONNECTION + rb"):[^\r]*"
)
_KEEP_ALIVE_LINE: Final = b"\r\nconnection: keep-alive\r"


def _strip_hop_lines(head: bytes, lower: bytes, match: re.Match[bytes] | None) -> tuple[bytes, bytes, bytes]:
    """`head` without its hop-by-hop lines (and the fields its Connection names); its Transfer-Encoding and
    Upgrade values, lowercased. `match`: the first `_HOP_LINE` in `lower`, which the caller has searched for."""
    if match is None:
        return head, b"", b""
    pieces: list[bytes] = []
    named: list[bytes] = []
    pos = 0
    te_value = upgrade_value = b""
    while match is not None:
        start, end = match.span()
        pieces.append(head[pos:start])
        pos = end
        name, _, value = lower[start + 2 : end].partition(b":")
        value = value.strip(b" \t")
        if name == b"transfer-encoding":
            te_value = te_value + b", " + value if te_value else value
        elif name == b"upgrade":
            upgrade_value = head[start + 2 : end].partition(b":")[2].strip(b" \t")
        elif value not in CONNECTION_OPTIONS and (name == b"connection" or name == b"proxy-connection"):
            named.extend(t for t in connection_tokens(value) if t not in CONNECTION_OPTIONS)
        match = _HOP_LINE.search(lower, end)
    pieces.append(head[pos:])
    head = b"".join(pieces)
    named = [n for n in named if n not in FRAMING_NAMES]
    if named:
        drop = tuple(b"\r\n" + n + b":" for n in named)
        lines = head.split(b"\r\n")
        head = b"\r\n".join(line for line in lines if not (b"\r\n" + line.lower()).startswith(drop))
    return head, te_value, upgrade_value


def plan_response(
    status: int,
    head: bytes,
    *,
    request_is_head: bool,
    client_http11: bool,
    client_keep_alive: bool,
    force_close: bool,
    cache: PlanCache | None = None,
) -> ResponsePlan:
    """The head the client receives for an origin's final (or 1xx interim) response, and the body framing.

    `head` is the origin's raw head from the status line up to and including the empty line.  Content-Length and
    chunked bodies pass through as they are (llhttp checked their framing); a chunked body is decoded for an
    HTTP/1.0 client and ends with the connection, like a close-delimited body.

    The usual response (HTTP/1.1, a Content-Length, no hop-by-hop field but perhaps `Connection: keep-alive`) to a
    client that stays open is relayed unchanged: a `Connection: keep-alive` then is the proxy's own option for
    the client connection, which RFC 9110 §7.6.1 allows in place of the origin's. What was found for such a head
    is remembered in `cache` (see PlanCache).
    """
    usual = (
        cache is not None
        and client_http11
        and client_keep_alive
        and not force_close
        and not request_is_head
        and len(head) <= PlanCache.RESPONSE_HEAD_MAX
    )
    if usual:
        assert cache is not None
        known = cache.responses.get(head)
        if known is not None:
            return _new_tuple(ResponsePlan, (head, known[0], known[1], False, False))
    lower = head.lower()
    if (
        _HOP_LINE_BUT_KEEP_ALIVE.search(lower) is None
        and status >= 200
        and head[5:8] == b"1.1"
        and client_keep_alive
        and not force_close
        and (client_http11 or lower.find(_KEEP_ALIVE_LINE) >= 0)
        and lower.count(b"\r\nconnection:") < 2  # (all exactly keep-alive here) the proxy's option goes out once
    ):
        length = _content_length(lower)
        if length >= 0:
            no_body = request_is_head or status == 204 or status == 304
            framing = Framing.NONE if no_body else Framing.LENGTH
            if usual:
                assert cache is not None
                plans = cache.responses
                if len(plans) >= PlanCache.RESPONSES_MAX:
                    plans.clear()  # cheaper than LRU bookkeeping; the heads in use come back within a second
                plans[head] = (framing, length)
            return _new_tuple(ResponsePlan, (head, framing, length, False, False))
    return _rewrite_response(
        status,
        head[:-2],
        lower,
        _HOP_LINE.search(lower),
        request_is_head,
        client_http11,
        client_keep_alive,
        force_close,
    )


def _content_length(lower: bytes) -> int:
    """The Content-Length of a lowercased response head, or -1 when it has none (llhttp let through one
    well-formed length at most)."""
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        return -1
    try:
        # int() skips the whitespace around the value itself; llhttp let through nothing but digits between.
        length = int(lower[at + 17 : lower.find(b"\r", at + 17)])
    except ValueError:
        return -1
    return length if length >= 0 else -1


def _rewrite_response(
    status: int,
    head: bytes,
    lower: bytes,
    first_hop: re.Match[bytes] | None,
    request_is_head: bool,
    client_http11: bool,
    client_keep_alive: bool,
    force_close: bool,
) -> ResponsePlan:
    """`plan_response` for a head that must change; `head` ends with the CRLF of its last field line."""
    if head[5:8] != b"1.1":
        head = b"HTTP/1.1" + head[8:]
    head, te_value, _ = _strip_hop_lines(head, lower, first_hop)
    content_length = 0
    if te_value:
        # llhttp already refused Content-Length together with Transfer-Encoding.
        framing = Framing.CHUNKED if te_value.rsplit(b",", 1)[-1].strip() == b"chunked" else Framing.CLOSE
    else:
        content_length = _content_length(lower)
        if content_length >= 0:
            framing = Framing.LENGTH
        else:
            framing = Framing.CLOSE
            content_length = 0
    no_body = request_is_head or status in (204, 304) or status < 200
    # A chunked body for an HTTP/1.0 client is decoded and ends with the connection; a close-delimited one too.
    dechunk = not no_body and framing is Framing.CHUNKED and not client_http11
    close = force_close or not client_keep_alive or (not no_body and framing is Framing.CLOSE) or dechunk
    parts = [head]
    if te_value and not dechunk:
        parts.append(b"Transfer-Encoding: %s\r\n" % te_value)
    if status < 200:
        parts.append(b"\r\n")
        return ResponsePlan(b"".join(parts), Framing.NONE, 0, False, False)
    if close:
        parts.append(b"Connection: close\r\n\r\n")
    elif not client_http11:
        parts.append(b"Connection: keep-alive\r\n\r\n")
    else:
        parts.append(b"\r\n")
    return ResponsePlan(b"".join(parts), Framing.NONE if no_body else framing, content_length, dechunk, close)


def plan_switching_protocols(head: bytes) -> bytes:
    """The 101 head for an accepted Upgrade: end-to-end fields plus the upgrade pair (`head` as for
    `plan_response`, through the empty line)."""
    head = head[:-2]
    if head[5:8] != b"1.1":
        head = b"HTTP/1.1" + head[8:]
    lower = head.lower()
    head, _, upgrade_value = _strip_hop_lines(head, lower, _HOP_LINE.search(lower))
    upgrade = b"Upgrade: %s\r\n" % upgrade_value if upgrade_value else b""
    return b"%sConnection: Upgrade\r\n%s\r\n" % (head, upgrade)
