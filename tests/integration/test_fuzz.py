"""A grammar-driven fuzzer against the running proxy: request heads, framings, bodies and byte-level mutations of
them (tests/helpers/fuzz_grammar.py), pipelined on a few raw client connections at once, to a real proxy in front
of a recording origin that is new for every example.

What must hold for every example, whatever the bytes:

1. every client connection, once it has sent its bytes and half-closed, is answered and closed within `BOUND`
   seconds (the proxy closes after an error with a FIN at once, lingering only to discard input), and is not reset
   before the answer arrived;
2. the origin receives only messages that read strictly and unambiguously (tests/helpers/strict_http.py: one Host,
   one framing, digits-only Content-Length, Transfer-Encoding ending in chunked, no bare CR/LF or control bytes,
   origin-form targets, well-formed chunks, no hop-by-hop fields), each with one valid `sentry-trace` and at most
   one baggage without repeated sentry-* keys;
3. a client sees only the origin's own responses to its own requests, in order, or a proxy error (`Proxy-Status`)
   as the last thing on the connection; every request of a connection that reached the origin was answered, but
   for at most one, the last, which the proxy refused after forwarding its head; nothing reached the origin after
   it. Unmutated connections: requests hidden in bodies never reach the origin as requests, and the clean requests
   (`Request.clean`) before the first doubtful one are all answered by the origin;
4. afterwards a plain request is served (200 from the origin), the proxy is alive and logged no error or traceback.

`FUZZ_EXAMPLES=N` runs N random examples (failures are kept in .hypothesis/ and replayed first); without it the
CI's fixed set of `DEFAULT_EXAMPLES` examples runs, derandomized. `FUZZ_REPORT=FILE` appends the report of every
failing example to FILE, including failures that depend on timing and do not replay.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings

from tests.helpers import fuzz_grammar as grammar
from tests.helpers import http
from tests.helpers.fuzz_grammar import Connection, Ports
from tests.helpers.origin import RawConn, RawHandler, RawOrigin, ok_response
from tests.helpers.proxy_process import ProxyProcess
from tests.helpers.strict_http import Request, Response, read_requests, read_responses
from tests.helpers.trace import SENTRY_TRACE_RE, baggage_members

DEFAULT_EXAMPLES = 600
RANDOM = bool(os.environ.get("FUZZ_EXAMPLES"))
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or DEFAULT_EXAMPLES)
BOUND = 3.0  # seconds a client connection may take, after its last byte, to be answered and closed
SETTLE = 3.0  # seconds the origin side may take to reach a state with nothing in flight
SENTINEL = 9  # connection number of the plain request after each example
_MARKER = re.compile(rb"/fuzz/(\d{6})/(\d)/(\d{4})/")
_PROXY_ERROR = re.compile(rb"error=([a-z_]+)")
_SETTINGS: dict[str, Any] = {
    "max_examples": EXAMPLES,
    "deadline": None,
    "derandomize": not RANDOM,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
if not RANDOM:
    _SETTINGS["database"] = None


# -- the origin -----------------------------------------------------------------------------------------------------


def accepts_upgrade(target: bytes, has_upgrade: bool) -> bool:
    """The origin switches protocols for an Upgrade request whose marker is followed by `accept-upgrade/`."""
    return has_upgrade and target[grammar.MARKER_WIDTH :].startswith(grammar.ACCEPT_UPGRADE)


@dataclass
class OriginLog:
    """Per connection of one origin: how many requests were answered, and which connections have ended."""

    answered: dict[int, int] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)


def fuzz_handler(log: OriginLog) -> RawHandler:
    """Answer each request `200 ok <target>` (HEAD: no body), naming the request in `X-Fuzz-Request` (the target in
    hex); send `100 Continue` when asked; switch protocols as `accepts_upgrade` says and then read to the end."""

    def answered(conn: RawConn) -> None:
        log.answered[conn.id] = log.answered.get(conn.id, 0) + 1
        conn.origin.data_arrived()

    async def handler(conn: RawConn) -> None:
        try:
            while (request := await conn.read_head()) is not None:
                if b"100-continue" in [v.lower() for v in request.values(b"expect")]:
                    await conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                await conn.read_body(request)
                name = b"X-Fuzz-Request: %b\r\n" % request.target.hex().encode()
                upgrade = request.values(b"upgrade")
                if accepts_upgrade(request.target, bool(upgrade)):
                    await conn.send(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %b\r\n%b\r\n"
                        % (upgrade[0], name)
                    )
                    answered(conn)
                    await conn.read_to_eof()
                    return
                body = b"" if request.method == b"HEAD" else b"ok " + request.target
                await conn.send(ok_response(body, name))
                answered(conn)
        finally:
            log.ended.add(conn.id)
            conn.origin.data_arrived()

    return handler


def _tunnel_after(request: Request) -> bool:
    return accepts_upgrade(request.target, bool(request.values(b"upgrade")))


def settled(origin: RawOrigin, log: OriginLog) -> bool:
    """Nothing is in flight towards the origin: every connection has ended, or holds whole requests, all answered
    (one that is not strict HTTP is settled too: nothing more makes it right)."""
    for conn in origin.conns:
        if conn.id in log.ended:
            continue
        stream = read_requests(bytes(conn.received), _tunnel_after)
        if stream.problem is not None:
            continue
        if stream.tunnel_at is not None or stream.incomplete:
            return False
        if len(stream.messages) != log.answered.get(conn.id, 0):
            return False
    return True


async def sink_handler(conn: RawConn) -> None:
    """The far end of CONNECT tunnels: reads everything, answers nothing, closes after the client's FIN."""
    await conn.read_to_eof()


