"""SIGHUP: a running proxy reads its configuration again. A valid one applies to new requests (here: the sampling,
traces_sample_rate 1.0 -> 0.0, seen in the sentry-trace the origin receives) while requests in flight finish; an
invalid one is logged and changes nothing; keys that need a restart keep their values; every worker reloads."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
import pytest

from tests.helpers import http
from tests.helpers.origin import Origin
from tests.helpers.proxy_process import ProxyFactory, ProxyProcess, local_tcp_ports
from tests.integration.test_lifecycle import slow_route

pytestmark = pytest.mark.asyncio


async def reload(
    proxy: ProxyProcess, overrides: dict[str, dict[str, object]] | None, done: str, count: int = 1
) -> list[str]:
    """Rewrite the file (if `overrides`), send SIGHUP, wait until `count` more lines containing `done` were logged."""
    before = len(proxy.lines(done))
    if overrides is not None:
        proxy.rewrite_config(overrides)
    proxy.process.send_signal(signal.SIGHUP)
    lines = await asyncio.to_thread(proxy.wait_for_lines, done, before + count)
    return lines[before:]


async def sampled_flags(proxy: ProxyProcess, origin: Origin, count: int, tag: str) -> list[str | None]:
    """Send `count` GETs through the proxy, each on a connection of its own; the sampled flag of each sentry-trace
    the origin received for them."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for i in range(count):
            async with session.get(origin.url(f"/{tag}/{i}"), proxy=proxy.url) as resp:
                assert resp.status == 200
    records = [r for r in origin.requests if r.raw_path.startswith(f"/{tag}/")]
    assert len(records) == count
    return [r.assert_proxied().sampled for r in records]


