"""A listener as a whole: its socket, who it admits, its connections, their timeouts and the drain on shutdown.

Front ends differ only in the router their connections are given (routing.py); every listener of a process shares
one `ConnectionServices` (the origin pool, the exchange observers)."""

from __future__ import annotations

import asyncio
import logging
import socket

from proxy.server.admission import LOOPBACK, ClientAllowList, Network
from proxy.server.downstream import DownstreamConnection
from proxy.server.log_limit import RateLimitedLog
from proxy.server.routing import Router
from proxy.server.services import ConnectionServices

log = logging.getLogger(__name__)

_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"})
_REFUSAL_LOG_SECONDS = 10.0  # at most one line this often about refused or surplus connections


class Listener:
    """One listening socket and the client connections it accepted (`name` says which, in logs: "forward")."""

    def __init__(
        self,
        services: ConnectionServices,
        router: Router,
        *,
        name: str,
        host: str,
        port: int,
        idle_timeout: float,
        reuse_port: bool = False,
        allow_clients: tuple[Network, ...] = LOOPBACK,
        header_timeout: float = 10.0,
        max_connections: int = 10000,
    ) -> None:
        loop = services.loop
        self.services = services
        self.router = router
        self.name = name
        self.loop = loop
        self.now = loop.time
        self.pool = services.pool
        self.stats = services.stats
        self.connections: set[DownstreamConnection] = set()
        self._host = host
        self._port = port
        self._idle_timeout = idle_timeout
        self._header_timeout = header_timeout
        self._tick = min(1.0, idle_timeout / 4, header_timeout / 4)
        self.allow = ClientAllowList(allow_clients)
        self.max_connections = max_connections
        self._refused_log = RateLimitedLog(log, _REFUSAL_LOG_SECONDS, loop.time)
        self._surplus_log = RateLimitedLog(log, _REFUSAL_LOG_SECONDS, loop.time)
        self._reuse_port = reuse_port
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.draining = False
        self._all_closed = asyncio.Event()

    def reconfigure(self, *, idle_timeout: float, header_timeout: float, allow_clients: tuple[Network, ...]) -> None:
        """New timeouts and client networks (a reload): the timeouts hold from the next sweep on, for every connection;
        the networks for the connections accepted from now on (those already admitted stay)."""
        self._idle_timeout = idle_timeout
        self._header_timeout = header_timeout
        self._tick = min(1.0, idle_timeout / 4, header_timeout / 4)
        self.allow = ClientAllowList(allow_clients)

    async def start(self) -> None:
        services, router = self.services, self.router
        self._server = await self.loop.create_server(
            lambda: DownstreamConnection(services, router, self),
            self._host,
            self._port,
            reuse_address=True,
            reuse_port=self._reuse_port or None,
            backlog=1024,
        )
        ports = {s.getsockname()[1] for s in self._server.sockets}
        self._port = ports.pop()
        names = _LOOPBACK_NAMES | {self._host, socket.gethostname()}
        router.listening_on(frozenset((name, self._port) for name in names))
        self._schedule_sweep()

    @property
    def port(self) -> int:
        return self._port

    def connection_opened(self, conn: DownstreamConnection) -> None:
        """Admit a new client connection: past max_connections it is closed at once, from an address outside
        allow_clients it gets a 403; both are logged, at most one line per kind every few seconds."""
        if len(self.connections) >= self.max_connections:
            self._surplus_log.warning(
                "%s.max_connections (%d) reached: new client connections are closed at once",
                self.name,
                self.max_connections,
            )
            conn.transport.abort()
            return
        self.connections.add(conn)
        peer = conn.transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else "an unknown address"
        if not self.allow.allows(host):
            self._refused_log.warning("refused a client from %s: not in %s.allow_clients", host, self.name)
            conn.refuse(403, f"client {host} may not use this proxy ({self.name}.allow_clients)", "http_request_denied")
            return
        if self.draining:
            conn.closing_after_response = True

    def connection_closed(self, conn: DownstreamConnection) -> None:
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
                self.services.ends.resync()
            except Exception:
                log.exception("sweeping idle origin connections failed")
            limit = now - self._idle_timeout - tick
            head_limit = now - self._header_timeout - tick
            for conn in list(self.connections):
                try:
                    self._sweep_connection(conn, limit, head_limit)
                except Exception:
                    log.exception("idle timeout of a client connection failed: closing it")
                    conn.transport.abort()
        finally:
            self._schedule_sweep()

    def _sweep_connection(self, conn: DownstreamConnection, limit: float, head_limit: float) -> None:
        since = conn.head_since
        if since and since < head_limit and conn.current is None:
            conn.head_timed_out(self._header_timeout)
            return
        if conn.last_active >= limit or conn.in_tunnel():
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
            conn.drained()
        if self._sweeper is not None:
            self._sweeper.cancel()
