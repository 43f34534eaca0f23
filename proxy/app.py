"""Wiring: settings to a running proxy on uvloop, signals, graceful drain, and worker processes.

`run` is what the CLI calls once the configuration is valid. With `forward.workers = N > 1` the parent forks N
workers that share the listen port through SO_REUSEPORT; the parent serves the admin endpoints, passes SIGTERM/SIGINT
(and SIGHUP) on to every worker and exits 0 only after all of them drained. It learns whether the workers are ready,
and their counters for /metrics, over a socket pair per worker (workers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import resource
import signal
import socket
from collections.abc import Mapping
from typing import Any

import uvloop

from proxy.config import Address, Settings
from proxy.metrics import Metrics, Snapshot, snapshot
from proxy.server.admin import start_admin
from proxy.server.admission import LOOPBACK, Network
from proxy.server.http1 import RequestPolicy
from proxy.server.listener import Listener
from proxy.server.routing import ForwardRouter
from proxy.server.services import ConnectionServices
from proxy.tracing import Propagator, SystemIdSource
from proxy.tracing.options import PropagationConfig
from proxy.workers import WorkerChannels, Workers, serve_reports

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def build_propagator(settings: Settings, environ: Mapping[str, str]) -> Propagator:
    """The propagation core for these settings; `SENTRY_TRACE`/`SENTRY_BAGGAGE` become its environment carrier."""
    sentry = settings.sentry
    config = PropagationConfig.from_options(
        dsn=sentry.dsn,
        environment=sentry.environment,
        release=sentry.release,
        traces_sample_rate=sentry.traces_sample_rate,
        trace_propagation_targets=sentry.trace_propagation_targets,
        strict_trace_continuation=sentry.strict_trace_continuation,
        org_id=sentry.org_id,
        propagate_traceparent=sentry.propagate_traceparent,
    )
    carrier: dict[str, list[str]] = {}
    if environ.get("SENTRY_TRACE"):
        carrier["sentry-trace"] = [environ["SENTRY_TRACE"]]
    if environ.get("SENTRY_BAGGAGE"):
        carrier["baggage"] = [environ["SENTRY_BAGGAGE"]]
    return Propagator(config, SystemIdSource(), carrier or None)


def _forward_server(settings: Settings, loop: asyncio.AbstractEventLoop, reuse_port: bool) -> Listener:
    """The forward listener, with the process's connection services (`listener.services`, closed after its drain)."""
    fwd = settings.forward
    services = ConnectionServices(
        loop,
        connect_timeout=fwd.connect_timeout,
        idle_timeout=fwd.idle_timeout,
        splice_bodies=fwd.splice_bodies,
        splice_tunnels=fwd.splice_tunnels,
    )
    policy = RequestPolicy.create(build_propagator(settings, os.environ), fwd.connect_ports)
    return Listener(
        services,
        ForwardRouter(policy, services.plan_cache),
        name="forward",
        host=fwd.listen.host,
        port=fwd.listen.port,
        idle_timeout=fwd.idle_timeout,
        reuse_port=reuse_port,
        allow_clients=fwd.allow_clients,
        header_timeout=fwd.header_timeout,
        max_connections=fwd.max_connections,
    )