# -- the client -----------------------------------------------------------------------------------------------------


@dataclass
class ClientResult:
    """One client connection: what it sent, what it received, and how the connection ended."""

    sent: bytes
    received: bytes
    ended: str  # "eof", "reset", or "timeout" (neither within BOUND)


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c % len(data) for c in cuts if data} - {0})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


async def drive(port: int, data: bytes, cuts: Sequence[int] = ()) -> ClientResult:
    """Send `data` in the pieces `cuts` gives, half-close, and read until the proxy closes, within BOUND."""
    reader, writer = await http.open_raw(port)
    received = bytearray()
    ended = "eof"
    deadline = time.monotonic() + BOUND
    try:
        try:
            for piece in split(data, cuts):
                writer.write(piece)
                await asyncio.wait_for(writer.drain(), deadline - time.monotonic())
            writer.write_eof()
        except OSError:
            pass  # the proxy closed or reset the connection: what it sent before is still to be read
        deadline = time.monotonic() + BOUND
        while chunk := await asyncio.wait_for(reader.read(1 << 16), deadline - time.monotonic()):
            received += chunk
    except TimeoutError:
        ended = "timeout"
    except ConnectionError:
        ended = "reset"
    finally:
        await http.close_writer(writer)
    return ClientResult(data, bytes(received), ended)


# -- one example ----------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """Everything one example produced, for the checks."""

    example: int
    conns: list[Connection]
    clients: list[ClientResult]
    rendered: list[bytes]
    sentinel: ClientResult
    origin_streams: list[tuple[bytes, bool]]  # bytes each origin connection received, and whether it ended
    origin_errors: list[str]
    settle_timeout: bool
    stderr: str
    alive: bool


