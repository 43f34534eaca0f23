"""The admin listener: liveness and readiness for orchestrators, on its own port, off the hot path."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

READY_KEY: web.AppKey[Callable[[], bool]] = web.AppKey("ready")


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    if request.app[READY_KEY]():
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready\n")


def create_admin_app(ready: Callable[[], bool]) -> web.Application:
    """`ready` says whether the forward listener is bound and not draining."""
    app = web.Application()
    app[READY_KEY] = ready
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


async def start_admin(host: str, port: int, ready: Callable[[], bool]) -> web.AppRunner:
    runner = web.AppRunner(create_admin_app(ready), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
