"""The access log: one line per proxied request, written by an exchange observer once the exchange has ended.

The hot path never logs: `AccessLog` is told of every finished exchange (`ExchangeEnds`, like the counters) only
while ``[log] access = true``, and reads what it writes from the exchange's record. The method and the path come
from the request line the origin received (`RequestPlan.head`), the path cut at its ``?``: a query string often
carries tokens, so it is never logged, and neither is any header (``Authorization``, ``Cookie`` and
``Proxy-Authorization`` included): the line has no field for them.

A request the proxy refused before it had a plan (a client not allowed, a malformed head) has no method, host,
path or trace: those fields are ``-`` in text and null in JSON, and the status and outcome say what happened.
"""

from __future__ import annotations

import logging
from typing import Any

from proxy.config import LogSettings
from proxy.logs import ACCESS_LOGGER
from proxy.server.exchange import UNPLANNED, Exchange
from proxy.tracing import TraceSource

__all__ = ["AccessLog", "access_fields", "access_observers"]

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
_TEXT = " ".join(f"{name}=%s" for name in FIELDS)


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
    method, path = _request_line(plan.head)
    host, port = plan.origin
    touched = decision.source is not TraceSource.UNTOUCHED
    sampled = decision.sampled
    outcome = exchange.outcome
    return {
        "method": method,
        "scheme": "http" if host else None,
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
        "source": decision.source.value if plan is not UNPLANNED else None,
        "outcome": outcome.value if outcome is not None else None,
    }


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


class AccessLog:
    """The exchange observer that writes the access log to `logger` (``proxy.access``): as ``key=value`` pairs in
    the message for the text format, as fields of the object (and the message ``access``) for JSON."""

    def __init__(self, logger: logging.Logger, json: bool) -> None:
        self._logger = logger
        self._json = json

    def exchange_ended(self, exchange: Exchange) -> None:
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        try:
            fields = access_fields(exchange)
        except Exception:  # never let a log line cost the client its answer
            logger.exception("cannot write the access line of a request")
            return
        if self._json:
            logger.info("access", extra=fields)
        else:
            logger.info(_TEXT, *(_text(fields[name]) for name in FIELDS))


def access_observers(settings: LogSettings) -> tuple[AccessLog, ...]:
    """The exchange observers ``[log]`` asks for: an `AccessLog` in its format with ``access = true``, else none (so
    that a proxy without an access log pays nothing for it)."""
    if not settings.access:
        return ()
    return (AccessLog(logging.getLogger(ACCESS_LOGGER), json=settings.format == "json"),)
