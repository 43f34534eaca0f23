"""Connections to origins: opening them with clear failures, reading responses, and keeping them for reuse.

A response is parsed with llhttp's response parser only for its framing: the head is rewritten once by
`http1.plan_response`, body bytes are passed on as the parser yields them (re-chunked where the client needs it), and
the end of the message is known exactly, so the connection can go back to the pool and nothing the origin sends after
a complete response can reach the client as if it were the next one.

A large body with a Content-Length is not even read: the connection reads a response's first few KiB only, and what
the origin's socket holds of the rest is spliced to the client's socket inside the kernel (`splice.BodyPipe`), the
proxy counting the bytes. Copied through the proxy, a 64 KiB body costs it three copies of the bytes (out of the
kernel, into a Python object, back into the kernel): more than all the rest of the work on its request.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser

from proxy.server.exchange import Exchange, ResponseSink
from proxy.server.http1 import MAX_HEAD_BYTES, Framing, PlanCache, ResponsePlan, plan_response, plan_switching_protocols
from proxy.server.splice import BodyPipe, socket_fd
from proxy.server.tunnel import Tunnel
from proxy.stats import CONNECT_BOUNDS, Histogram

log = logging.getLogger(__name__)

Key = tuple[str, int]

# A connection that expects a large body reads this much at a time until the head is in, and while a large rest of the
# body is to come: what it reads is copied through the proxy, what such a small read leaves of a Content-Length body
# in the socket is spliced, behind the bytes read, in one send. Response heads are mostly well under this; a longer
# one takes more reads.
_HEAD_READ_BYTES = 4 * 1024
# Everything else is read in pieces this large (what uvloop itself reads into): a response that is not expected to
# be large takes one read and one send, as a small body is cheaper copied than spliced.
_READ_BYTES = 256 * 1024
# A body is large from this size: after a response that large, a connection expects the next one to be as well.
_SPLICE_MIN_BYTES = 24 * 1024
# The bytes of a read (a head, the body's start) go to the client through the pipe, ahead of the spliced ones, up
# to this much: a body pipe holds at least splice.MIN_BODY_PIPE_BYTES, so they fit into the empty pipe.
_MAX_HELD_BYTES = 16 * 1024


class UpstreamError(Exception):
    """Why an origin could not be reached, with the status the client gets (502 or 504)."""

    def __init__(self, status: int, message: str, proxy_error: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.proxy_error = proxy_error


class _Dechunker:
    """Parser callbacks for a response to an HTTP/1.0 client: chunked bodies are decoded, since such a client
    cannot read chunks; everything else goes to the connection's own callbacks."""

    __slots__ = ("_conn",)

    def __init__(self, conn: UpstreamConnection) -> None:
        self._conn = conn

    def on_message_begin(self) -> None:
        self._conn.on_message_begin()

    def on_headers_complete(self) -> None:
        self._conn.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        conn = self._conn
        if conn.dechunk and not conn.complete:
            conn.out.append(body)

    def on_message_complete(self) -> None:
        self._conn.on_message_complete()


