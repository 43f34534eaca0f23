"""A playbook harness for the connection layer: the client and origin protocols driven by scripted events, with
fake transports and a fake clock, no sockets (in the spirit of mitmproxy's proxy-core tests).

This is the one module that builds `Listener`, `DownstreamConnection` and `UpstreamConnection` objects and knows
how they are wired (the pool, the sweep, the loop methods they call). Tests talk only to its vocabulary:

    pb = Playbook()
    pb.client_sends(b"GET http://origin.test/ HTTP/1.1\\r\\nHost: origin.test\\r\\n\\r\\n")
    connect = pb.connects[0]            # what the proxy asked to connect to: .host, .port, .tunnel
    origin = connect.succeed()          # or .refuse() / .time_out() / .fail_dns()
    origin.sends(b"HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n")
    assert pb.client.written == b"HTTP/1.1 200 OK..."

and to what is observable: the bytes each side was written, whether it was closed, aborted or half-closed, whether
its reading is paused, the connects asked for, and the Stats counters. When the protocols are rewritten, only this
module changes.

Faithful to what uvloop does where it matters: a transport's close() or abort() reaches the protocol's
connection_lost on the next loop iteration; eof_received returning a false value closes the transport; a transport
whose reading is paused delivers nothing until resumed (what the peer sent waits); write() after write_eof() raises.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from proxy.server.admission import LOOPBACK, Network
from proxy.server.connection_state import NAMES
from proxy.server.downstream import DownstreamConnection
from proxy.server.exchange import KINDS, Exchange
from proxy.server.http1 import RequestPolicy, error_response
from proxy.server.listener import Listener
from proxy.server.routing import ForwardRouter
from proxy.server.services import ConnectionServices
from proxy.server.upstream import UpstreamConnection
from proxy.tracing import PropagationConfig, Propagator
from tests.helpers.ids import CountingIds

__all__ = ["PROXY_PORT", "Connect", "Peer", "Playbook", "error_response"]

PROXY_PORT = 3128  # the port the proxy "listens" on: requests to localhost:3128 loop back into it
_EOF = object()


class Timer:
    """What call_later returns: a scheduled callback the harness fires when its time comes."""

    def __init__(self, when: float, seq: int, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self.seq = seq
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTransport:
    """Records what the protocol does to its connection; the `Peer` owning it delivers what the other end sends."""

    def __init__(self, peer: Peer, peername: tuple[str, int]) -> None:
        self._peer = peer
        self._peername = peername
        self.chunks: list[bytes] = []
        self.late: list[bytes] = []  # written after close() or abort(): dropped, as by a closing transport
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.reading = True
        self.buffer_size = 0
        self.can_eof = True
        self.fill_at: int | None = None  # the write that takes the total written to this many bytes fills the buffer

    # -- what asyncio.Transport offers ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")  # as uvloop
        if self.closed or self.aborted:
            self.late.append(bytes(data))
            return
        if data:
            self.chunks.append(bytes(data))
            self._peer._written()
            limit = self.fill_at
            if limit is not None and sum(map(len, self.chunks)) >= limit and not self.buffer_size:
                # As uvloop: a write that takes the buffer over its high-water mark calls pause_writing at once.
                self.fill_at = None
                self.buffer_size = 1 << 20
                self._peer.protocol.pause_writing()

    def writelines(self, chunks: Sequence[bytes]) -> None:
        self.write(b"".join(chunks))

    def write_eof(self) -> None:
        if self.closed or self.aborted:
            return
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return self.can_eof

    def close(self) -> None:
        if not (self.closed or self.aborted):
            self.closed = True
            self._peer._schedule_lost()

    def abort(self) -> None:
        if not self.aborted:
            self.aborted = True
            self._peer._schedule_lost()

    def is_closing(self) -> bool:
        return self.closed or self.aborted or self._peer.lost_seen

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            self._peer._schedule_delivery()

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return self.buffer_size

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        return default  # "socket": None, so nothing is spliced


class Peer:
    """One end the proxy talks to (the client, or one origin connection) and the fake transport it sees.

    Scripted input: sends(), eof(), lost(); buffer_full()/drained(). Observable: written (all bytes the proxy wrote
    to this peer), take() (what was written since the last take), closed, aborted, eof_written, reading, ended."""

    def __init__(self, playbook: Playbook, peername: tuple[str, int]) -> None:
        self._pb = playbook
        self.transport = FakeTransport(self, peername)
        self.protocol: Any = None
        self.lost_seen = False  # the protocol's connection_lost ran
        self._inbox: list[object] = []
        self._taken = 0
        self._on_first_write: Callable[[], None] | None = None

    # -- observations ------------------------------------------------------------------------------------------

    @property
    def written(self) -> bytes:
        return b"".join(self.transport.chunks)

    def take(self) -> bytes:
        """The bytes written to this peer since the last take()."""
        data = self.written
        new, self._taken = data[self._taken :], len(data)
        return new

    @property
    def closed(self) -> bool:
        """close() was called (a graceful close: what was written is flushed first)."""
        return self.transport.closed

    @property
    def aborted(self) -> bool:
        """abort() was called: the connection is reset, what was not sent is lost."""
        return self.transport.aborted

    @property
    def ended(self) -> bool:
        """Closed or aborted, by the proxy."""
        return self.transport.closed or self.transport.aborted

    @property
    def eof_written(self) -> bool:
        """The proxy half-closed its side (write_eof)."""
        return self.transport.eof_written

    @property
    def reading(self) -> bool:
        """The proxy reads from this peer (not paused)."""
        return self.transport.reading

    @property
    def late_writes(self) -> bytes:
        """Bytes the proxy tried to write after it closed or aborted this connection."""
        return b"".join(self.transport.late)

    # -- scripted input ----------------------------------------------------------------------------------------

    def sends(self, data: bytes) -> None:
        """The peer sends `data` (delivered at once unless the proxy paused reading)."""
        self._inbox.append(bytes(data))
        self._deliver()
        self._pb.settle()

    def eof(self) -> None:
        """The peer half-closes its side (FIN), after what it sent before."""
        self._inbox.append(_EOF)
        self._deliver()
        self._pb.settle()

    def lost(self, exc: Exception | None = None) -> None:
        """The connection is gone (reset by the peer): connection_lost at once."""
        self._inbox.clear()
        if not self.lost_seen:
            self.lost_seen = True
            self.protocol.connection_lost(exc if exc is not None else ConnectionResetError("reset by peer"))
        self._pb.settle()

    def buffer_full(self) -> None:
        """The proxy's writes to this peer fill the socket buffer: pause_writing()."""
        self.transport.buffer_size = 1 << 20
        self.protocol.pause_writing()
        self._pb.settle()

    def buffer_fills_at(self, total: int) -> None:
        """The write that takes what was written to this peer to `total` bytes fills the socket buffer: the
        protocol's pause_writing is called inside that write, as uvloop does."""
        self.transport.fill_at = total

    def drained(self) -> None:
        """The socket buffer drained: resume_writing()."""
        self.transport.buffer_size = 0
        self.protocol.resume_writing()
        self._pb.settle()

    # -- delivery ----------------------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        raise NotImplementedError

    def _deliver(self) -> None:
        while self._inbox and self.transport.reading and not self.lost_seen and not self.transport.is_closing():
            item = self._inbox.pop(0)
            if item is _EOF:
                keep_open = self.protocol.eof_received()
                if not keep_open:
                    self.transport.close()
                return  # nothing is read after an EOF
            assert isinstance(item, bytes)
            self._feed(item)

    def _schedule_delivery(self) -> None:
        self._pb.loop.call_soon(self._deliver)

    def _schedule_lost(self) -> None:
        self._pb.loop.call_soon(self._deliver_lost)

    def _deliver_lost(self) -> None:
        if not self.lost_seen:
            self.lost_seen = True
            self.protocol.connection_lost(None)

    def _written(self) -> None:
        if self._on_first_write is not None:
            hook, self._on_first_write = self._on_first_write, None
            hook()


