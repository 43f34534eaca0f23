"""What every connection of a process shares, whatever listener accepted it: the origin pool, the end of every
exchange (and through it the counters and other observers), what planning remembers, the tasks connections start,
and the clocks.

One instance per process (per worker), built before the listeners and given to each of them, so that the forward
listener and later front ends pool origin connections together and report through the same observers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from proxy.server.exchange import ExchangeEnds, ExchangeObserver, ResponseSink
from proxy.server.http1 import PlanCache
from proxy.server.upstream import UpstreamPool
from proxy.stats import Stats

log = logging.getLogger(__name__)


class ConnectionServices:
    """The process's shared connection machinery (see the module's docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        connect_timeout: float,
        idle_timeout: float,
        splice_bodies: bool = True,
        splice_tunnels: bool = True,
        observers: Sequence[ExchangeObserver] = (),
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` times exchanges (monotonic, finer than the loop's millisecond clock: request durations and
        connect times are histograms with sub-millisecond buckets); `wall` dates them."""
        self.loop = loop
        self.now = loop.time
        self.plan_cache = PlanCache()  # what planning remembers, for every listener's router and the pool
        self.stats = Stats()
        self.pool = UpstreamPool(
            loop, connect_timeout, idle_timeout, splice_bodies, self.plan_cache, self.stats.upstream_connect, clock
        )
        # The counters are the first observer of every exchange; the others are told in the order given.
        self._observers = (self.stats, *observers)
        self.ends = ExchangeEnds(clock, wall, self._observers)
        self.splice_tunnels = splice_tunnels
        self._tasks: set[asyncio.Task[None]] = set()

    def set_optional_observers(self, observers: Sequence[ExchangeObserver]) -> None:
        """Observers that come and go with the configuration (the access log), told after the permanent ones, from
        the next exchange that ends on: a reload swaps them here, for every connection at once."""
        self.ends.set_observers((*self._observers, *observers))

    def spawn(self, coro: Coroutine[Any, Any, None], conn: ResponseSink, stage: str) -> None:
        """Run `coro` for `conn`; should it raise, `conn` answers its client (`stage` says what was being done)
        instead of waiting forever on a task that died."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and (exc := task.exception()) is not None:
                conn.internal_error(exc, stage)

        task.add_done_callback(done)

    def close(self) -> None:
        """After the listeners drained: close the idle origin connections and cancel what is still connecting."""
        self.pool.close()
        for task in list(self._tasks):
            task.cancel()