class UpstreamConnection(asyncio.BufferedProtocol):
    """One connection to an origin, serving one exchange at a time; or the target's end of a tunnel (`relay`).

    It knows the client side only as a `ResponseSink` (exchange.py): any front end's connection can take its
    responses.

    The response head is rewritten once; the body bytes go to the client as they arrived, while llhttp follows
    the framing to find where the response ends (no body callbacks, no copies). A response to an HTTP/1.0 client
    whose body is chunked is the exception: it is decoded through `_Dechunker`. A large Content-Length body is
    spliced instead (see the module's docstring); once it has been, the parser has not seen all of the body, so the
    rest of it is counted (`_counting`) and the parser is replaced before the next response.

    A BufferedProtocol (and not a Protocol: uvloop would then call data_received) so that it chooses how much each
    read takes from the socket.
    """

    __slots__ = (
        "_body_from",
        "_counting",
        "_data",
        "_expect_large",
        "_fd",
        "_garbage",
        "_head_buf",
        "_head_start",
        "_held",
        "_in_body",
        "_keep_alive",
        "_plain_parser",
        "_plan",
        "_read_into",
        "_remaining",
        "_reset_parser",
        "_small_read",
        "_spliceable",
        "client",
        "closed",
        "complete",
        "dechunk",
        "exchange",
        "got_bytes",
        "idle_since",
        "key",
        "last_active",
        "out",
        "parser",
        "pool",
        "relay",
        "reused",
        "tls",
        "transport",
        "write_blocked",
    )

    def __init__(self, pool: UpstreamPool, key: Key, relay: Tunnel | None = None, tls: bool = False) -> None:
        self.pool = pool
        self.key = key
        self.tls = tls  # TLS to the origin: its socket never carries spliced bytes
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = self._plain_parser = HttpResponseParser(self)
        self.client: ResponseSink | None = None
        self.exchange: Exchange | None = None
        self.reused = False
        self.closed = False
        self.relay = relay  # the tunnel this connection is the target end of (CONNECT, accepted Upgrade)
        self.write_blocked = False  # the socket's write buffer is past its high-water mark (pause_writing)
        self.idle_since = 0.0
        self.last_active = 0.0
        self.got_bytes = False
        self.out: list[bytes] = []
        # The raw head is taken from the bytes fed to the parser: `_head_buf` holds a head split over reads,
        # `_data` the read being parsed, `_head_start` where the current head starts in their concatenation.
        self._head_buf = b""
        self._data = b""
        self._head_start = 0
        self._body_from = -1  # where the body starts in `_data` (-1: no body bytes in this read)
        self._remaining = 0  # body bytes still expected, for a Content-Length body
        self._plan: ResponsePlan | None = None
        self.complete = False
        self.dechunk = False
        self._garbage = False
        self._in_body = False
        self._keep_alive = False
        self._reset_parser = False
        self._spliceable = False  # a Content-Length body is on the way, and there is a pipe to splice it
        self._small_read = False  # the last read was into the small buffer: it may have left the body in the socket
        self._counting = False  # some of this body was spliced: the rest is counted, not parsed
        self._expect_large = not tls  # the next response may have a body to splice (the last one did, or none yet)
        self._fd = -1  # the socket's descriptor, once a body was spliced from it
        self._read_into: memoryview = None  # type: ignore[assignment]  # the buffer get_buffer handed out
        self._held: bytes | None = None  # body bytes of this read that go out ahead of the spliced ones

    # -- binding -------------------------------------------------------------------------------------------------

    def send_request(self, client: ResponseSink, exchange: Exchange, data: bytes) -> None:
        """Serve `exchange` for `client` on this (new or reused) connection, starting with `data`."""
        self.client = client
        self.exchange = exchange
        self.got_bytes = False
        self.last_active = self.pool.coarse_now
        if not exchange.plan.http11:
            self.parser = HttpResponseParser(_Dechunker(self))
        if self.write_blocked:
            # Still full from the last exchange (pause_writing is only called when the buffer fills): this client
            # waits too, until resume_writing.
            client.pause_for_upstream()
        exchange.bytes_to_origin += len(data)
        self.transport.write(data)

    @property
    def response_started(self) -> bool:
        return self._plan is not None

    # -- asyncio.Protocol ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.open_connections += 1
        if self.relay is not None:
            self.relay.bind_target(self.transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        # Small reads while the head of a large response or a large rest of a body is expected (`_spliceable`
        # implies a body pipe).
        pool = self.pool
        if self.client is not None and (
            (self._spliceable and self._remaining >= _SPLICE_MIN_BYTES)
            or (self._expect_large and not self._in_body and self.relay is None and pool.body_pipe is not None)
        ):
            self._small_read = True
            buffer = self._read_into = pool.head_buffer
        else:
            self._small_read = False
            buffer = self._read_into = pool.read_buffer
        return buffer

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self._received(self._read_into[:nbytes].tobytes())
            held = self._held
            if held is not None:
                self._held = None
                client = self.client
                assert client is not None
                self._splice_body(client, held)
            exchange = self.exchange
            if exchange is not None and exchange.responded < 0.0:
                exchange.responded = self.pool.clock()  # its head went out in this read, its end is to come
        except Exception as exc:
            self._internal_error(exc, "relaying a response")

    def _received(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None:
            relay.from_target(data)
            return
        client = self.client
        if client is None:
            # Bytes on an idle pooled connection: the origin is out of step; never reuse it.
            self.pool.discard(self)
            self.transport.close()
            return
        self.got_bytes = True
        self.last_active = self.pool.coarse_now
        if self._counting:
            self._count_body(client, data)
            return
        self._data = data
        in_body = self._in_body
        self._body_from = 0 if in_body else -1
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            self._switch_protocols(client, data[upgrade.args[0] :])
            return
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HttpParserError):
                self._malformed(client, str(cause))
            else:
                log.error("response handling failed", exc_info=cause)
                self._failed(
                    client, UpstreamError(500, "trace-proxy failed to handle the response", "proxy_internal_error")
                )
            return
        except HttpParserError as exc:
            if not self.complete:
                self._malformed(client, str(exc))
                return
            self._garbage = True  # bytes after a complete response; the response itself is intact
        out = self.out
        body_from = self._body_from
        if body_from >= 0 and not self.dechunk:
            plan = self._plan
            assert plan is not None
            framing = plan.upstream_framing
            if framing is not Framing.NONE:
                body = data[body_from:] if body_from else data
                if framing is Framing.LENGTH:
                    remaining = self._remaining
                    if len(body) > remaining:
                        body = body[:remaining]
                        self._garbage = True
                    self._remaining = remaining - len(body)
                elif self._garbage:
                    # Bytes followed the end of a chunked body in this read: where it ended is not known here,
                    # so the client must not get any of it as if it were the rest of the response.
                    self._failed(
                        client, UpstreamError(502, "origin sent bytes after its response", "http_protocol_error")
                    )
                    return
                if body:
                    if out:  # a head before it: one write, one send
                        out.append(body)
                        body = b"".join(out)
                        out.clear()
                    if self._small_read and self._spliceable and self._remaining and len(body) <= _MAX_HELD_BYTES:
                        self._held = body  # goes out with the spliced rest (buffer_updated), in one send
                    else:
                        exchange = self.exchange  # inlined _sent: this runs for every response
                        if exchange is not None:
                            exchange.bytes_to_client += len(body)
                        client.transport.write(body)
        elif not self._in_body:
            # The head is not complete yet: keep what arrived of it for on_headers_complete.
            self._head_buf = (self._head_buf + data)[self._head_start :] if self._head_buf else data[self._head_start :]
            self._head_start = 0
            if len(self._head_buf) > MAX_HEAD_BYTES:
                self._malformed(client, f"response head larger than {MAX_HEAD_BYTES // 1024} KiB")
                return
        if out:
            head = b"".join(out)
            out.clear()
            self._sent(len(head))
            client.transport.write(head)
        if self.complete:
            self._finish(client)

    def _sent(self, size: int) -> None:
        """`size` more bytes of the response go to the client."""
        exchange = self.exchange
        if exchange is not None:
            exchange.bytes_to_client += size

    def _splice_body(self, client: ResponseSink, held: bytes) -> None:
        """Send `held`, the body's bytes just read, and splice after them what the socket holds of the rest."""
        pipe = self.pool.body_pipe
        transport = client.transport
        if pipe is None or transport.get_write_buffer_size() or transport.is_closing() or self.transport.is_closing():
            # Queued bytes must go first; a closing transport's descriptor may be closed, even reused.
            self._sent(len(held))
            transport.write(held)
            return
        src = self._fd
        if src < 0:
            src = self._fd = socket_fd(self.transport)
        dst = client.socket_fd()
        if src < 0 or dst < 0:
            self._spliceable = False
            self._sent(len(held))
            transport.write(held)
            return
        try:
            taken, left = pipe.relay(src, dst, self._remaining, held)
        except (OSError, EOFError) as exc:
            self.pool.replace_body_pipe()
            # The head is out: the client sees the response cut off, as when either end fails without splicing.
            reason = "the origin closed the connection" if isinstance(exc, EOFError) else (exc.strerror or str(exc))
            message = f"relaying a response body from {self.key[0]}:{self.key[1]} failed: {reason}"
            log.debug("%s", message)
            self._failed(client, UpstreamError(502, message, "connection_terminated"))
            return
        self._sent(len(held) + taken)  # `left` is the end of those, written through the transport
        if left:
            client.transport.write(left)
        if not taken:
            return
        if not self._counting:
            self._counting = True  # llhttp did not see these bytes: it is out of step with the body from here on
            self._reset_parser = True
        remaining = self._remaining = self._remaining - taken
        if not remaining:
            self.complete = True
            self._finish(client)

    def _count_body(self, client: ResponseSink, data: bytes) -> None:
        """The rest of a body part of which was spliced: relayed up to its Content-Length, the end of the response."""
        remaining = self._remaining
        if len(data) > remaining:
            data = data[:remaining]
            self._garbage = True  # bytes after the response: the connection is not reused
        remaining = self._remaining = remaining - len(data)
        if self._small_read and self._spliceable and remaining and len(data) <= _MAX_HELD_BYTES:
            self._held = data
            return
        self._sent(len(data))
        client.transport.write(data)
        if not remaining:
            self.complete = True
            self._finish(client)

    def eof_received(self) -> bool | None:
        try:
            if self.relay is not None:
                self.relay.target_eof()
                return True
        except Exception as exc:
            self._internal_error(exc, "relaying a tunnel")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.open_connections -= 1
        self.pool.discard(self)
        client = self.client
        self.client = None
        relay = self.relay
        try:
            if relay is not None:
                relay.target_lost()
                return
            if client is None:
                return
            exchange = self.exchange
            if exchange is None:
                return
            if self._plan is not None and self._plan.upstream_framing is Framing.CLOSE and not self.complete:
                # A read-until-close body ends here, complete.
                self.complete = True
                client.response_complete(exchange, True)
                return
            client.upstream_lost(exchange, self)
        except Exception as error:
            if client is not None:
                client.internal_error(error, "handling the origin's close")
            else:
                log.error("internal error handling the close of a tunnel's target", exc_info=error)

    def _internal_error(self, exc: Exception, stage: str) -> None:
        """An exception nothing expected while serving the client: the client's connection answers for it (see
        DownstreamConnection.internal_error), and this connection, in an unknown state, is dropped."""
        client = self.client
        self.client = None
        self.exchange = None
        self.transport.abort()
        if client is not None:
            client.internal_error(exc, stage)
        else:
            log.error("internal error on an idle origin connection: dropped", exc_info=exc)

    def pause_writing(self) -> None:
        self.write_blocked = True
        if self.client is not None:
            self.client.pause_for_upstream()

    def resume_writing(self) -> None:
        self.write_blocked = False
        if self.client is not None:
            self.client.resume_for_upstream()

    # -- llhttp callbacks ---------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            self._garbage = True  # the origin sent more than the one response it was asked for

    def _take_split_head(self) -> bytes:
        """The raw head just parsed when it began in an earlier read (see on_headers_complete)."""
        buffered = self._head_buf
        raw = buffered + self._data
        start = self._head_start
        end = raw.find(b"\r\n\r\n", start) + 4
        self._head_start = end - len(buffered)  # offsets from here on are into `_data` alone
        self._head_buf = b""
        return raw[start:end]

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        # The raw head, status line through the empty line (llhttp enforced CRLF endings), and where it starts in
        # the read being parsed (-1: it began in an earlier one).
        if self._head_buf:
            head = self._take_split_head()
            head_at = -1
        else:
            head_at = self._head_start
            end = self._data.find(b"\r\n\r\n", head_at) + 4
            self._head_start = end
            head = self._data[head_at:end]
        if len(head) > MAX_HEAD_BYTES:
            raise HttpParserError(f"response head larger than {MAX_HEAD_BYTES // 1024} KiB")
        parser = self.parser
        status = parser.get_status_code()
        exchange = self.exchange
        assert exchange is not None and self.client is not None
        request = exchange.plan
        if status == 101:
            if not (request.upgrade and parser.should_upgrade()):
                raise HttpParserError("101 Switching Protocols without a requested Upgrade")
            self.out.append(plan_switching_protocols(head))
            return
        plan = plan_response(
            status,
            head,
            request_is_head=request.method_is_head,
            client_http11=request.http11,
            client_keep_alive=request.keep_alive,  # a refused Upgrade leaves an ordinary HTTP connection
            # An answer before the request's body ended closes the client connection after it (RFC 9112 §9.6).
            force_close=self.client.closing_after_response or not exchange.body_done,
            cache=self.pool.plan_cache,
        )
        if status < 200:
            if request.http11:
                self.out.append(plan.head)
            return
        exchange.status = status
        exchange.responded = -1.0  # the head goes out in this read: stamped when it is handled (buffer_updated)
        self._plan = plan
        framing = plan.upstream_framing
        self._keep_alive = parser.should_keep_alive()
        self._in_body = True
        self.dechunk = plan.dechunk
        self._spliceable = (
            framing is Framing.LENGTH and not plan.dechunk and self.pool.body_pipe is not None and not self.tls
        )
        if plan.head is head and framing is Framing.LENGTH and head_at >= 0:
            # The head goes out as the origin wrote it: relayed together with the body of the same read, uncopied.
            self._body_from = head_at
            self._remaining = plan.content_length + len(head)
            return
        self.out.append(plan.head)
        self._body_from = self._head_start
        self._remaining = plan.content_length
        if framing is Framing.NONE and request.method_is_head:
            # llhttp cannot be told that a response answers HEAD: end it here and start a fresh parser.
            self.complete = True
            self._reset_parser = True

    def on_message_complete(self) -> None:
        if self._plan is None:
            return  # an interim 1xx response
        if not self.complete:
            self.complete = True

    # -- endings --------------------------------------------------------------------------------------------------

    def _finish(self, client: ResponseSink) -> None:
        exchange = self.exchange
        plan = self._plan
        assert exchange is not None and plan is not None
        self.client = None
        self.exchange = None
        if self._keep_alive and not self._garbage and exchange.body_done and plan.upstream_framing is not Framing.CLOSE:
            # Back to the state of a new connection, then to the pool.
            if self._reset_parser or self.parser is not self._plain_parser:
                self.parser = self._plain_parser = HttpResponseParser(self)
                self._reset_parser = False
            self._data = b""
            self._head_start = 0
            self._plan = None
            self.complete = False
            self.dechunk = False
            self._in_body = False
            self._expect_large = self._spliceable and plan.content_length >= _SPLICE_MIN_BYTES
            self._spliceable = False
            self._counting = False
            self.pool.release(self)
        else:
            self.transport.close()
        client.response_complete(exchange, plan.close_client)

    def _malformed(self, client: ResponseSink, reason: str) -> None:
        message = f"{self.key[0]}:{self.key[1]} sent a malformed response: {reason}"
        self._failed(client, UpstreamError(502, message, "http_protocol_error"))

    def _failed(self, client: ResponseSink, error: UpstreamError) -> None:
        exchange = self.exchange
        self.client = None
        self.exchange = None
        self.out.clear()
        self.transport.abort()
        if exchange is None:
            return
        if self._plan is not None:
            client.response_broken(exchange)  # the head is out: the client must see a cut-off response
        else:
            client.upstream_failed(exchange, error)

    def _switch_protocols(self, client: ResponseSink, tail: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None
        exchange.status = 101
        exchange.responded = -1.0  # ended below, in this read
        self.exchange = None
        head = b"".join(self.out)
        self.out.clear()
        exchange.bytes_to_client += len(head) + len(tail)
        client.transport.write(head)
        if tail:
            client.transport.write(tail)
        client.upgraded(exchange, self)


class UpstreamPool:
    """Idle keep-alive connections per origin, reused most-recent first so cold ones age out; and what the
    connections share: their read buffers (a read is consumed before the next one starts) and the body pipe.

    An origin is (TLS or not, host, port): a connection over TLS is never handed out for plain HTTP to the same
    host and port, nor the reverse (one table per kind, each keyed by (host, port), so the usual lookup builds no
    key). One pool serves every listener of a process."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        connect_timeout: float,
        idle_timeout: float,
        splice_bodies: bool = True,
        plan_cache: PlanCache | None = None,
        connect_seconds: Histogram | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loop = loop
        self.plan_cache = plan_cache  # what response planning remembers (see http1.PlanCache)
        self.head_buffer = memoryview(bytearray(_HEAD_READ_BYTES))
        self.read_buffer = memoryview(bytearray(_READ_BYTES))
        self.body_pipe = BodyPipe.open() if splice_bodies else None
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._idle: dict[Key, list[UpstreamConnection]] = {}  # plain HTTP
        self._idle_tls: dict[Key, list[UpstreamConnection]] = {}
        self.now = loop.time
        # Activity is stamped with this copy of the clock, refreshed by the sweeper at each tick: a stamp per read
        # costs an attribute load instead of a call, and idle timeouts need no finer grain than the tick.
        self.coarse_now = loop.time()
        self.max_idle_per_origin = 512
        self.open_connections = 0  # origin and tunnel target connections made and not yet lost
        self.clock = clock  # the exchanges' clock (services.py): when a response head went out, connect times
        # How long each connection the pool opened took to open (a histogram of the process's Stats).
        self.connect_seconds = Histogram(CONNECT_BOUNDS) if connect_seconds is None else connect_seconds

    def set_timeouts(self, connect_timeout: float, idle_timeout: float) -> None:
        """New timeouts (a reload): for the connections opened, and the idle ones swept, from now on."""
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout

    def acquire(self, key: Key, tls: bool = False) -> UpstreamConnection | None:
        """The most recently used idle connection to `key` (over TLS or not), or None. A connection leaves the pool
        when it closes or misbehaves, so one found here is open unless its close is still on the way."""
        idle = (self._idle_tls if tls else self._idle).get(key)
        while idle:
            conn = idle.pop()
            if not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        conn.idle_since = self.coarse_now
        table = self._idle_tls if conn.tls else self._idle
        idle = table.get(conn.key)
        if idle is None:
            idle = table[conn.key] = []
        idle.append(conn)
        if len(idle) > self.max_idle_per_origin:
            idle.pop(0).transport.close()

    def discard(self, conn: UpstreamConnection) -> None:
        idle = (self._idle_tls if conn.tls else self._idle).get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def connect(
        self, host: str, port: int, *, relay: Tunnel | None = None, tls: ssl.SSLContext | None = None
    ) -> UpstreamConnection:
        """A new connection to host:port, over TLS with `tls`, as the target end of `relay` if given; or an
        UpstreamError naming why not (DNS, refused, timeout, TLS handshake)."""
        key = (host, port)
        secure = tls is not None
        started = self.clock()

        def protocol() -> UpstreamConnection:
            return UpstreamConnection(self, key, relay, secure)

        try:
            async with asyncio.timeout(self._connect_timeout):
                if tls is None:
                    _, conn = await self._loop.create_connection(protocol, host, port)
                else:
                    _, conn = await self._loop.create_connection(protocol, host, port, ssl=tls, server_hostname=host)
        except TimeoutError:
            raise UpstreamError(
                504,
                f"connecting to {host}:{port} timed out after {self._connect_timeout:g}s",
                "connection_timeout",
            ) from None
        except socket.gaierror as exc:
            raise UpstreamError(502, f"DNS lookup of {host} failed: {exc.strerror}", "dns_error") from None
        except UnicodeError as exc:  # the resolver's IDNA encoding (split_authority refuses what it knows of it)
            raise UpstreamError(502, f"DNS lookup of {host} failed: {exc}", "dns_error") from None
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            message = f"TLS handshake with {host}:{port} failed: {reason}"
            raise UpstreamError(502, message, "tls_protocol_error") from None
        except ConnectionRefusedError:
            raise UpstreamError(502, f"connection to {host}:{port} refused", "connection_refused") from None
        except OSError as exc:
            if exc.errno in (errno.ETIMEDOUT,):
                raise UpstreamError(504, f"connecting to {host}:{port} timed out", "connection_timeout") from None
            reason = exc.strerror or str(exc)
            raise UpstreamError(502, f"cannot connect to {host}:{port}: {reason}", "destination_unavailable") from None
        conn.last_active = self.now()
        self.connect_seconds.observe(self.clock() - started)
        return conn

    def sweep(self, now: float, tick: float) -> None:
        """Close connections idle longer than idle_timeout (stamps lag the clock by up to one `tick`)."""
        self.coarse_now = now
        limit = now - self._idle_timeout - tick
        for table in (self._idle, self._idle_tls):
            for key in list(table):
                idle = table[key]
                while idle and idle[0].idle_since < limit:
                    idle.pop(0).transport.close()
                if not idle:
                    del table[key]

    def replace_body_pipe(self) -> None:
        """After a failed relay, which may have left bytes in the pipe."""
        if self.body_pipe is not None:
            self.body_pipe.close()
            self.body_pipe = BodyPipe.open()

    def close(self) -> None:
        for table in (self._idle, self._idle_tls):
            for idle in table.values():
                for conn in idle:
                    conn.transport.close()
            table.clear()
        if self.body_pipe is not None:
            self.body_pipe.close()
            self.body_pipe = None

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values()) + sum(len(v) for v in self._idle_tls.values())