class Client(Peer):
    def _feed(self, data: bytes) -> None:
        self.protocol.data_received(data)


class Origin(Peer):
    """An origin connection: `host`, `port`, `tunnel` (opened for a CONNECT), `reused` (taken from the pool)."""

    def __init__(self, playbook: Playbook, protocol: UpstreamConnection, host: str, port: int) -> None:
        super().__init__(playbook, (host, port))
        self.protocol = protocol
        self.host = host
        self.port = port
        protocol.connection_made(self.transport)

    @property
    def tunnel(self) -> bool:
        return self.protocol.relay is not None

    def _feed(self, data: bytes) -> None:
        # As uvloop reads into a BufferedProtocol: the buffer the protocol hands out, then how much was read into it.
        view = memoryview(data)
        while view:
            buffer = self.protocol.get_buffer(-1)
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            self.protocol.buffer_updated(n)
            view = view[n:]
            if self.lost_seen or self.transport.is_closing() or not self.transport.reading:
                rest = bytes(view)
                if rest and self.transport.reading is False and not self.transport.is_closing():
                    self._inbox.insert(0, rest)  # what a paused read leaves stays in the socket
                return

    def __repr__(self) -> str:
        return f"<Origin {self.host}:{self.port}{' tunnel' if self.tunnel else ''}>"


