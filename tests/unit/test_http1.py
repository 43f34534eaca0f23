"""proxy.server.http1: the sans-I/O HTTP/1 head rewriting, with plain data (no sockets).

In the style of h11 / mitmproxy tests: each test scripts the parsed input (method, target, header list, or the raw
response head) and asserts the exact bytes and plan the module produces.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import proxy.tracing.propagator
from proxy.server.http1 import (
    ORIGIN_FORM_HELP,
    Framing,
    PlanCache,
    RequestPlan,
    RequestPolicy,
    RequestRejected,
    ResponsePlan,
    error_response,
    plan_connect,
    plan_request,
    plan_response,
    plan_switching_protocols,
)
from proxy.tracing import Carrier, Decision, PropagationConfig, Propagator, TraceSource
from tests.helpers.ids import CountingIds

DSN = "https://abc123@o42.ingest.sentry.io/7"
# Only URLs containing "api.example" get trace headers.
TARGETS = [r"api\.example"]

# What a fresh propagator (CountingIds) decides for a request without a trace of its own.
NEW_TRACE_ID = "00000000000000000000000000000001"
NEW_SPAN_ID = "0000000000000002"
NEW_SENTRY_TRACE = f"{NEW_TRACE_ID}-{NEW_SPAN_ID}-1"
NEW_BAGGAGE = (
    f"sentry-trace_id={NEW_TRACE_ID},sentry-public_key=abc123,sentry-org_id=42,sentry-environment=production,"
    "sentry-sample_rate=1.0,sentry-sampled=true,sentry-sample_rand=0.250000"
)
NEW_TRACEPARENT = f"00-{NEW_TRACE_ID}-{NEW_SPAN_ID}-01"
NEW_TRACE_LINES = b"sentry-trace: %s\r\nbaggage: %s\r\n" % (NEW_SENTRY_TRACE.encode(), NEW_BAGGAGE.encode())

# A trace a client asks to continue.
IN_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
IN_SENTRY_TRACE = f"{IN_TRACE_ID}-b7ad6b7169203331-1"
IN_BAGGAGE = f"sentry-trace_id={IN_TRACE_ID},sentry-sample_rand=0.5"

HOP_BY_HOP = (
    b"connection",
    b"proxy-connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authorization",
    b"proxy-authenticate",
)


def make_propagator(*, targets: Sequence[str] = TARGETS, traceparent: bool = False) -> Propagator:
    config = PropagationConfig.from_options(
        dsn=DSN,
        environment="production",
        release="",
        traces_sample_rate=1.0,
        trace_propagation_targets=targets,
        strict_trace_continuation=False,
        org_id="",
        propagate_traceparent=traceparent,
    )
    return Propagator(config, CountingIds())


def make_policy(
    *, targets: Sequence[str] = TARGETS, traceparent: bool = False, connect_ports: Sequence[int] = (443,)
) -> RequestPolicy:
    return RequestPolicy.create(make_propagator(targets=targets, traceparent=traceparent), connect_ports)


def request(
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    method: bytes = b"GET",
    http11: bool = True,
    keep_alive: bool = True,
    upgrade: bool = False,
    policy: RequestPolicy | None = None,
    host: bool = True,
    cache: PlanCache | None = None,
) -> RequestPlan:
    """plan_request with a client `Host: client.invalid` line first unless `host=False`."""
    if host:
        headers = [(b"Host", b"client.invalid"), *headers]
    policy = policy or make_policy()
    return plan_request(method, target, http11, keep_alive, upgrade, headers, policy, frozenset(), cache)


def rejected(target: bytes, headers: Sequence[tuple[bytes, bytes]] = (), **kwargs: object) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        request(target, headers, **kwargs)  # type: ignore[arg-type]
    return info.value


def field_lines(head: bytes) -> list[bytes]:
    """The field lines of a head (without the start line and the empty line)."""
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")[1:]


def names(head: bytes) -> list[bytes]:
    return [line.partition(b":")[0].lower() for line in field_lines(head)]


# ---------------------------------------------------------------------------------------------------------------
# plan_request: the target
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path", "host_header", "host", "port"),
    [
        (b"http://example.com/a/b?x=1&y=%20", b"/a/b?x=1&y=%20", b"example.com", "example.com", 80),
        (b"http://example.com", b"/", b"example.com", "example.com", 80),
        (b"http://example.com/", b"/", b"example.com", "example.com", 80),
        (b"http://example.com?q", b"/?q", b"example.com", "example.com", 80),
        (b"http://example.com?a/b", b"/?a/b", b"example.com", "example.com", 80),
        (b"http://example.com/p#frag", b"/p", b"example.com", "example.com", 80),
        (b"http://example.com/p?q=1#frag?x/y", b"/p?q=1", b"example.com", "example.com", 80),
        (b"http://example.com?q#f", b"/?q", b"example.com", "example.com", 80),
        (b"http://example.com/%7Euser//x/./../y;p?a=b/c&&d=%2F", b"/%7Euser//x/./../y;p?a=b/c&&d=%2F", None, None, 80),
        (b"http://example.com:8080/x", b"/x", b"example.com:8080", "example.com", 8080),
        (b"http://example.com:1/", b"/", b"example.com:1", "example.com", 1),
        (b"http://example.com:65535/", b"/", b"example.com:65535", "example.com", 65535),
        (b"http://example.com:080/", b"/", b"example.com:080", "example.com", 80),
        (b"HTTP://Example.COM/X", b"/X", b"Example.COM", "Example.COM", 80),
        (b"hTtP://example.com/", b"/", b"example.com", "example.com", 80),
        (b"http://[::1]:8080/x", b"/x", b"[::1]:8080", "::1", 8080),
        (b"http://[::1]/x", b"/x", b"[::1]", "::1", 80),
        (b"http://[2001:db8::7]?q", b"/?q", b"[2001:db8::7]", "2001:db8::7", 80),
        (b"http://10.0.0.1:3000/v1", b"/v1", b"10.0.0.1:3000", "10.0.0.1", 3000),
    ],
)
def test_absolute_form_becomes_origin_form(
    target: bytes, path: bytes, host_header: bytes | None, host: str | None, port: int
) -> None:
    policy, cache = make_policy(targets=[]), PlanCache()
    host_header = host_header or b"example.com"
    for _ in ("new authority", "cached authority"):  # the cache must not change where the path starts
        plan = request(target, policy=policy, cache=cache)
        assert plan.head == b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host_header)
        assert (plan.host, plan.port) == (host or "example.com", port)
    assert list(cache.authorities) == [host_header]


def test_cached_authority_does_not_swallow_a_query_or_fragment() -> None:
    policy, cache = make_policy(targets=[]), PlanCache()
    request(b"http://example.com/", policy=policy, cache=cache)
    for target, path in ((b"http://example.com?a/b", b"/?a/b"), (b"http://example.com#f/x", b"/")):
        plan = request(target, policy=policy, cache=cache)
        assert plan.head == b"GET %s HTTP/1.1\r\nHost: example.com\r\n\r\n" % path
    assert list(cache.authorities) == [b"example.com"]


def test_host_line_comes_from_the_target_not_the_client() -> None:
    """RFC 9112 §3.2.2: a proxy replaces Host with the authority of the absolute-form target."""
    headers = [(b"HOST", b"evil.test"), (b"Accept", b"*/*")]
    plan = plan_request(b"GET", b"http://origin.test:81/p", True, True, False, headers, make_policy(targets=[]))
    assert plan.head == b"GET /p HTTP/1.1\r\nHost: origin.test:81\r\nAccept: */*\r\n\r\n"
    assert (plan.host, plan.port) == ("origin.test", 81)
    assert b"evil" not in plan.head


def test_method_and_plan_fields_pass_through() -> None:
    plan = request(
        b"http://example.com/x", method=b"HEAD", http11=False, keep_alive=False, policy=make_policy(targets=[])
    )
    assert plan.head.startswith(b"HEAD /x HTTP/1.1\r\n")
    assert (plan.method_is_head, plan.http11, plan.keep_alive, plan.upgrade) == (True, False, False, False)
    assert plan.body is Framing.NONE
    plan = request(b"http://example.com/x", method=b"PURGE", policy=make_policy(targets=[]))
    assert plan.head.startswith(b"PURGE /x HTTP/1.1\r\n")
    assert (plan.method_is_head, plan.http11, plan.keep_alive) == (False, True, True)
    # Only the exact method HEAD has no response body.
    assert request(b"http://example.com/", method=b"head").method_is_head is False


@pytest.mark.parametrize("target", [b"https://example.com/", b"HTTPS://example.com:443/x", b"hTTps://e"])
def test_https_target_is_refused_with_connect_hint(target: bytes) -> None:
    err = rejected(target)
    assert err.status == 400
    assert "CONNECT" in err.message
    assert err.proxy_error == "http_request_error"


@pytest.mark.parametrize("target", [b"/x", b"/", b"/index.html?q=1", b"*"])
def test_origin_form_is_refused_with_help(target: bytes) -> None:
    err = rejected(target)
    assert (err.status, err.message) == (400, ORIGIN_FORM_HELP)
    assert "http_proxy" in err.message and "CONNECT" in err.message


@pytest.mark.parametrize("target", [b"ftp://example.com/", b"example.com:80", b"wsx://example.com/", b"http:/x", b""])
def test_other_targets_are_refused(target: bytes) -> None:
    err = rejected(target)
    assert err.status == 400
    assert "absolute http://" in err.message


@pytest.mark.parametrize(
    ("target", "words"),
    [
        (b"http://user:pw@example.com/", "user info"),
        (b"http://user@example.com/", "user info"),
        (b"http://@example.com/", "user info"),
        (b"http:///x", "no host"),
        (b"http://?q", "no host"),
        (b"http://example.com:0/", "invalid port"),
        (b"http://example.com:65536/", "invalid port"),
        (b"http://example.com:99999/", "invalid port"),
        (b"http://example.com:123456/", "invalid port"),
        (b"http://example.com:/", "empty port"),
        (b"http://example.com:8x/", "invalid port"),
        (b"http://example.com:-1/", "invalid port"),
        (b"http://example.com:+80/", "invalid port"),
        (b"http://example.com: 80/", "invalid port"),
        (b"http://example.com:80:80/", "invalid port"),
        (b"http://[::1/", "malformed IPv6"),
        (b"http://[::1]x/", "malformed authority"),
        (b"http://[::1]:/", "port"),
        (b"http://[]:80/", "invalid host"),
        (b"http://::1/", "invalid host"),
        (b"http://:80/", "invalid host"),
        (b"http://exa%6dple.com/", "invalid host"),
        (b"http://exa\\mple.com/", "invalid host"),
        (b"http://exa mple.com/", "invalid host"),
        (b"http://exa\x7fmple.com/", "invalid host"),
        (b"http://ex\xc3\xa4mple.com/", "not ASCII"),
        (b"http://" + b"a" * 64 + b".example/", "a label longer than 63"),
        (b"http://" + b"a" * 300 + b".example:8080/", "longer than 253"),
        (b"http://" + b"abcdefgh." * 28 + b"example/", "longer than 253"),
        (b"http://a..example/", "empty label"),
        (b"http://.example/", "empty label"),
        (b"http://example../", "empty label"),
    ],
)
def test_bad_authority_is_refused(target: bytes, words: str) -> None:
    err = rejected(target)
    assert err.status == 400
    assert words in err.message


@pytest.mark.parametrize(
    "host", [b"a" * 63 + b".example", b"example.com.", b"abcdefgh." * 27 + b"example", b"my_host.internal", b"x"]
)
def test_longest_and_odd_but_resolvable_host_names_are_accepted(host: bytes) -> None:
    """The limits are the resolver's (63 per label, 253 in all, a trailing dot allowed), nothing stricter."""
    plan = request(b"http://%b:81/" % host)
    assert plan.origin == (host.decode(), 81)
    assert host.decode().encode("idna")  # what the resolver does with it, and the reason for the limits


