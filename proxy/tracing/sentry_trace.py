"""Parse and format the trace-identity headers: Sentry's ``sentry-trace`` and W3C ``traceparent``.

Both headers carry the same three facts (trace id, span id of the sender, sampling decision), so
both parse into one :class:`TraceHeader`. The grammar is deliberately stricter than the SDKs'
regex (docs/propagation.md §1, §8): every SDK accepts what this module accepts, and everything it
rejects is treated as "no header", which makes the proxy start a new trace.

One anchored regular expression per header is used: validating 48 hex digits with ``str``
methods takes several calls, and this runs on every request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, NamedTuple

__all__ = [
    "TraceHeader",
    "format_sentry_trace",
    "format_traceparent",
    "parse_sentry_trace",
    "parse_traceparent",
]

# TRACE_ID-SPAN_ID[-SAMPLED], lowercase hex, ids not all zero, spaces/tabs around ignored.
_SENTRY_TRACE_RE: Final = re.compile(r"[ \t]*(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})(?:-([01]))?[ \t]*")
# 00-TRACE_ID-SPAN_ID-FLAGS (version 00 only), same id rules.
_TRACEPARENT_RE: Final = re.compile(r"[ \t]*00-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})[ \t]*")

_match_sentry_trace: Final = _SENTRY_TRACE_RE.fullmatch
_match_traceparent: Final = _TRACEPARENT_RE.fullmatch
# ``TraceHeader(...)`` runs a Python-level ``__new__``; the tuple constructor builds the same
# object in a third of the time (this is what ``namedtuple._make`` does).
_new_tuple: Final = tuple.__new__

_SENTRY_FLAG_IN: Final[dict[str | None, bool | None]] = {"1": True, "0": False, None: None}
_SENTRY_FLAG_OUT: Final[dict[bool | None, str]] = {True: "-1", False: "-0", None: ""}
_W3C_FLAGS_OUT: Final[dict[bool | None, str]] = {True: "-01", False: "-00", None: "-00"}


class TraceHeader(NamedTuple):
    """One parsed trace header: whose trace, which span sent it, and its sampling decision.

    ``sampled`` is ``None`` when the sender deferred the decision to the next hop.
    """

    trace_id: str
    span_id: str
    sampled: bool | None


def parse_sentry_trace(values: Sequence[str]) -> TraceHeader | None:
    """Return the first valid ``sentry-trace`` among ``values``, or ``None``.

    Each element is one header line; a line may itself be a comma-joined list (an HTTP stack
    folding repeated headers). The first valid entry wins, as in the Python SDK; invalid entries
    are skipped, and "nothing valid" means "no header". Never raises on text input.
    """
    for value in values:
        match = _match_sentry_trace(value)
        if match is None and "," in value:
            for part in value.split(","):
                match = _match_sentry_trace(part)
                if match is not None:
                    break
        if match is not None:
            trace_id, span_id, flag = match.groups()
            return _new_tuple(TraceHeader, (trace_id, span_id, _SENTRY_FLAG_IN[flag]))
    return None


def parse_traceparent(values: Sequence[str]) -> TraceHeader | None:
    """Return the first valid W3C ``traceparent`` (version ``00``) among ``values``, or ``None``.

    Same list handling as :func:`parse_sentry_trace`. Flags with bit 0 (sampled) set mean
    sampled; otherwise the decision is read as deferred (``None``), because W3C cannot express
    "deferred" and Node writes it as ``00``. Never raises on text input.
    """
    for value in values:
        match = _match_traceparent(value)
        if match is None and "," in value:
            for part in value.split(","):
                match = _match_traceparent(part)
                if match is not None:
                    break
        if match is not None:
            trace_id, span_id, flags = match.groups()
            return TraceHeader(trace_id, span_id, True if int(flags, 16) & 1 else None)
    return None


def format_sentry_trace(trace_id: str, span_id: str, sampled: bool | None) -> str:
    """``{trace_id}-{span_id}-1``, ``…-0``, or ``{trace_id}-{span_id}`` when deferred."""
    return f"{trace_id}-{span_id}{_SENTRY_FLAG_OUT[sampled]}"  # compiled: one allocation, where + makes three


def format_traceparent(trace_id: str, span_id: str, sampled: bool | None) -> str:
    """``00-{trace_id}-{span_id}-01`` when sampled, ``…-00`` when not sampled or deferred."""
    return f"00-{trace_id}-{span_id}{_W3C_FLAGS_OUT[sampled]}"
