"""A client connection, for every front end: one protocol object per connection, on the hot path of every request.

The request head is parsed by llhttp (httptools) through callbacks, planned once by the connection's router
(routing.py: where it goes, the head the origin receives, the trace decision), and written to a pooled origin
connection; the body follows as the parser yields it. Requests a client pipelines wait in order behind the one in
flight. CONNECT and accepted Upgrades turn the connection into a byte relay (tunnel.py). The connection's state is
one of those in connection_state.py; every exchange ends through `ExchangeEnds.end` (exchange.py), which tells the
observers. Nothing here logs per request, and no header becomes more than the (name, value) pair llhttp hands
over: this is the code whose cost the benchmark measures.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Final, Protocol

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from proxy.server.connection_state import (
    ACTIVE,
    CLOSED,
    CONNECTING,
    IDLE,
    LINGERING,
    TUNNEL,
    UPGRADING,
    check_transition,
)
from proxy.server.exchange import CONNECT, HTTP, UPGRADE, Exchange, Outcome, tunnel_plan
from proxy.server.http1 import MAX_HEAD_BYTES, Framing, RequestRejected, error_response
from proxy.server.routing import Router
from proxy.server.services import ConnectionServices
from proxy.server.splice import socket_fd
from proxy.server.tunnel import Tunnel
from proxy.server.upstream import UpstreamConnection, UpstreamError

log = logging.getLogger(__name__)

# The outcomes, read as module constants: reading an enum member is a Python-level lookup, on every request.
_BROKEN: Final = Outcome.BROKEN
_CLIENT_GONE: Final = Outcome.CLIENT_GONE
_COMPLETE: Final = Outcome.COMPLETE
_DRAINED: Final = Outcome.DRAINED
_DROPPED: Final = Outcome.DROPPED
_INTERNAL_ERROR: Final = Outcome.INTERNAL_ERROR
_ORIGIN_FAILED: Final = Outcome.ORIGIN_FAILED
_REFUSED: Final = Outcome.REFUSED
_STALLED: Final = Outcome.STALLED
_UPGRADED: Final = Outcome.UPGRADED

_PIPELINE = 1  # a request waits behind the one in flight
_UPSTREAM = 2  # the origin's socket buffer is full
_PENDING = 4  # body bytes wait for an origin connection, or tunnel bytes for the tunnel to open
_MAX_PENDING = 1 << 20
# Requests that may wait behind the one in flight. Reading stops while any wait, but one read can hold thousands of
# small pipelined requests, each a plan held in memory: past this many, the next one is answered 503 (after those
# before it) and the connection closes.
MAX_QUEUED = 100
_LINGER_SECONDS = 2.0

_ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"
# Methods a request may be repeated with, with no other effect than sending it once (RFC 9110 §9.2.2).
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def _may_name_connection(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a Connection or Proxy-Connection header may be among `headers` (a false yes only costs a lookup)."""
    return any((len(name) == 10 or len(name) == 16) and name.lower().endswith(b"connection") for name, _ in headers)


def _upgrade_body_length(body: Framing, headers: list[tuple[bytes, bytes]]) -> int:
    """The length of an Upgrade request's body: llhttp does not parse it (it hands everything after the head over
    as the new protocol's bytes), so it is counted by its Content-Length. A chunked one is refused: counting it would
    mean parsing chunks outside llhttp, which alone decides the framing of what the origin receives."""
    if body is Framing.CHUNKED:
        raise RequestRejected(400, "an Upgrade request with a chunked body is not forwarded (send a Content-Length)")
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value)
    raise RequestRejected(400, "an Upgrade request body without Content-Length")  # planning found one: not reached


class ConnectionOwner(Protocol):
    """The listener that accepted a connection: it admits it, and keeps the set its timeouts and drain walk."""

    def connection_opened(self, conn: DownstreamConnection) -> None: ...

    def connection_closed(self, conn: DownstreamConnection) -> None: ...