def test_connect_to_a_host_no_resolver_can_encode_is_refused() -> None:
    with pytest.raises(RequestRejected, match="a label longer than 63") as info:
        plan_connect(b"a" * 64 + b".example:443", frozenset())
    assert info.value.status == 400


def test_bad_authority_is_not_cached() -> None:
    policy, cache = make_policy(), PlanCache()
    for _ in range(2):
        with pytest.raises(RequestRejected):
            request(b"http://example.com:0/", policy=policy, cache=cache)
    assert cache.authorities == {}
    request(b"http://example.com:81/", policy=policy, cache=cache)
    request(b"http://example.com:81/other", policy=policy, cache=cache)
    assert cache.authorities == {b"example.com:81": ("example.com", 81)}


def test_authority_cache_is_bounded() -> None:
    policy, cache = make_policy(targets=[]), PlanCache()
    for i in range(5000):
        plan = request(b"http://h%d.test/" % i, policy=policy, cache=cache)
        assert (plan.host, plan.port) == (f"h{i}.test", 80)
        assert len(cache.authorities) <= 4096
    plan = request(b"http://h1.test:90/", policy=policy, cache=cache)
    assert (plan.host, plan.port) == ("h1.test", 90)


# ---------------------------------------------------------------------------------------------------------------
# plan_request: header fields
# ---------------------------------------------------------------------------------------------------------------


def test_end_to_end_fields_keep_order_case_and_duplicates() -> None:
    headers = [
        (b"Accept", b"text/html"),
        (b"x-Custom-CASE", b"  odd   spacing "),
        (b"Cookie", b"a=1"),
        (b"ACCEPT-encoding", b"gzip"),
        (b"Cookie", b"b=2"),
        (b"Authorization", b"Bearer t"),
        (b"X-Empty", b""),
        (b"X-Latin", b"caf\xe9"),
    ]
    plan = request(b"http://example.com/x", headers, policy=make_policy(targets=[]))
    assert plan.head == (
        b"GET /x HTTP/1.1\r\nHost: example.com\r\n"
        b"Accept: text/html\r\n"
        b"x-Custom-CASE:   odd   spacing \r\n"
        b"Cookie: a=1\r\n"
        b"ACCEPT-encoding: gzip\r\n"
        b"Cookie: b=2\r\n"
        b"Authorization: Bearer t\r\n"
        b"X-Empty: \r\n"
        b"X-Latin: caf\xe9\r\n"
        b"\r\n"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"Connection", b"keep-alive"),
        (b"connection", b"close"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5, max=100"),
        (b"TE", b"trailers"),
        (b"te", b"gzip"),
        (b"Trailer", b"X-Checksum"),
        (b"Upgrade", b"websocket"),
        (b"Proxy-Authorization", b"Basic dXNlcjpwdw=="),
        (b"PROXY-AUTHORIZATION", b"Basic dXNlcjpwdw=="),
        (b"Proxy-Authenticate", b"Basic realm=x"),
    ],
)
def test_hop_by_hop_request_fields_are_removed(name: bytes, value: bytes) -> None:
    plan = request(b"http://example.com/", [(b"A", b"1"), (name, value), (b"B", b"2")], policy=make_policy(targets=[]))
    assert plan.head == b"GET / HTTP/1.1\r\nHost: example.com\r\nA: 1\r\nB: 2\r\n\r\n"
    assert plan.upgrade is False


