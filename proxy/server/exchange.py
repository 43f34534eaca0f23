"""One proxied request from the first byte of its head to its end, and the one place every exchange ends.

An exchange can end in many ways: its response relayed whole, the origin unreachable or gone, the client gone, a
stall, a refusal, the shutdown. Each of them goes through `ExchangeEnds.end`, which stamps the end (monotonic for
durations, wall-clock for the span a later issue reports) and hands the finished exchange to every observer: the
counters (`proxy.stats.Stats`, which /metrics reads) are the first, access logs and spans subscribe the same way.
Nothing else in the connection layer counts or logs an exchange.

The two sides of a connection meet here too, as protocols rather than classes: an origin connection writes its
response to a `ResponseSink` (what a downstream connection offers), so neither module imports the other.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol

from proxy.server.http1 import Framing, RequestPlan
from proxy.tracing import UNTOUCHED_DECISION

if TYPE_CHECKING:
    from proxy.server.upstream import UpstreamConnection, UpstreamError


class Outcome(enum.StrEnum):
    """How an exchange ended (a str enum: hashed in C, as a counter key on every request)."""

    COMPLETE = "complete"  # the response reached the client whole
    UPGRADED = "upgraded"  # the origin switched protocols (101): the connection is a tunnel from here on
    REFUSED = "refused"  # the proxy answered it itself, without forwarding it (4xx, 503, 508)
    ORIGIN_FAILED = "origin_failed"  # no response came: unreachable, refused, closed early, malformed (502/504)
    BROKEN = "broken"  # the response began but could not be completed: the client connection was cut
    STALLED = "stalled"  # neither side moved for forward.idle_timeout (504, or cut once the response began)
    CLIENT_GONE = "client_gone"  # the client closed its connection before the answer was complete
    DROPPED = "dropped"  # pipelined behind a request that ended its connection: never started
    DRAINED = "drained"  # still in flight when the shutdown grace ran out
    INTERNAL_ERROR = "internal_error"  # trace-proxy failed while handling it (500, or cut)


# What an exchange is (`Exchange.kind`, an index into `KINDS`): an HTTP request, a CONNECT (it ends when its tunnel
# opens or fails), or a request asking for an Upgrade (whatever the origin answers).
HTTP: Final = 0
CONNECT: Final = 1
UPGRADE: Final = 2
KINDS: Final = ("http", "connect", "upgrade")


class Exchange:
    """One proxied request: its plan, its body on the way, and the record a span or a log line is made from."""

    __slots__ = (
        "body_done",
        "bytes_to_client",
        "bytes_to_origin",
        "ended",
        "ended_wall",
        "kind",
        "outcome",
        "pending",
        "pending_size",
        "plan",
        "responded",
        "retried",
        "started",
        "started_wall",
        "status",
        "upstream",
    )

    def __init__(self, plan: RequestPlan, now: float, wall: float) -> None:
        self.plan = plan
        self.kind = 0  # HTTP; UPGRADE or CONNECT set by the connection, which knows without reading the plan
        self.started = now  # monotonic (services.py: the exchanges' clock): durations
        self.started_wall = wall  # seconds since the epoch: a span's start
        self.ended = 0.0
        self.ended_wall = 0.0
        self.status = 0  # the status the client got (0: none)
        # Monotonic: when the response head went to the client (0.0: none did). -1.0 while the read that carried
        # it is being handled: stamped at the end of that read, or as the exchange ends if that comes first (most
        # responses are read whole: one clock reading less per request).
        self.responded = 0.0
        self.bytes_to_origin = 0  # request bytes written towards the origin (head and body, as re-framed)
        self.bytes_to_client = 0  # response bytes written to the client (head and body)
        self.outcome: Outcome | None = None  # None while in flight
        self.body_done = plan.body is Framing.NONE
        self.pending: list[bytes] | None = None  # body bytes that wait for an origin connection
        self.pending_size = 0
        self.upstream: UpstreamConnection | None = None
        self.retried = False


class ExchangeObserver(Protocol):
    """Told of every exchange once, when it has ended (its outcome, status and times are set)."""

    def exchange_ended(self, exchange: Exchange) -> None: ...


class ExchangeEnds:
    """The one end of every exchange: stamps it and tells the observers, exactly once per exchange.

    The clocks are given, so that a test can drive time: `now` is monotonic, `wall` seconds since the epoch. The
    wall clock is not read per exchange: its offset from the monotonic one is, once at the start and again at each
    `resync` (the listeners' timeout tick), so a span's start is the monotonic reading plus the offset, and a step of
    the wall clock shows from the next tick on."""

    __slots__ = ("_observers", "_wall_offset", "now", "wall")

    def __init__(
        self, now: Callable[[], float], wall: Callable[[], float], observers: Sequence[ExchangeObserver]
    ) -> None:
        self.now = now
        self.wall = wall
        self._wall_offset = wall() - now()
        self._observers = tuple(observers)

    def begin(self, plan: RequestPlan) -> Exchange:
        now = self.now()
        return Exchange(plan, now, now + self._wall_offset)

    def set_observers(self, observers: Sequence[ExchangeObserver]) -> None:
        """Replace the observers (a reload that turns the access log on or off): told from the next end on."""
        self._observers = tuple(observers)

    def resync(self) -> None:
        """Read the wall clock's offset from the monotonic one again."""
        self._wall_offset = self.wall() - self.now()

    def end(self, exchange: Exchange, outcome: Outcome, status: int = -1) -> None:
        """End `exchange` with `outcome` (and `status`, when the proxy answered it itself); a second end of the same
        exchange is ignored, so that no path counts it twice."""
        if exchange.outcome is not None:
            return
        exchange.outcome = outcome
        ended = exchange.ended = self.now()
        if exchange.responded < 0.0:
            exchange.responded = ended  # the head went out in the read that ends it (see Exchange.responded)
        if status >= 0:
            exchange.status = status
            if status and not exchange.responded:
                exchange.responded = ended  # the proxy's own answer goes out now
        # As sentry-sdk times a span: the wall-clock start, and the duration from the monotonic clock (a wall clock
        # set back mid-exchange cannot make a span end before it began).
        exchange.ended_wall = exchange.started_wall + (ended - exchange.started)
        for observer in self._observers:
            observer.exchange_ended(exchange)

    def refused(self, status: int, sent: int = 0, kind: int = HTTP) -> None:
        """A request refused before it had a plan (malformed, not allowed, too large); `sent`: the bytes of the
        answer, `kind`: CONNECT for a CONNECT refused."""
        self.unplanned(Outcome.REFUSED, status, sent, kind)

    def unplanned(self, outcome: Outcome, status: int, sent: int = 0, kind: int = HTTP) -> None:
        """A request answered before it had a plan (refused, an internal error): an exchange of its own, with
        `UNPLANNED` for a plan, that ends as it begins."""
        exchange = self.begin(UNPLANNED)
        exchange.kind = kind
        exchange.bytes_to_client = sent
        self.end(exchange, outcome, status)


# The plan of a request answered before it was planned: no origin, no trace decision.
UNPLANNED = RequestPlan(
    origin=("", 0),
    head=b"",
    body=Framing.NONE,
    method_is_head=False,
    upgrade=False,
    keep_alive=False,
    http11=True,
    decision=UNTOUCHED_DECISION,
)


def tunnel_plan(host: str, port: int) -> RequestPlan:
    """The plan of a CONNECT the proxy accepted: its target, and no head or trace decision of its own (`UNPLANNED`
    with an origin)."""
    return UNPLANNED._replace(origin=(host, port))


class ResponseSink(Protocol):
    """What an origin connection needs of the connection its response goes to (a downstream connection).

    `transport` takes the response bytes directly (one write per read: no call in between); the rest are the
    events of a response's life."""

    transport: asyncio.Transport
    closing_after_response: bool

    def socket_fd(self) -> int:
        """The client socket's descriptor for splicing a body into, or -1 when this connection may not be spliced."""
        ...

    def response_complete(self, exchange: Exchange, close_client: bool) -> None: ...

    def response_broken(self, exchange: Exchange) -> None: ...

    def upstream_failed(self, exchange: Exchange, err: UpstreamError) -> None: ...

    def upstream_lost(self, exchange: Exchange, up: UpstreamConnection) -> None: ...

    def upgraded(self, exchange: Exchange, up: UpstreamConnection) -> None: ...

    def pause_for_upstream(self) -> None: ...

    def resume_for_upstream(self) -> None: ...

    def internal_error(self, exc: BaseException, stage: str) -> None: ...
