"""Plain-HTTP forwarding through the real proxy: what the origin receives and which trace it continues.

Every test checks at the origin that the request went through the proxy: the proxy writes `sentry-trace` and
`baggage` (or, where it must not, the origin sees the proxy's rewriting of the target and hop-by-hop headers).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

import aiohttp
import pytest

from tests.helpers import http
from tests.helpers.clients import curl, requests_session
from tests.helpers.origin import Origin, RawConn, RawOrigin, RawOriginFactory
from tests.helpers.proxy_process import DSN, ENVIRONMENT, RELEASE, ProxyFactory, ProxyProcess
from tests.helpers.trace import (
    baggage_members,
    parse_sentry_trace,
    sentry_members,
)

pytestmark = pytest.mark.asyncio

INCOMING_TRACE = "771a43a4192642f0b136d5159a501700"
INCOMING_SPAN = "b1a0f6e2c3d4e5f6"
INCOMING_DSC = (
    "sentry-trace_id=771a43a4192642f0b136d5159a501700,sentry-public_key=49d0f7386ad645858ae85020e393bef3,"
    "sentry-sample_rate=0.25,sentry-sampled=true,sentry-sample_rand=0.123456,sentry-environment=upstream"
)


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [
        (b"/", b"/"),
        (b"/a/b/c.txt", b"/a/b/c.txt"),
        (b"/p%20q/%2F%2e/./x?x=1&y=%2F&z=a+b&z=c", b"/p%20q/%2F%2e/./x?x=1&y=%2F&z=a+b&z=c"),
        (b"/search?q=caf%C3%A9&empty=&flag", b"/search?q=caf%C3%A9&empty=&flag"),
        (b"/semi;param=1/%7Euser?", b"/semi;param=1/%7Euser?"),
        (b"", b"/"),
        (b"?only=query", b"/?only=query"),
        (b"/page?q=1#fragment", b"/page?q=1"),
        (b"/long/" + b"segment/" * 500, b"/long/" + b"segment/" * 500),
    ],
    ids=["root", "path", "encoded", "utf8-query", "params", "no-path", "query-only", "fragment", "long"],
)
@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
async def test_origin_receives_origin_form_and_host_from_url(
    proxy: ProxyProcess, raw_origin: RawOrigin, suffix: bytes, expected: bytes, version: bytes
) -> None:
    """An absolute-form request reaches the origin as origin-form (path and query byte for byte, no fragment),
    as HTTP/1.1, with exactly one `Host` taken from the URL authority (not the client's stale Host)."""
    target = b"http://" + raw_origin.authority + suffix
    response = await http.exchange(
        proxy.port,
        b"GET %b HTTP/%b\r\nHost: stale.example:81\r\nConnection: close\r\n\r\n" % (target, version),
    )
    assert response.status == 200, response
    assert response.body == b"ok " + expected
    [request] = raw_origin.requests
    assert request.head.startswith(b"GET %b HTTP/1.1\r\nHost: %b\r\n" % (expected, raw_origin.authority))
    assert request.values(b"host") == [raw_origin.authority]
    request.assert_proxied()


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
async def test_hop_by_hop_headers_removed_end_to_end_headers_kept(
    proxy: ProxyProcess, raw_origin: RawOrigin, version: bytes
) -> None:
    """Hop-by-hop headers (Connection and every header it names, Proxy-Connection, Keep-Alive, TE, Trailer,
    Upgrade, Proxy-Authorization) never reach the origin; end-to-end headers keep their case, order, duplicates
    and values."""
    end_to_end = [
        (b"X-First", b"1"),
        (b"Accept", b"text/plain, */*;q=0.1"),
        (b"X-Dup", b"a"),
        (b"x-dup", b"b"),
        (b"X-MiXeD-CaSe", b"Value With  Spaces"),
        (b"Cookie", b"a=1"),
        (b"Cookie", b"b=2"),
        (b"User-Agent", b"itest/1.0"),
        (b"X-Empty", b""),
        (b"X-Last", b"z"),
    ]
    hop_by_hop = [
        (b"Connection", b"keep-alive, X-Hop-A"),
        (b"X-Hop-A", b"secret-a"),
        (b"connection", b"x-hop-b"),
        (b"X-Hop-B", b"secret-b"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5, max=100"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-Checksum"),
        (b"Upgrade", b"h2c"),
        (b"Proxy-Authorization", b"Basic dXNlcjpwYXNz"),
    ]
    interleaved = [h for pair in zip(end_to_end, hop_by_hop, strict=True) for h in pair]
    lines = b"".join(b"%b: %b\r\n" % h for h in interleaved)
    target = raw_origin.url("/headers").encode()
    reader, writer = await http.open_raw(proxy.port)
    writer.write(b"GET %b HTTP/%b\r\nHost: %b\r\n%b\r\n" % (target, version, raw_origin.authority, lines))
    response = await http.read_response(reader)
    await http.close_writer(writer)
    assert response.status == 200
    [request] = raw_origin.requests
    proxied = {b"host", b"sentry-trace", b"baggage"}
    forwarded = [(n, v) for n, v in request.headers if n.lower() not in proxied]
    assert forwarded == end_to_end
    assert request.values(b"host") == [raw_origin.authority]
    request.assert_proxied()


async def test_response_headers_end_to_end_kept_hop_by_hop_removed(
    proxy: ProxyProcess, raw_origin_factory: RawOriginFactory
) -> None:
    """The client gets the origin's end-to-end response headers in order with case and duplicates; the
    origin's hop-by-hop response headers (Connection and what it names, Keep-Alive, Proxy-Connection) are dropped."""

    async def respond(conn: RawConn) -> None:
        request = await conn.read_request()
        assert request is not None
        await conn.send(
            b"HTTP/1.1 200 OK\r\n"
            b"Set-Cookie: a=1\r\n"
            b"X-Resp-MiXed: v1\r\n"
            b"Connection: X-Resp-Hop\r\n"
            b"set-cookie: b=2\r\n"
            b"X-Resp-Hop: secret\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"Proxy-Connection: keep-alive\r\n"
            b"Content-Length: 4\r\n"
            b"X-Resp-Last: z\r\n\r\nbody"
        )

    origin: RawOrigin = await raw_origin_factory(respond)
    response = await http.exchange(proxy.port, b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % origin.url("/resp").encode())
    assert response.status == 200
    assert response.body == b"body"
    kept = [(n, v) for n, v in response.headers if n.lower() not in (b"connection",)]
    assert kept == [
        (b"Set-Cookie", b"a=1"),
        (b"X-Resp-MiXed", b"v1"),
        (b"set-cookie", b"b=2"),
        (b"Content-Length", b"4"),
        (b"X-Resp-Last", b"z"),
    ]
    origin.requests[0].assert_proxied()


async def test_new_trace_has_valid_headers_and_config_dsc(proxy: ProxyProcess, origin: Origin) -> None:
    """A request without trace headers gets a new sampled trace (rate 1.0): a valid `sentry-trace` ending in -1
    and a `baggage` whose DSC names the same trace, the DSN's public key and org, environment, release and rate;
    every request starts its own trace."""
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.get(origin.url("/new"), proxy=proxy.url) as resp:
                assert resp.status == 200
                await resp.read()
    traces = []
    for record in origin.requests:
        trace = record.assert_proxied()
        assert trace.sampled == "1"
        dsc = sentry_members(record.values("baggage")[0])
        assert dsc["sentry-public_key"] == DSN.split("//")[1].split("@")[0]
        assert dsc["sentry-org_id"] == "42"
        assert dsc["sentry-environment"] == ENVIRONMENT
        assert unquote(dsc["sentry-release"]) == RELEASE  # baggage values are percent-encoded
        assert float(dsc["sentry-sample_rate"]) == 1.0
        assert dsc["sentry-sampled"] == "true"
        assert 0.0 <= float(dsc["sentry-sample_rand"]) < 1.0
        traces.append(trace)
    assert traces[0].trace_id != traces[1].trace_id


@pytest.mark.parametrize(("flag", "expected"), [("-1", "1"), ("-0", "0")])
async def test_client_trace_is_continued(proxy: ProxyProcess, origin: Origin, flag: str, expected: str) -> None:
    """A request carrying a valid `sentry-trace` continues that trace: same trace id and sampling decision, a new
    span id for the proxy's hop (a fresh one per request), the incoming DSC forwarded byte for byte, third-party
    baggage members kept once, and the incoming headers replaced rather than duplicated."""
    headers = {
        "sentry-trace": f"{INCOMING_TRACE}-{INCOMING_SPAN}{flag}",
        "baggage": f"{INCOMING_DSC},other-vendor=abc,team=payments",
    }
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.get(origin.url("/continue"), proxy=proxy.url, headers=headers) as resp:
                assert resp.status == 200
                await resp.read()
    spans = set()
    for record in origin.requests:
        trace = record.assert_proxied()
        assert trace.trace_id == INCOMING_TRACE
        assert trace.span_id != INCOMING_SPAN
        assert trace.sampled == expected
        members = baggage_members(record.values("baggage")[0])
        sentry = ",".join(f"{k}={v}" for k, v in members if k.startswith("sentry-"))
        assert sentry == INCOMING_DSC
        third_party = [(k, v) for k, v in members if not k.startswith("sentry-")]
        assert third_party == [("other-vendor", "abc"), ("team", "payments")]
        spans.add(trace.span_id)
    assert len(spans) == 2


@pytest.mark.parametrize(
    "bad",
    ["not-a-trace", f"{INCOMING_TRACE}-{INCOMING_SPAN}-x", "0" * 32 + "-" + INCOMING_SPAN + "-1", INCOMING_TRACE],
    ids=["garbage", "bad-flag", "zero-trace-id", "no-span"],
)
async def test_invalid_client_trace_starts_a_new_trace(proxy: ProxyProcess, origin: Origin, bad: str) -> None:
    """An invalid incoming `sentry-trace` is not forwarded: the origin sees one valid header of a new trace."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(origin.url("/bad"), proxy=proxy.url, headers={"sentry-trace": bad}) as resp,
    ):
        assert resp.status == 200
    [record] = origin.requests
    trace = record.assert_proxied()
    assert trace.trace_id != INCOMING_TRACE
    assert bad not in record.values("sentry-trace")


async def test_environment_trace_is_continued(proxy_factory: ProxyFactory, origin: Origin) -> None:
    """`SENTRY_TRACE`/`SENTRY_BAGGAGE` in the proxy's environment are the parent of requests without a trace of
    their own; a request's own valid `sentry-trace` still wins."""
    env_trace, env_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    env_dsc = f"sentry-trace_id={env_trace},sentry-public_key=abc123,sentry-sampled=true,sentry-sample_rand=0.5"
    env_proxy: ProxyProcess = proxy_factory(
        env={"SENTRY_TRACE": f"{env_trace}-{env_span}-1", "SENTRY_BAGGAGE": env_dsc}
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(origin.url("/env"), proxy=env_proxy.url) as resp:
            assert resp.status == 200
        own = {"sentry-trace": f"{INCOMING_TRACE}-{INCOMING_SPAN}-1"}
        async with session.get(origin.url("/own"), proxy=env_proxy.url, headers=own) as resp:
            assert resp.status == 200
    from_env, own_trace = origin.requests
    trace = from_env.assert_proxied()
    assert (trace.trace_id, trace.sampled) == (env_trace, "1")
    assert trace.span_id != env_span
    assert sentry_members(from_env.values("baggage")[0])["sentry-sample_rand"] == "0.5"
    trace = own_trace.assert_proxied(dsc=False)
    assert trace.trace_id == INCOMING_TRACE


async def test_non_matching_target_is_forwarded_untouched(proxy_factory: ProxyFactory, raw_origin: RawOrigin) -> None:
    """A URL no `trace_propagation_targets` regex matches keeps the client's trace headers byte for byte and gets
    none added, while still being proxied (origin-form target, hop-by-hop headers removed); a matching URL on the
    same proxy gets trace headers."""
    targets_proxy: ProxyProcess = proxy_factory({"sentry": {"trace_propagation_targets": ["/traced/"]}})
    incoming = b"%b-%b-1" % (INCOMING_TRACE.encode(), INCOMING_SPAN.encode())
    baggage = b"%b,vendor=1" % INCOMING_DSC.encode()
    reader, writer = await http.open_raw(targets_proxy.port)
    for path in (b"/plain/x", b"/traced/x"):
        writer.write(
            b"GET %b HTTP/1.1\r\nHost: h\r\nsentry-trace: %b\r\nbaggage: %b\r\nProxy-Connection: keep-alive\r\n\r\n"
            % (raw_origin.url(path.decode()).encode(), incoming, baggage)
        )
        assert (await http.read_response(reader)).status == 200
    await http.close_writer(writer)
    plain, traced = raw_origin.requests
    assert plain.head.startswith(b"GET /plain/x HTTP/1.1\r\n")
    assert plain.values(b"sentry-trace") == [incoming]
    assert plain.values(b"baggage") == [baggage]
    assert plain.values(b"proxy-connection") == []
    trace = traced.assert_proxied()
    assert trace.trace_id == INCOMING_TRACE
    assert trace.span_id != INCOMING_SPAN


async def _via_curl(proxy: ProxyProcess, url: str, body: bytes) -> tuple[int, bytes]:
    result = await curl(
        "-H", "X-Client: curl", "--data-binary", "@-", "-o", "-", "-w", "\n%{http_code}", url,
        proxy=proxy.url, stdin=body,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    content, _, code = result.stdout.rpartition(b"\n")
    return int(code), content


async def _via_requests(proxy: ProxyProcess, url: str, body: bytes) -> tuple[int, bytes]:
    def call() -> tuple[int, bytes]:
        with requests_session(proxy.url) as session:
            resp = session.post(url, data=body, headers={"X-Client": "requests"}, timeout=30)
            return resp.status_code, resp.content

    return await asyncio.to_thread(call)


async def _via_aiohttp(proxy: ProxyProcess, url: str, body: bytes) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, proxy=proxy.url, headers={"X-Client": "aiohttp"}) as resp,
    ):
        return resp.status, await resp.read()


Client = Callable[[ProxyProcess, str, bytes], Awaitable[tuple[int, bytes]]]


@pytest.mark.parametrize("client", [_via_curl, _via_requests, _via_aiohttp], ids=["curl", "requests", "aiohttp"])
async def test_real_clients_are_proxied(proxy: ProxyProcess, origin: Origin, client: Client) -> None:
    """curl -x, requests with proxies= and aiohttp with proxy= all reach the origin through the proxy with their
    method, query, headers and body intact, and get the origin's response back."""
    body = b"payload from the client \x00\xff" * 100
    status, content = await client(proxy, origin.url("/clients/x?a=1&b=%20"), body)
    assert status == 200
    assert content == f"ok {hashlib.sha256(body).hexdigest()}".encode()
    [record] = origin.requests
    assert (record.method, record.raw_path) == ("POST", "/clients/x?a=1&b=%20")
    assert record.body == body
    assert record.header("X-Client") is not None
    assert record.header("Host") == origin.authority
    record.assert_proxied()


async def test_org_mismatch_starts_a_new_trace(proxy: ProxyProcess, origin: Origin) -> None:
    """An incoming trace from another Sentry organization (its DSC names org 99, the proxy's DSN org 42) is not
    continued: the origin sees a new trace with the proxy's own DSC."""
    headers = {
        "sentry-trace": f"{INCOMING_TRACE}-{INCOMING_SPAN}-1",
        "baggage": f"sentry-trace_id={INCOMING_TRACE},sentry-org_id=99,sentry-sampled=true",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.get(origin.url("/org"), proxy=proxy.url, headers=headers) as resp,
    ):
        assert resp.status == 200
    [record] = origin.requests
    trace = record.assert_proxied()
    assert trace.trace_id != INCOMING_TRACE
    assert sentry_members(record.values("baggage")[0])["sentry-org_id"] == "42"


async def test_deferred_sampling_without_a_rate(proxy_factory: ProxyFactory, origin: Origin) -> None:
    """Without traces_sample_rate the proxy leaves the sampling decision to the next service: `sentry-trace`
    has no sampled flag and the DSC has no `sentry-sampled`."""
    deferred = proxy_factory({"sentry": {"traces_sample_rate": None}})
    async with (
        aiohttp.ClientSession() as session,
        session.get(origin.url("/deferred"), proxy=deferred.url) as resp,
    ):
        assert resp.status == 200
    [record] = origin.requests
    trace = record.assert_proxied()
    assert trace.sampled is None
    dsc = sentry_members(record.values("baggage")[0])
    assert "sentry-sampled" not in dsc
    assert "sentry-sample_rate" not in dsc


async def test_traceparent_written_and_read_when_enabled(proxy_factory: ProxyFactory, origin: Origin) -> None:
    """With propagate_traceparent the origin also gets a W3C `traceparent` naming the same trace and span as
    `sentry-trace`, and a request that carries only a `traceparent` is continued from it."""
    w3c = proxy_factory({"sentry": {"propagate_traceparent": True}})
    incoming = f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01"
    async with aiohttp.ClientSession() as session:
        async with session.get(origin.url("/w3c-new"), proxy=w3c.url) as resp:
            assert resp.status == 200
        async with session.get(origin.url("/w3c-in"), proxy=w3c.url, headers={"traceparent": incoming}) as resp:
            assert resp.status == 200
    for record in origin.requests:
        trace = parse_sentry_trace(record.values("sentry-trace")[0])
        assert record.values("traceparent") == [f"00-{trace.trace_id}-{trace.span_id}-01"]
    continued = parse_sentry_trace(origin.requests[1].values("sentry-trace")[0])
    assert continued.trace_id == INCOMING_TRACE
    assert continued.span_id != INCOMING_SPAN


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [
        pytest.param(b"", b"*", id="empty-path"),
        pytest.param(b"/", b"/", id="slash"),
    ],
)
async def test_options_with_empty_path_becomes_asterisk(
    proxy: ProxyProcess, raw_origin: RawOrigin, suffix: bytes, expected: bytes
) -> None:
    """`OPTIONS http://host:port` (no path) asks about the server as a whole: the origin must get
    `OPTIONS * HTTP/1.1`; with an explicit `/` path it gets `/`."""
    target = b"http://" + raw_origin.authority + suffix
    response = await http.exchange(proxy.port, b"OPTIONS %b HTTP/1.1\r\nHost: h\r\n\r\n" % target)
    assert response.status == 200
    [request] = raw_origin.requests
    assert request.head.startswith(b"OPTIONS %b HTTP/1.1\r\n" % expected)


