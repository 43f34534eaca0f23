"""Slow and silent clients (slowloris): `forward.header_timeout` bounds how long a request head may take, and a
thousand clients dribbling heads do not keep the proxy from serving everyone else.

How much they delay normal requests (p99 with and without them, in one run) is measured by bench/slowloris.py;
here the behaviour a user relies on is checked: every slow client gets its 408 and its close, on time, and normal
requests are all served meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource

import pytest

from tests.helpers import http
from tests.helpers.origin import RawOrigin
from tests.helpers.proxy_process import ProxyFactory

pytestmark = pytest.mark.asyncio


async def expect_408(reader: asyncio.StreamReader, timeout: float) -> None:
    response = await http.read_response(reader, timeout=timeout)
    assert response.status == 408, response
    assert b"forward.header_timeout" in response.body
    await http.expect_eof(reader, timeout=timeout)


@pytest.mark.parametrize("sent", [b"", b"GET http://127.0.0.1:1/slow HTTP/1.1\r\nHost: h\r\nX-Slow: "])
async def test_head_not_complete_within_header_timeout_is_408(proxy_factory: ProxyFactory, sent: bytes) -> None:
    """A client that sends nothing, or part of a head, then waits: 408 and a close once header_timeout (0.5 s) is
    over, well before idle_timeout (15 s) would have closed it."""
    proxy = proxy_factory({"forward": {"header_timeout": 0.5}})
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(sent)
        await expect_408(reader, timeout=10)  # a 408 naming header_timeout: an idle close would send nothing
    finally:
        await http.close_writer(writer)


async def test_dribbled_head_is_timed_from_its_first_byte(proxy_factory: ProxyFactory, raw_origin: RawOrigin) -> None:
    """After a first request, the connection idles under idle_timeout, not header_timeout; a next head that starts
    and then dribbles gets its 408 (with bytes still arriving: a dribble does not reset the clock)."""
    proxy = proxy_factory({"forward": {"header_timeout": 0.6, "idle_timeout": 30.0}})
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(http.get(raw_origin.url("/first")))
        assert (await http.read_response(reader)).body == b"ok /first"
        # Idle for longer than the header timeout, measured by the proxy's own answer to another connection.
        other = await http.exchange(proxy.port, b"")  # nothing sent: answered 408 after header_timeout
        assert other.status == 408
        assert not reader.at_eof()
        head = http.get(raw_origin.url("/dribbled"))
        answer = asyncio.ensure_future(expect_408(reader, timeout=10))
        for byte in head[:-4]:
            if answer.done():
                break
            writer.write(bytes([byte]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(answer), 0.05)  # a byte every 50 ms, or the answer
        await answer
    finally:
        await http.close_writer(writer)
    assert [r.target for r in raw_origin.requests] == [b"/first"]


async def test_an_answered_client_gets_no_408_after_its_answer(proxy_factory: ProxyFactory) -> None:
    """A malformed head is answered 400 at once; the lingering close that follows (2 s, longer than this
    header_timeout) ends in a plain close, with no 408 written after the answer (nor an error in the log: the
    teardown checks that)."""
    proxy = proxy_factory({"forward": {"header_timeout": 0.3}})
    reader, writer = await http.open_raw(proxy.port)
    try:
        writer.write(b"\x00garbage that is no request head")
        response = await http.read_response(reader)
        assert response.status == 400
        await http.expect_eof(reader)
    finally:
        await http.close_writer(writer)


async def test_a_head_sent_slowly_but_in_time_is_served(proxy_factory: ProxyFactory, raw_origin: RawOrigin) -> None:
    proxy = proxy_factory({"forward": {"header_timeout": 5.0}})
    reader, writer = await http.open_raw(proxy.port)
    try:
        for part in http.get(raw_origin.url("/in-time")).split(b"\r\n"):
            writer.write(part + b"\r\n" if part else b"\r\n")
            await writer.drain()
        response = await http.read_response(reader)
    finally:
        await http.close_writer(writer)
    assert response.body == b"ok /in-time"


SLOW_CLIENTS = 1000


@pytest.mark.slow
async def test_a_thousand_dribbling_clients_do_not_stop_normal_requests(
    proxy_factory: ProxyFactory, raw_origin: RawOrigin
) -> None:
    """1,000 connections each dribble a request head, a byte every half second; meanwhile normal requests on
    other connections are all answered, and every dribbler gets its 408 and its close at the header timeout."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * SLOW_CLIENTS + 256
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))  # the proxy inherits it
    proxy = proxy_factory({"forward": {"header_timeout": 3.0}})
    head = http.get(raw_origin.url("/never"))
    slow = [await http.open_raw(proxy.port) for _ in range(SLOW_CLIENTS)]
    answers = [asyncio.ensure_future(expect_408(reader, timeout=20)) for reader, _ in slow]
    stop = asyncio.Event()

    async def dribble() -> None:
        for byte in head[:-4]:
            for _, writer in slow:
                writer.write(bytes([byte]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            if stop.is_set():
                return

    dribbler = asyncio.ensure_future(dribble())
    try:
        served = 0
        while not all(a.done() for a in answers):
            response = await http.exchange(proxy.port, http.get(raw_origin.url(f"/normal/{served}")), timeout=5)
            assert response.status == 200
            served += 1
        await asyncio.gather(*answers)  # each: 408, then the close
    finally:
        stop.set()
        await dribbler
        for _, writer in slow:
            writer.close()
    assert served > 10
    assert all(r.target.startswith(b"/normal/") for r in raw_origin.requests)
