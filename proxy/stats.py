"""Counters of what the proxy did, kept as plain numbers for the metrics endpoint to read at scrape time.

`Stats` is the first observer of every exchange (exchange.py: `ExchangeEnds`). Every exchange is counted by kind
and outcome, and its bytes each way. A request the proxy forwarded or tried to is also counted in `requests`, by
trace decision (source and sampling), by the reason its trace headers were replaced, by status, and its duration
(request head received to response head sent) in a histogram; one it refused without forwarding, in
`rejected_by_status`. A CONNECT is an exchange of its own kind that ends when its tunnel opens or fails (its time
to connect is in `upstream_connect`); the bytes relayed through tunnels are counted as they pass
(`tunnel_bytes`, filled by tunnel.py and splice.py). What is open now (connections, tunnels, the pool) is not
counted here: the metrics module reads it from the listeners and the pool when scraped.

The hot path does a few list and dict increments and a bisect: no locks, no metric-library objects.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

from proxy.server.exchange import UNPLANNED, Exchange, Outcome
from proxy.tracing import Replaced, TraceSource

# Module constants: reading an enum member, or another module's global, is a lookup on every request.
_REFUSED: Final = Outcome.REFUSED
_UNPLANNED: Final = UNPLANNED
_bisect: Final = bisect_left

# Upper bounds (seconds, inclusive) of the histograms' buckets; a last bucket holds what is above them all.
DURATION_BOUNDS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
CONNECT_BOUNDS: Final[tuple[float, ...]] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Histogram:
    """Fixed buckets: `counts[i]` holds the observations <= `bounds[i]` and > the bound before it; the last count
    those above every bound. Cumulated only when read (Prometheus' `le` buckets)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[_bisect(self.bounds, value)] += 1
        self.sum += value


class Stats:
    """Plain counters; the hot path does a few list and dict increments and nothing else."""

    __slots__ = (
        "by_kind",
        "by_status",
        "bytes_to_client",
        "bytes_to_origin",
        "decisions",
        "duration_counts",
        "duration_sum",
        "rejected_by_status",
        "replaced",
        "tunnel_bytes",
        "tunnels",
        "upstream_connect",
    )

    def __init__(self) -> None:
        self.tunnels = 0
        # Every key present from the start: one subscript and one store per bump, no lookup with a default.
        # by_kind[exchange.kind][outcome]: every exchange that ended (kinds: exchange.KINDS).
        self.by_kind: list[dict[Outcome, int]] = [dict.fromkeys(Outcome, 0) for _ in range(3)]
        # decisions[source][sampled]: sampled is True, False or None (deferred; and every UNTOUCHED decision).
        self.decisions: dict[TraceSource, dict[bool | None, int]] = {
            source: {True: 0, False: 0, None: 0} for source in TraceSource
        }
        self.replaced: dict[Replaced, int] = dict.fromkeys(Replaced, 0)
        self.by_status = [0] * 1000  # index: status code (llhttp accepts three digits only; 0: no response)
        self.rejected_by_status: dict[int, int] = {}
        # The request duration histogram, as Histogram's fields in slots of their own (one attribute load less).
        self.duration_counts = [0] * (len(DURATION_BOUNDS) + 1)
        self.duration_sum = 0.0
        self.upstream_connect = Histogram(CONNECT_BOUNDS)  # filled by the pool, for each connection it opened
        self.bytes_to_origin = 0
        self.bytes_to_client = 0
        self.tunnel_bytes = [0, 0]  # relayed through tunnels: [to the target, to the client]

    def exchange_ended(self, exchange: Exchange) -> None:
        outcome = exchange.outcome
        assert outcome is not None
        kind = exchange.kind
        self.by_kind[kind][outcome] += 1
        self.bytes_to_origin += exchange.bytes_to_origin
        self.bytes_to_client += exchange.bytes_to_client
        status = exchange.status
        plan = exchange.plan
        if outcome is _REFUSED or plan is _UNPLANNED:
            self.rejected_by_status[status] = self.rejected_by_status.get(status, 0) + 1
            return
        if kind == 1:  # CONNECT (a literal: a global is a lookup, interpreted): no trace decision, counted in `tunnels`
            return
        responded = exchange.responded
        if responded:
            # Histogram.observe, inlined (a call costs more than the rest of it, interpreted).
            seconds = responded - exchange.started
            self.duration_counts[_bisect(DURATION_BOUNDS, seconds)] += 1
            self.duration_sum += seconds
        decision = plan.decision
        self.decisions[decision.source][decision.sampled] += 1
        replaced = decision.replaced
        if replaced is not None:
            self.replaced[replaced] += 1
        self.by_status[status] += 1

    @property
    def requests(self) -> int:
        """Requests forwarded or tried: each has one trace decision counted."""
        return sum(sum(by_sampled.values()) for by_sampled in self.decisions.values())

    def tunnel_opened(self) -> None:
        self.tunnels += 1