async def test_sighup_changes_sampling_of_new_requests_while_one_is_in_flight(
    proxy_factory: ProxyFactory, origin: Origin
) -> None:
    proxy = proxy_factory({"forward": {"shutdown_grace": 15.0}})
    arrived, release = slow_route(origin)
    reader, writer = await http.open_raw(proxy.port)  # a keep-alive connection that sends before and after
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.ensure_future(session.get(origin.url("/slow"), proxy=proxy.url))
        try:
            await asyncio.wait_for(arrived.wait(), http.TIMEOUT)
            writer.write(b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/keep/1").encode())
            assert (await http.read_response(reader)).status == 200

            [line] = await reload(proxy, {"sentry": {"traces_sample_rate": 0.0}}, "configuration reloaded")
            assert "changed: sentry.traces_sample_rate" in line

            writer.write(b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n" % origin.url("/keep/2").encode())
            assert (await http.read_response(reader)).status == 200
            assert await sampled_flags(proxy, origin, 3, "after") == ["0", "0", "0"]
            release.set()
            resp = await asyncio.wait_for(in_flight, http.TIMEOUT)
            assert resp.status == 200 and await resp.text() == "slow done"
            resp.release()
        finally:
            release.set()
            await http.close_writer(writer)
            if not in_flight.done():
                in_flight.cancel()
    by_path = {r.raw_path: r for r in origin.requests}
    assert by_path["/slow"].assert_proxied().sampled == "1"  # decided when it began, before the reload
    first, second = by_path["/keep/1"], by_path["/keep/2"]  # one client connection, the reload between them
    assert (first.assert_proxied().sampled, second.assert_proxied().sampled) == ("1", "0")
    assert proxy.alive()


async def test_broken_file_keeps_the_running_configuration(proxy_factory: ProxyFactory, origin: Origin) -> None:
    proxy = proxy_factory()
    lines = await reload(
        proxy,
        {"sentry": {"traces_sample_rate": 2.0}, "forward": {"bogus": 1, "idle_timeout": -1}},
        "configuration reload (pid",
        count=3,
    )
    assert proxy.lines("configuration reload failed")
    assert any("sentry.traces_sample_rate: " in line for line in lines), lines
    assert any("forward.bogus: unknown key" in line for line in lines), lines
    assert any("forward.idle_timeout: " in line for line in lines), lines
    assert not proxy.lines("configuration reloaded")
    assert await sampled_flags(proxy, origin, 2, "still") == ["1", "1"]
    assert proxy.alive()

    # Not TOML at all: the same, and a later valid file still applies.
    proxy.config_path.write_text(proxy.config_path.read_text() + "\n[sentry\n")
    await reload(proxy, None, "configuration reload failed", count=1)
    assert await sampled_flags(proxy, origin, 1, "still-after-garbage") == ["1"]


async def test_restart_keys_are_reported_and_kept(proxy_factory: ProxyFactory, origin: Origin) -> None:
    """A changed listen address and worker count need a restart: logged as such, the old values stay (the proxy still
    serves on its port with one process), and the sampling changed in the same file applies."""
    proxy = proxy_factory()
    [line] = await reload(
        proxy,
        {"forward": {"listen": "127.0.0.1:1", "workers": 3}, "sentry": {"traces_sample_rate": 0.0}},
        "configuration reloaded",
    )
    assert "changed: sentry.traces_sample_rate" in line
    restart = proxy.lines("needs a restart")
    assert any(f'forward.listen: "127.0.0.1:{proxy.port}" -> "127.0.0.1:1"' in x for x in restart), restart
    assert any("forward.workers: 1 -> 3" in x for x in restart), restart
    assert await sampled_flags(proxy, origin, 2, "kept") == ["0", "0"]
    # Still pending at the next reload, and said again; nothing else changed.
    [line] = await reload(proxy, None, "configuration reloaded")
    assert "nothing that applies changed" in line
    assert len(proxy.lines("needs a restart")) == 2 * len(restart)


async def test_every_worker_reloads(proxy_factory: ProxyFactory, origin: Origin) -> None:
    """With workers = 2, SIGHUP to the parent reaches both workers: each logs its reload, the parent stays up, and
    requests on many connections (spread over both workers by SO_REUSEPORT) all get the new sampling."""
    proxy = proxy_factory({"forward": {"workers": 2}})
    workers = {
        line.split("(pid ")[1].split(",")[0]
        for line in await asyncio.to_thread(proxy.wait_for_lines, "trace-proxy listening on", 2)
    }
    assert len(workers) == 2
    before = await sampled_flags(proxy, origin, 16, "before")
    assert before == ["1"] * 16
    # Both workers served: each holds pooled origin connections the origin saw requests on.
    peers = {r.peer_port for r in origin.requests}
    assert all(local_tcp_ports(int(pid)) & peers for pid in workers), "SO_REUSEPORT sent every connection to one worker"

    lines = await reload(proxy, {"sentry": {"traces_sample_rate": 0.0}}, "configuration reloaded", count=2)
    assert {line.split("(pid ")[1].split(")")[0] for line in lines} == workers
    assert await sampled_flags(proxy, origin, 16, "after") == ["0"] * 16
    assert proxy.alive()


async def test_reload_switches_logs_and_timeouts(proxy_factory: ProxyFactory, origin: Origin) -> None:
    """Log settings and timeouts apply too: after the reload, access lines come as JSON, and a request that gets no
    answer is ended by the new, shorter idle_timeout."""
    proxy = proxy_factory({"forward": {"idle_timeout": 30.0}})
    arrived, release = slow_route(origin)
    await reload(proxy, {"log": {"format": "json", "access": True}, "forward": {"idle_timeout": 0.5}}, "reloaded")
    try:
        async with aiohttp.ClientSession() as session, session.get(origin.url("/slow"), proxy=proxy.url) as resp:
            assert resp.status == 504
            assert "forward.idle_timeout" in await resp.text()
    finally:
        release.set()
    assert arrived.is_set()
    [line] = await asyncio.to_thread(proxy.wait_for_lines, '"logger": "proxy.access"')
    record = json.loads(line)
    assert (record["path"], record["status"], record["outcome"]) == ("/slow", 504, "stalled")


async def test_reload_of_allow_clients_applies_to_new_connections(proxy_factory: ProxyFactory, origin: Origin) -> None:
    """allow_clients is checked as a connection is accepted: after a reload that no longer lists loopback, a new
    connection gets 403 while one admitted before keeps being served."""
    proxy = proxy_factory()
    reader, writer = await http.open_raw(proxy.port)
    try:
        request = b"GET %b HTTP/1.1\r\nHost: h\r\n\r\n"
        writer.write(request % origin.url("/admitted/1").encode())
        assert (await http.read_response(reader)).status == 200
        await reload(proxy, {"forward": {"allow_clients": ["192.0.2.0/24"]}}, "configuration reloaded")
        refused = await http.exchange(proxy.port, request % origin.url("/new").encode())
        assert refused.status == 403 and b"allow_clients" in refused.body
        writer.write(request % origin.url("/admitted/2").encode())
        assert (await http.read_response(reader)).status == 200
    finally:
        await http.close_writer(writer)
    assert [r.raw_path for r in origin.requests] == ["/admitted/1", "/admitted/2"]