class Fuzzer:
    """Runs examples on an event loop it owns: a tunnel sink for the whole test, an origin for each example."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self.proxy = proxy
        self.loop = asyncio.new_event_loop()
        self.sink = RawOrigin(sink_handler)
        self.loop.run_until_complete(self.sink.start())
        self.count = 0

    def close(self) -> None:
        self.loop.run_until_complete(self.sink.close())
        self.loop.close()

    def run(self, conns: list[Connection]) -> None:
        self.count += 1
        outcome = self.loop.run_until_complete(self._run(self.count, conns))
        for result in outcome.clients:
            event(outcome_kind(result))  # --hypothesis-show-statistics: what the examples ended in
        event(
            f"requests at the origin: {min(sum(len(read_requests(d).messages) for d, _ in outcome.origin_streams), 5)}"
        )
        problems = check(outcome)
        if problems and os.environ.get("FUZZ_REPORT"):
            with open(os.environ["FUZZ_REPORT"], "a") as file:  # every failure, also those that do not replay
                file.write(report(outcome, problems) + "\n\n")
        assert not problems, report(outcome, problems)

    async def _run(self, example: int, conns: list[Connection]) -> Outcome:
        stderr_at = len(self.proxy.stderr)
        log = OriginLog()
        origin = RawOrigin(fuzz_handler(log))
        await origin.start()
        try:
            ports = Ports(origin.port, self.sink.port, self.proxy.port)
            rendered = [grammar.render(conn.pieces(), ports, example, c) for c, conn in enumerate(conns)]
            sent = [
                grammar.mutate(data, mask, conn.mutations) for (data, mask), conn in zip(rendered, conns, strict=True)
            ]
            clients = await asyncio.gather(
                *(drive(self.proxy.port, d, c.cuts) for d, c in zip(sent, conns, strict=True))
            )
            mark = grammar.marker(example, SENTINEL, 0)
            sentinel = await drive(self.proxy.port, grammar.sentinel_request(origin.port, mark))
            settle_timeout = False
            # After a client timed out the example has failed already: a shorter wait keeps shrinking it quick.
            settle = SETTLE if all(c.ended != "timeout" for c in clients) else SETTLE / 6
            try:
                await origin.wait_for(lambda: settled(origin, log), settle)
            except TimeoutError:
                settle_timeout = True
            streams = [(bytes(c.received), c.id in log.ended) for c in origin.conns]
            errors = [repr(e) for e in origin.errors] + [f"framing error: {r.head!r}" for r in origin.framing_errors]
        finally:
            await origin.close()
        return Outcome(
            example,
            conns,
            list(clients),
            [r[0] for r in rendered],
            sentinel,
            streams,
            errors,
            settle_timeout,
            self.proxy.stderr[stderr_at:],
            self.proxy.alive(),
        )


def outcome_kind(result: ClientResult) -> str:
    """How a client connection ended, in a few words: the statuses it got and the proxy's error token."""
    stream = read_responses(result.received)
    parts = []
    for response in stream.messages:
        assert isinstance(response, Response)
        status = response.values(b"proxy-status")
        token = _PROXY_ERROR.search(status[0]) if status else None
        parts.append(f"{response.status}" + (f" {token[1].decode()}" if token else ""))
    return f"client: {', '.join(parts[:3]) or 'nothing'}{' ...' if len(parts) > 3 else ''} ({result.ended})"


# -- the properties -------------------------------------------------------------------------------------------------


@dataclass
class Arrived:
    """A request the origin received, attributed through its marker."""

    conn: int
    index: int
    method: bytes
    target: bytes
    x_hop: bool  # carries X-Hop, which its request named in Connection (unless a mutation changed that)
    upgraded: bool  # the origin switched protocols (101) for it


def check_origin(outcome: Outcome, problems: list[str]) -> dict[bytes, Arrived]:
    """Property 2 on every origin connection; returns what arrived, by target."""
    arrived: dict[bytes, Arrived] = {}
    for k, (data, ended) in enumerate(outcome.origin_streams):
        stream = read_requests(data, _tunnel_after)
        if stream.problem is not None:
            problems.append(f"origin connection {k} received a message that is not strict HTTP/1.1: {stream.problem}")
        elif stream.incomplete and not ended:
            problems.append(f"origin connection {k} holds an incomplete request after every client has gone")
        for message in stream.messages:
            assert isinstance(message, Request)
            match = _MARKER.match(message.target)
            if match is None or int(match[1]) != outcome.example:
                problems.append(f"origin received {message.start_line!r}, which no request of this example sent")
                continue
            conn, index = int(match[2]), int(match[3])
            if message.target in arrived:
                problems.append(f"origin received {message.target!r} twice")
            arrived[message.target] = Arrived(
                conn, index, message.method, message.target, bool(message.values(b"x-hop")), _tunnel_after(message)
            )
            check_trace_headers(message, problems)
            if message.trailers:
                problems.append(f"{message.target!r}: trailer fields reached the origin: {message.trailers!r}")
    problems.extend(f"origin handler: {e}" for e in outcome.origin_errors)
    if outcome.settle_timeout:
        problems.append("origin side still had requests in flight well after every client had finished")
    return arrived