def test_fields_named_in_connection_are_removed_case_insensitively() -> None:
    headers = [
        (b"Connection", b"close, X-Secret"),
        (b"x-secret", b"1"),
        (b"X-SECRET", b"2"),
        (b"X-Secret-Not", b"3"),
        (b"X-Secre", b"4"),
        (b"Accept", b"*/*"),
    ]
    plan = request(b"http://example.com/", headers, keep_alive=False, policy=make_policy(targets=[]))
    assert plan.head == b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Secret-Not: 3\r\nX-Secre: 4\r\nAccept: */*\r\n\r\n"


def test_fields_named_in_proxy_connection_and_several_connection_lines_are_removed() -> None:
    headers = [
        (b"X-A", b"a"),
        (b"Proxy-Connection", b"keep-alive,X-B"),
        (b"X-B", b"b"),
        (b"Connection", b" , x-c ,,"),
        (b"Connection", b"Upgrade"),
        (b"x-C", b"c"),
        (b"X-D", b"d"),
        (b"Upgrade", b"h2c"),
    ]
    plan = request(b"http://example.com/", headers, policy=make_policy(targets=[]))
    assert plan.head == b"GET / HTTP/1.1\r\nHost: example.com\r\nX-A: a\r\nX-D: d\r\n\r\n"
    assert plan.upgrade is False


def test_connection_option_tokens_do_not_drop_fields() -> None:
    """close / keep-alive / upgrade are options; naming Host or Content-Length must not lose them."""
    headers = [
        (b"Connection", b"keep-alive, Host, Content-Length"),
        (b"Content-Length", b"3"),
        (b"X-Keep", b"1"),
    ]
    plan = request(b"http://example.com/", headers, method=b"POST", policy=make_policy(targets=[]))
    assert plan.head == b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\nX-Keep: 1\r\n\r\n"
    assert plan.body is Framing.LENGTH


@pytest.mark.parametrize(("value", "framing"), [(b"5", Framing.LENGTH), (b"0", Framing.NONE), (b"100", Framing.LENGTH)])
def test_content_length_is_kept_in_place(value: bytes, framing: Framing) -> None:
    headers = [(b"Content-Type", b"text/plain"), (b"content-length", value), (b"X-After", b"1")]
    plan = request(b"http://example.com/up", headers, method=b"POST", policy=make_policy(targets=[]))
    assert plan.head == (
        b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Type: text/plain\r\n"
        b"content-length: %s\r\nX-After: 1\r\n\r\n" % value
    )
    assert plan.body is framing


@pytest.mark.parametrize(
    "value", [b"9223372036854775808", b"18446744073709551615", b"000000000000000000009223372036854775808"]
)
def test_content_length_past_signed_64_bits_is_refused(value: bytes) -> None:
    """llhttp takes lengths up to 2^64-1; an origin that reads them into a signed 64-bit integer would see a
    negative or wrapped length, another framing than the proxy's: refused."""
    err = rejected(b"http://api.example/", [(b"Content-Length", value)], method=b"POST")
    assert (err.status, err.message) == (400, "Content-Length larger than 2^63-1")


def test_content_length_up_to_signed_64_bits_is_kept() -> None:
    plan = request(b"http://api.example/", [(b"Content-Length", b"9223372036854775807")], method=b"POST")
    assert b"\r\nContent-Length: 9223372036854775807\r\n" in plan.head


def test_upgrade_in_an_http10_request_is_ignored() -> None:
    """RFC 9110 §7.8: a server ignores Upgrade in an HTTP/1.0 request; the proxy does not pass one on."""
    headers = [(b"Connection", b"upgrade, keep-alive"), (b"Upgrade", b"websocket")]
    plan = request(b"http://api.example/", headers, http11=False, upgrade=True, host=False)
    assert not plan.upgrade
    assert b"pgrade" not in plan.head


def test_chunked_request_gets_the_proxys_own_transfer_encoding_line() -> None:
    headers = [(b"Transfer-Encoding", b"chunked"), (b"Content-Type", b"application/json"), (b"X-After", b"1")]
    plan = request(b"http://example.com/up", headers, method=b"POST", policy=make_policy(targets=[]))
    assert plan.head == (
        b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/json\r\nX-After: 1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    assert plan.body is Framing.CHUNKED
    plan = request(b"http://example.com/up", [(b"transfer-encoding", b"Chunked")], method=b"POST")
    assert plan.head.count(b"Transfer-Encoding: ") == 1  # the proxy's own line, with the client's codings
    assert b"transfer-encoding" not in plan.head


def test_request_transfer_coding_before_chunked_is_not_lost() -> None:
    headers = [(b"Transfer-Encoding", b"gzip, chunked")]
    try:
        plan = request(b"http://example.com/up", headers, method=b"POST", policy=make_policy(targets=[]))
    except RequestRejected as err:  # refusing (e.g. 501) would be fine too
        assert err.status in (400, 501)
        return
    assert b"Transfer-Encoding: gzip, chunked\r\n" in plan.head


def test_transfer_encoding_on_http10_is_refused() -> None:
    err = rejected(b"http://example.com/", [(b"Transfer-Encoding", b"chunked")], http11=False)
    assert err.status == 400
    assert "HTTP/1.0" in err.message


def test_missing_host_on_http11_is_refused() -> None:
    err = rejected(b"http://example.com/", [(b"Accept", b"*/*")], host=False)
    assert err.status == 400
    assert "Host" in err.message


def test_missing_host_on_http10_is_allowed() -> None:
    plan = request(b"http://example.com:8000/", [(b"Accept", b"*/*")], host=False, http11=False)
    assert plan.head.startswith(b"GET / HTTP/1.1\r\nHost: example.com:8000\r\nAccept: */*\r\n")
    assert plan.http11 is False


@pytest.mark.parametrize("http11", [True, False])
def test_two_host_fields_are_refused(http11: bool) -> None:
    err = rejected(b"http://example.com/", [(b"HOST", b"client.invalid")], http11=http11)
    assert err.status == 400
    assert "Host" in err.message


def test_expect_is_kept_on_http11_and_dropped_on_http10() -> None:
    headers = [(b"Content-Length", b"10"), (b"Expect", b"100-continue"), (b"X-After", b"1")]
    policy = make_policy(targets=[])
    plan = request(b"http://example.com/", headers, method=b"PUT", policy=policy)
    assert plan.head == (
        b"PUT / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\nExpect: 100-continue\r\nX-After: 1\r\n\r\n"
    )
    plan = request(b"http://example.com/", headers, method=b"PUT", http11=False, policy=policy)
    assert plan.head == b"PUT / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\nX-After: 1\r\n\r\n"


