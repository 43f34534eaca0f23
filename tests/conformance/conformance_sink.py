"""A local stand-in for Sentry's ingestion: an aiohttp server on 127.0.0.1 that records what sentry-sdk sends.

The sink runs its own event loop on a background thread, so one instance can serve a whole test session and any
number of SDK processes. Tests wait for what they need with `EnvelopeSink.wait_for_transaction` (a bounded wait on
a condition variable, safe to call from any thread) and match transactions by trace id, so envelopes that belong
to other tests never get in the way.

What the SDK reports for the root span of a request, its *segment*, is recorded as a `ReceivedTransaction` in
either form: a ``transaction`` event item (sentry-sdk 2.x) or a ``span`` item of span format v2 with
``is_segment: true`` (sentry-sdk 3.x streams spans, and a segment span is what became of the transaction).

Accepted: ``POST /api/<project>/envelope/`` (the SDK's transport), with ``Content-Encoding`` gzip, deflate or
identity; anything else (``/api/<project>/store/``, other methods) is recorded in `EnvelopeSink.requests` and
answered 200 as well, so an SDK never retries against the sink.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class EnvelopeItem:
    headers: dict[str, Any]
    payload: bytes

    @property
    def type(self) -> str | None:
        return self.headers.get("type")

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass(frozen=True)
class Envelope:
    headers: dict[str, Any]
    items: list[EnvelopeItem]

    @property
    def dsc(self) -> dict[str, Any] | None:
        """The dynamic sampling context the SDK put in the envelope header (``trace``), if any."""
        return self.headers.get("trace")


SPAN_V2_CONTENT_TYPE = "application/vnd.sentry.items.span.v2+json"


@dataclass(frozen=True)
class ReceivedTransaction:
    """One transaction, or one segment span (`kind` says which), and the envelope it came in.

    `event` is the transaction event, or the segment span's JSON as sent (``attributes`` with typed values).
    """

    event: dict[str, Any]
    envelope: Envelope
    path: str
    request_headers: dict[str, str]  # of the POST that brought it, names lower-cased
    kind: str = "transaction"  # or "span": a segment span of span format v2

    @property
    def dsc(self) -> dict[str, Any] | None:
        return self.envelope.dsc

    @property
    def trace_context(self) -> dict[str, Any]:
        """``trace_id``, ``span_id``, ``parent_span_id``: the transaction's trace context, or the span's own ids."""
        if self.kind == "span":
            return {key: self.event[key] for key in ("trace_id", "span_id", "parent_span_id") if key in self.event}
        trace: dict[str, Any] = self.event.get("contexts", {}).get("trace", {})
        return trace

    @property
    def environment(self) -> Any:
        return self._field("environment")

    @property
    def release(self) -> Any:
        return self._field("release")

    def _field(self, name: str) -> Any:
        """An event field, or for a span the value of its ``sentry.<name>`` attribute."""
        if self.kind == "span":
            attribute = self.event.get("attributes", {}).get(f"sentry.{name}")
            return attribute.get("value") if isinstance(attribute, dict) else None
        return self.event.get(name)


def segment_spans(item: EnvelopeItem) -> list[dict[str, Any]]:
    """The segment spans (``is_segment: true``) of a ``span`` item of span format v2; ValueError if it is not one."""
    if item.headers.get("content_type") != SPAN_V2_CONTENT_TYPE:
        raise ValueError(f"span item of content type {item.headers.get('content_type')!r}, not span v2")
    payload = item.json()
    if not isinstance(payload, dict) or payload.get("version") != 2 or not isinstance(payload.get("items"), list):
        raise ValueError(f"span item payload is not span format v2: {item.payload[:200]!r}")
    return [span for span in payload["items"] if isinstance(span, dict) and span.get("is_segment") is True]


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes  # decoded (decompressed)
    envelope: Envelope | None = None
    error: str | None = None


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate, identity); a gzip body without the header is unpacked too."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("gzip", "x-gzip") or (encoding == "identity" and body.startswith(GZIP_MAGIC)):
        return gzip.decompress(body)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, as some clients send it
    if encoding == "identity":
        return body
    raise ValueError(f"unsupported Content-Encoding {content_encoding!r}")


def parse_envelope(data: bytes) -> Envelope:
    """Parse a Sentry envelope: a JSON header line, then items, each a JSON header line and a payload.

    The payload is ``length`` bytes when the item header has a length (then an optional newline), else everything
    up to the next newline (or the end).
    """
    header_line, _, rest = data.partition(b"\n")
    headers = json.loads(header_line)
    if not isinstance(headers, dict):
        raise ValueError(f"envelope header is not a JSON object: {header_line[:200]!r}")
    items: list[EnvelopeItem] = []
    while rest:
        item_line, newline, rest = rest.partition(b"\n")
        if not item_line.strip():
            if not newline:
                break
            continue  # tolerate blank lines between items and a trailing newline
        item_headers = json.loads(item_line)
        if not isinstance(item_headers, dict):
            raise ValueError(f"item header is not a JSON object: {item_line[:200]!r}")
        length = item_headers.get("length")
        if length is not None:
            if not isinstance(length, int) or length < 0 or len(rest) < length:
                raise ValueError(f"item length {length!r} does not fit the {len(rest)} bytes left")
            payload, rest = rest[:length], rest[length:]
            if rest.startswith(b"\n"):
                rest = rest[1:]
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append(EnvelopeItem(item_headers, payload))
    return Envelope(headers, items)


@dataclass
class EnvelopeSink:
    """Run with `start` / `stop` (or as a context manager); `dsn(public_key, project)` points an SDK at it."""

    host: str = "127.0.0.1"
    port: int = 0
    requests: list[ReceivedRequest] = field(default_factory=list)
    transactions: list[ReceivedTransaction] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    def dsn(self, public_key: str, project: int | str) -> str:
        return f"http://{public_key}@{self.host}:{self.port}/{project}"

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> EnvelopeSink:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
                loop.close()

        self._thread = threading.Thread(target=run, name="envelope-sink", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise TimeoutError(f"envelope sink did not start within {timeout}s")
        if failure:
            raise RuntimeError("envelope sink failed to start") from failure[0]
        return self

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # auto_decompress=False: the sink sees the bytes the SDK sent and undoes Content-Encoding itself.
        self._runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> EnvelopeSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- receiving -------------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        received = ReceivedRequest(request.method, request.path, dict(request.headers), raw)
        try:
            received.body = decode_body(raw, request.headers.get("Content-Encoding"))
            if request.method == "POST" and request.path.endswith("/envelope/"):
                received.envelope = parse_envelope(received.body)
            else:
                log.warning("envelope sink: %s %s (not an envelope endpoint)", request.method, request.path)
        except (ValueError, OSError, EOFError, zlib.error) as exc:  # OSError/EOFError: bad gzip data
            received.error = f"{type(exc).__name__}: {exc}"
            log.error("envelope sink: cannot read %s %s: %s", request.method, request.path, received.error)
        with self._cond:
            self.requests.append(received)
            if received.envelope is not None:
                headers = {k.lower(): v for k, v in request.headers.items()}
                for item in received.envelope.items:
                    try:
                        if item.type == "transaction":
                            found = [ReceivedTransaction(item.json(), received.envelope, request.path, headers)]
                        elif item.type == "span":
                            found = [
                                ReceivedTransaction(span, received.envelope, request.path, headers, kind="span")
                                for span in segment_spans(item)
                            ]
                        else:
                            continue
                    except ValueError as exc:  # json.JSONDecodeError is a ValueError
                        received.error = f"{item.type} item unreadable: {exc}"
                        continue
                    self.transactions.extend(found)
            self._cond.notify_all()
        return web.json_response({"id": received.envelope.headers.get("event_id") if received.envelope else None})

    # -- waiting ---------------------------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[ReceivedTransaction], bool], timeout: float = 15.0) -> ReceivedTransaction:
        """The first transaction matching `predicate`, waiting up to `timeout` seconds for it to arrive."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for transaction in self.transactions:
                    if predicate(transaction):
                        return transaction
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no matching transaction within {timeout}s; received: {self.describe_received()}"
                    )
                self._cond.wait(remaining)

    def wait_for_transaction(self, trace_id: str, timeout: float = 15.0) -> ReceivedTransaction:
        return self.wait_for(lambda t: t.trace_context.get("trace_id") == trace_id, timeout)

    def transactions_for(self, trace_id: str) -> list[ReceivedTransaction]:
        with self._cond:
            return [t for t in self.transactions if t.trace_context.get("trace_id") == trace_id]

    def describe_received(self) -> str:
        """A short account of every request so far (the condition's lock is an RLock: callable while held)."""
        lines = []
        for r in self.requests:
            kinds = [i.type for i in r.envelope.items] if r.envelope else None
            lines.append(f"{r.method} {r.path} items={kinds} error={r.error}")
        return "; ".join(lines) or "nothing"
