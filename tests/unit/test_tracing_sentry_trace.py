"""``sentry-trace`` and ``traceparent`` parsing and formatting (docs/propagation.md §1, §8)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.tracing.sentry_trace import (
    TraceHeader,
    format_sentry_trace,
    format_traceparent,
    parse_sentry_trace,
    parse_traceparent,
)

T = "771a43a4192642f0b136d5159a501700"
S = "b2c4d5e6f7a8b9c0"

# The grammar of docs/propagation.md §1, written independently of the implementation.
SENTRY_TRACE_GRAMMAR = re.compile(r"([0-9a-f]{32})-([0-9a-f]{16})(-[01])?")
TRACEPARENT_GRAMMAR = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]")

trace_ids = st.text("0123456789abcdef", min_size=32, max_size=32).filter(lambda s: s != "0" * 32)
span_ids = st.text("0123456789abcdef", min_size=16, max_size=16).filter(lambda s: s != "0" * 16)
flags = st.sampled_from([True, False, None])
ows = st.text(" \t", max_size=3)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{T}-{S}-1", TraceHeader(T, S, True)),
        (f"{T}-{S}-0", TraceHeader(T, S, False)),
        (f"{T}-{S}", TraceHeader(T, S, None)),
        (f" \t{T}-{S}-1\t ", TraceHeader(T, S, True)),
    ],
)
def test_sentry_trace_valid(value: str, expected: TraceHeader) -> None:
    assert parse_sentry_trace([value]) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "nonsense",
        f"{T.upper()}-{S.upper()}-1",
        f"{T[:-1]}A-{S}-1",
        f"{T}a-{S}-1",
        f"{T[:-1]}-{S}-1",
        f"{T}-{S}a-1",
        f"{T}-{S}-2",
        f"{T}-{S}-true",
        f"{T}-{S}-1-extra",
        f"{T}-{S}-",
        f"{T}--1",
        T,
        f"{T}{S}1",
        f"00-{T}-{S}-00",
        f"{'0' * 32}-{S}-1",
        f"{T}-{'0' * 16}-1",
        f"{T}-{S}-1\n",
        f"{T} -{S}-1",
    ],
)
def test_sentry_trace_invalid(value: str) -> None:
    assert parse_sentry_trace([value]) is None


def test_sentry_trace_first_valid_value_counts() -> None:
    other = "0af7651916cd43dd8448eb211c80319c"
    assert parse_sentry_trace([f"{T}-{S}-1", f"{other}-{S}-0"]) == TraceHeader(T, S, True)
    assert parse_sentry_trace(["bad", f"{other}-{S}-0"]) == TraceHeader(other, S, False)
    # Comma-joined values are a list too; whitespace after the comma is OWS.
    assert parse_sentry_trace([f"bad, {other}-{S}-0, {T}-{S}-1"]) == TraceHeader(other, S, False)
    assert parse_sentry_trace(["bad", "worse"]) is None
    assert parse_sentry_trace([]) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"00-{T}-{S}-01", TraceHeader(T, S, True)),
        (f"00-{T}-{S}-00", TraceHeader(T, S, None)),
        (f"00-{T}-{S}-03", TraceHeader(T, S, True)),
        (f"00-{T}-{S}-02", TraceHeader(T, S, None)),
        (f"00-{T}-{S}-ff", TraceHeader(T, S, True)),
        (f" 00-{T}-{S}-01 ", TraceHeader(T, S, True)),
    ],
)
def test_traceparent_valid(value: str, expected: TraceHeader) -> None:
    assert parse_traceparent([value]) == expected


@pytest.mark.parametrize(
    "value",
    [
        f"01-{T}-{S}-01",
        f"ff-{T}-{S}-01",
        f"00-{T}-{S}-01-extra",
        f"00-{T.upper()}-{S}-01",
        f"00-{T}-{S}-0F",
        f"00-{T}-{S}-1",
        f"00-{'0' * 32}-{S}-01",
        f"00-{T}-{'0' * 16}-01",
        f"{T}-{S}-1",
        "",
    ],
)
def test_traceparent_invalid(value: str) -> None:
    assert parse_traceparent([value]) is None


def test_format() -> None:
    assert format_sentry_trace(T, S, True) == f"{T}-{S}-1"
    assert format_sentry_trace(T, S, False) == f"{T}-{S}-0"
    assert format_sentry_trace(T, S, None) == f"{T}-{S}"
    assert format_traceparent(T, S, True) == f"00-{T}-{S}-01"
    assert format_traceparent(T, S, False) == f"00-{T}-{S}-00"
    assert format_traceparent(T, S, None) == f"00-{T}-{S}-00"


@given(st.lists(st.text(), max_size=4))
def test_parse_never_raises_and_results_are_valid(values: list[str]) -> None:
    for parse in (parse_sentry_trace, parse_traceparent):
        header = parse(values)
        if header is not None:
            assert SENTRY_TRACE_GRAMMAR.fullmatch(format_sentry_trace(*header))
            assert header.trace_id != "0" * 32
            assert header.span_id != "0" * 16


@given(trace_ids, span_ids, flags, ows, ows)
def test_sentry_trace_round_trip(trace_id: str, span_id: str, sampled: bool | None, lead: str, tail: str) -> None:
    text = format_sentry_trace(trace_id, span_id, sampled)
    assert SENTRY_TRACE_GRAMMAR.fullmatch(text)
    header = parse_sentry_trace([lead + text + tail])
    assert header == TraceHeader(trace_id, span_id, sampled)
    assert format_sentry_trace(*header) == text


@given(trace_ids, span_ids, flags)
def test_traceparent_round_trip(trace_id: str, span_id: str, sampled: bool | None) -> None:
    text = format_traceparent(trace_id, span_id, sampled)
    assert TRACEPARENT_GRAMMAR.fullmatch(text)
    # W3C has no "deferred": not sampled and deferred both read back as deferred.
    assert parse_traceparent([text]) == TraceHeader(trace_id, span_id, True if sampled else None)


@given(st.lists(st.text(max_size=60), max_size=3), trace_ids, span_ids, flags)
def test_first_valid_wins_after_garbage(garbage: list[str], trace_id: str, span_id: str, sampled: bool | None) -> None:
    valid = format_sentry_trace(trace_id, span_id, sampled)
    first_valid = parse_sentry_trace(garbage)
    result = parse_sentry_trace([*garbage, valid, "0af7651916cd43dd8448eb211c80319c-b2c4d5e6f7a8b9c0-1"])
    assert result == (first_valid if first_valid is not None else TraceHeader(trace_id, span_id, sampled))