async def _serve(settings: Settings, *, reuse_port: bool, with_admin: bool, parent: socket.socket | None = None) -> int:
    """Serve until SIGTERM/SIGINT. `with_admin`: this process serves the admin port (no workers); `parent`: this
    worker's end of the socket pair its parent asks for its readiness and counters on."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP will mean "reload"; until then it must not kill the proxy.
    loop.add_signal_handler(signal.SIGHUP, log.info, "SIGHUP received: configuration reload is not supported yet")
    server = _forward_server(settings, loop, reuse_port)
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot listen on %s: %s", settings.forward.listen, exc.strerror or exc)
        server.services.close()
        return 1
    reports = None
    if parent is not None:

        def report() -> dict[str, Any]:
            return {"ready": not server.draining, "metrics": snapshot(server.services, (server,))}

        reports = await serve_reports(parent, report)
    admin = None
    if with_admin and settings.admin.listen is not None:
        address = settings.admin.listen

        async def own_metrics() -> Snapshot:
            return snapshot(server.services, (server,))

        try:
            admin = await start_admin(address.host, address.port, lambda: not server.draining, Metrics(own_metrics))
        except OSError as exc:
            log.error("cannot listen on %s (admin.listen): %s", address, exc.strerror or exc)
            await server.drain(0)
            server.services.close()
            return 1
    log.info(
        "trace-proxy listening on %s (pid %d, %s)%s",
        settings.forward.listen,
        os.getpid(),
        type(loop).__module__.partition(".")[0],  # "uvloop": the loop the hot path was built and measured on
        f", admin on {settings.admin.listen}" if admin is not None else "",
    )
    await stop.wait()
    log.info("shutting down: draining for up to %gs", settings.forward.shutdown_grace)
    await server.drain(settings.forward.shutdown_grace)
    server.services.close()
    if admin is not None:
        await admin.cleanup()
    if reports is not None:
        reports.close()
    log.info("stopped")
    return 0


# Descriptors a process needs besides two per client connection: the pool's idle origin connections above that,
# listeners, pipes, the admin port, log files.
_SPARE_DESCRIPTORS = 256


def loopback_only_warning(listen: Address, allow_clients: tuple[Network, ...]) -> str | None:
    """The start-up line for a listener others can reach while only loopback clients are allowed (the default): the
    operator who set `listen = "0.0.0.0:3128"` for clients in other containers must also say who they are."""
    if allow_clients != LOOPBACK:
        return None
    host = listen.host
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        if host == "localhost":
            return None
    return (
        f"forward.listen is {listen}, but forward.allow_clients is the default: only loopback clients will be served "
        "(others get 403); list the clients' networks in forward.allow_clients"
    )


def fit_descriptor_limit(max_connections: int) -> int:
    """Raise this process's descriptor limit towards what `max_connections` needs (two per client connection, its
    own and one to the origin), as far as the hard limit allows; returns the connections that fit. Past the limit,
    accepting fails and every client would suffer; below it, only the surplus connections are closed."""
    needed = 2 * max_connections + _SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return max_connections
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.debug("cannot raise the descriptor limit to %d: %s", target, exc)
    if soft >= needed:
        return max_connections
    fitting = max(1, (soft - _SPARE_DESCRIPTORS) // 2)
    log.warning(
        "forward.max_connections = %d needs %d descriptors, the limit is %d: serving at most %d client connections "
        "(raise the hard limit, ulimit -Hn or docker run --ulimit nofile=..., or set forward.max_connections)",
        max_connections,
        needed,
        soft,
        fitting,
    )
    return fitting


def run(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; the exit status is 0 after a clean drain."""
    warning = loopback_only_warning(settings.forward.listen, settings.forward.allow_clients)
    if warning is not None:
        log.warning("%s", warning)
    fitting = fit_descriptor_limit(settings.forward.max_connections)
    if fitting != settings.forward.max_connections:
        settings = settings.model_copy(
            update={"forward": settings.forward.model_copy(update={"max_connections": fitting})}
        )
    if settings.forward.workers > 1:
        return _run_workers(settings)
    return uvloop.run(_serve(settings, reuse_port=False, with_admin=True))


def _run_workers(settings: Settings) -> int:
    """Fork the workers before any event loop exists, then supervise them from a loop of the parent's own."""
    channels = WorkerChannels(settings.forward.workers)
    children: list[int] = []
    for index in range(settings.forward.workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                parent = channels.for_worker(index)
                code = uvloop.run(_serve(settings, reuse_port=True, with_admin=False, parent=parent))
            finally:
                logging.shutdown()
                os._exit(code)
        children.append(pid)
    return uvloop.run(_supervise(settings, children, channels.for_parent()))


async def _supervise(settings: Settings, children: list[int], channels: list[socket.socket]) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    alive = set(children)
    failed = False

    def forward(sig: signal.Signals) -> None:
        if sig in _STOP_SIGNALS:
            stopping.set()
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (*_STOP_SIGNALS, signal.SIGHUP):
        loop.add_signal_handler(sig, forward, sig)
    workers = Workers(children, channels)
    await workers.open()

    async def ready() -> bool:
        """Not stopping, and every worker answered that it is ready."""
        return not stopping.is_set() and len(alive) == len(children) and await workers.ready()

    admin = None
    if settings.admin.listen is not None:
        address = settings.admin.listen
        try:
            admin = await start_admin(address.host, address.port, ready, Metrics(workers.metrics))
        except OSError as exc:
            log.error("cannot listen on %s (admin.listen): %s", address, exc.strerror or exc)
            forward(signal.SIGTERM)
            failed = True
    while alive:
        pid, status = await loop.run_in_executor(None, os.wait)
        alive.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not stopping.is_set():
            failed = True
            log.error("worker %d exited with status %d; stopping the others", pid, code)
            forward(signal.SIGTERM)
    if admin is not None:
        await admin.cleanup()
    await workers.close()
    return 1 if failed else 0
