"""The downstream service B of the conformance tests: a real sentry-sdk with tracing, run as its own process.

    python downstream_app.py --framework aiohttp|wsgi --dsn DSN [--environment E] [--release R]

``aiohttp``: an aiohttp.web app with the SDK's AioHttpIntegration; ``wsgi``: a wsgiref server (threaded) wrapped
in SentryWsgiMiddleware. Either way the SDK itself continues the trace from the request's ``sentry-trace`` and
``baggage``, exactly as in an instrumented service, and sends its transaction to the DSN (the test's envelope sink):
a transaction event with sentry-sdk 2.x, a segment span (span streaming) with 3.x.

``GET /echo`` answers JSON: the trace headers as received (each a list of the values, in order) and what the SDK
made of them (its current transaction's trace id, span id, parent span id and sampling decision, and the SDK's
version).

Prints ``downstream listening on 127.0.0.1:PORT`` on stderr when ready; SIGTERM stops it, after a flush.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socketserver
import sys
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import sentry_sdk

TRACE_HEADERS = ("sentry-trace", "baggage", "traceparent")


def sdk_view() -> dict[str, Any] | None:
    """The current span's ids and sampling decision, through APIs that sentry-sdk 2.x and 3.x both have.

    3.x removed ``Span.parent_span_id`` (its streamed spans keep it private); the scope's trace context, which both
    versions build from the current span (``Scope.get_trace_context``), is where they expose it alike. In 3.x an
    unsampled segment is a ``NoOpSpan`` with ``sampled`` False; the scope's trace context is then built from it too.
    """
    span = sentry_sdk.get_current_span()
    if span is None:
        return None
    context = sentry_sdk.get_current_scope().get_trace_context()
    if (context.get("trace_id"), context.get("span_id")) != (span.trace_id, span.span_id):
        raise RuntimeError(f"the scope's trace context is not the current span's: {context} vs {span!r}")
    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": context.get("parent_span_id"),
        "sampled": span.sampled,
        "sdk_version": sentry_sdk.VERSION,
    }


def run_aiohttp() -> None:
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        received = {name: request.headers.getall(name, []) for name in TRACE_HEADERS}
        return web.json_response({"received": received, "sdk": sdk_view(), "framework": "aiohttp"})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/echo", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"downstream listening on 127.0.0.1:{runner.addresses[0][1]}", file=sys.stderr, flush=True)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the access log would only be noise
        pass


def run_wsgi() -> None:
    from sentry_sdk.integrations.wsgi import SentryWsgiMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") != "/echo":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        # WSGI joins repeated headers with ", ": each value is one list element here.
        received = {
            name: [environ[key]] if (key := "HTTP_" + name.upper().replace("-", "_")) in environ else []
            for name in TRACE_HEADERS
        }
        body = json.dumps({"received": received, "sdk": sdk_view(), "framework": "wsgi"}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    server = make_server(
        "127.0.0.1",
        0,
        SentryWsgiMiddleware(app),
        server_class=_ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    print(f"downstream listening on 127.0.0.1:{server.server_address[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=["aiohttp", "wsgi"], required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--environment", default="downstream-env")
    parser.add_argument("--release", default="downstream@2.0.0")
    args = parser.parse_args()

    integrations = []
    if args.framework == "aiohttp":
        from sentry_sdk.integrations.aiohttp import AioHttpIntegration

        integrations.append(AioHttpIntegration())
    sentry_sdk.init(
        dsn=args.dsn,
        traces_sample_rate=1.0,
        environment=args.environment,
        release=args.release,
        integrations=integrations,
        http_proxy="",  # the SDK's own transport never goes through a proxy (and the env has none either)
        https_proxy="",
        shutdown_timeout=5,
    )
    try:
        if args.framework == "aiohttp":
            run_aiohttp()
        else:
            run_wsgi()
    finally:
        sentry_sdk.flush(timeout=5)


if __name__ == "__main__":
    main()
