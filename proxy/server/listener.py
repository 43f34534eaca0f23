"""The forward listener as a whole: its socket, its connections, idle timeouts and the drain on shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from typing import Any

from proxy.server.forward import ClientConnection
from proxy.server.http1 import RequestPolicy
from proxy.server.upstream import Key, UpstreamPool
from proxy.stats import Stats

log = logging.getLogger(__name__)

_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"})


class ForwardServer:
    """Owns everything shared by the client connections of one process."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        policy: RequestPolicy,
        *,
        host: str,
        port: int,
        connect_timeout: float,
        idle_timeout: float,
        reuse_port: bool = False,
        splice_tunnels: bool = True,
        splice_bodies: bool = True,
    ) -> None:
        self.loop = loop
        self.policy = policy
        self.now = loop.time
        self.pool = UpstreamPool(loop, connect_timeout, idle_timeout, splice_bodies)
        self.stats = Stats()
        self.connections: set[ClientConnection] = set()
        self._host = host
        self._port = port
        self._idle_timeout = idle_timeout
        self._tick = min(1.0, idle_timeout / 4)
        self._reuse_port = reuse_port
        self.splice_tunnels = splice_tunnels
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.self_keys: frozenset[Key] = frozenset()
        self.draining = False
        self._all_closed = asyncio.Event()

    async def start(self) -> None:
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self),
            self._host,
            self._port,
            reuse_address=True,
            reuse_port=self._reuse_port or None,
            backlog=1024,
        )
        ports = {s.getsockname()[1] for s in self._server.sockets}
        self._port = ports.pop()
        names = _LOOPBACK_NAMES | {self._host, socket.gethostname()}
        self.self_keys = frozenset((name, self._port) for name in names)
        self._schedule_sweep()

    @property
    def port(self) -> int:
        return self._port

    def spawn(self, coro: Coroutine[Any, Any, None], conn: ClientConnection, stage: str) -> None:
        """Run `coro` for `conn`; should it raise, `conn` answers its client (`stage` says what was being done)
        instead of waiting forever on a task that died."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and (exc := task.exception()) is not None:
                conn.internal_error(exc, stage)

        task.add_done_callback(done)

    def connection_opened(self, conn: ClientConnection) -> None:
        self.connections.add(conn)
        if self.draining:
            conn.closing_after_response = True

    def connection_closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if self.draining and not self.connections:
            self._all_closed.set()

    def _schedule_sweep(self) -> None:
        self._sweeper = self.loop.call_later(self._tick, self._sweep)

    def _sweep(self) -> None:
        """Close client connections idle past idle_timeout and end exchanges that stalled as long; then come back.

        Whatever goes wrong on one connection is logged and ends that connection, never the sweep: the next tick is
        scheduled whatever happened, or every timeout of the process would stop with it."""
        try:
            now = self.now()
            tick = self._tick
            try:
                self.pool.sweep(now, tick)  # first: it also refreshes the clock the connections stamp activity with
            except Exception:
                log.exception("sweeping idle origin connections failed")
            limit = now - self._idle_timeout - tick
            for conn in list(self.connections):
                try:
                    self._sweep_connection(conn, limit)
                except Exception:
                    log.exception("idle timeout of a client connection failed: closing it")
                    conn.transport.abort()
        finally:
            self._schedule_sweep()

    def _sweep_connection(self, conn: ClientConnection, limit: float) -> None:
        if conn.last_active >= limit or conn.tunnel_peer is not None:
            return
        exchange = conn.current
        if exchange is None:
            conn.close_if_idle()
            return
        up = exchange.upstream
        if up is not None and up.last_active >= limit:
            return
        conn.stalled(self._idle_timeout)

    async def drain(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish for up to `grace` seconds, then close the rest."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        if self.connections:
            try:
                async with asyncio.timeout(grace):
                    await self._all_closed.wait()
            except TimeoutError:
                log.warning("shutdown grace of %gs over: closing %d connections", grace, len(self.connections))
        for conn in list(self.connections):
            conn.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.pool.close()
        for task in list(self._tasks):
            task.cancel()
