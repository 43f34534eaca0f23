"""The forward-proxy listener: one protocol object per client connection, on the hot path of every request.

The request head is parsed by llhttp (httptools) through callbacks, rewritten once by `http1.plan_request`, and
written to a pooled origin connection; the body follows as the parser yields it.  Requests a client pipelines wait
in order behind the one in flight.  CONNECT and accepted Upgrades turn the connection into a byte relay.  Nothing
here logs per request, and no header becomes more than the (name, value) pair llhttp hands over: this is the code
whose cost the benchmark measures.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from proxy.server.http1 import (
    MAX_HEAD_BYTES,
    Framing,
    RequestPlan,
    RequestRejected,
    error_response,
    plan_connect,
    plan_request,
)
from proxy.server.splice import SpliceTunnel, socket_fd
from proxy.server.upstream import UpstreamConnection, UpstreamError

if TYPE_CHECKING:
    from proxy.server.listener import ForwardServer

log = logging.getLogger(__name__)

_PIPELINE = 1  # a request waits behind the one in flight
_UPSTREAM = 2  # the origin's socket buffer is full
_PENDING = 4  # body bytes wait for an origin connection
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


class Exchange:
    """One proxied request: its plan, its body on the way, and the record a span is made from later."""

    __slots__ = (
        "body_done",
        "ended",
        "pending",
        "pending_size",
        "plan",
        "retried",
        "started",
        "status",
        "upstream",
    )

    def __init__(self, plan: RequestPlan, now: float) -> None:
        self.plan = plan
        self.started = now
        self.ended = 0.0
        self.status = 0
        self.body_done = plan.body is Framing.NONE
        self.pending: list[bytes] | None = None  # body bytes that wait for an origin connection
        self.pending_size = 0
        self.upstream: UpstreamConnection | None = None
        self.retried = False


class ClientConnection(asyncio.Protocol):
    """A client connection: parses requests, drives one exchange at a time, or relays a tunnel."""

    def __init__(self, server: ForwardServer) -> None:
        self._server = server
        self._policy = server.policy
        self._pool = server.pool
        self._now = server.now
        self._stats = server.stats
        self._self_keys = server.self_keys
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
        self._input_done = False
        self._deferred_error: bytes | None = None
        self.closing_after_response = False
        self.last_active = 0.0
        self.head_since = 0.0  # when the request head under way began (0: none): forward.header_timeout
        # tunnel state (CONNECT, accepted Upgrade)
        self._tunnel_buf: list[bytes] | None = None
        self.tunnel_peer: UpstreamConnection | None = None
        self._eofs = 0  # half-closes seen in a tunnel, from either side: two end it
        self._client_eof = False  # the client half-closed before the tunnel was established: passed on then
        self._pending_tunnel_bytes = 0
        self._splice: SpliceTunnel | None = None  # the tunnel is relayed in the kernel (see splice.py)
        self._fd = -1  # the socket's descriptor, once a response body was spliced into it
        self._discarding = False  # an error was answered: input is read and dropped until the close
        self._upgrade_body_left = 0  # body bytes of an Upgrade request still to come (llhttp leaves them to us)

    # -- asyncio.Protocol ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # The first request head is due from the connection's start: a client that connects and sends nothing
        # holds a descriptor as surely as one that dribbles.
        self.last_active = self.head_since = self._pool.coarse_now
        self._server.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.last_active = self._pool.coarse_now
            if self._discarding:
                return
            if self._tunnel_buf is not None:
                peer = self.tunnel_peer
                if peer is not None:
                    peer.transport.write(data)
                else:
                    if self._upgrade_body_left:
                        data = self._upgrade_body(data)
                        if not data:
                            return
                    self._tunnel_buf.append(data)
                    self._pending_tunnel_bytes += len(data)
                    if self._pending_tunnel_bytes > _MAX_PENDING:
                        self._pause(_PENDING)
                return
            if self._input_done:
                return
            if self._in_head:
                if not self.head_since:
                    self.head_since = self.last_active
                self._head_bytes += len(data)
            try:
                self._parser.feed_data(data)
            except HttpParserUpgrade as upgrade:
                # What follows the request is the new protocol's, once the origin agrees (101), and the next request if
                # it does not: held until the answer. An Upgrade request's body comes first: llhttp leaves it to us.
                self._input_done = True
                tail = data[upgrade.args[0] :]
                if self._upgrade_body_left:
                    tail = self._upgrade_body(tail)
                self._tunnel_buf = [tail] if tail else []
                return
            except HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, RequestRejected):
                    self._reject(cause.status, cause.message, cause.proxy_error)
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
            if self._discarding:
                return None  # the lingering close is over
            if self.tunnel_peer is not None:
                self._eofs += 1
                if self.tunnel_peer.transport.can_write_eof():
                    self.tunnel_peer.transport.write_eof()
                if self._eofs >= 2:
                    self.transport.close()
                    return None
                return True
            reading = self._reading
            if reading is not None:
                # Half-closed inside a request body (an Upgrade request's too): that request can never be
                # completed. Unless its answer has begun (an origin that answered early), the origin's half request
                # is dropped and the client told.
                up = reading.upstream
                if reading is not self.current or up is None or not up.response_started:
                    self._reject(400, "the client closed its side before the request body ended", "http_request_error")
                    return None
            if self._tunnel_buf is not None:
                self._eofs += 1
                self._client_eof = True  # passed on once the tunnel or upgrade is established
                return True
            # A client that half-closes after its request still gets the response.
            self._input_done = True
            return None if self.current is None else True
        except Exception as exc:
            self.internal_error(exc, "handling the client's end of input")
            return None

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._server.connection_closed(self)
            self._input_done = True
            if self._splice is not None:
                self._splice.close()
            peer = self.tunnel_peer
            if peer is not None:
                self.tunnel_peer = None
                peer.client = None
                peer.transport.close()
            exchange = self.current
            self.current = None
            self._queue.clear()
            if exchange is not None:
                up = exchange.upstream
                if up is not None and up.client is self:
                    up.client = None
                    up.exchange = None
                    up.transport.close()
        except Exception:
            log.exception("cleaning up a closed client connection failed")

    def pause_writing(self) -> None:
        up = self.tunnel_peer or (self.current.upstream if self.current is not None else None)
        if up is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._splice is not None:
            return  # the loop must not read a spliced socket
        up = self.tunnel_peer or (self.current.upstream if self.current is not None else None)
        if up is not None and not up.transport.is_closing():
            up.transport.resume_reading()

    def socket_fd(self) -> int:
        """The socket's descriptor (-1: none), for splicing response bodies into; valid while the transport is not
        closing."""
        fd = self._fd
        if fd < 0:
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
            if not self._paused and self._splice is None and not self.transport.is_closing():
                self.transport.resume_reading()

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
        if self._input_done:
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
        plan = plan_request(method, url, http11, keep_alive, upgrade, headers, self._policy)
        if upgrade and plan.body is not Framing.NONE:
            # llhttp takes everything after this head for the new protocol's bytes, body included (even where the
            # plan ignores the Upgrade, as for HTTP/1.0): the body is counted here.
            self._upgrade_body_left = _upgrade_body_length(plan.body, headers)
        exchange = Exchange(plan, self._now())
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
            self._input_done = True

    # -- exchanges ----------------------------------------------------------------------------------------------

    def _send_body(self, exchange: Exchange, data: bytes) -> None:
        up = exchange.upstream
        if up is not None and exchange is self.current:
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
        plan = exchange.plan
        key = plan.origin
        if key in self._self_keys:
            self._fail(
                exchange,
                508,
                f"request to {plan.host}:{plan.port} would loop back into trace-proxy",
                "proxy_loop_detected",
            )
            return
        up = self._pool.acquire(key)
        if up is None:
            self._server.spawn(self._connect(exchange), self, "connecting to the origin")
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
        pending = exchange.pending
        if pending is None:
            up.send_request(self, exchange, exchange.plan.head)
        else:
            exchange.pending = None
            exchange.pending_size = 0
            up.send_request(self, exchange, b"".join([exchange.plan.head, *pending]))
            self._resume(_PENDING)

    def _ended(self, exchange: Exchange) -> None:
        """The one place an exchange ends: its end time for the span record, and the counters (bumped here, not
        through a call: this runs for every request)."""
        exchange.ended = self._now()
        stats = self._stats
        stats.requests += 1
        stats.by_source[exchange.plan.decision.source] += 1
        stats.by_status[exchange.status] += 1

    def _drop_upstream(self, up: UpstreamConnection) -> None:
        """Cut the origin connection of an exchange that will not complete there."""
        up.client = None
        up.exchange = None
        up.transport.abort()

    def response_complete(self, exchange: Exchange, close_client: bool) -> None:
        """The origin's response has been written out in full."""
        self._ended(exchange)
        if exchange is not self.current:
            return
        self.current = None
        exchange.upstream = None
        if not exchange.body_done:
            # Answered before the client finished sending its body: what it still sends is read and dropped for a
            # moment, so that a close does not reset the answer away (RFC 9112 §9.6).
            self._linger()
        elif close_client or self.closing_after_response or self.transport.is_closing():
            self._close()
        elif self._queue:
            self._next()
        elif self._holding_for_upgrade():
            # The last request asked to upgrade and llhttp took what followed it for the new protocol's bytes; the
            # origin's ordinary answer says it was not.
            self._upgrade_refused()
        elif self._input_done or self._deferred_error is not None:
            self._next()

    def _next(self) -> None:
        if self._queue:
            nxt = self._queue.popleft()
            if not self._queue:
                self._resume(_PIPELINE)
            self._start(nxt)
        elif self._deferred_error is not None:
            self.transport.write(self._deferred_error)
            self._linger()
        elif self._input_done and self._tunnel_buf is None:
            self._close()

    def upstream_failed(self, exchange: Exchange, err: UpstreamError) -> None:
        """The origin could not be reached or answered badly before the response began."""
        self._fail(exchange, err.status, err.message, err.proxy_error)

    def response_broken(self, exchange: Exchange) -> None:
        """The response head was sent but its body cannot be completed: cut the connection so the client sees a
        truncated response, never a complete one."""
        self._ended(exchange)
        self.current = None
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
            self._server.spawn(self._connect(exchange), self, "connecting to the origin")
            return
        self._fail(
            exchange,
            502,
            f"{exchange.plan.host}:{exchange.plan.port} closed the connection before sending a response",
            "connection_terminated",
        )

    def _fail(self, exchange: Exchange, status: int, message: str, proxy_error: str) -> None:
        exchange.status = status
        self._ended(exchange)
        self.current = None
        if not self.transport.is_closing():
            self.transport.write(error_response(status, message, proxy_error))
        self._linger()

    def _reject(self, status: int, message: str, proxy_error: str) -> None:
        """Answer a request the proxy will not forward; the connection closes after it."""
        if self._discarding:
            return  # already answered and closing (llhttp goes on with the rest of a read after a refusal)
        self._input_done = True
        self._server.stats.rejected(status)
        body = error_response(status, message, proxy_error)
        current = self.current
        if current is not None:
            if self._reading is current:
                # The body of the request in flight is malformed: the origin holds half a request; drop it.
                self._queue.clear()
                up = current.upstream
                if up is not None:
                    self._drop_upstream(up)
                    if up.response_started:
                        self.response_broken(current)
                        return
                current.status = status
                self._ended(current)
                self.current = None
            else:
                reading = self._reading
                if reading is not None:
                    # The malformed body belongs to a queued request (always the last one): it never starts.
                    self._reading = None
                    self._queue.remove(reading)
                self._deferred_error = body  # after the responses to the requests before the bad one
                return
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
            begun = self.tunnel_peer is not None or self._splice is not None
            exchange = self.current
            self.current = None
            self._queue.clear()
            if exchange is not None:
                up = exchange.upstream
                if up is not None:
                    begun = begun or up.response_started
                    if up.client is self:
                        self._drop_upstream(up)
                if not begun:
                    exchange.status = 500
                self._ended(exchange)
            peer = self.tunnel_peer
            if peer is not None:
                self.tunnel_peer = None
                peer.client = None
                peer.transport.abort()
            if self._splice is not None:
                self._splice.close()
            if begun or self._discarding or self.transport.is_closing():
                self.transport.abort()
                return
            self._stats.rejected(500)
            self.transport.write(error_response(500, f"trace-proxy failed while {stage}", "proxy_internal_error"))
            self._linger()
        except Exception:
            log.exception("ending a connection after an internal error failed: aborting it")
            self.transport.abort()

    def refuse(self, status: int, message: str, proxy_error: str) -> None:
        """Answer a connection the proxy will not serve at all (its client is not allowed), before it sent a byte."""
        self._server.stats.rejected(status)
        self.transport.write(error_response(status, message, proxy_error))
        self._linger()

    def head_timed_out(self, timeout: float) -> None:
        """The request head under way did not arrive whole within forward.header_timeout."""
        self.head_since = 0.0
        if self._discarding or self.transport.is_closing():
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
        self._input_done = True
        self._tunnel_buf = None
        self._discarding = True
        self.head_since = 0.0  # answered: no 408 to follow
        transport.write_eof()
        self._resume(self._paused)
        self._server.loop.call_later(_LINGER_SECONDS, self._close)

    def _close(self) -> None:
        self._input_done = True
        if not self.transport.is_closing():
            self.transport.close()

    def close_if_idle(self) -> None:
        """Close now when no request is in flight (shutdown, idle timeout), else after the response in flight."""
        if self.current is None and self.tunnel_peer is None and self._tunnel_buf is None:
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
            self.transport.abort()
            up.transport.abort()
            return
        if up is not None:
            self._drop_upstream(up)
        self._fail(
            exchange,
            504,
            f"{exchange.plan.host}:{exchange.plan.port} sent no response within {timeout:g}s (forward.idle_timeout)",
            "http_response_timeout",
        )

    # -- tunnels --------------------------------------------------------------------------------------------------

    def _begin_connect(self, target: bytes) -> None:
        if self.current is not None or self._queue:
            raise RequestRejected(400, "CONNECT must not be pipelined behind another request")
        host, port = plan_connect(target, self._policy.connect_ports)
        if (host, port) in self._server.self_keys:
            raise RequestRejected(
                508, f"CONNECT to {host}:{port} would loop back into trace-proxy", "proxy_loop_detected"
            )
        self._server.stats.tunnel_opened()
        self._server.spawn(self._connect_tunnel(host, port), self, "opening a tunnel")

    async def _connect_tunnel(self, host: str, port: int) -> None:
        try:
            up = await self._pool.connect(host, port, tunnel=True)
        except UpstreamError as err:
            self._server.stats.rejected(err.status)
            if not self.transport.is_closing():
                self.transport.write(error_response(err.status, err.message, err.proxy_error))
            self._linger()
            return
        if self.transport.is_closing():
            up.transport.close()
            return
        self.tunnel_peer = up
        self.transport.write(_ESTABLISHED)
        up.start_tunnel(self)
        if self.tunnel_peer is up:
            self._flush_tunnel_buf(up)
            if self._server.splice_tunnels and not self._eofs and not up.tunnel_eof:
                self._splice = SpliceTunnel.start(self._server.loop, self.transport, up.transport)

    def _flush_tunnel_buf(self, up: UpstreamConnection) -> None:
        buf = self._tunnel_buf
        if buf is None:
            self._tunnel_buf = []
            return
        if buf:
            up.transport.write(b"".join(buf))
            buf.clear()
            self._pending_tunnel_bytes = 0
            self._resume(_PENDING)
        if self._client_eof and up.transport.can_write_eof():
            up.transport.write_eof()  # the client's, and only the client's: the target's went the other way

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

    def _holding_for_upgrade(self) -> bool:
        """What the client sent after its last request is held until the origin answers that request's Upgrade.

        (A method, not an inline test: where this connection has just set `_tunnel_buf` to None, mypy would keep it
        narrowed to None across the calls that set it again, and the compiled build would check it as None.)"""
        return self._tunnel_buf is not None

    def _upgrade_refused(self) -> None:
        """The origin answered an Upgrade request with an ordinary response: the connection stays HTTP, and what the
        client sent after its request (held, not relayed) is parsed as the next request, strictly as any other."""
        held = self._tunnel_buf
        eof = self._client_eof
        self._tunnel_buf = None
        self._eofs = 0
        self._client_eof = False
        self._parser = HttpRequestParser(self)
        self._in_head = True
        self._head_bytes = 0
        self._input_done = False
        self._resume(_PENDING)
        if held:
            self.data_received(b"".join(held))
        if eof:
            if self._holding_for_upgrade():  # the held bytes ended in another Upgrade request: the EOF waits with it
                self._eofs = 1
                self._client_eof = True
            else:
                self._input_done = True
                if self.current is None:
                    self._next()

    def upgraded(self, exchange: Exchange, up: UpstreamConnection) -> None:
        """The origin accepted an Upgrade: from now on both sides are relayed as bytes."""
        self._upgrade_body_left = 0  # what is still to come of the body goes to the origin as it is, like the rest
        self._ended(exchange)
        self.current = None
        self.tunnel_peer = up
        self._flush_tunnel_buf(up)

    def peer_eof(self) -> None:
        """The origin side of a tunnel half-closed."""
        self._eofs += 1
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self._eofs >= 2:
            self.transport.close()

    def tunnel_peer_lost(self) -> None:
        self.tunnel_peer = None
        self._close()