async def test_trace_headers_in_any_case_and_split_baggage(proxy: ProxyProcess, raw_origin: RawOrigin) -> None:
    """Trace headers are matched case-insensitively and a DSC split over two `baggage` headers is read whole: the
    origin gets one `sentry-trace` and one `baggage`, never the client's copies next to the proxy's."""
    dsc_first, dsc_second = INCOMING_DSC.split(",sentry-sampled=")
    response = await http.exchange(
        proxy.port,
        b"GET %b HTTP/1.1\r\nHost: h\r\nSentry-Trace: %b-%b-1\r\n"
        b"BAGGAGE: %b\r\nBaggage: sentry-sampled=%b,vendor=v\r\n\r\n"
        % (
            raw_origin.url("/case").encode(),
            INCOMING_TRACE.encode(),
            INCOMING_SPAN.encode(),
            dsc_first.encode(),
            dsc_second.encode(),
        ),
    )
    assert response.status == 200
    [request] = raw_origin.requests
    trace = request.assert_proxied()
    assert trace.trace_id == INCOMING_TRACE
    [baggage] = request.values(b"baggage")
    members = baggage_members(baggage.decode())
    assert ",".join(f"{k}={v}" for k, v in members if k.startswith("sentry-")) == INCOMING_DSC
    assert [(k, v) for k, v in members if not k.startswith("sentry-")] == [("vendor", "v")]
