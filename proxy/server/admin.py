"""The admin listener: liveness, readiness and metrics for orchestrators and Prometheus, on its own port, off the
hot path."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.metrics import CONTENT_TYPE, Metrics

Ready = Callable[[], bool | Awaitable[bool]]

READY_KEY: web.AppKey[Ready] = web.AppKey("ready")
METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics")


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    ready = request.app[READY_KEY]()
    if inspect.isawaitable(ready):
        ready = await ready
    if ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready\n")


async def _metrics(request: web.Request) -> web.Response:
    body = await request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def create_admin_app(ready: Ready, metrics: Metrics | None = None) -> web.Application:
    """`ready` says whether the forward listener is bound and not draining (with workers: whether every worker is,
    which takes asking them); `metrics`, when given, answers `GET /metrics`."""
    app = web.Application()
    app[READY_KEY] = ready
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    if metrics is not None:
        app[METRICS_KEY] = metrics
        app.router.add_get("/metrics", _metrics)
    return app


async def start_admin(host: str, port: int, ready: Ready, metrics: Metrics | None = None) -> web.AppRunner:
    runner = web.AppRunner(create_admin_app(ready, metrics), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