def test_upgrade_request_keeps_the_upgrade_pair() -> None:
    headers = [
        (b"Connection", b"Upgrade"),
        (b"Upgrade", b"websocket"),
        (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        (b"Sec-WebSocket-Version", b"13"),
    ]
    plan = request(b"http://example.com/chat", headers, upgrade=True, policy=make_policy(targets=[]))
    assert plan.head == (
        b"GET /chat HTTP/1.1\r\nHost: example.com\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert plan.upgrade is True


def test_upgrade_flag_without_upgrade_field_is_not_an_upgrade() -> None:
    plan = request(b"http://example.com/", [(b"Connection", b"Upgrade")], upgrade=True, policy=make_policy(targets=[]))
    assert plan.head == b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    assert plan.upgrade is False


def test_upgrade_field_without_upgrade_flag_is_dropped() -> None:
    headers = [(b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c"), (b"HTTP2-Settings", b"AAMAAABkAAQ")]
    plan = request(b"http://example.com/", headers, upgrade=False, policy=make_policy(targets=[]))
    assert plan.head == b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    assert plan.upgrade is False


# ---------------------------------------------------------------------------------------------------------------
# plan_request: trace headers
# ---------------------------------------------------------------------------------------------------------------


def test_matching_target_without_trace_starts_one() -> None:
    plan = request(b"http://api.example/v1", [(b"Accept", b"*/*")])
    assert plan.head == b"GET /v1 HTTP/1.1\r\nHost: api.example\r\nAccept: */*\r\n" + NEW_TRACE_LINES + b"\r\n"
    assert plan.decision.source is TraceSource.NEW
    assert (plan.decision.trace_id, plan.decision.span_id, plan.decision.sampled) == (NEW_TRACE_ID, NEW_SPAN_ID, True)


def test_trace_lines_follow_framing_and_upgrade_lines() -> None:
    headers = [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), (b"Transfer-Encoding", b"chunked")]
    plan = request(b"http://api.example/ws", headers, upgrade=True)
    assert plan.head == (
        b"GET /ws HTTP/1.1\r\nHost: api.example\r\nTransfer-Encoding: chunked\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n" + NEW_TRACE_LINES + b"\r\n"
    )


def test_matching_target_continues_the_clients_trace_and_replaces_its_headers() -> None:
    headers = [
        (b"Accept", b"*/*"),
        (b"Sentry-Trace", IN_SENTRY_TRACE.encode()),
        (b"X-Mid", b"1"),
        (b"BAGGAGE", IN_BAGGAGE.encode()),
        (b"baggage", b"vendor=v1"),
        (b"X-End", b"2"),
    ]
    plan = request(b"http://api.example/v1?x=1", headers)
    expected_trace = f"{IN_TRACE_ID}-0000000000000001-1"
    expected_baggage = IN_BAGGAGE + ",vendor=v1"
    assert plan.head == (
        b"GET /v1?x=1 HTTP/1.1\r\nHost: api.example\r\nAccept: */*\r\nX-Mid: 1\r\nX-End: 2\r\n"
        b"sentry-trace: %s\r\nbaggage: %s\r\n\r\n" % (expected_trace.encode(), expected_baggage.encode())
    )
    assert plan.decision.source is TraceSource.REQUEST
    assert plan.decision.trace_id == IN_TRACE_ID
    assert plan.decision.parent_span_id == "b7ad6b7169203331"


def test_decision_is_what_the_propagator_decides_for_the_carrier() -> None:
    """The carrier handed to the propagator: lowercase trace names -> every value in order (latin-1 text)."""
    headers = [
        (b"sentry-trace", b"garbage"),
        (b"Baggage", b"a=1"),
        (b"SENTRY-TRACE", IN_SENTRY_TRACE.encode()),
        (b"baggage", b"sentry-sample_rand=0.5,b=caf\xe9"),
    ]
    plan = request(b"http://api.example/", headers)
    twin = make_propagator()
    carrier: Carrier = {
        "sentry-trace": ["garbage", IN_SENTRY_TRACE],
        "baggage": ["a=1", "sentry-sample_rand=0.5,b=caf\xe9"],
    }
    expected = twin.decide("http://api.example/", carrier)
    assert plan.decision == expected
    lines = field_lines(plan.head)
    assert [line for line in lines if line.lower().startswith(b"sentry-trace:")] == [
        b"sentry-trace: " + expected.sentry_trace.encode()  # type: ignore[union-attr]
    ]
    assert [line for line in lines if line.lower().startswith(b"baggage:")] == [
        b"baggage: " + expected.baggage.encode("latin-1")  # type: ignore[union-attr]
    ]


def test_duplicate_client_sentry_trace_gives_exactly_one() -> None:
    headers = [(b"sentry-trace", IN_SENTRY_TRACE.encode()), (b"sentry-trace", IN_SENTRY_TRACE.encode())]
    plan = request(b"http://api.example/", headers)
    assert names(plan.head).count(b"sentry-trace") == 1
    assert names(plan.head).count(b"baggage") == 1


def test_traceparent_is_replaced_when_enabled() -> None:
    policy = make_policy(traceparent=True)
    headers = [(b"TraceParent", f"00-{IN_TRACE_ID}-b7ad6b7169203331-01".encode()), (b"X-A", b"1")]
    plan = request(b"http://api.example/", headers, policy=policy)
    span = "0000000000000001"
    lines = field_lines(plan.head)
    assert lines[:2] == [b"Host: api.example", b"X-A: 1"]
    assert lines[2] == f"sentry-trace: {IN_TRACE_ID}-{span}-1".encode()
    assert lines[3].startswith(b"baggage: sentry-sample_rand=")
    assert lines[4:] == [f"traceparent: 00-{IN_TRACE_ID}-{span}-01".encode()]
    assert plan.decision.source is TraceSource.TRACEPARENT


def test_new_trace_with_traceparent_enabled() -> None:
    plan = request(b"http://api.example/", policy=make_policy(traceparent=True))
    assert plan.head == (
        b"GET / HTTP/1.1\r\nHost: api.example\r\n"
        + NEW_TRACE_LINES
        + b"traceparent: %s\r\n\r\n" % NEW_TRACEPARENT.encode()
    )


def test_traceparent_is_an_ordinary_field_when_disabled() -> None:
    value = f"00-{IN_TRACE_ID}-b7ad6b7169203331-01".encode()
    plan = request(b"http://api.example/", [(b"traceparent", value)])
    assert plan.head == (
        b"GET / HTTP/1.1\r\nHost: api.example\r\ntraceparent: %s\r\n" % value + NEW_TRACE_LINES + b"\r\n"
    )
    assert plan.decision.source is TraceSource.NEW


class FixedPropagator(Propagator):
    """A real Propagator whose decision is fixed, to reach the header-writing branches a real one rarely takes."""

    __slots__ = ("fixed",)

    def __init__(self, fixed: Decision) -> None:
        super().__init__(make_propagator().config, CountingIds())
        self.fixed = fixed

    def decide_matched(self, request: Carrier) -> Decision:
        return self.fixed


@pytest.mark.skipif(
    not proxy.tracing.propagator.__file__.endswith(".py"),
    reason="the mypyc-compiled Propagator cannot be subclassed here; the interpreted run covers this branch",
)
@pytest.mark.parametrize("baggage", [None, ""])
def test_no_baggage_line_when_the_decision_has_none(baggage: str | None) -> None:
    decision = Decision(TraceSource.REQUEST, IN_TRACE_ID, "1" * 16, "2" * 16, None, "st-value", baggage, None)
    policy = RequestPolicy.create(FixedPropagator(decision), ())
    plan = request(b"http://api.example/", [(b"baggage", b"a=1"), (b"X", b"1")], policy=policy)
    assert plan.head == b"GET / HTTP/1.1\r\nHost: api.example\r\nX: 1\r\nsentry-trace: st-value\r\n\r\n"


def test_non_matching_target_is_untouched() -> None:
    headers = [
        (b"Sentry-Trace", IN_SENTRY_TRACE.encode()),
        (b"baggage", IN_BAGGAGE.encode()),
        (b"traceparent", b"00-whatever"),
        (b"baggage", b"x=1"),
        (b"sentry-trace", b"junk"),
    ]
    for policy in (make_policy(), make_policy(traceparent=True)):
        plan = request(b"http://other.test/v1", headers, policy=policy)
        assert plan.head == (
            b"GET /v1 HTTP/1.1\r\nHost: other.test\r\n"
            b"Sentry-Trace: %s\r\nbaggage: %s\r\ntraceparent: 00-whatever\r\nbaggage: x=1\r\nsentry-trace: junk\r\n\r\n"
            % (IN_SENTRY_TRACE.encode(), IN_BAGGAGE.encode())
        )
        assert plan.decision.source is TraceSource.UNTOUCHED
        assert plan.decision == Decision(TraceSource.UNTOUCHED, None, None, None, None, None, None, None)


@pytest.mark.parametrize(
    ("pattern", "without_port", "with_port"),
    [
        (r"^http://svc\.test/", True, False),
        (r"^http://svc\.test:80/", False, True),
        (r"^http://svc\.test(:80)?/", True, True),
        (r"svc\.test", True, True),
    ],
)
def test_targets_see_the_default_port_only_when_the_client_wrote_it(
    pattern: str, without_port: bool, with_port: bool
) -> None:
    """The URL matched is the one on the request line, as the client (the application) wrote it: sentry-sdk, too,
    matches an absolute URL it is given as it stands, and adds a port to one it builds only when it is not the
    default. So `http://svc.test/x` and `http://svc.test:80/x` are the same origin but not the same text."""
    policy = make_policy(targets=[pattern])
    for target, expected in ((b"http://svc.test/x", without_port), (b"http://svc.test:80/x", with_port)):
        plan = request(target, policy=policy)
        assert plan.origin == ("svc.test", 80)
        assert (plan.decision.source is TraceSource.NEW) is expected, target


def test_targets_match_the_full_url_as_sent() -> None:
    """trace_propagation_targets are searched in the raw absolute-form target, query included."""
    policy = make_policy(targets=[r"^http://svc\.test:8080/api/"])
    assert request(b"http://svc.test:8080/api/x", policy=policy).decision.source is TraceSource.NEW
    assert request(b"http://svc.test/api/x", policy=policy).decision.source is TraceSource.UNTOUCHED
    assert request(b"http://svc.test:8080/web", policy=policy).decision.source is TraceSource.UNTOUCHED


def test_hop_by_hop_connection_still_removed_on_matching_target() -> None:
    headers = [(b"Connection", b"X-Hop"), (b"X-Hop", b"1"), (b"Proxy-Authorization", b"Basic x"), (b"X", b"2")]
    plan = request(b"http://api.example/", headers)
    assert plan.head == b"GET / HTTP/1.1\r\nHost: api.example\r\nX: 2\r\n" + NEW_TRACE_LINES + b"\r\n"


# ---------------------------------------------------------------------------------------------------------------
# plan_response
# ---------------------------------------------------------------------------------------------------------------


def respond(
    status: int,
    head: bytes,
    *,
    request_is_head: bool = False,
    client_http11: bool = True,
    client_keep_alive: bool = True,
    force_close: bool = False,
) -> ResponsePlan:
    return plan_response(
        status,
        head + b"\r\n",  # the head as the listener passes it: through the empty line
        request_is_head=request_is_head,
        client_http11=client_http11,
        client_keep_alive=client_keep_alive,
        force_close=force_close,
    )


def test_content_length_passthrough_keep_alive() -> None:
    plan = respond(200, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n")
    assert plan == ResponsePlan(
        head=b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n",
        upstream_framing=Framing.LENGTH,
        content_length=5,
        dechunk=False,
        close_client=False,
    )


def test_origin_keep_alive_fields_are_removed() -> None:
    head = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\nDate: x\r\n"
    plan = respond(200, head)
    assert plan.head == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: x\r\n\r\n"
    assert (plan.upstream_framing, plan.close_client) == (Framing.LENGTH, False)


def test_usual_head_is_relayed_unchanged() -> None:
    head = b"HTTP/1.1 200 OK\r\nServer: o\r\nContent-Length: 5\r\nConnection: keep-alive\r\nETag: x\r\n\r\n"
    for client_http11 in (True, False):
        plan = plan_response(
            200, head, request_is_head=False, client_http11=client_http11, client_keep_alive=True, force_close=False
        )
        assert plan.head is head  # the I/O layer relays the origin's bytes without a copy
        assert plan == ResponsePlan(head, Framing.LENGTH, 5, False, False)


def test_a_head_seen_again_is_planned_the_same_and_relayed_as_the_new_bytes() -> None:
    """The plans of usual heads are remembered by their bytes: a later response with the same head gets the same
    plan, carrying its own head object (the I/O layer relays the bytes it was given, not a remembered copy)."""
    first = b"HTTP/1.1 200 OK\r\nServer: o\r\nContent-Length: 7\r\nX-Seen: again\r\n\r\n"
    second = bytes(bytearray(first))  # equal bytes, another object
    flags = {"request_is_head": False, "client_http11": True, "client_keep_alive": True, "force_close": False}
    cache = PlanCache()
    plans = [plan_response(200, head, **flags, cache=cache) for head in (first, second)]
    assert first in cache.responses
    assert plans[0] == plans[1] == ResponsePlan(first, Framing.LENGTH, 7, False, False)
    assert plans[0].head is first and plans[1].head is second


@pytest.mark.parametrize(
    ("later", "expected"),
    [
        # A remembered plan must not be given to a response that the same head must not be relayed as:
        # (framing, close the client connection, head relayed unchanged).
        ({"request_is_head": True}, (Framing.NONE, False, True)),  # no body after a HEAD's head
        ({"force_close": True}, (Framing.LENGTH, True, False)),  # the client connection closes after it
        ({"client_keep_alive": False}, (Framing.LENGTH, True, False)),
        ({"client_http11": False}, (Framing.LENGTH, False, False)),  # a 1.0 client is told keep-alive
    ],
)
def test_a_remembered_plan_is_only_for_the_same_kind_of_exchange(
    later: dict[str, bool], expected: tuple[Framing, bool, bool]
) -> None:
    head = b"HTTP/1.1 200 OK\r\nServer: o\r\nContent-Length: 9\r\nX-Kind: %b\r\n\r\n" % ",".join(later).encode()
    usual = {"request_is_head": False, "client_http11": True, "client_keep_alive": True, "force_close": False}
    cache = PlanCache()
    assert plan_response(200, head, **usual, cache=cache).head is head
    assert head in cache.responses
    plan = plan_response(200, head, **{**usual, **later}, cache=cache)
    assert (plan.upstream_framing, plan.close_client, plan.head is head) == expected
    assert plan == plan_response(200, bytes(bytearray(head)), **{**usual, **later}, cache=cache)  # and the same again
    assert plan_response(200, head, **usual) == ResponsePlan(head, Framing.LENGTH, 9, False, False)


def test_remembered_plans_stay_bounded() -> None:
    """Heads that never repeat (a request id in each) must not make the proxy's memory grow."""
    flags = {"request_is_head": False, "client_http11": True, "client_keep_alive": True, "force_close": False}
    cache = PlanCache()
    for i in range(2000):
        head = b"HTTP/1.1 200 OK\r\nX-Request-Id: %d\r\nContent-Length: 1\r\n\r\n" % i
        assert plan_response(200, head, **flags, cache=cache).upstream_framing is Framing.LENGTH
    assert 0 < len(cache.responses) <= 256


def test_long_heads_are_planned_but_not_remembered() -> None:
    """A head longer than usual (here 10 KiB of cookies) is planned every time rather than kept in memory."""
    head = b"HTTP/1.1 200 OK\r\nSet-Cookie: %b\r\nContent-Length: 3\r\n\r\n" % (b"c" * 10240)
    flags = {"request_is_head": False, "client_http11": True, "client_keep_alive": True, "force_close": False}
    cache = PlanCache()
    assert plan_response(200, head, **flags, cache=cache) == ResponsePlan(head, Framing.LENGTH, 3, False, False)
    assert head not in cache.responses


@pytest.mark.parametrize(
    "hop_lines",
    [
        # Only the exact `Connection: keep-alive` line may go out as the proxy's own option; anything more is rewritten.
        b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\n",
        b"Connection: keep-alive-ish\r\n",
        b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n",
        b"Keep-Alive: timeout=5\r\nConnection: keep-alive\r\n",
        b"Connection: keep-alive\r\nTE: trailers\r\n",
        b"Connection: keep-alive\r\nConnection: close\r\n",
    ],
)
def test_keep_alive_line_with_other_hop_fields_is_rewritten(hop_lines: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nServer: o\r\nContent-Length: 5\r\n" + hop_lines + b"ETag: x\r\n\r\n"
    plan = plan_response(
        200, head, request_is_head=False, client_http11=True, client_keep_alive=True, force_close=False
    )
    assert plan.head == b"HTTP/1.1 200 OK\r\nServer: o\r\nContent-Length: 5\r\nETag: x\r\n\r\n"
    assert (plan.upstream_framing, plan.content_length, plan.close_client) == (Framing.LENGTH, 5, False)


def test_keep_alive_line_is_replaced_when_the_client_connection_closes() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
    plan = respond(200, head, force_close=True)
    assert plan.head == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
    plan = respond(200, head, client_keep_alive=False)
    assert plan.head == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"


def test_origin_connection_close_does_not_close_the_client() -> None:
    plan = respond(200, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n")
    assert plan.head == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    assert plan.close_client is False


def test_fields_named_in_origin_connection_are_removed() -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nX-Hop: 1\r\nConnection: close, X-Hop, x-other\r\nContent-Length: 0\r\n"
        b'x-hop: 2\r\nX-Hop-Not: 3\r\nX-OTHER: 4\r\nProxy-Connection: X-Third\r\nX-Third: 5\r\nETag: "e"\r\n'
    )
    plan = respond(200, head)
    assert plan.head == b'HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Hop-Not: 3\r\nETag: "e"\r\n\r\n'


def test_content_length_named_in_connection_keeps_the_client_framing_consistent() -> None:
    plan = respond(200, b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n")
    assert plan.upstream_framing is Framing.LENGTH
    assert b"Content-Length: 5\r\n" in plan.head or plan.close_client


@pytest.mark.parametrize(
    "line",
    [
        b"TE: trailers",
        b"Upgrade: h2c",
        b"Proxy-Authenticate: Basic realm=x",
        b"Proxy-Authorization: x",
        b"Proxy-Connection: keep-alive",
        b"KEEP-ALIVE: max=1",
        b"connection:keep-alive",
    ],
)
def test_hop_by_hop_response_fields_are_removed(line: bytes) -> None:
    plan = respond(200, b"HTTP/1.1 200 OK\r\nA: 1\r\n" + line + b"\r\nContent-Length: 1\r\nB: 2\r\n")
    assert plan.head == b"HTTP/1.1 200 OK\r\nA: 1\r\nContent-Length: 1\r\nB: 2\r\n\r\n"


def test_names_that_only_start_like_hop_by_hop_fields_are_kept() -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nConnection-Id: 7\r\nUpgrade-Insecure-Requests: 1\r\nTE-X: 1\r\nTrailers: x\r\n"
        b"Keep-Alive-X: 1\r\nProxy-Status: origin\r\nX-Connection: close\r\nContent-Length: 1\r\n"
    )
    plan = respond(200, head)
    assert plan.head == head + b"\r\n"


def test_chunked_passes_through_for_http11_clients() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\nVary: Accept\r\n"
    plan = respond(200, head)
    assert plan == ResponsePlan(
        head=b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nVary: Accept\r\nTransfer-Encoding: chunked\r\n\r\n",
        upstream_framing=Framing.CHUNKED,
        content_length=0,
        dechunk=False,
        close_client=False,
    )


def test_chunked_with_other_codings_keeps_them_for_http11_clients() -> None:
    plan = respond(200, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n")
    assert plan.head == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    assert (plan.upstream_framing, plan.dechunk, plan.close_client) == (Framing.CHUNKED, False, False)


def test_chunked_is_decoded_and_close_delimited_for_http10_clients() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n"
    plan = respond(200, head, client_http11=False, client_keep_alive=True)
    assert plan == ResponsePlan(
        head=b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
        upstream_framing=Framing.CHUNKED,
        content_length=0,
        dechunk=True,
        close_client=True,
    )


def test_non_chunked_transfer_coding_is_close_delimited() -> None:
    plan = respond(200, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nX: 1\r\n")
    assert plan.head == b"HTTP/1.1 200 OK\r\nX: 1\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n"
    assert (plan.upstream_framing, plan.dechunk, plan.close_client) == (Framing.CLOSE, False, True)


@pytest.mark.parametrize("client_http11", [True, False])
def test_no_framing_is_close_delimited(client_http11: bool) -> None:
    plan = respond(200, b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n", client_http11=client_http11)
    assert plan == ResponsePlan(
        head=b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n",
        upstream_framing=Framing.CLOSE,
        content_length=0,
        dechunk=False,
        close_client=True,
    )


def test_head_response_has_no_body() -> None:
    plan = respond(200, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n", request_is_head=True)
    assert plan == ResponsePlan(
        head=b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
        upstream_framing=Framing.NONE,
        content_length=1234,
        dechunk=False,
        close_client=False,
    )
    plan = respond(200, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n", request_is_head=True)
    assert plan.head == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert (plan.upstream_framing, plan.dechunk, plan.close_client) == (Framing.NONE, False, False)
    plan = respond(200, b"HTTP/1.1 200 OK\r\nX: 1\r\n", request_is_head=True)
    assert plan.head == b"HTTP/1.1 200 OK\r\nX: 1\r\n\r\n"
    assert (plan.upstream_framing, plan.close_client) == (Framing.NONE, False)


@pytest.mark.parametrize(
    ("status", "head", "out"),
    [
        (204, b"HTTP/1.1 204 No Content\r\nDate: d\r\n", b"HTTP/1.1 204 No Content\r\nDate: d\r\n\r\n"),
        (
            304,
            b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 99\r\n',
            b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 99\r\n\r\n',
        ),
        (304, b"HTTP/1.0 304 Not Modified\r\n", b"HTTP/1.1 304 Not Modified\r\n\r\n"),
    ],
)
def test_204_and_304_have_no_body(status: int, head: bytes, out: bytes) -> None:
    plan = respond(status, head)
    assert (plan.head, plan.upstream_framing, plan.dechunk, plan.close_client) == (out, Framing.NONE, False, False)


@pytest.mark.parametrize(
    ("status", "head", "out"),
    [
        (100, b"HTTP/1.1 100 Continue\r\n", b"HTTP/1.1 100 Continue\r\n\r\n"),
        (
            103,
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nConnection: keep-alive\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
        ),
        (102, b"HTTP/1.0 102 Processing\r\n", b"HTTP/1.1 102 Processing\r\n\r\n"),
    ],
)
@pytest.mark.parametrize("force_close", [False, True])
def test_interim_response(status: int, head: bytes, out: bytes, force_close: bool) -> None:
    plan = respond(status, head, force_close=force_close, client_keep_alive=not force_close)
    assert (plan.head, plan.upstream_framing, plan.dechunk, plan.close_client) == (out, Framing.NONE, False, False)


def test_http10_status_line_is_rewritten() -> None:
    plan = respond(200, b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n")
    assert plan.head == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    assert (plan.upstream_framing, plan.close_client) == (Framing.LENGTH, False)
    plan = respond(404, b"HTTP/1.0 404 Not Found\r\n")
    assert plan.head == b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n"
    assert plan.upstream_framing is Framing.CLOSE


def test_force_close() -> None:
    plan = respond(200, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", force_close=True)
    assert plan.head == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    assert (plan.upstream_framing, plan.close_client) == (Framing.LENGTH, True)
    plan = respond(200, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n", force_close=True)
    assert plan.head == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    assert (plan.upstream_framing, plan.dechunk, plan.close_client) == (Framing.CHUNKED, False, True)


def test_client_without_keep_alive_gets_connection_close() -> None:
    plan = respond(200, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", client_keep_alive=False)
    assert plan.head == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    assert plan.close_client is True
    plan = respond(200, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", client_http11=False, client_keep_alive=False)
    assert plan.head == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    assert plan.close_client is True


def test_http10_keep_alive_client_gets_connection_keep_alive() -> None:
    plan = respond(200, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n", client_http11=False)
    assert plan == ResponsePlan(
        head=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n",
        upstream_framing=Framing.LENGTH,
        content_length=2,
        dechunk=False,
        close_client=False,
    )
    plan = respond(204, b"HTTP/1.1 204 No Content\r\n", client_http11=False)
    assert plan.head == b"HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"


def test_end_to_end_response_fields_keep_case_order_and_duplicates() -> None:
    head = (
        b'HTTP/1.1 200 Okay Then\r\nSet-Cookie: a=1; Path=/\r\nETag: W/"abc"\r\nset-cookie: b=2\r\n'
        b"X-Weird-CASE:no-space\r\nX-Spaces:   padded  \r\nContent-Length: 3\r\nLocation: http://x/?a:b\r\n"
        b"X-Obs: caf\xe9\r\n"
    )
    plan = respond(200, head)
    assert plan.head == head + b"\r\n"


# ---------------------------------------------------------------------------------------------------------------
# plan_switching_protocols
# ---------------------------------------------------------------------------------------------------------------


def test_switching_protocols() -> None:
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade, X-Hop\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n"
    )
    assert plan_switching_protocols(head + b"\r\n") == (
        b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: chat\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\r\n"
    )


def test_switching_protocols_http10_status_line_and_no_upgrade_value() -> None:
    assert plan_switching_protocols(b"HTTP/1.0 101 Switching\r\nConnection: upgrade\r\nTE: x\r\n\r\n") == (
        b"HTTP/1.1 101 Switching\r\nConnection: Upgrade\r\n\r\n"
    )


# ---------------------------------------------------------------------------------------------------------------
# plan_connect
# ---------------------------------------------------------------------------------------------------------------


def test_connect_allowed_port() -> None:
    assert plan_connect(b"example.com:443", frozenset({443})) == ("example.com", 443)
    assert plan_connect(b"[2001:db8::1]:8443", frozenset({443, 8443})) == ("2001:db8::1", 8443)


def test_connect_denied_port() -> None:
    with pytest.raises(RequestRejected) as info:
        plan_connect(b"example.com:22", frozenset({8443, 443}))
    err = info.value
    assert err.status == 403
    assert err.message == "CONNECT to port 22 is not allowed (forward.connect_ports: 443, 8443)"
    assert err.proxy_error == "destination_ip_prohibited"


def test_connect_any_port_when_allowed_set_is_empty() -> None:
    assert plan_connect(b"example.com:22", frozenset()) == ("example.com", 22)
    assert plan_connect(b"10.1.2.3:1", frozenset()) == ("10.1.2.3", 1)
    assert RequestPolicy.create(make_propagator(), []).connect_ports == frozenset()


@pytest.mark.parametrize(
    ("target", "words"),
    [
        (b"example.com", "missing port"),
        (b"[::1]", "missing port"),
        (b"example.com:", "empty port"),
        (b"example.com:0", "invalid port"),
        (b"example.com:65536", "invalid port"),
        (b"user@example.com:443", "user info"),
        (b"", "no host"),
        (b":443", "invalid host"),
    ],
)
def test_connect_bad_target(target: bytes, words: str) -> None:
    with pytest.raises(RequestRejected) as info:
        plan_connect(target, frozenset())
    assert info.value.status == 400
    assert words in info.value.message


# ---------------------------------------------------------------------------------------------------------------
# error_response
# ---------------------------------------------------------------------------------------------------------------


def split_response(raw: bytes) -> tuple[bytes, list[bytes], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep
    status, *fields = head.split(b"\r\n")
    return status, fields, body


def test_error_response_exact() -> None:
    assert error_response(400, "bad thing") == (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 10\r\n"
        b'Proxy-Status: trace-proxy; error=http_request_error; details="bad thing"\r\n'
        b"Connection: close\r\n\r\nbad thing\n"
    )


@pytest.mark.parametrize(
    ("status", "reason"),
    [(400, b"Bad Request"), (403, b"Forbidden"), (502, b"Bad Gateway"), (504, b"Gateway Timeout"), (599, b"Error")],
)
def test_error_response_status_line(status: int, reason: bytes) -> None:
    line, fields, body = split_response(error_response(status, "m", "dns_error"))
    assert line == b"HTTP/1.1 %d %s" % (status, reason)
    assert b"Connection: close" in fields
    assert b'Proxy-Status: trace-proxy; error=dns_error; details="m"' in fields
    assert body == b"m\n"


@pytest.mark.parametrize("message", ["plain", "caf\u00e9 \u2603", 'quote " and back\\slash', "x" * 2000, ""])
def test_error_response_content_length_matches_body(message: str) -> None:
    _, fields, body = split_response(error_response(502, message))
    assert b"Content-Length: %d" % len(body) in fields
    assert body == (message + "\n").encode("utf-8")


def test_error_response_escapes_quotes_in_details() -> None:
    _, fields, _ = split_response(error_response(400, 'say "hi" \\o/'))
    assert b'Proxy-Status: trace-proxy; error=http_request_error; details="say \\"hi\\" \\\\o/"' in fields


EXPECTED_FIELDS = [b"content-type", b"content-length", b"proxy-status", b"connection"]


@pytest.mark.parametrize("message", ["bad\r\nX-Injected: 1", "bad\nX-Injected: 1", "a\r\n\r\n<html>"])
def test_error_response_message_cannot_inject_header_lines(message: str) -> None:
    raw = error_response(400, message)
    # Lenient parsers end a line at a bare LF (or CR) too: the head must hold no CR or LF outside its CRLFs.
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = re.split(rb"\r\n|\n|\r", head)[1:]
    assert [line.partition(b":")[0].lower() for line in lines] == EXPECTED_FIELDS
    assert b"Content-Length: %d" % len(body) in lines


def test_error_response_body_has_no_cr_lf_from_the_message() -> None:
    raw = error_response(400, "a\r\nb\nc")
    assert raw.endswith(b"\r\n\r\na  b c\n")


# An RFC 8941 sf-string: DQUOTE *( unescaped %x20-21 / %x23-5B / %x5D-7E / "\" ( DQUOTE / "\" ) ) DQUOTE
_SF_STRING = re.compile(rb'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"')


def proxy_status_details(raw: bytes) -> bytes:
    _, fields, _ = split_response(raw)
    (line,) = [f for f in fields if f.startswith(b"Proxy-Status: ")]
    prefix = b"Proxy-Status: trace-proxy; error=http_request_error; details="
    assert line.startswith(prefix)
    return line[len(prefix) :]


@pytest.mark.parametrize("message", ["plain", 'q"uo\\te', "caf\u00e9", "y" * 600, 'z"' * 100, '"' * 300])
def test_proxy_status_details_is_a_valid_sf_string(message: str) -> None:
    assert _SF_STRING.fullmatch(proxy_status_details(error_response(400, message)))


@pytest.mark.parametrize("message", ['z"' * 400, "a" + "\\" * 300])
def test_proxy_status_details_truncation_keeps_the_string_closed(message: str) -> None:
    assert _SF_STRING.fullmatch(proxy_status_details(error_response(400, message)))


def test_proxy_status_details_truncation_reachable_from_a_request_target() -> None:
    # Reachable: llhttp accepts this target; split_authority's message is `invalid port in "aaa...':x"` (511 chars),
    # whose closing quote becomes `\"` at offsets 511-512 of the escaped details.
    host = b"a" * 490 + b"'"
    with pytest.raises(RequestRejected) as info:
        request(b"http://" + host + b":x/")
    raw = error_response(info.value.status, info.value.message)
    assert _SF_STRING.fullmatch(proxy_status_details(raw))


# ---------------------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------------------

_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SPECIAL_NAMES = [
    b"Connection",
    b"Proxy-Connection",
    b"Keep-Alive",
    b"TE",
    b"Trailer",
    b"Transfer-Encoding",
    b"Upgrade",
    b"Proxy-Authorization",
    b"Proxy-Authenticate",
    b"Host",
    b"Content-Length",
    b"Expect",
    b"sentry-trace",
    b"Baggage",
    b"traceparent",
    b"X-Named",
    b"x-named",
]
_VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))

token = st.text(_TCHAR, min_size=1, max_size=12).map(str.encode)
header_name = st.one_of(st.sampled_from(_SPECIAL_NAMES), st.sampled_from(_SPECIAL_NAMES).map(bytes.swapcase), token)
# Field values as llhttp yields them: visible ASCII and obs-text, inner spaces/tabs, no CR/LF, no outer whitespace.
header_value = st.one_of(
    st.text(_VCHAR + " \t", max_size=30).map(lambda s: s.strip(" \t").encode()),
    st.binary(max_size=10).map(lambda b: bytes(c for c in b if c > 0x20 and c != 0x7F)),
    st.lists(st.one_of(token, st.sampled_from([b"close", b"keep-alive", b"Upgrade", b"X-Named"])), max_size=4).map(
        b", ".join
    ),
    st.just(IN_SENTRY_TRACE.encode()),
    st.just(IN_BAGGAGE.encode()),
)
header_list = st.lists(st.tuples(header_name, header_value), max_size=12)
TARGET_CHOICES = [
    b"http://api.example/v1?q=1",
    b"http://other.test/",
    b"http://other.test:8080",
    b"http://[::1]:9000/x#f",
    b"HTTP://API.example?x",
]
_PROPERTY_POLICIES = [make_policy(), make_policy(traceparent=True)]


def _connection_named(headers: Sequence[tuple[bytes, bytes]]) -> set[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() in (b"connection", b"proxy-connection"):
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return named - {b"close", b"keep-alive", b"upgrade"}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS"]),
    target=st.sampled_from(TARGET_CHOICES),
    http11=st.booleans(),
    keep_alive=st.booleans(),
    upgrade=st.booleans(),
    add_host=st.booleans(),
    headers=header_list,
    policy_index=st.sampled_from([0, 1]),
)
def test_plan_request_property(
    method: bytes,
    target: bytes,
    http11: bool,
    keep_alive: bool,
    upgrade: bool,
    add_host: bool,
    headers: list[tuple[bytes, bytes]],
    policy_index: int,
) -> None:
    policy = _PROPERTY_POLICIES[policy_index]
    if add_host:
        headers = [(b"Host", b"client.invalid"), *headers]
    try:
        plan = plan_request(method, target, http11, keep_alive, upgrade, headers, policy)
    except RequestRejected as err:
        assert err.status == 400
        event("rejected")
        return
    event(f"planned, body {plan.body.name}, upgrade {plan.upgrade}")
    if plan.body is Framing.CHUNKED:  # only codings ending in chunked get through (llhttp's rule, checked again)
        te = b", ".join(v for n, v in headers if n.lower() == b"transfer-encoding")
        assert te.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
    head = plan.head
    assert head.endswith(b"\r\n\r\n")
    assert head.count(b"\r\n\r\n") == 1
    start, *lines = head[:-4].split(b"\r\n")
    assert start.startswith(method + b" /") or start == b"OPTIONS * HTTP/1.1"
    assert start.endswith(b" HTTP/1.1")
    lnames = [line.partition(b":")[0].lower() for line in lines]
    assert lnames.count(b"host") == 1
    assert lines[0] == b"Host: " + target[7:].split(b"/")[0].split(b"?")[0]
    # No hop-by-hop line but the ones the proxy writes itself.
    te_values = b", ".join(v for n, v in headers if n.lower() == b"transfer-encoding")
    own = {b"Transfer-Encoding: " + te_values} if plan.body is Framing.CHUNKED else set()
    if plan.upgrade:
        own.add(b"Connection: Upgrade")
    for line, lname in zip(lines, lnames, strict=True):
        if lname in HOP_BY_HOP:
            assert line in own or (plan.upgrade and lname == b"upgrade")
    assert lnames.count(b"transfer-encoding") == (plan.body is Framing.CHUNKED)
    assert lnames.count(b"upgrade") == lnames.count(b"connection") == plan.upgrade
    # Trace headers: exactly the decision when the target matches, else the client's lines untouched.
    matches = policy.propagator.matches(target.decode("latin-1"))
    assert (plan.decision.source is TraceSource.UNTOUCHED) is not matches
    if matches:
        assert lnames.count(b"sentry-trace") == 1
        assert lnames.count(b"baggage") == 1
        if "traceparent" in policy.propagator.strip_names:
            assert lnames.count(b"traceparent") == 1
    # Every end-to-end field is kept, in order, byte for byte.
    named = _connection_named(headers)
    dropped = {b"host", *HOP_BY_HOP, *named}
    if matches:
        dropped |= policy.trace_names
    if not http11:
        dropped.add(b"expect")
    kept = [
        name + b": " + value
        for name, value in headers
        if name.lower() in (b"content-length",) or (name.lower() == b"expect" and http11) or name.lower() not in dropped
    ]
    assert lines[1 : 1 + len(kept)] == kept


# Trailer is relayed in responses: chunked bodies pass through with their trailer fields.
RESPONSE_HOP_BY_HOP = tuple(name for name in HOP_BY_HOP if name != b"trailer")
_RESPONSE_HOP = [name.decode() for name in RESPONSE_HOP_BY_HOP]
response_name = st.one_of(
    st.sampled_from(_RESPONSE_HOP).map(str.encode),
    st.sampled_from(_RESPONSE_HOP).map(lambda s: s.title().encode()),
    st.sampled_from([b"Content-Length", b"Set-Cookie", b"ETag", b"X-Named", b"x-named", b"Connection-Id"]),
    token,
)
ows = st.sampled_from([b"", b" ", b"  ", b"\t"])


@st.composite
def response_heads(draw: st.DrawFn) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    status = draw(st.sampled_from([100, 103, 200, 201, 204, 206, 301, 304, 404, 500]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    field = st.one_of(
        st.tuples(response_name, header_value, ows, ows),
        # the usual framing and keep-alive lines of an origin, which decide whether the head is relayed unchanged
        st.tuples(st.just(b"Content-Length"), st.integers(0, 10**6).map(lambda n: str(n).encode()), ows, ows),
        st.tuples(st.sampled_from([b"Connection", b"connection"]), st.just(b"keep-alive"), ows, ows),
    )
    fields = draw(st.lists(field, max_size=12))
    lines = [name + b":" + lead + value + trail for name, value, lead, trail in fields]
    head = b"%s %d Some Reason\r\n" % (version, status) + b"".join(line + b"\r\n" for line in lines)
    return status, head, [(name, value) for name, value, _, _ in fields]


def _kept_response_lines(head: bytes, fields: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    named = _connection_named([(n, v.strip(b" \t")) for n, v in fields])
    lines = head.split(b"\r\n")[1:-1]
    return [line for line in lines if line.partition(b":")[0].lower() not in {*RESPONSE_HOP_BY_HOP, *named}]


@settings(max_examples=400, deadline=None)
@given(
    drawn=response_heads(),
    request_is_head=st.booleans(),
    client_http11=st.booleans(),
    client_keep_alive=st.booleans(),
    force_close=st.booleans(),
)
def test_plan_response_property(
    drawn: tuple[int, bytes, list[tuple[bytes, bytes]]],
    request_is_head: bool,
    client_http11: bool,
    client_keep_alive: bool,
    force_close: bool,
) -> None:
    status, head, fields = drawn
    full = head + b"\r\n"
    plan = plan_response(
        status,
        full,
        request_is_head=request_is_head,
        client_http11=client_http11,
        client_keep_alive=client_keep_alive,
        force_close=force_close,
    )
    out = plan.head
    assert out.endswith(b"\r\n\r\n")
    assert out.count(b"\r\n\r\n") == 1
    start, *lines = out[:-4].split(b"\r\n")
    assert start == b"HTTP/1.1 %d Some Reason" % status
    if out is full:
        # Relayed unchanged: only when the sole hop-by-hop line is the keep-alive the proxy would send itself.
        hop = [line for line in lines if line.partition(b":")[0].lower() in RESPONSE_HOP_BY_HOP]
        assert hop in ([], [b"Connection: keep-alive"], [b"connection: keep-alive"])
        assert not plan.close_client and not plan.dechunk
        assert hop or client_http11
        return
    kept = _kept_response_lines(head, fields)
    assert lines[: len(kept)] == kept
    # After the end-to-end lines come only the lines the proxy writes itself.
    for line in lines[len(kept) :]:
        assert line.startswith(b"Transfer-Encoding: ") or line in (b"Connection: close", b"Connection: keep-alive")
    if status < 200:
        assert (plan.upstream_framing, plan.close_client) == (Framing.NONE, False)
        assert not any(line.startswith(b"Connection: ") for line in lines)
    elif plan.close_client:
        assert lines[-1] == b"Connection: close"
    if force_close and status >= 200:
        assert plan.close_client


@settings(max_examples=200, deadline=None)
@given(drawn=response_heads())
def test_plan_switching_protocols_property(drawn: tuple[int, bytes, list[tuple[bytes, bytes]]]) -> None:
    _, head, fields = drawn
    out = plan_switching_protocols(head + b"\r\n")
    assert out.endswith(b"\r\n\r\n") and out.count(b"\r\n\r\n") == 1
    _, *lines = out[:-4].split(b"\r\n")
    kept = _kept_response_lines(head, fields)
    assert lines[: len(kept)] == kept
    assert lines[len(kept)] == b"Connection: Upgrade"
    assert all(line.startswith(b"Upgrade: ") for line in lines[len(kept) + 1 :])
    assert len(lines) - len(kept) <= 2


@pytest.mark.parametrize("target", [b"wss://example.com/", b"https://example.com/"])
def test_tls_targets_are_refused_with_a_pointer_to_connect(target: bytes) -> None:
    err = rejected(target)
    assert err.status == 400
    assert "CONNECT" in err.message


def test_ws_target_is_proxied_like_http() -> None:
    plan = request(b"ws://example.com:8080/chat?x=1", policy=make_policy(targets=[]))
    assert (plan.host, plan.port) == ("example.com", 8080)
    assert plan.head.startswith(b"GET /chat?x=1 HTTP/1.1\r\nHost: example.com:8080\r\n")


def test_request_transfer_coding_not_ending_in_chunked_is_refused() -> None:
    err = rejected(b"http://example.com/", [(b"Transfer-Encoding", b"gzip")], method=b"POST")
    assert err.status == 400
    assert "chunked" in err.message


@pytest.mark.parametrize("client_http11", [True, False])
@pytest.mark.parametrize(
    "fields",
    [
        b"Connection: keep-alive\r\nContent-Length: 0\r\nConnection: keep-alive\r\n",
        b"Content-Length: 0\r\nConnection: keep-alive\r\nConnection: keep-alive\r\n",  # adjacent lines
    ],
)
def test_a_repeated_keep_alive_line_goes_out_once(client_http11: bool, fields: bytes) -> None:
    """An origin that repeats `Connection: keep-alive` does not get it relayed twice: the line is the proxy's own
    option for the client connection (found by the Hypothesis property above, for an HTTP/1.0 client)."""
    head = b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n"
    plan = plan_response(
        200, head, request_is_head=False, client_http11=client_http11, client_keep_alive=True, force_close=False
    )
    assert plan.head.lower().count(b"connection:") == (0 if client_http11 else 1)
    assert not plan.close_client
