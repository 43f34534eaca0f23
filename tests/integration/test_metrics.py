"""`GET /metrics` on the admin port: each metric scraped before and after the case it counts, through a real proxy
with real clients and origins on loopback; and with `workers = 2`, the sum over both workers and /readyz."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.helpers import http
from tests.helpers.metrics import Scrape, scrape, scrape_until
from tests.helpers.origin import (
    Origin,
    RawConn,
    RawOrigin,
    RawOriginFactory,
    Recorded,
    ok_response,
    serve_special,
)
from tests.helpers.proxy_process import ProxyFactory, ProxyProcess, tcp_sockets

pytestmark = pytest.mark.asyncio

TRACE_ID = "771a43a4192642f0b136d5159a501700"


def get(url: str, *extra: bytes) -> bytes:
    return b"GET %b HTTP/1.1\r\nHost: h\r\n%b\r\n" % (url.encode(), b"".join(line + b"\r\n" for line in extra))


async def quiet(proxy: ProxyProcess) -> Scrape:
    """A scrape once no client or origin connection is open (pooled ones included): what earlier tests left (their
    origins and clients close at their end) is gone, so that the gauges can be compared exactly."""

    def closed(result: Scrape) -> bool:
        connections = "trace_proxy_connections_active"
        return result.get(connections, side="client") == 0 and result.get(connections, side="upstream") == 0

    return await scrape_until(proxy, closed)


async def keep_alive_exchange(port: int, request: bytes) -> tuple[http.RawResponse, asyncio.StreamWriter]:
    """One request on a new client connection left open; the response as the client read it, exactly."""
    reader, writer = await http.open_raw(port)
    writer.write(request)
    return await http.read_response(reader), writer


async def test_exposition_has_every_metric_and_its_types(proxy: ProxyProcess) -> None:
    """Every metric of the issue is exposed, with its type, in the Prometheus text format; build_info names this
    build; the client library's process metrics are there."""
    result = await scrape(proxy)
    assert result.types == {
        **result.types,
        "trace_proxy_requests": "counter",
        "trace_proxy_trace_decisions": "counter",
        "trace_proxy_trace_headers_replaced": "counter",
        "trace_proxy_request_duration_seconds": "histogram",
        "trace_proxy_upstream_connect_seconds": "histogram",
        "trace_proxy_connections_active": "gauge",
        "trace_proxy_tunnels_active": "gauge",
        "trace_proxy_bytes": "counter",
        "trace_proxy_upstream_pool_idle": "gauge",
        "trace_proxy_build_info": "gauge",
        "process_cpu_seconds": "counter",
        "process_resident_memory_bytes": "gauge",
    }
    [(labels, value)] = [(dict(lb), v) for (name, lb), v in result.samples.items() if name == "trace_proxy_build_info"]
    assert value == 1
    assert labels["version"] and labels["python"].count(".") == 2 and labels["compiled"] in ("true", "false")
    for kind in ("http", "connect", "upgrade"):
        for outcome in ("ok", "client_error", "upstream_error", "timeout"):
            assert result.requests(kind, outcome) >= 0  # every series exists before it first moves
    for reason in ("malformed", "oversize", "org_mismatch"):
        assert result.get("trace_proxy_trace_headers_replaced_total", reason=reason) >= 0


