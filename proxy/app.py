"""Wiring: settings to a running proxy on uvloop, signals, graceful drain, and worker processes.

`run` is what the CLI calls once the configuration is valid. With `forward.workers = N > 1` the parent forks N
workers that share the listen port through SO_REUSEPORT; the parent serves the admin endpoints, passes SIGTERM/SIGINT
(and SIGHUP) on to every worker and exits 0 only after all of them drained. It learns whether the workers are ready,
and their counters for /metrics, over a socket pair per worker (workers.py).

SIGHUP reloads: each serving process reads the file and the environment again (`ConfigSource`), merges them into its
running configuration by `proxy.reload.plan_reload` and swaps in new frozen objects where connections read them per
request (the router's `RequestPolicy`, the pool's and the listener's timeouts, the optional exchange observers, the
log handler), so that requests in flight finish as they began and the next ones, on any connection, see the new
configuration. An invalid configuration changes nothing.
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

from proxy import build_info
from proxy.access_log import access_observers
from proxy.config import Address, LoadedConfig, Settings, describe_value, plain_value
from proxy.logs import configure_logging
from proxy.metrics import Metrics, Snapshot, snapshot
from proxy.reload import ConfigSource, plan_reload
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
    services.set_optional_observers(access_observers(settings.log))
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


def apply_settings(server: Listener, settings: Settings, environ: Mapping[str, str]) -> None:
    """Make `settings` those of the running forward listener `server` for the requests that start from now on (a
    reload; the keys `proxy.reload` says need a restart are not read here). Everything new is built before anything
    is swapped, so that a failure leaves the running configuration whole."""
    router = server.router
    if not isinstance(router, ForwardRouter):
        raise TypeError(f"cannot reconfigure a {type(router).__name__}")
    fwd = settings.forward
    policy = RequestPolicy.create(build_propagator(settings, environ), fwd.connect_ports)
    observers = access_observers(settings.log)
    services = server.services
    router.policy = policy  # read by the router for each request: the next one on every connection gets it
    services.pool.set_timeouts(fwd.connect_timeout, fwd.idle_timeout)
    services.splice_tunnels = fwd.splice_tunnels
    services.set_optional_observers(observers)
    server.reconfigure(
        idle_timeout=fwd.idle_timeout, header_timeout=fwd.header_timeout, allow_clients=fwd.allow_clients
    )


def startup_line(
    loaded: LoadedConfig, config: str, listen: str, admin: str | None, loop_name: str
) -> tuple[str, dict[str, Any]]:
    """The start-up line (text) and its fields (JSON): where the process listens, how it samples and what it
    traces, its workers, whether the compiled hot path runs, and every setting not at its default with where it
    came from (file or environment). Secrets never appear (`describe_value`)."""
    settings = loaded.settings
    sentry = settings.sentry
    rate = sentry.traces_sample_rate
    sampling = "deferred" if rate is None else f"traces_sample_rate {rate!r}"
    targets = describe_value("sentry.trace_propagation_targets", sentry.trace_propagation_targets)
    compiled = build_info.compiled()
    changed = {}  # key -> (value as text, value as JSON, source)
    for key, source in loaded.non_defaults().items():
        section, _, name = key.partition(".")
        value = getattr(getattr(settings, section), name)
        changed[key] = (describe_value(key, value), plain_value(key, value), source)
    text = (
        f"trace-proxy listening on {listen} (pid {os.getpid()}, {loop_name})"
        + (f", admin on {admin}" if admin is not None else "")
        + f"; trace-proxy {build_info.version()}, config {config}"
        + f"; workers {settings.forward.workers}; compiled hot path: {'yes' if compiled else 'no'}"
        + f"; sampling: {sampling}; trace_propagation_targets = {targets}"
        + "; settings not at their defaults: "
        + (", ".join(f"{key} = {text} from {source}" for key, (text, _, source) in changed.items()) or "none")
    )
    fields: dict[str, Any] = {
        "listen": listen,
        "admin": admin,
        "pid": os.getpid(),
        "loop": loop_name,
        "workers": settings.forward.workers,
        "compiled": compiled,
        "version": build_info.version(),
        "config": config,
        "sampling": sampling,
        "trace_propagation_targets": list(sentry.trace_propagation_targets),
        "settings": {key: {"value": value, "source": source} for key, (_, value, source) in changed.items()},
    }
    return text, fields


class _Reloader:
    """SIGHUP in a serving process: read the configuration again and apply what may change (`proxy.reload`)."""

    def __init__(self, server: Listener, source: ConfigSource, configured: Settings) -> None:
        self.server = server
        self.source = source
        # What the process runs with, as configured (before fit_descriptor_limit): what the next read is compared to,
        # so that a change needing a restart is reported again at each reload until the restart.
        self.running = configured

    def reload(self) -> None:
        """The SIGHUP handler: whatever goes wrong is logged, and the process serves on as it did."""
        try:
            self._reload()
        except Exception:
            log.exception("configuration reload failed (pid %d): the running configuration stays", os.getpid())

    def _reload(self) -> None:
        pid = os.getpid()
        where = self.source.path or "the environment (no file)"
        log.info("SIGHUP received (pid %d): reloading the configuration from %s", pid, where)
        loaded = self.source.try_load()
        if not isinstance(loaded, LoadedConfig):
            log.error(
                "configuration reload failed (pid %d): %d problem(s); the running configuration stays",
                pid,
                len(loaded),
            )
            for problem in loaded:
                log.error("configuration reload (pid %d): %s", pid, problem)
            return
        plan = plan_reload(self.running, loaded.settings)
        for change in plan.needs_restart:
            log.warning("configuration reload (pid %d): %s needs a restart; keeping the running value", pid, change)
        apply_settings(self.server, plan.settings, self.source.environ)  # builds everything, then swaps
        configure_logging(plan.settings.log, self.source.log_level)
        self.running = plan.settings
        log.info(
            "configuration reloaded (pid %d): %s",
            pid,
            ("changed: " + ", ".join(plan.applied)) if plan.applied else "nothing that applies changed",
        )


async def _serve(
    settings: Settings,
    *,
    reuse_port: bool,
    with_admin: bool,
    source: ConfigSource | None = None,
    loaded: LoadedConfig | None = None,
    parent: socket.socket | None = None,
) -> int:
    """Serve `settings` (as fitted to this process) until SIGTERM/SIGINT; SIGHUP reloads from `source`, whose last
    reading `loaded` is (by default: the environment, and `settings` as read from nowhere). `with_admin`: this
    process serves the admin port (no workers); `parent`: this worker's end of the socket pair its parent asks for
    its readiness and counters on."""
    loop = asyncio.get_running_loop()
    if source is None:
        source = ConfigSource(None, os.environ)
    if loaded is None:
        loaded = LoadedConfig(settings, {})
    stop = asyncio.Event()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    server = _forward_server(settings, loop, reuse_port)
    reloader = _Reloader(server, source, loaded.settings)
    loop.add_signal_handler(signal.SIGHUP, reloader.reload)
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot listen on %s: %s", settings.forward.listen, exc.strerror or exc)
        server.services.close()
        return 1
    reports = None
    if parent is not None:

        def report() -> dict[str, Any]:
            # Not ready from the signal on: stop is set by SIGTERM before the drain begins on the next turn.
            return {"ready": not (stop.is_set() or server.draining), "metrics": snapshot(server.services, (server,))}

        reports = await serve_reports(parent, report)
    admin = None
    if with_admin and settings.admin.listen is not None:
        address = settings.admin.listen

        async def own_metrics() -> Snapshot:
            return snapshot(server.services, (server,))

        try:
            # Not ready from the signal on: stop is set by SIGTERM before the drain begins on the next turn.
            admin = await start_admin(
                address.host, address.port, lambda: not (stop.is_set() or server.draining), Metrics(own_metrics)
            )
        except OSError as exc:
            log.error("cannot listen on %s (admin.listen): %s", address, exc.strerror or exc)
            await server.drain(0)
            server.services.close()
            return 1
    text, fields = startup_line(
        loaded,
        str(source.path) if source.path is not None else "none (defaults and environment)",
        str(settings.forward.listen),
        str(settings.admin.listen) if admin is not None else None,
        type(loop).__module__.partition(".")[0],  # "uvloop": the loop the hot path was built and measured on
    )
    log.info("%s", text, extra=fields)
    await stop.wait()
    grace = reloader.running.forward.shutdown_grace
    log.info("shutting down: draining for up to %gs", grace)
    await server.drain(grace)
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


def run(loaded: LoadedConfig | Settings, source: ConfigSource | None = None) -> int:
    """Run until SIGTERM/SIGINT; the exit status is 0 after a clean drain. `loaded`: the configuration as the CLI read
    it (with where each value came from, for the start-up line); `source`: where SIGHUP reads it again."""
    # Until the event loop handles SIGHUP (a reload), it must not end the process as its default action would: nor
    # this one, nor the workers forked from it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if isinstance(loaded, Settings):
        loaded = LoadedConfig(loaded, {})
    if source is None:
        source = ConfigSource(None, os.environ)
    settings = loaded.settings
    warning = loopback_only_warning(settings.forward.listen, settings.forward.allow_clients)
    if warning is not None:
        log.warning("%s", warning)
    fitting = fit_descriptor_limit(settings.forward.max_connections)
    if fitting != settings.forward.max_connections:
        settings = settings.model_copy(
            update={"forward": settings.forward.model_copy(update={"max_connections": fitting})}
        )
    if settings.forward.workers > 1:
        return _run_workers(settings, source, loaded)
    return uvloop.run(_serve(settings, reuse_port=False, with_admin=True, source=source, loaded=loaded))


def _run_workers(settings: Settings, source: ConfigSource, loaded: LoadedConfig) -> int:
    """Fork the workers before any event loop exists, then supervise them from a loop of the parent's own."""
    channels = WorkerChannels(settings.forward.workers)
    children: list[int] = []
    for index in range(settings.forward.workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                parent = channels.for_worker(index)
                code = uvloop.run(
                    _serve(settings, reuse_port=True, with_admin=False, source=source, loaded=loaded, parent=parent)
                )
            finally:
                logging.shutdown()
                os._exit(code)
        children.append(pid)
    return uvloop.run(_supervise(settings, children, channels.for_parent(), source))


def reload_logging(source: ConfigSource) -> None:
    """The parent of workers on SIGHUP: it serves no requests, but logs; its log settings follow the file's (the
    workers report the reload, its problems included, themselves)."""
    try:
        loaded = source.try_load()
        if isinstance(loaded, LoadedConfig):
            configure_logging(loaded.settings.log, source.log_level)
    except Exception:  # the signal is still passed on to the workers
        log.exception("reloading the log settings failed")


async def _supervise(
    settings: Settings, children: list[int], channels: list[socket.socket], source: ConfigSource | None = None
) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    alive = set(children)
    failed = False

    def forward(sig: signal.Signals) -> None:
        if sig in _STOP_SIGNALS:
            stopping.set()
        elif sig == signal.SIGHUP and source is not None:
            reload_logging(source)
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
