"""The process lifecycle: start-up, health endpoints, and the graceful drain on SIGTERM/SIGINT (stop accepting,
let requests in flight finish within shutdown_grace, exit 0)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import http, toml
from tests.helpers.origin import Origin, RawOrigin, Recorded
from tests.helpers.proxy_process import (
    DEFAULT_CONFIG,
    REPO,
    ProxyFactory,
    ProxyProcess,
    clean_env,
    wait_until_refused,
)

pytestmark = pytest.mark.asyncio


def slow_route(origin: Origin) -> tuple[asyncio.Event, asyncio.Event]:
    """`/slow` answers only once `release` is set; `arrived` is set when the request reached the origin."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request, record: Recorded) -> web.StreamResponse:
        arrived.set()
        await release.wait()
        return web.Response(text="slow done")

    origin.route("/slow", slow)
    return arrived, release


async def admin_get(proxy: ProxyProcess, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(proxy.admin_url + path) as resp:
        return resp.status, await resp.text()


async def test_health_and_readiness(proxy: ProxyProcess) -> None:
    """The admin listener answers /healthz and /readyz with 200 while the proxy serves."""
    assert await admin_get(proxy, "/healthz") == (200, "ok\n")
    assert await admin_get(proxy, "/readyz") == (200, "ready\n")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_drains_in_flight_request(
    proxy_factory: ProxyFactory, origin: Origin, sig: signal.Signals
) -> None:
    """On SIGTERM/SIGINT with a request in flight: the proxy stops accepting (new connections refused, /readyz
    503 while /healthz stays 200), the in-flight request still completes with 200 (marked `Connection: close`), and
    the process exits 0 well within shutdown_grace once it is done."""
    proxy = proxy_factory({"forward": {"shutdown_grace": 15.0}})
    arrived, release = slow_route(origin)
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.ensure_future(session.get(origin.url("/slow"), proxy=proxy.url))
        try:
            await asyncio.wait_for(arrived.wait(), http.TIMEOUT)
            signalled = time.monotonic()
            proxy.send_signal(sig)
            await asyncio.to_thread(wait_until_refused, proxy.port)
            assert (await admin_get(proxy, "/readyz"))[0] == 503
            assert await admin_get(proxy, "/healthz") == (200, "ok\n")  # alive: no restart during the drain
            assert proxy.alive() and not in_flight.done()
            release.set()
            resp = await asyncio.wait_for(in_flight, http.TIMEOUT)
            assert resp.status == 200
            assert await resp.text() == "slow done"
            assert resp.headers.get("Connection", "").lower() == "close"
            resp.release()
        finally:
            release.set()
            if not in_flight.done():
                in_flight.cancel()
    code = await asyncio.to_thread(proxy.wait, 10)
    assert code == 0, proxy.stderr
    assert time.monotonic() - signalled < 10
    assert "shutting down" in proxy.stderr and "stopped" in proxy.stderr
    [record] = origin.requests
    record.assert_proxied()


async def test_drain_stops_waiting_after_shutdown_grace(proxy_factory: ProxyFactory, origin: Origin) -> None:
    """A request that outlives shutdown_grace does not keep the process alive: after the grace the proxy closes
    the connection and exits 0."""
    proxy = proxy_factory({"forward": {"shutdown_grace": 1.0, "idle_timeout": 30.0}})
    arrived, release = slow_route(origin)
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/slow").encode())
        await asyncio.wait_for(arrived.wait(), http.TIMEOUT)
        signalled = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proxy.wait, 10)
        elapsed = time.monotonic() - signalled
        assert code == 0, proxy.stderr
        assert 0.9 < elapsed < 5, elapsed
        try:
            rest = await asyncio.wait_for(reader.read(), http.TIMEOUT)
        except ConnectionResetError:
            rest = b""
        assert not rest.startswith(b"HTTP/1.1 200")
    finally:
        release.set()
        await http.close_writer(writer)


async def test_idle_keep_alive_connections_do_not_delay_shutdown(
    proxy_factory: ProxyFactory, raw_origin: RawOrigin
) -> None:
    """Idle keep-alive client connections are closed at once on SIGTERM: the proxy exits 0 long before a 15 s
    shutdown_grace, and the idle client sees its connection closed."""
    proxy = proxy_factory({"forward": {"shutdown_grace": 15.0}})
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % raw_origin.url("/idle").encode())
        assert (await http.read_response(reader)).status == 200
        signalled = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        await http.expect_eof(reader)
        code = await asyncio.to_thread(proxy.wait, 10)
        assert code == 0, proxy.stderr
        assert time.monotonic() - signalled < 5
    finally:
        await http.close_writer(writer)
    raw_origin.requests[0].assert_proxied()


async def test_several_workers_serve_and_stop_cleanly(proxy_factory: ProxyFactory, origin: Origin) -> None:
    """With `workers = 2`, requests on many connections are served, and SIGTERM stops every worker with exit 0."""
    proxy = proxy_factory({"forward": {"workers": 2}})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for i in range(10):
            async with session.get(origin.url(f"/w/{i}"), proxy=proxy.url) as resp:
                assert resp.status == 200
    assert len(origin.requests) == 10
    for request in origin.requests:
        request.assert_proxied()
    assert await admin_get(proxy, "/readyz") == (200, "ready\n")
    code = await asyncio.to_thread(proxy.stop)
    assert code == 0, proxy.stderr


async def test_listen_port_in_use_fails_fast(tmp_path: Path) -> None:
    """A proxy that cannot bind its listen port says so on stderr and exits non-zero instead of running."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = toml.merge(DEFAULT_CONFIG, {"forward": {"listen": f"127.0.0.1:{port}"}, "admin": {"listen": ""}})
        path = tmp_path / "taken.toml"
        path.write_text(toml.dumps(config))
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "proxy", "--config", str(path)],
            cwd=REPO,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


async def test_sighup_does_not_stop_the_proxy(proxy_factory: ProxyFactory, origin: Origin) -> None:
    """SIGHUP (sent by some supervisors on reload) neither stops nor disturbs the proxy."""
    proxy = proxy_factory()
    proxy.process.send_signal(signal.SIGHUP)
    async with aiohttp.ClientSession() as session:
        for i in range(3):  # the signal is handled by the event loop between these requests at the latest
            async with session.get(origin.url(f"/hup/{i}"), proxy=proxy.url) as resp:
                assert resp.status == 200
    assert proxy.alive()
    assert "SIGHUP" in proxy.stderr
    for request in origin.requests:
        request.assert_proxied()


async def test_own_upstream_connections_ignore_proxy_variables(proxy_factory: ProxyFactory, origin: Origin) -> None:
    """A sidecar inherits the pod's environment, where HTTP_PROXY points at the sidecar itself (here: at a port
    nobody listens on). The proxy's own connections to origins never follow it, and it runs on uvloop."""
    dead = "http://127.0.0.1:9"
    proxy = proxy_factory(env={"HTTP_PROXY": dead, "http_proxy": dead, "ALL_PROXY": dead, "all_proxy": dead})
    async with aiohttp.ClientSession() as session, session.get(origin.url("/direct"), proxy=proxy.url) as resp:
        assert resp.status == 200
    assert [r.raw_path for r in origin.requests] == ["/direct"]
    origin.requests[0].assert_proxied()
    assert "uvloop" in proxy.stderr