async def test_plain_request(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """A forwarded GET: kind http, outcome ok, one more duration observation, a trace decision (a new, sampled
    trace: the test configuration's rate is 1.0), a connection opened to the origin, and the exact bytes the origin
    received and the client read; while the client connection is open it is counted, and the origin connection
    waits in the pool after the keep-alive response. No URL, host or trace id becomes a label."""
    before = await quiet(proxy)
    response, writer = await keep_alive_exchange(proxy.port, get(raw_origin.url("/metrics-plain?q=1")))
    try:
        assert response.status == 200
        after = await scrape_until(proxy, lambda s: s.requests("http", "ok") > before.requests("http", "ok"))
        assert after.requests("http", "ok") == before.requests("http", "ok") + 1
        assert after.total("trace_proxy_requests_total") == before.total("trace_proxy_requests_total") + 1
        duration = "trace_proxy_request_duration_seconds_count"
        assert after.get(duration) == before.get(duration) + 1
        assert after.get("trace_proxy_request_duration_seconds_sum") > before.get(
            "trace_proxy_request_duration_seconds_sum"
        )
        new = "trace_proxy_trace_decisions_total"
        assert after.get(new, source="new", sampled="true") == before.get(new, source="new", sampled="true") + 1
        connects = "trace_proxy_upstream_connect_seconds_count"
        assert after.get(connects) == before.get(connects) + 1
        to_origin = after.get("trace_proxy_bytes_total", direction="to_origin")
        assert to_origin - before.get("trace_proxy_bytes_total", direction="to_origin") == len(raw_origin.received)
        to_client = after.get("trace_proxy_bytes_total", direction="to_client")
        read = len(response.head) + len(response.body)
        assert to_client - before.get("trace_proxy_bytes_total", direction="to_client") == read
        assert after.get("trace_proxy_connections_active", side="client") == 1
        assert after.get("trace_proxy_connections_active", side="upstream") == 1
        assert after.get("trace_proxy_upstream_pool_idle") == 1
    finally:
        await http.close_writer(writer)
    for forbidden in (raw_origin.authority.decode(), "metrics-plain", "q=1", "127.0.0.1"):
        assert forbidden not in after.text


async def test_spliced_bodies_are_counted(proxy: ProxyProcess, raw_origin_factory: RawOriginFactory) -> None:
    """Large bodies on a keep-alive connection (after the first, the rest of each is spliced in the kernel): the
    bytes counted to the client are exactly those the client read."""
    big = b"x" * (200 * 1024)
    origin = await raw_origin_factory(serve_special({b"/big": ok_response(big)}))
    before = await quiet(proxy)
    reader, writer = await http.open_raw(proxy.port)
    read = 0
    try:
        for _ in range(3):
            writer.write(get(origin.url("/big")))
            response = await http.read_response(reader)
            assert response.status == 200 and response.body == big
            read += len(response.head) + len(response.body)
    finally:
        await http.close_writer(writer)
    relayed = "trace_proxy_bytes_total"
    after = await scrape_until(proxy, lambda s: s.requests("http", "ok") == before.requests("http", "ok") + 3)
    assert after.get(relayed, direction="to_client") - before.get(relayed, direction="to_client") == read
    to_origin = after.get(relayed, direction="to_origin") - before.get(relayed, direction="to_origin")
    assert to_origin == len(origin.received)


async def test_connections_active_follows_client_connections(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """Three keep-alive client connections open are three more client connections counted; closed, they are not."""
    before = (await quiet(proxy)).get("trace_proxy_connections_active", side="client")
    writers = []
    try:
        for i in range(3):
            response, writer = await keep_alive_exchange(proxy.port, get(raw_origin.url(f"/open/{i}")))
            assert response.status == 200
            writers.append(writer)
        opened = await scrape(proxy)
        assert opened.get("trace_proxy_connections_active", side="client") == before + 3
    finally:
        for writer in writers:
            await http.close_writer(writer)
    await scrape_until(proxy, lambda s: s.get("trace_proxy_connections_active", side="client") == before)


async def test_continued_trace_decision(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """A request carrying a trace that is not sampled is counted under source=request, sampled=false."""
    before = await scrape(proxy)
    name = "trace_proxy_trace_decisions_total"
    header = b"sentry-trace: %b-b7c1a8c2f6e04e43-0" % TRACE_ID.encode()
    response = await http.exchange(proxy.port, get(raw_origin.url("/continued"), header))
    assert response.status == 200
    after = await scrape_until(proxy, lambda s: s.total(name) > before.total(name))
    assert after.get(name, source="request", sampled="false") == before.get(name, source="request", sampled="false") + 1
    assert after.total(name) == before.total(name) + 1


async def test_malformed_sentry_trace_is_counted_as_replaced(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """An invalid sentry-trace is replaced by a new trace: reason=malformed."""
    before = await scrape(proxy)
    name = "trace_proxy_trace_headers_replaced_total"
    response = await http.exchange(proxy.port, get(raw_origin.url("/malformed"), b"sentry-trace: not-a-trace"))
    assert response.status == 200
    after = await scrape_until(proxy, lambda s: s.total(name) > before.total(name))
    assert after.get(name, reason="malformed") == before.get(name, reason="malformed") + 1
    assert after.total(name) == before.total(name) + 1
    assert raw_origin.requests[0].header(b"sentry-trace") != b"not-a-trace"


async def test_refused_request_is_a_client_error(proxy: ProxyProcess) -> None:
    """A request the proxy refuses (origin-form target: 400) is a client_error, and no trace decision or duration."""
    before = await scrape(proxy)
    response = await http.exchange(proxy.port, b"GET /not-absolute HTTP/1.1\r\nHost: h\r\n\r\n")
    assert response.status == 400
    after = await scrape_until(
        proxy, lambda s: s.requests("http", "client_error") > before.requests("http", "client_error")
    )
    assert after.requests("http", "client_error") == before.requests("http", "client_error") + 1
    decisions = "trace_proxy_trace_decisions_total"
    assert after.total(decisions) == before.total(decisions)
    duration = "trace_proxy_request_duration_seconds_count"
    assert after.get(duration) == before.get(duration)
    to_client = "trace_proxy_bytes_total"
    read = len(response.head) + len(response.body)
    assert after.get(to_client, direction="to_client") - before.get(to_client, direction="to_client") == read


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_origin_is_an_upstream_error(proxy: ProxyProcess) -> None:
    """An origin that refuses the connection: 502, outcome upstream_error."""
    before = await scrape(proxy)
    response = await http.exchange(proxy.port, get(f"http://127.0.0.1:{closed_port()}/gone"))
    assert response.status == 502
    after = await scrape_until(
        proxy, lambda s: s.requests("http", "upstream_error") > before.requests("http", "upstream_error")
    )
    assert after.requests("http", "upstream_error") == before.requests("http", "upstream_error") + 1


async def test_stalled_origin_is_a_timeout(proxy_factory: ProxyFactory, raw_origin_factory: RawOriginFactory) -> None:
    """An origin that reads the request and never answers: 504 after forward.idle_timeout, outcome timeout."""
    proxy = proxy_factory({"forward": {"idle_timeout": 1.0}})
    answered = asyncio.Event()

    async def silent(conn: RawConn) -> None:
        await conn.read_request()
        await answered.wait()

    origin = await raw_origin_factory(silent)
    try:
        before = await scrape(proxy)
        response = await http.exchange(proxy.port, get(origin.url("/stall")))
        assert response.status == 504
        after = await scrape_until(proxy, lambda s: s.requests("http", "timeout") > before.requests("http", "timeout"))
        assert after.requests("http", "timeout") == before.requests("http", "timeout") + 1
        assert after.total("trace_proxy_requests_total") == before.total("trace_proxy_requests_total") + 1
    finally:
        answered.set()


async def test_connect_tunnel(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """A CONNECT: kind connect, outcome ok once the tunnel opened; tunnels_active is 1 while it is open and back to
    0 once it closed; the bytes relayed through it are counted each way."""
    before = await scrape(proxy)
    assert before.get("trace_proxy_tunnels_active") == 0
    reader, writer = await http.open_raw(proxy.port)
    try:
        connect = b"CONNECT %b HTTP/1.1\r\nHost: %b\r\n\r\n" % (raw_origin.authority, raw_origin.authority)
        writer.write(connect)
        established = await http.read_head(reader)
        assert established.startswith(b"HTTP/1.1 200")
        opened = await scrape_until(proxy, lambda s: s.get("trace_proxy_tunnels_active") == 1)
        assert opened.requests("connect", "ok") == before.requests("connect", "ok") + 1
        inner = b"GET /in-tunnel HTTP/1.1\r\nHost: t\r\n\r\n"
        writer.write(inner)
        response = await http.read_response(reader)
        assert response.status == 200
    finally:
        await http.close_writer(writer)
    closed = await scrape_until(proxy, lambda s: s.get("trace_proxy_tunnels_active") == 0)
    relayed = "trace_proxy_bytes_total"
    assert closed.get(relayed, direction="to_origin") - before.get(relayed, direction="to_origin") == len(inner)
    answer = len(established) + len(response.head) + len(response.body)
    assert closed.get(relayed, direction="to_client") - before.get(relayed, direction="to_client") == answer
    assert closed.requests("connect", "ok") == before.requests("connect", "ok") + 1
    assert (
        closed.get("trace_proxy_upstream_connect_seconds_count")
        == before.get("trace_proxy_upstream_connect_seconds_count") + 1
    )


async def ws_echo(request: web.Request, record: Recorded) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            await ws.send_str("echo:" + message.data)
    return ws


async def test_upgrade(proxy: ProxyProcess, origin: Origin) -> None:
    """A WebSocket handshake through the proxy: kind upgrade, outcome ok; a tunnel while it is open."""
    origin.route("/ws", ws_echo)
    before = await scrape(proxy)
    async with aiohttp.ClientSession() as session:
        ws = await asyncio.wait_for(session.ws_connect(origin.url("/ws"), proxy=proxy.url), http.TIMEOUT)
        try:
            await ws.send_str("hi")
            assert (await ws.receive_str(timeout=http.TIMEOUT)) == "echo:hi"
            opened = await scrape(proxy)
            assert opened.requests("upgrade", "ok") == before.requests("upgrade", "ok") + 1
            assert opened.get("trace_proxy_tunnels_active") == before.get("trace_proxy_tunnels_active") + 1
        finally:
            await asyncio.wait_for(ws.close(), http.TIMEOUT)
    await scrape_until(proxy, lambda s: s.get("trace_proxy_tunnels_active") == before.get("trace_proxy_tunnels_active"))


# -- workers -------------------------------------------------------------------------------------------------------


def worker_pids(proxy: ProxyProcess) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{proxy.pid}/task/{proxy.pid}/children").read_text().split()]


async def admin_get(proxy: ProxyProcess, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(proxy.admin_url + path) as resp:
        return resp.status, await resp.text()


async def wait_ready(proxy: ProxyProcess, status: int, timeout: float = 10.0) -> None:
    """Poll /readyz until it answers `status` (the parent's admin port opens after the workers log that they
    listen)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(aiohttp.ClientConnectionError):
            if (await admin_get(proxy, "/readyz"))[0] == status:
                return
        assert time.monotonic() < deadline, f"/readyz did not become {status}; stderr:\n{proxy.stderr}"
        await asyncio.sleep(0.05)


async def test_two_workers_sum(proxy_factory: ProxyFactory, raw_origin: RawOrigin) -> None:
    """With workers = 2 the parent's /metrics is the sum over both workers: client connections held open on each
    worker (found in /proc: which worker holds which socket) add up to the gauge, and their requests to the counter;
    /readyz is 200 once both workers answer that they are ready."""
    proxy = proxy_factory({"forward": {"workers": 2}})
    await wait_ready(proxy, 200)
    pids = worker_pids(proxy)
    assert len(pids) == 2
    writers: list[asyncio.StreamWriter] = []
    try:
        per_worker: dict[int, int] = {}
        # The kernel spreads connections over the workers by a hash (SO_REUSEPORT): open them until both hold some.
        while len(writers) < 8 or (min(per_worker.values(), default=0) == 0 and len(writers) < 64):
            response, writer = await keep_alive_exchange(proxy.port, get(raw_origin.url(f"/w/{len(writers)}")))
            assert response.status == 200
            writers.append(writer)
            clients = {w.get_extra_info("sockname")[1] for w in writers}
            per_worker = {
                pid: sum(1 for s in tcp_sockets(pid) if s.local_port == proxy.port and s.remote_port in clients)
                for pid in pids
            }
        assert all(count > 0 for count in per_worker.values()), per_worker
        assert sum(per_worker.values()) == len(writers)
        result = await scrape(proxy)
        assert result.get("trace_proxy_connections_active", side="client") == len(writers)
        assert result.requests("http", "ok") == len(writers)
        assert result.get("trace_proxy_request_duration_seconds_count") == len(writers)
        assert result.get("trace_proxy_trace_decisions_total", source="new", sampled="true") == len(writers)
        # Each worker opened one origin connection, reused for its later requests, and pools it now.
        assert result.get("trace_proxy_upstream_connect_seconds_count") == 2
        assert result.get("trace_proxy_upstream_pool_idle") == 2
        assert result.get("trace_proxy_connections_active", side="upstream") == 2
        [(_, build)] = [(n, v) for (n, _), v in result.samples.items() if n == "trace_proxy_build_info"]
        assert build == 1  # once, not once per worker
    finally:
        for writer in writers:
            await http.close_writer(writer)
    await scrape_until(proxy, lambda s: s.get("trace_proxy_connections_active", side="client") == 0)
    assert await admin_get(proxy, "/readyz") == (200, "ready\n")


async def test_readyz_needs_every_worker(proxy_factory: ProxyFactory) -> None:
    """A worker that does not answer the parent (stopped with SIGSTOP) makes /readyz 503, which is logged; /metrics
    still answers, without that worker's counters; once it runs again, /readyz is 200 again."""
    proxy = proxy_factory({"forward": {"workers": 2}})
    await wait_ready(proxy, 200)
    stopped = worker_pids(proxy)[1]
    os.kill(stopped, signal.SIGSTOP)
    try:
        assert (await admin_get(proxy, "/readyz"))[0] == 503
        assert "trace_proxy_requests" in (await scrape(proxy)).types
        deadline = time.monotonic() + 10
        while f"(pid {stopped}) did not answer within" not in proxy.stderr:
            assert time.monotonic() < deadline, proxy.stderr
            await asyncio.sleep(0.05)
    finally:
        os.kill(stopped, signal.SIGCONT)
    await wait_ready(proxy, 200)
