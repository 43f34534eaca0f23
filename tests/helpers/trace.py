"""What a valid `sentry-trace` / `baggage` written by the proxy looks like."""

from __future__ import annotations

import re
from dataclasses import dataclass

SENTRY_TRACE_RE = re.compile(r"^([0-9a-f]{32})-([0-9a-f]{16})(?:-([01]))?$")


@dataclass(frozen=True)
class SentryTrace:
    trace_id: str
    span_id: str
    sampled: str | None  # "1", "0" or None (deferred)


def parse_sentry_trace(value: str) -> SentryTrace:
    match = SENTRY_TRACE_RE.match(value)
    assert match is not None, f"invalid sentry-trace {value!r}"
    trace_id, span_id, sampled = match.groups()
    assert set(trace_id) != {"0"} and set(span_id) != {"0"}, f"all-zero id in {value!r}"
    return SentryTrace(trace_id, span_id, sampled)


def baggage_members(value: str) -> list[tuple[str, str]]:
    """`key=value` members of a baggage header, in order (properties kept in the value)."""
    members = []
    for item in value.split(","):
        item = item.strip()
        if item:
            key, sep, val = item.partition("=")
            assert sep, f"baggage member without '=': {item!r}"
            members.append((key.strip(), val.strip()))
    return members


def sentry_members(value: str) -> dict[str, str]:
    return {k: v for k, v in baggage_members(value) if k.startswith("sentry-")}


def assert_added_by_proxy(
    sentry_trace_values: list[str], baggage_values: list[str], *, dsc: bool = True
) -> SentryTrace:
    """The origin saw exactly one valid `sentry-trace` and one `baggage` carrying the same trace id.

    With `dsc=False` (a continued trace whose caller sent no DSC, which stays frozen), at most one `baggage`.

    The proxy under test writes them on every request whose URL matches its targets (`.*` by default); a request
    that bypassed the proxy, or went through another one, has none.
    """
    assert len(sentry_trace_values) == 1, f"expected one sentry-trace, got {sentry_trace_values}"
    trace = parse_sentry_trace(sentry_trace_values[0])
    if not dsc:
        assert len(baggage_values) <= 1, f"expected at most one baggage, got {baggage_values}"
        return trace
    assert len(baggage_values) == 1, f"expected one baggage, got {baggage_values}"
    assert sentry_members(baggage_values[0]).get("sentry-trace_id") == trace.trace_id, baggage_values
    return trace
