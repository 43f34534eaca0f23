"""Counters of what the proxy did, kept as plain integers for a metrics endpoint to read.

`Stats` is the first observer of every exchange (exchange.py: `ExchangeEnds`): a request the proxy forwarded or
tried to is counted in `requests`, by trace source and by status; one it refused without forwarding, in
`rejected_by_status`; every one of them by outcome. Tunnels are counted as they open."""

from __future__ import annotations

from typing import Final

from proxy.server.exchange import UNPLANNED, Exchange, Outcome
from proxy.tracing import TraceSource

# Module constants: reading an enum member, or another module's global, is a lookup on every request.
_REFUSED: Final = Outcome.REFUSED
_UNPLANNED: Final = UNPLANNED


class Stats:
    """Plain integer counters; the hot path does a few dict increments and nothing else."""

    __slots__ = ("by_outcome", "by_source", "by_status", "rejected_by_status", "requests", "tunnels")

    def __init__(self) -> None:
        self.requests = 0
        self.tunnels = 0
        # Every key present from the start: one subscript and one store per bump, no lookup with a default.
        self.by_source: dict[TraceSource, int] = dict.fromkeys(TraceSource, 0)
        self.by_status = [0] * 1000  # index: status code (llhttp accepts three digits only; 0: no response)
        self.rejected_by_status: dict[int, int] = {}
        self.by_outcome: dict[Outcome, int] = dict.fromkeys(Outcome, 0)

    def exchange_ended(self, exchange: Exchange) -> None:
        outcome = exchange.outcome
        assert outcome is not None
        self.by_outcome[outcome] += 1
        status = exchange.status
        if outcome is _REFUSED or exchange.plan is _UNPLANNED:
            self.rejected_by_status[status] = self.rejected_by_status.get(status, 0) + 1
            return
        self.requests += 1
        self.by_source[exchange.plan.decision.source] += 1
        self.by_status[status] += 1

    def tunnel_opened(self) -> None:
        self.tunnels += 1
