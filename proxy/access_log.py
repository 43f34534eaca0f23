"""The access log: one line per proxied request, written by an exchange observer once the exchange has ended.

The hot path never logs: `AccessLog` is told of every finished exchange (`ExchangeEnds`, like the counters) only
while ``[log] access = true``, and reads what it writes from the exchange's record. The method and the path come
from the request line the origin received (`RequestPlan.head`), the path cut at its ``?``: a query string often
carries tokens, so it is never logged, and neither is any header (``Authorization``, ``Cookie`` and
``Proxy-Authorization`` included): the line has no field for them.

A CONNECT is logged as its tunnel opens (or fails) with its target as host and port, and no path or trace: what
goes through the tunnel is opaque. A request the proxy refused before it had a plan (a client not allowed, a
malformed head) has no method, host, path or trace: those fields are ``-`` in text and null in JSON, and the status
and outcome say what happened.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from proxy.config import LogSettings
from proxy.logs import ACCESS_LOGGER, access_stream
from proxy.server.exchange import CONNECT, UNPLANNED, Exchange
from proxy.tracing import TraceSource

__all__ = ["AccessLog", "access_fields", "access_observers", "access_text", "json_line"]

# The fields of a line, in order (the text format's ``key=value`` pairs, the JSON object's extra members).
FIELDS = (
    "method",
    "scheme",
    "host",
    "port",
    "path",
    "status",
    "bytes_to_origin",
    "bytes_to_client",
    "duration_s",
    "trace_id",
    "span_id",
    "sampled",
    "source",
    "outcome",
)


def _request_line(head: bytes) -> tuple[str | None, str | None]:
    """The method and the path without its query of a request head (``GET /a?b HTTP/1.1``); None, None if empty."""
    end = head.find(b"\r\n")
    line = head if end < 0 else head[:end]
    method, _, rest = line.partition(b" ")
    if not method:
        return None, None
    target = rest.rpartition(b" ")[0] or rest
    target = target.split(b"?", 1)[0].split(b"#", 1)[0]
    return method.decode("ascii", "backslashreplace"), target.decode("ascii", "backslashreplace")


def access_fields(exchange: Exchange) -> dict[str, Any]:
    """The access line of an ended exchange, as a mapping from `FIELDS` to JSON values (None: not known)."""
    plan = exchange.plan
    decision = plan.decision
    host, port = plan.origin
    method: str | None
    path: str | None
    scheme: str | None
    if exchange.kind == CONNECT:  # a tunnel: its target, and no request line, path or trace of its own
        method, path, scheme = "CONNECT", None, None
    else:
        method, path = _request_line(plan.head)
        scheme = "http" if host else None
    touched = decision.source is not TraceSource.UNTOUCHED
    sampled = decision.sampled
    outcome = exchange.outcome
    return {
        "method": method,
        "scheme": scheme,
        "host": host or None,
        "port": port or None,
        "path": path,
        "status": exchange.status,  # 0: no response head reached the client
        "bytes_to_origin": exchange.bytes_to_origin,
        "bytes_to_client": exchange.bytes_to_client,
        "duration_s": round(max(exchange.ended - exchange.started, 0.0), 6),
        "trace_id": decision.trace_id,
        "span_id": decision.span_id,
        "sampled": ("deferred" if sampled is None else sampled) if touched else None,
        "source": decision.source.value if plan is not UNPLANNED and exchange.kind != CONNECT else None,
        "outcome": outcome.value if outcome is not None else None,
    }


def _dash(value: object) -> object:
    return "-" if value is None else value


def access_text(fields: dict[str, Any]) -> str:
    """The text format's line: `FIELDS` as ``key=value`` pairs in order; ``-`` for an unknown value."""
    sampled = fields["sampled"]
    if sampled is not None and sampled != "deferred":
        sampled = "true" if sampled else "false"
    return (
        f"method={_dash(fields['method'])} scheme={_dash(fields['scheme'])} host={_dash(fields['host'])} "
        f"port={_dash(fields['port'])} path={_dash(fields['path'])} status={fields['status']} "
        f"bytes_to_origin={fields['bytes_to_origin']} bytes_to_client={fields['bytes_to_client']} "
        f"duration_s={fields['duration_s']} trace_id={_dash(fields['trace_id'])} span_id={_dash(fields['span_id'])} "
        f"sampled={_dash(sampled)} source={_dash(fields['source'])} outcome={_dash(fields['outcome'])}"
    )


class AccessLog:
    """The exchange observer that writes the access log (``proxy.access``): as ``key=value`` pairs in the message
    for the text format, as fields of the object (and the message ``access``) for JSON.

    The line is made here and written straight to the stream of the handler `proxy.logs` installed, exactly as that
    handler's formatter would write it (a unit test compares the two). Going through `Logger.handle` cost about 34
    µs per line, four fifths of it in the logging machinery (the record, `asctime` formatted anew for every line,
    the handler's lock and flush), which more than doubled the proxy's CPU per request with the access log on; a
    text line's time is formatted once a second here. Without that handler (logging not configured by
    `configure_logging`), lines go through `logger` as any other."""

    def __init__(self, logger: logging.Logger, json: bool) -> None:
        self._logger = logger
        self._json = json
        self._second = -1  # the text format's time, to the second, as formatted last: ``2026-01-02 03:04:05``
        self._stamp = ""

    def exchange_ended(self, exchange: Exchange) -> None:
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        try:
            fields = access_fields(exchange)
            stream = access_stream()
            if stream is None:
                self._through_logger(fields)
                return
            now = time.time()
            if self._json:
                line = json_line(now, logger.name, fields)
            else:
                second = int(now)
                if second != self._second:
                    self._second = second
                    self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
                line = f"{self._stamp},{int((now - second) * 1000):03d} INFO {logger.name}: {access_text(fields)}\n"
            stream.write(line)
        except Exception:  # never let a log line cost the client its answer
            logger.exception("cannot write the access line of a request")

    def _through_logger(self, fields: dict[str, Any]) -> None:
        logger = self._logger
        if self._json:
            record = logger.makeRecord(logger.name, logging.INFO, "", 0, "access", (), None, extra=fields)
        else:
            record = logger.makeRecord(logger.name, logging.INFO, "", 0, access_text(fields), (), None)
        logger.handle(record)


# json.dumps with any non-default option builds a new encoder per call: one, made once.
_JSON = json.JSONEncoder(ensure_ascii=False)


def json_line(now: float, logger: str, fields: dict[str, Any]) -> str:
    """The JSON access line at `now`, as `proxy.logs.json_formatter` writes a record with these fields."""
    line = {"time": datetime.fromtimestamp(now, tz=UTC).isoformat(), "level": "INFO", "logger": logger}
    line["message"] = "access"
    line.update(fields)
    return _JSON.encode(line) + "\n"


def access_observers(settings: LogSettings) -> tuple[AccessLog, ...]:
    """The exchange observers ``[log]`` asks for: an `AccessLog` in its format with ``access = true``, else none (so
    that a proxy without an access log pays nothing for it)."""
    if not settings.access:
        return ()
    return (AccessLog(logging.getLogger(ACCESS_LOGGER), json=settings.format == "json"),)