def check_trace_headers(message: Request, problems: list[str]) -> None:
    where = message.target[: grammar.MARKER_WIDTH]
    traces = message.values(b"sentry-trace")
    if len(traces) != 1 or SENTRY_TRACE_RE.match(traces[0].decode("latin-1")) is None:
        problems.append(f"{where!r}: sentry-trace {traces!r} is not exactly one valid value")
    baggage = message.values(b"baggage")
    if len(baggage) > 1:
        problems.append(f"{where!r}: {len(baggage)} baggage fields")
    for value in baggage:
        keys = [k for k, _ in baggage_members(value.decode("latin-1")) if k.startswith("sentry-")]
        if len(keys) != len(set(keys)):
            problems.append(f"{where!r}: baggage repeats sentry-* keys: {value!r}")


def sent_order(index: int) -> tuple[int, int]:
    """Where request `index` is in the bytes of its connection: a request hidden in the body of request i (marker
    INNER + 10 i + k) comes after request i and before request i + 1."""
    if index < grammar.INNER:
        return index, 0
    return (index - grammar.INNER) // 10, (index - grammar.INNER) % 10 + 1


def check_client(
    outcome: Outcome, c: int, client: ClientResult, arrived: dict[bytes, Arrived], problems: list[str]
) -> None:
    """Properties 1 and 3 for client connection `c`."""
    conn = outcome.conns[c]
    name = f"client connection {c}"
    # A reset before any byte arrived destroyed the answer (or there was none): the proxy closes gracefully after an
    # answer, lingering so that what the client still sends cannot draw a reset (RFC 9112 §9.6).
    if client.ended == "reset" and not client.received:
        problems.append(f"{name}: the connection was reset before any answer arrived")
    if client.ended == "timeout":
        problems.append(f"{name}: neither answered nor closed within {BOUND}s of its last byte")
    stream = read_responses(client.received)
    if stream.problem is not None:
        problems.append(f"{name}: received a response that is not strict HTTP/1.1: {stream.problem}")
    answered: list[int] = []
    error: Response | None = None
    tunnel = False
    for response in stream.messages:
        assert isinstance(response, Response)
        if error is not None:
            problems.append(f"{name}: {response.start_line!r} came after the proxy's error response")
            break
        if response.values(b"proxy-status"):
            error = response
            token = _PROXY_ERROR.search(response.values(b"proxy-status")[0])
            if response.status < 400 or b"close" not in [v.lower() for v in response.values(b"connection")]:
                problems.append(f"{name}: proxy error {response.start_line!r} without a 4xx/5xx and Connection: close")
            if token is None:
                problems.append(f"{name}: Proxy-Status without an error type: {response.values(b'proxy-status')!r}")
            elif token[1] == b"proxy_internal_error":
                problems.append(f"{name}: the proxy failed internally: {response.body!r}")
            continue
        if response.status == 100:
            continue
        ids = response.values(b"x-fuzz-request")
        if not ids:
            if response.tunnel and response.status == 200 and b"CONNECT " in client.sent:
                tunnel = True
                continue
            problems.append(f"{name}: {response.start_line!r} is neither the origin's nor a proxy error")
            continue
        try:
            target = bytes.fromhex(ids[0].decode())
        except ValueError:
            problems.append(f"{name}: the origin's X-Fuzz-Request came through changed: {ids!r}")
            continue
        request = arrived.get(target)
        match = _MARKER.match(target)
        if request is None or match is None:
            problems.append(f"{name}: got a response for {target!r}, which never reached the origin")
            continue
        if (int(match[1]), request.conn) != (outcome.example, c):
            problems.append(f"{name}: got the response to {target!r}, a request of another connection")
        if response.status != (101 if request.upgraded else 200):
            problems.append(f"{name}: the origin answered {target!r} with 200 or 101, the client got {response.status}")
        body = b"" if request.method == b"HEAD" or request.upgraded else b"ok " + target
        if response.body != body:
            problems.append(f"{name}: the response to {target!r} carries {response.body[:100]!r}, not {body!r}")
        if answered and sent_order(request.index) <= sent_order(answered[-1]):
            problems.append(f"{name}: response to request {request.index} came after that to {answered[-1]}")
        answered.append(request.index)
        tunnel = tunnel or response.status == 101

    reached = sorted((a.index for a in arrived.values() if a.conn == c), key=sent_order)
    unanswered = [i for i in reached if i not in answered]
    cut_short = error is not None or stream.incomplete or client.ended != "eof"
    last = sent_order(answered[-1]) if answered else (-1, 0)
    if unanswered and not (cut_short and len(unanswered) == 1 and sent_order(unanswered[0]) > last):
        problems.append(
            f"{name}: requests {unanswered} reached the origin but were not answered (answered: {answered}, "
            f"{'error ' + repr(error.start_line) if error else 'no error'})"
        )
    if outcome.clients[c].sent != outcome.rendered[c]:
        return  # mutated: what follows needs the requests as generated
    if answered != list(range(len(answered))):
        problems.append(f"{name}: answered {answered}, not a prefix of the requests as sent")
    if unanswered and unanswered != [len(answered)]:
        problems.append(f"{name}: request {unanswered} reached the origin after request {len(answered)} was refused")
    hop = [a.index for a in arrived.values() if a.conn == c and a.x_hop]
    if hop:
        problems.append(f"{name}: requests {hop} brought X-Hop, named in their Connection field, to the origin")
    smuggled = [i for i in reached if i >= grammar.INNER]
    if smuggled:
        problems.append(f"{name}: requests hidden in bodies ({smuggled}) reached the origin as requests")
    expected: list[int] = []
    expect_tunnel = False
    for generated in conn.requests:
        if not generated.clean:
            break
        if generated.tunnel:
            expect_tunnel = True
        else:
            expected.append(generated.index)
        if generated.ends:
            break
    if answered[: len(expected)] != expected or (expect_tunnel and not tunnel):
        problems.append(
            f"{name}: clean requests {expected}{' (a tunnel)' if expect_tunnel else ''} were not all answered by the "
            f"origin: answered {answered}, {'error ' + repr(error.start_line) if error else 'no error'}"
        )