class DownstreamConnection(asyncio.Protocol):
    """A client connection: parses requests, drives one exchange at a time, or relays a tunnel.

    What differs between front ends is the `router` it is given; what it shares with every other connection of the
    process (the origin pool, the end of exchanges, tasks) is `services`; `owner` is the listener that accepted it.
    `can_splice`: whether its socket may carry bytes spliced in the kernel (never a TLS connection's)."""

    def __init__(
        self, services: ConnectionServices, router: Router, owner: ConnectionOwner, can_splice: bool = True
    ) -> None:
        self._services = services
        self._router = router
        # Bound once: a call through the bound method skips the method lookup on every request.
        self._plan = router.plan
        self._own_origins = router.own_origins  # the listener is bound before it accepts: this is final
        self._owner = owner
        self._pool = services.pool
        self._ends = services.ends
        self._can_splice = can_splice
        self.state = IDLE  # one of connection_state's states
        self._parser = HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = True
        self._head_bytes = 0
        self._reading: Exchange | None = None
        self.current: Exchange | None = None
        self._queue: deque[Exchange] = deque()
        self._paused = 0
        self.input_done = False  # no further request will be read (the client half-closed, or asked to close)
        self._deferred_error: bytes | None = None
        self.closing_after_response = False
        self.last_active = 0.0
        self.head_since = 0.0  # when the request head under way began (0: none): forward.header_timeout
        self._tunnel: Tunnel | None = None  # UPGRADING, CONNECTING, TUNNEL: the relay, open or not yet
        self._connecting: Exchange | None = None  # the CONNECT whose target is being connected to
        # 29 instance attributes: with a 30th, interpreted CPython 3.11 reads them all more slowly, measured at some
        # 3,000 instructions per request (bench/pipeline.py --instructions). Add one only in place of another.
        self._fd = -1  # the socket's descriptor, once a response body was spliced into it
        self._upgrade_body_left = 0  # body bytes of an Upgrade request still to come (llhttp leaves them to us)
        self._write_blocked = False  # the socket's write buffer is past its high-water mark (pause_writing)

    def _enter(self, state: int) -> None:
        """Change state, along the transitions connection_state allows (InvalidTransition otherwise)."""
        check_transition(self.state, state)
        self.state = state

    def in_tunnel(self) -> bool:
        """Relaying a tunnel: no request timeouts apply."""
        return self.state == TUNNEL

    # -- asyncio.Protocol ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # The first request head is due from the connection's start: a client that connects and sends nothing
        # holds a descriptor as surely as one that dribbles.
        self.last_active = self.head_since = self._pool.coarse_now
        self._owner.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.last_active = self._pool.coarse_now
            tunnel = self._tunnel
            if tunnel is not None:
                if self._upgrade_body_left:
                    data = self._upgrade_body(data)
                    if not data:
                        return
                if tunnel.from_client(data):
                    self._pause(_PENDING)
                return
            if self.input_done:
                return  # LINGERING, CLOSED, or no request is read after the last one: dropped
            if self._in_head:
                if not self.head_since:
                    self.head_since = self.last_active
                self._head_bytes += len(data)
            try:
                self._parser.feed_data(data)
            except HttpParserUpgrade as upgrade:
                # What follows the request is the new protocol's, once the origin agrees (101), and the next request if
                # it does not: held until the answer. An Upgrade request's body comes first: llhttp leaves it to us.
                if self.state >= LINGERING:
                    return  # refused earlier in this read: nothing of it is forwarded
                self.input_done = True
                tunnel = self._tunnel
                if tunnel is None:  # an Upgrade request (an accepted CONNECT has its tunnel already)
                    self._enter(UPGRADING)
                    tunnel = self._tunnel = Tunnel(self.transport, self._services.stats.tunnel_bytes)
                tail = data[upgrade.args[0] :]
                if self._upgrade_body_left:
                    tail = self._upgrade_body(tail)
                if tail:
                    tunnel.from_client(tail)
                return
            except HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, RequestRejected):
                    kind = CONNECT if self._parser.get_method() == b"CONNECT" else HTTP  # for the counters
                    self._reject(cause.status, cause.message, cause.proxy_error, kind)
                else:
                    log.error("internal error while handling the request", exc_info=cause)
                    self._reject(500, "trace-proxy failed while handling the request", "proxy_internal_error")
                return
            except HttpParserError as exc:
                self._reject(400, f"malformed request: {exc}", "http_request_error")
                return
            if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
                self._reject(431, f"request head larger than {MAX_HEAD_BYTES // 1024} KiB", "http_request_error")
        except Exception as exc:
            self.internal_error(exc, "reading from the client")

    def eof_received(self) -> bool | None:
        try:
            state = self.state
            if state >= LINGERING:
                return None  # the lingering close is over
            tunnel = self._tunnel
            if state == TUNNEL and tunnel is not None:
                return True if tunnel.client_eof() else None
            reading = self._reading
            if reading is not None:
                # Half-closed inside a request body (an Upgrade request's too): that request can never be
                # completed. Unless its answer has begun (an origin that answered early), the origin's half request
                # is dropped and the client told.
                up = reading.upstream
                if reading is not self.current or up is None or not up.response_started:
                    self._reject(400, "the client closed its side before the request body ended", "http_request_error")
                    return None
            if tunnel is not None:
                tunnel.client_eof()  # passed on once the tunnel opens (CONNECTING, UPGRADING)
                return True
            # A client that half-closes after its request still gets the response.
            self.input_done = True
            return None if self.current is None else True
        except Exception as exc:
            self.internal_error(exc, "handling the client's end of input")
            return None

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._owner.connection_closed(self)
            self.input_done = True
            if self.state != CLOSED:
                self._enter(CLOSED)
            tunnel = self._tunnel
            if tunnel is not None:
                self._tunnel = None
                tunnel.close()
            self._end_all(_CLIENT_GONE)
        except Exception:
            log.exception("cleaning up a closed client connection failed")

    def _end_all(self, outcome: Outcome) -> None:
        """The connection ends: the exchange in flight with `outcome` (its origin connection closed, not pooled: it
        holds half an exchange), and every exchange queued behind it."""
        exchange = self.current
        self.current = None
        if exchange is not None:
            up = exchange.upstream
            if up is not None and up.client is self:
                up.client = None
                up.exchange = None
                up.transport.close()
            self._ends.end(exchange, outcome)
        self._drop_queue(outcome)

    def _drop_queue(self, outcome: Outcome) -> None:
        """The requests queued behind the one in flight will not be served: each ends, with `outcome`."""
        queue = self._queue
        while queue:
            self._ends.end(queue.popleft(), outcome)

    def drained(self) -> None:
        """The shutdown grace ran out with this connection still open: its exchanges end as DRAINED, and it is cut."""
        self._end_all(_DRAINED)
        self.transport.abort()

    def _peer_transport(self) -> asyncio.Transport | None:
        """The origin (or target) side this connection's writes are flowing from, for flow control."""
        tunnel = self._tunnel
        if tunnel is not None and tunnel.open:
            return tunnel.target
        current = self.current
        if current is not None and current.upstream is not None:
            return current.upstream.transport
        return None

    def pause_writing(self) -> None:
        self._write_blocked = True
        peer = self._peer_transport()
        if peer is not None:
            peer.pause_reading()

    def resume_writing(self) -> None:
        self._write_blocked = False
        tunnel = self._tunnel
        if tunnel is not None and tunnel.splice is not None:
            return  # the loop must not read a spliced socket
        peer = self._peer_transport()
        if peer is not None and not peer.is_closing():
            peer.resume_reading()

    def socket_fd(self) -> int:
        """The socket's descriptor for splicing response bodies into (-1: none, or this connection may not be
        spliced); valid while the transport is not closing."""
        fd = self._fd
        if fd < 0 and self._can_splice:
            fd = self._fd = socket_fd(self.transport)
        return fd

    # -- flow control -------------------------------------------------------------------------------------------

    def _pause(self, reason: int) -> None:
        if not self._paused and not self.transport.is_closing():
            self.transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self._spliced() and not self.transport.is_closing():
                self.transport.resume_reading()

    def _spliced(self) -> bool:
        tunnel = self._tunnel
        return tunnel is not None and tunnel.splice is not None

    def pause_for_upstream(self) -> None:
        self._pause(_UPSTREAM)

    def resume_for_upstream(self) -> None:
        self._resume(_UPSTREAM)

    # -- llhttp callbacks ---------------------------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # trailer fields of a chunked body are dropped, never taken as the next head's
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.head_since = 0.0
        parser = self._parser
        url = self._url
        headers = self._headers
        self._url = b""
        self._headers = []
        if self.input_done:
            return  # answered and closing (a refusal earlier in this read): what follows is never started
        if self._head_bytes > MAX_HEAD_BYTES and len(url) + sum(len(n) + len(v) + 4 for n, v in headers) > (
            MAX_HEAD_BYTES - 32
        ):
            raise RequestRejected(431, f"request head larger than {MAX_HEAD_BYTES // 1024} KiB")
        self._head_bytes = 0
        keep_alive = parser.should_keep_alive()
        # llhttp keeps the connection of an HTTP/1.0 (or 0.9, 2.0) request open, and sees an upgrade, only when a
        # Connection (or Proxy-Connection) header asks for it: open without one is HTTP/1.1. The version string, which
        # httptools formats anew on every call, is then not needed.
        connection_named = _may_name_connection(headers)
        if keep_alive and not connection_named:
            http11 = True
        else:
            version = parser.get_http_version()
            if version == "1.1":
                http11 = True
            elif version == "1.0":
                http11 = False
            else:
                raise RequestRejected(400, f"unsupported HTTP version {version} (trace-proxy speaks HTTP/1.0 and 1.1)")
        method = parser.get_method()
        if method == b"CONNECT":
            self._begin_connect(url)
            return
        if self.current is not None and len(self._queue) >= MAX_QUEUED:
            raise RequestRejected(
                503, f"more than {MAX_QUEUED} pipelined requests waiting: send the rest once these are answered"
            )
        upgrade = connection_named and parser.should_upgrade()
        plan = self._plan(method, url, http11, keep_alive, upgrade, headers)
        if upgrade and plan.body is not Framing.NONE:
            # llhttp takes everything after this head for the new protocol's bytes, body included (even where the
            # plan ignores the Upgrade, as for HTTP/1.0): the body is counted here.
            self._upgrade_body_left = _upgrade_body_length(plan.body, headers)
        exchange = self._ends.begin(plan)
        if upgrade and plan.upgrade:  # the local first: no plan field is read for the usual request
            exchange.kind = UPGRADE
        self._reading = exchange
        if self.current is None:
            self._start(exchange)
        else:
            self._queue.append(exchange)
            self._pause(_PIPELINE)

    def on_body(self, body: bytes) -> None:
        exchange = self._reading
        if exchange is None:
            return
        if exchange.plan.body is Framing.CHUNKED:
            body = b"%x\r\n%b\r\n" % (len(body), body)
        self._send_body(exchange, body)

    def on_message_complete(self) -> None:
        exchange = self._reading
        self._in_head = True
        if exchange is None:
            return
        self._reading = None
        if exchange.plan.body is Framing.CHUNKED:
            self._send_body(exchange, b"0\r\n\r\n")
        if self._upgrade_body_left:
            self._reading = exchange  # llhttp ends an Upgrade request at its head: the body is counted in _upgrade_body
            return
        exchange.body_done = True
        if not exchange.plan.keep_alive:
            self.input_done = True

    # -- exchanges ----------------------------------------------------------------------------------------------

    def _send_body(self, exchange: Exchange, data: bytes) -> None:
        up = exchange.upstream
        if up is not None and exchange is self.current:
            exchange.bytes_to_origin += len(data)
            up.transport.write(data)
            return
        if exchange.pending is None:
            exchange.pending = [data]
        else:
            exchange.pending.append(data)
        exchange.pending_size += len(data)
        if exchange.pending_size > _MAX_PENDING:
            self._pause(_PENDING)

    def _start(self, exchange: Exchange) -> None:
        self.current = exchange
        if self.state == IDLE:
            self._enter(ACTIVE)
        plan = exchange.plan
        key = plan.origin
        if key in self._own_origins:
            self._fail(
                exchange,
                508,
                f"request to {plan.host}:{plan.port} would loop back into trace-proxy",
                "proxy_loop_detected",
                _REFUSED,
            )
            return
        up = self._pool.acquire(key)
        if up is None:
            self._services.spawn(self._connect(exchange), self, "connecting to the origin")
        else:
            self._attach(exchange, up)

    async def _connect(self, exchange: Exchange) -> None:
        plan = exchange.plan
        try:
            up = await self._pool.connect(plan.host, plan.port)
        except UpstreamError as err:
            if exchange is self.current:
                self.upstream_failed(exchange, err)
            return
        if exchange is not self.current or self.transport.is_closing():
            self._pool.release(up)
            return
        self._attach(exchange, up)

    def _attach(self, exchange: Exchange, up: UpstreamConnection) -> None:
        exchange.upstream = up
        if self._write_blocked:
            up.transport.pause_reading()  # the response waits until this connection's buffer drains
        pending = exchange.pending
        if pending is None:
            up.send_request(self, exchange, exchange.plan.head)
        else:
            exchange.pending = None
            exchange.pending_size = 0
            up.send_request(self, exchange, b"".join([exchange.plan.head, *pending]))
            self._resume(_PENDING)

    def _drop_upstream(self, up: UpstreamConnection) -> None:
        """Cut the origin connection of an exchange that will not complete there."""
        up.client = None
        up.exchange = None
        up.transport.abort()

    def _clear_current(self) -> None:
        """No exchange in flight. (A method where the function goes on to read `current` after calls that may set
        it again: after a plain `self.current = None`, mypy keeps `current` narrowed to None, and the compiled build
        checks it as None at run time.)"""
        self.current = None

    def _no_exchange(self) -> None:
        """The exchange in flight ended and none follows at once: ACTIVE becomes IDLE (other states stay)."""
        self.current = None
        if self.state == ACTIVE:
            self._enter(IDLE)

    def response_complete(self, exchange: Exchange, close_client: bool) -> None:
        """The origin's response has been written out in full."""
        self._ends.end(exchange, _COMPLETE)
        if exchange is not self.current:
            return
        up = exchange.upstream
        exchange.upstream = None
        if self._paused & _UPSTREAM:
            self._resume(_UPSTREAM)  # that origin's full buffer is no longer this connection's to wait for
        if self._write_blocked and up is not None and not up.transport.is_closing():
            up.transport.resume_reading()  # paused for this connection's full buffer: it is the pool's now
        if not exchange.body_done:
            # Answered before the client finished sending its body: what it still sends is read and dropped for a
            # moment, so that a close does not reset the answer away (RFC 9112 §9.6).
            self.current = None
            self._linger()
        elif close_client or self.closing_after_response or self.transport.is_closing():
            self.current = None
            self._close()
        elif self._queue:
            self._next()
        elif self._holding_for_upgrade():
            # The last request asked to upgrade and llhttp took what followed it for the new protocol's bytes; the
            # origin's ordinary answer says it was not.
            self._upgrade_refused()
        else:
            self._no_exchange()
            if self.input_done or self._deferred_error is not None:
                self._next()

    def _next(self) -> None:
        if self._queue:
            nxt = self._queue.popleft()
            if not self._queue:
                self._resume(_PIPELINE)
            self._start(nxt)
        elif self._deferred_error is not None:
            self.current = None
            self.transport.write(self._deferred_error)
            self._linger()
        elif self.input_done and self._tunnel is None:
            self.current = None
            self._close()

    def upstream_failed(self, exchange: Exchange, err: UpstreamError) -> None:
        """The origin could not be reached or answered badly before the response began."""
        self._fail(exchange, err.status, err.message, err.proxy_error, _ORIGIN_FAILED)

    def response_broken(self, exchange: Exchange, outcome: Outcome = _BROKEN) -> None:
        """The response head was sent but its body cannot be completed: cut the connection so the client sees a
        truncated response, never a complete one."""
        self._ends.end(exchange, outcome)
        self.current = None
        self._drop_queue(_DROPPED)
        self._enter(CLOSED)
        self.transport.abort()

    def upstream_lost(self, exchange: Exchange, up: UpstreamConnection) -> None:
        """The origin closed the connection while this exchange was on it."""
        if up.response_started:
            self.response_broken(exchange)
            return
        plan = exchange.plan
        if (
            up.reused
            and not up.got_bytes
            and not exchange.retried
            and plan.body is Framing.NONE
            and plan.head[: plan.head.find(b" ")] in _IDEMPOTENT
        ):
            # A pooled connection the origin had closed, perhaps after reading the request: only a request that
            # may be repeated is sent once more (RFC 9110 §9.2.2; nginx's default too).
            exchange.retried = True
            exchange.upstream = None
            self._services.spawn(self._connect(exchange), self, "connecting to the origin")
            return
        self._fail(
            exchange,
            502,
            f"{exchange.plan.host}:{exchange.plan.port} closed the connection before sending a response",
            "connection_terminated",
            _ORIGIN_FAILED,
        )

    def _fail(self, exchange: Exchange, status: int, message: str, proxy_error: str, outcome: Outcome) -> None:
        """The exchange in flight ends without a response from the origin: the proxy answers it, and the
        connection closes after that answer (what was queued behind it is dropped)."""
        answer = error_response(status, message, proxy_error)
        closing = self.transport.is_closing()
        if not closing:
            exchange.bytes_to_client += len(answer)
        self._ends.end(exchange, outcome, status)
        self.current = None
        self._drop_queue(_DROPPED)
        if not closing:
            self.transport.write(answer)
        self._linger()

    def _reject(self, status: int, message: str, proxy_error: str, kind: int = HTTP) -> None:
        """Answer a request the proxy will not forward; the connection closes after it. `kind`: CONNECT for a
        CONNECT refused before it had a plan (what any other such refusal is counted as does not matter: HTTP)."""
        state = self.state
        if state >= LINGERING:
            return  # already answered and closing (llhttp goes on with the rest of a read after a refusal)
        self.input_done = True
        body = error_response(status, message, proxy_error)
        current = self.current
        reading = self._reading
        if current is not None:
            if reading is current:
                # The body of the request in flight is malformed: the origin holds half a request; drop it.
                self._drop_queue(_DROPPED)
                up = current.upstream
                if up is not None:
                    self._drop_upstream(up)
                    if up.response_started:
                        self.response_broken(current)
                        return
                current.bytes_to_client += len(body)
                self._ends.end(current, _REFUSED, status)
                self.current = None
            else:
                if reading is not None:
                    # The malformed body belongs to a queued request (always the last one): it never starts.
                    self._reading = None
                    self._queue.remove(reading)
                    reading.bytes_to_client += len(body)
                    self._ends.end(reading, _REFUSED, status)
                else:
                    self._ends.refused(status, len(body), kind)
                self._deferred_error = body  # after the responses to the requests before the bad one
                return
        elif reading is not None:
            self._ends.end(reading, _REFUSED, status)  # the request in flight was answered, not yet read
        else:
            self._ends.refused(status, len(body), kind)
        self.transport.write(body)
        self._linger()

    def internal_error(self, exc: BaseException, stage: str) -> None:
        """An exception nothing expected, on this connection's path (`stage`: what was being done): one log line
        with its traceback, and the client is not left waiting. With no response to it begun, it gets a 500 whose
        `Proxy-Status` names an internal error; with one begun (a response head, a tunnel's 200 or 101), the
        connection is cut, so that a partial answer never looks whole. What it had on the origin side is dropped;
        no other connection is touched."""
        log.error("internal error while %s: the client connection is ended", stage, exc_info=exc)
        try:
            state = self.state
            tunnel = self._tunnel
            begun = state == TUNNEL
            exchange = self.current
            self.current = None
            connecting = self._connecting
            if exchange is None and connecting is not None and connecting.outcome is None:
                exchange = connecting  # opening a tunnel failed: that CONNECT ends here
            answer = error_response(500, f"trace-proxy failed while {stage}", "proxy_internal_error")
            if exchange is not None:
                up = exchange.upstream
                if up is not None:
                    begun = begun or up.response_started
                    if up.client is self:
                        self._drop_upstream(up)
                if not begun and state < LINGERING and not self.transport.is_closing():
                    exchange.bytes_to_client += len(answer)
                self._ends.end(exchange, _INTERNAL_ERROR, -1 if begun else 500)
            elif not begun and state < LINGERING:
                self._ends.unplanned(_INTERNAL_ERROR, 500, 0 if self.transport.is_closing() else len(answer))
            self._drop_queue(_DROPPED)
            if tunnel is not None:
                self._tunnel = None
                tunnel.abort()
            if begun or state >= LINGERING or self.transport.is_closing():
                self._abort()
                return
            self.transport.write(answer)
            self._linger()
        except Exception:
            log.exception("ending a connection after an internal error failed: aborting it")
            self.transport.abort()

    def refuse(self, status: int, message: str, proxy_error: str) -> None:
        """Answer a connection the proxy will not serve at all (its client is not allowed), before it sent a byte."""
        answer = error_response(status, message, proxy_error)
        self._ends.refused(status, len(answer))
        self.transport.write(answer)
        self._linger()

    def head_timed_out(self, timeout: float) -> None:
        """The request head under way did not arrive whole within forward.header_timeout."""
        self.head_since = 0.0
        if self.state >= LINGERING or self.transport.is_closing():
            return  # already answered, and closing
        self._reject(
            408, f"request head not complete within {timeout:g}s (forward.header_timeout)", "http_request_error"
        )

    def _linger(self) -> None:
        """Close after an error answer without resetting it away: a client still sending (an upload the proxy will
        not forward) would get a TCP reset from a plain close, and may lose the answer with it. So: send FIN, read
        and discard what still comes for a moment, then close (RFC 9112 §9.6)."""
        transport = self.transport
        if transport.is_closing() or not transport.can_write_eof():
            self._close()
            return
        self.input_done = True
        self._tunnel = None
        self._enter(LINGERING)
        self.head_since = 0.0  # answered: no 408 to follow
        transport.write_eof()
        self._resume(self._paused)
        self._services.loop.call_later(_LINGER_SECONDS, self._close)

    def _close(self) -> None:
        self.input_done = True
        if self.state != CLOSED:
            self._enter(CLOSED)
        if not self.transport.is_closing():
            self.transport.close()

    def _abort(self) -> None:
        self.input_done = True
        if self.state != CLOSED:
            self._enter(CLOSED)
        self.transport.abort()

    def close_if_idle(self) -> None:
        """Close now when no request is in flight (shutdown, idle timeout), else after the response in flight."""
        if self.current is None and self._tunnel is None:
            self._close()
        else:
            self.closing_after_response = True

    def stalled(self, timeout: float) -> None:
        """Neither side moved a byte for idle_timeout while a request was in flight."""
        exchange = self.current
        if exchange is None:
            return
        up = exchange.upstream
        if up is not None and up.response_started:
            self._drop_upstream(up)
            self.response_broken(exchange, _STALLED)
            return
        if up is not None:
            self._drop_upstream(up)
        self._fail(
            exchange,
            504,
            f"{exchange.plan.host}:{exchange.plan.port} sent no response within {timeout:g}s (forward.idle_timeout)",
            "http_response_timeout",
            _STALLED,
        )

    # -- tunnels --------------------------------------------------------------------------------------------------

    def _begin_connect(self, target: bytes) -> None:
        if self.current is not None or self._queue:
            raise RequestRejected(400, "CONNECT must not be pipelined behind another request")
        host, port = self._router.connect(target)
        self._services.stats.tunnel_opened()
        self._enter(CONNECTING)
        self.input_done = True  # what follows the CONNECT is the tunnel's
        tunnel = self._tunnel = Tunnel(self.transport, self._services.stats.tunnel_bytes)
        # An exchange of its own, that ends when the tunnel opens or cannot (the tunnel is not an exchange).
        exchange = self._connecting = self._ends.begin(tunnel_plan(host, port))
        exchange.kind = CONNECT
        self._services.spawn(self._connect_tunnel(tunnel, exchange), self, "opening a tunnel")

    async def _connect_tunnel(self, tunnel: Tunnel, exchange: Exchange) -> None:
        host, port = exchange.plan.origin
        try:
            up = await self._pool.connect(host, port, relay=tunnel)
        except UpstreamError as err:
            if self.transport.is_closing():
                self._ends.end(exchange, _CLIENT_GONE)
            else:
                answer = error_response(err.status, err.message, err.proxy_error)
                exchange.bytes_to_client += len(answer)
                self._ends.end(exchange, _ORIGIN_FAILED, err.status)
                self.transport.write(answer)
            self._linger()
            return
        except asyncio.CancelledError:
            self._ends.end(exchange, _DRAINED)  # the shutdown grace ran out while connecting
            raise
        if self.transport.is_closing() or self._tunnel is not tunnel:
            up.transport.close()
            self._ends.end(exchange, _CLIENT_GONE)
            return
        self.transport.write(_ESTABLISHED)
        exchange.bytes_to_client += len(_ESTABLISHED)
        self._ends.end(exchange, _COMPLETE, 200)
        self._open_tunnel(tunnel, up, self._services.splice_tunnels and self._can_splice)

    def _open_tunnel(self, tunnel: Tunnel, up: UpstreamConnection, splice: bool) -> None:
        """The client has been told (200, 101): relay both ways from now on."""
        self._enter(TUNNEL)
        up.client = self  # for flow control: its writes pause this connection's reading
        up.relay = tunnel
        tunnel.bind_target(up.transport)
        if self._write_blocked:
            up.transport.pause_reading()
        tunnel.start(self._services.loop if splice else None)
        self._resume(_PENDING)

    def _upgrade_body(self, data: bytes) -> bytes:
        """The part of `data` that ends an Upgrade request's Content-Length body goes to the origin as that body;
        returns what follows it."""
        left = self._upgrade_body_left
        body = data[:left] if len(data) > left else data
        self._upgrade_body_left = left = left - len(body)
        exchange = self._reading
        assert exchange is not None
        self._send_body(exchange, body)
        if left:
            return b""
        self._reading = None
        exchange.body_done = True
        return data[len(body) :]

    def _pending_tunnel(self) -> Tunnel | None:
        """The tunnel of this connection, if any (a method, not an attribute read: where this connection has just
        set `_tunnel` to None, mypy would keep it narrowed to None across the calls that set it again, and the
        compiled build would check it as None)."""
        return self._tunnel

    def _holding_for_upgrade(self) -> bool:
        """What the client sent after its last request is held until the origin answers that request's Upgrade."""
        return self.state == UPGRADING

    def _upgrade_refused(self) -> None:
        """The origin answered an Upgrade request with an ordinary response: the connection stays HTTP, and what the
        client sent after its request (held, not relayed) is parsed as the next request, strictly as any other."""
        tunnel = self._tunnel
        assert tunnel is not None
        held, eof = tunnel.take_held()
        self._tunnel = None
        self._clear_current()  # not `self.current = None`: see _clear_current
        self._enter(IDLE)
        self._parser = HttpRequestParser(self)
        self._in_head = True
        self._head_bytes = 0
        self.input_done = False
        self._resume(_PENDING)
        if held:
            self.data_received(held)
        if eof:
            again = self._pending_tunnel()
            if again is not None:  # the held bytes ended in another Upgrade request: the EOF waits with it
                again.client_eof()
            else:
                self.input_done = True
                if self.current is None:
                    self._next()

    def upgraded(self, exchange: Exchange, up: UpstreamConnection) -> None:
        """The origin accepted an Upgrade: from now on both sides are relayed as bytes."""
        self._upgrade_body_left = 0  # what is still to come of the body goes to the origin as it is, like the rest
        self._ends.end(exchange, _UPGRADED)
        self.current = None
        tunnel = self._tunnel
        if tunnel is None:  # not reached: an Upgrade is only sent where llhttp stopped at it
            tunnel = self._tunnel = Tunnel(self.transport, self._services.stats.tunnel_bytes)
        self._open_tunnel(tunnel, up, False)