class Connect:
    """A connection the proxy asked for: host, port, tunnel; complete it with succeed() or one of the failures."""

    def __init__(self, playbook: Playbook, factory: Callable[[], UpstreamConnection], host: str, port: int) -> None:
        self._pb = playbook
        self.host = host
        self.port = port
        self._protocol = factory()
        self.tunnel = self._protocol.relay is not None
        self.future: asyncio.Future[tuple[FakeTransport, UpstreamConnection]] = playbook.loop.create_future()

    @property
    def pending(self) -> bool:
        return not self.future.done()

    def succeed(self, *, first: bytes = b"", then_eof: bool = False) -> Origin:
        """The connection is up. `first`: what the origin sends at once, and `then_eof`: whether it half-closes,
        before the proxy's connect returns (a target that speaks first)."""
        origin = Origin(self._pb, self._protocol, self.host, self.port)
        self._pb.origins.append(origin)
        if first:
            origin._inbox.append(first)
        if then_eof:
            origin._inbox.append(_EOF)
        origin._deliver()
        self.future.set_result((origin.transport, self._protocol))
        self._pb.settle()
        return origin

    def fail(self, exc: BaseException) -> None:
        self.future.set_exception(exc)
        self._pb.settle()

    def refuse(self) -> None:
        """ECONNREFUSED: the proxy answers 502 connection_refused."""
        self.fail(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))

    def time_out(self) -> None:
        """ETIMEDOUT from the kernel: the proxy answers 504 connection_timeout."""
        self.fail(OSError(errno.ETIMEDOUT, "Connection timed out"))

    def fail_dns(self) -> None:
        self.fail(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))

    def __repr__(self) -> str:
        return (
            f"<Connect {self.host}:{self.port}{' tunnel' if self.tunnel else ''}{' pending' if self.pending else ''}>"
        )


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Playbook:
    """One client connection of a ForwardServer (not started: no socket), its pool and its origins.

    `client`: the client Peer. `connects`: the connects asked for, in order. `origins`: the origin connections the
    proxy opened or took from the pool, in the order it first used them. `tick(s)`: the fake clock moves, the idle
    and header sweep runs at its interval. `fire_timers()`: the pending one-shot timers (the lingering close) fire.
    `counts()`: the Stats counters (nonzero ones)."""

    def __init__(
        self,
        *,
        idle_timeout: float = 30.0,
        header_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        connect_ports: Sequence[int] = (443,),
        allow_clients: tuple[Network, ...] = LOOPBACK,
        peer: tuple[str, int] = ("127.0.0.1", 40000),
        trace_targets: Sequence[str] = (r"api\.example",),
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.now = 1000.0
        self._timers: list[Timer] = []
        self._seq = 0
        # The loop's clock and timers are the harness's; its create_connection records what was asked for.
        self.loop.time = self._time  # type: ignore[method-assign]
        self.loop.call_later = self._call_later  # type: ignore[method-assign,assignment]
        self.loop.create_connection = self._create_connection  # type: ignore[method-assign,assignment]
        self.connects: list[Connect] = []
        self.origins: list[Origin] = []
        self._errors = _Errors()
        self.expect_errors = False
        logging.getLogger("proxy").addHandler(self._errors)
        config = PropagationConfig.from_options(
            dsn="https://abc123@o42.ingest.sentry.io/7",
            environment="production",
            release="",
            traces_sample_rate=1.0,
            trace_propagation_targets=list(trace_targets),
            strict_trace_continuation=False,
            org_id="",
            propagate_traceparent=False,
        )
        policy = RequestPolicy.create(Propagator(config, CountingIds()), connect_ports)
        self.ended: list[Exchange] = []  # every exchange that ended, in order (an observer of the services)
        self.services = ConnectionServices(
            self.loop,
            connect_timeout=connect_timeout,
            idle_timeout=idle_timeout,
            splice_tunnels=False,
            splice_bodies=False,
            observers=(self,),
            wall=lambda: self.now + 1_700_000_000.0,
            clock=self._time,
        )
        router = ForwardRouter(policy, self.services.plan_cache)
        self.server = Listener(
            self.services,
            router,
            name="forward",
            host="127.0.0.1",
            port=PROXY_PORT,
            idle_timeout=idle_timeout,
            allow_clients=allow_clients,
            header_timeout=header_timeout,
        )
        router.listening_on(
            frozenset((name, PROXY_PORT) for name in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::"))
        )
        self.server._schedule_sweep()  # as start() does, without binding a socket
        self.client = Client(self, peer)
        self.client.protocol = DownstreamConnection(self.services, router, self.server)
        self.client.protocol.connection_made(self.client.transport)
        self.settle()

    # -- the loop ------------------------------------------------------------------------------------------------

    def _time(self) -> float:
        return self.now

    def _call_later(self, delay: float, callback: Callable[..., object], *args: Any, **_: Any) -> Timer:
        self._seq += 1
        timer = Timer(self.now + delay, self._seq, callback, args)
        self._timers.append(timer)
        return timer

    async def _create_connection(
        self, factory: Callable[[], UpstreamConnection], host: str, port: int, **_: Any
    ) -> tuple[FakeTransport, UpstreamConnection]:
        connect = Connect(self, factory, host, port)
        self.connects.append(connect)
        return await connect.future

    def settle(self) -> None:
        """Run what is ready on the loop (spawned connects, scheduled connection_lost calls) until nothing is."""
        for _ in range(8):
            self.loop.run_until_complete(asyncio.sleep(0))

    def _is_sweep(self, timer: Timer) -> bool:
        return timer.callback == self.server._sweep

    def tick(self, seconds: float) -> None:
        """Advance the fake clock by `seconds`, firing every timer that comes due on the way (the sweep at its
        interval, lingering closes), in order."""
        target = self.now + seconds
        while True:
            due = [t for t in self._timers if not t.cancelled and t.when <= target]
            if not due:
                break
            timer = min(due, key=lambda t: (t.when, t.seq))
            self._timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback(*timer.args)
            self.settle()
        self.now = target
        self.settle()

    def fire_timers(self) -> int:
        """Fire the pending one-shot timers (not the periodic sweep) now; returns how many fired."""
        fired = 0
        while pending := [t for t in self._timers if not t.cancelled and not self._is_sweep(t)]:
            for timer in pending:
                self._timers.remove(timer)
                timer.callback(*timer.args)
                fired += 1
            self.settle()
        return fired

    @property
    def pending_timers(self) -> int:
        """One-shot timers (a lingering close) not fired yet."""
        return sum(1 for t in self._timers if not t.cancelled and not self._is_sweep(t))

    # -- the client ----------------------------------------------------------------------------------------------

    def client_sends(self, data: bytes) -> None:
        self.client.sends(data)

    def client_eof(self) -> None:
        self.client.eof()

    def client_lost(self) -> None:
        self.client.lost()

    def client_buffer_full(self) -> None:
        self.client.buffer_full()

    def client_drained(self) -> None:
        self.client.drained()

    # -- origins -------------------------------------------------------------------------------------------------

    def pooled_origin(self, host: str, port: int = 80) -> Origin:
        """An idle keep-alive connection to host:port in the pool, as one left by an earlier request."""
        protocol = UpstreamConnection(self.server.pool, (host, port))
        origin = Origin(self, protocol, host, port)
        self.server.pool.release(protocol)
        origin._on_first_write = lambda: self.origins.append(origin)  # in `origins` once the proxy uses it
        return origin

    def idle_origins(self) -> int:
        """Connections waiting in the pool."""
        return int(self.server.pool.idle_count())

    def connect_and_respond(self, response: bytes) -> Origin:
        """Complete the one pending connect and let the origin answer `response`."""
        pending = [c for c in self.connects if c.pending]
        assert len(pending) == 1, f"expected one pending connect, got {self.connects}"
        origin = pending[0].succeed()
        origin.sends(response)
        return origin

    # -- counters, outcomes, state -------------------------------------------------------------------------------

    def exchange_ended(self, exchange: Exchange) -> None:
        self.ended.append(exchange)

    def outcomes(self) -> list[tuple[str, int]]:
        """(outcome, status) of every exchange that ended, in order."""
        return [(str(e.outcome), e.status) for e in self.ended]

    @property
    def state(self) -> str:
        """The client connection's state, by name (connection_state.NAMES)."""
        return NAMES[self.client.protocol.state]

    def counts(self) -> dict[str, object]:
        """The Stats counters that are not zero: `requests`, `tunnels`, `by_status` and `rejected` (status: count)."""
        stats = self.server.stats
        found: dict[str, object] = {
            "requests": stats.requests,
            "tunnels": stats.tunnels,
            "by_status": {code: n for code, n in enumerate(stats.by_status) if n},
            "rejected": {int(code): n for code, n in stats.rejected_by_status.items() if n},
        }
        return {key: value for key, value in found.items() if value}

    def by_kind(self) -> dict[str, int]:
        """Every exchange the Stats counted, by kind and outcome (`"connect origin_failed": 1`), the nonzero ones."""
        counted = self.server.stats.by_kind
        return {f"{KINDS[kind]} {outcome}": n for kind, row in enumerate(counted) for outcome, n in row.items() if n}

    # -- the end -------------------------------------------------------------------------------------------------

    @property
    def logged_errors(self) -> list[str]:
        return [r.getMessage() for r in self._errors.records]

    def close(self) -> None:
        logging.getLogger("proxy").removeHandler(self._errors)
        for connect in self.connects:
            if connect.pending:
                connect.future.cancel()
        try:
            self.settle()
        finally:
            self.loop.close()


def playbooks() -> Iterator[Callable[..., Playbook]]:
    """For a fixture: a factory of playbooks, each closed (and checked to have logged no error) at the end."""
    made: list[Playbook] = []

    def make(**options: Any) -> Playbook:
        pb = Playbook(**options)
        made.append(pb)
        return pb

    yield make
    for pb in made:
        errors = pb.logged_errors
        late = [(peer, peer.late_writes) for peer in (pb.client, *pb.origins) if peer.late_writes]
        pb.close()
        if not pb.expect_errors:
            assert not errors, f"the proxy logged errors: {errors}"
        assert not late, f"the proxy wrote to connections it had closed: {late}"