def check(outcome: Outcome) -> list[str]:
    problems: list[str] = []
    arrived = check_origin(outcome, problems)
    for c, client in enumerate(outcome.clients):
        check_client(outcome, c, client, arrived, problems)
    mark = grammar.marker(outcome.example, SENTINEL, 0)
    sentinel = read_responses(outcome.sentinel.received)
    statuses = [(r.status, r.body) for r in sentinel.messages if isinstance(r, Response)]
    if statuses != [(200, b"ok " + mark)]:
        problems.append(f"the plain request after the example got {statuses!r} ({outcome.sentinel.ended})")
    if not outcome.alive:
        problems.append("the proxy process died")
    for line in outcome.stderr.splitlines():
        if "Traceback" in line or " ERROR " in line or " CRITICAL " in line:
            problems.append(f"the proxy logged: {line}")
    return problems


def _clip(data: bytes, limit: int = 1500) -> str:
    return repr(data if len(data) <= limit else data[:limit] + b"...")


def report(outcome: Outcome, problems: list[str]) -> str:
    lines = [f"example {outcome.example}: {len(problems)} problem(s)", *(f"  - {p}" for p in problems)]
    for c, client in enumerate(outcome.clients):
        mutated = " (mutated)" if client.sent != outcome.rendered[c] else ""
        cuts = outcome.conns[c].cuts
        mutated += f" (sent in pieces, cut at {sorted({x % len(client.sent) for x in cuts} - {0})})" if cuts else ""
        summary = "; ".join(f"{r.index}: {'clean ' if r.clean else ''}{r.summary}" for r in outcome.conns[c].requests)
        lines += [
            f"client connection {c}{mutated}: {summary}",
            f"  sent:     {_clip(client.sent)}",
            f"  received: {_clip(client.received)} ({client.ended})",
        ]
    for k, (data, ended) in enumerate(outcome.origin_streams):
        lines.append(f"origin connection {k}{' (ended)' if ended else ''}: {_clip(data)}")
    if outcome.stderr.strip():
        lines.append("proxy stderr:\n" + outcome.stderr[-3000:])
    return "\n".join(lines)


# -- the test -------------------------------------------------------------------------------------------------------


@pytest.fixture
def fuzzer(proxy: ProxyProcess) -> Iterator[Fuzzer]:
    fuzzer = Fuzzer(proxy)
    try:
        yield fuzzer
    finally:
        fuzzer.close()


@pytest.mark.timeout(120 + EXAMPLES + 600)  # the examples, plus Hypothesis's shrinking of a failure (5 min at most)
@pytest.mark.slow
@settings(**_SETTINGS)
@given(example=grammar.examples())
def test_fuzz(fuzzer: Fuzzer, example: list[Connection]) -> None:
    """Properties 1-4 of the module docstring hold for every generated example."""
    fuzzer.run(example)
