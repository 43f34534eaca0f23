"""The hop's decisions: sampling, sample_rand, org checks and the frozen DSC (§3-§6)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.tracing import PropagationConfig
from proxy.tracing.baggage import parse_baggage
from proxy.tracing.context import (
    EMPTY_DSC,
    SAMPLE_RAND_GRID,
    FrozenDsc,
    IncomingTrace,
    continue_trace,
    derive_sample_rand,
    parse_unit,
    sample_rand_range,
    should_continue,
    start_trace,
)
from tests.unit.tracing_support import make_config

T = "771a43a4192642f0b136d5159a501700"
S = "b2c4d5e6f7a8b9c0"
SIX_DECIMALS = re.compile(r"0\.[0-9]{6}")

trace_ids = st.text("0123456789abcdef", min_size=32, max_size=32).filter(lambda s: s != "0" * 32)
rates = st.floats(min_value=0.0, max_value=1.0)
flags = st.sampled_from([True, False, None])


def config(**changes: Any) -> PropagationConfig:
    return make_config(**changes)


def incoming(baggage: str = "", sampled: bool | None = True, trace_id: str = T) -> IncomingTrace:
    return IncomingTrace(trace_id, S, sampled, FrozenDsc.from_baggage(parse_baggage([baggage] if baggage else [])))


def members(dsc: str) -> dict[str, str]:
    return dict(m.split("=", 1) for m in dsc.split(","))


def test_frozen_dsc_reads_facts() -> None:
    dsc = FrozenDsc.from_baggage(
        parse_baggage(["sentry-org_id=%34%32,sentry-sample_rand=0.5,sentry-sample_rate=1,foo=bar"])
    )
    assert dsc == FrozenDsc(("sentry-org_id=%34%32", "sentry-sample_rand=0.5", "sentry-sample_rate=1"), 0.5, 1.0, "42")
    assert FrozenDsc.from_baggage(parse_baggage(["foo=bar"])) is EMPTY_DSC
    empty_org = FrozenDsc.from_baggage(parse_baggage(["sentry-org_id=,sentry-sample_rand=1"]))
    assert (empty_org.org_id, empty_org.sample_rand) == (None, None)


@pytest.mark.parametrize(
    ("raw", "unit", "closed"),
    [
        ("0", 0.0, 0.0),
        ("0.999999", 0.999999, 0.999999),
        ("1", None, 1.0),
        ("1.5", None, None),
        ("-0.1", None, None),
        ("nan", None, None),
        ("inf", None, None),
        ("abc", None, None),
        ("", None, None),
        ("1e-7", 1e-7, 1e-7),
        ("0%2E5", 0.5, 0.5),
        (None, None, None),
    ],
)
def test_parse_unit(raw: str | None, unit: float | None, closed: float | None) -> None:
    assert parse_unit(raw) == unit
    assert parse_unit(raw, include_one=True) == closed


@pytest.mark.parametrize(
    ("ours", "theirs", "strict", "expected"),
    [
        (None, None, False, True),
        (None, None, True, True),
        ("42", "42", False, True),
        ("42", "42", True, True),
        ("42", "99", False, False),
        ("42", "99", True, False),
        ("42", "042", False, False),  # compared as strings
        ("42", None, False, True),
        ("42", None, True, False),
        (None, "42", False, True),
        (None, "42", True, False),
    ],
)
def test_should_continue(ours: str | None, theirs: str | None, strict: bool, expected: bool) -> None:
    cfg = config(dsn="http://k@127.0.0.1/1", org_id=ours or "", strict_trace_continuation=strict)
    baggage = f"sentry-org_id={theirs}" if theirs is not None else "sentry-trace_id=" + T
    assert should_continue(cfg, incoming(baggage)) is expected


def test_sample_rand_range() -> None:
    assert sample_rand_range(None, 0.5) == (0, SAMPLE_RAND_GRID)
    assert sample_rand_range(True, None) == (0, SAMPLE_RAND_GRID)
    assert sample_rand_range(True, 0.25) == (0, 250_000)
    assert sample_rand_range(False, 0.25) == (250_000, SAMPLE_RAND_GRID)
    assert sample_rand_range(True, 0.1234567) == (0, 123_457)  # 0.123456 < rate <= 0.123457
    assert sample_rand_range(False, 0.1234567) == (123_457, SAMPLE_RAND_GRID)
    # Contradictions (sampled at rate 0, unsampled at rate 1): the whole range.
    assert sample_rand_range(True, 0.0) == (0, SAMPLE_RAND_GRID)
    assert sample_rand_range(False, 1.0) == (0, SAMPLE_RAND_GRID)


@given(flags, st.one_of(st.none(), rates))
def test_sample_rand_range_agrees_with_the_decision(sampled: bool | None, rate: float | None) -> None:
    lo, hi = sample_rand_range(sampled, rate)
    assert 0 <= lo < hi <= SAMPLE_RAND_GRID
    if sampled is None or rate is None or (lo, hi) == (0, SAMPLE_RAND_GRID):
        return
    for steps in (lo, hi - 1):
        assert (steps / SAMPLE_RAND_GRID < rate) is sampled


@given(trace_ids, st.integers(0, SAMPLE_RAND_GRID - 1), st.integers(1, SAMPLE_RAND_GRID))
def test_derive_sample_rand_is_deterministic_and_in_range(trace_id: str, a: int, b: int) -> None:
    lo, hi = min(a, b - 1), max(a + 1, b)
    steps = derive_sample_rand(trace_id, lo, hi)
    assert lo <= steps < hi
    assert derive_sample_rand(trace_id, lo, hi) == steps


def test_derive_sample_rand_spreads_over_the_range() -> None:
    import random

    rng = random.Random(7)
    values = [derive_sample_rand(f"{rng.getrandbits(128):032x}", 0, SAMPLE_RAND_GRID) for _ in range(2000)]
    buckets = [0] * 10
    for value in values:
        buckets[value * 10 // SAMPLE_RAND_GRID] += 1
    assert min(buckets) > 120  # ~200 expected per decile


def test_start_trace_dsc() -> None:
    sampled, dsc = start_trace(config(), T, 0.25)
    assert sampled is True
    assert dsc.split(",") == [
        f"sentry-trace_id={T}",
        "sentry-public_key=pk123",
        "sentry-org_id=42",
        "sentry-environment=production",
        "sentry-release=billing%401.4.2",
        "sentry-sample_rate=1.0",
        "sentry-sampled=true",
        "sentry-sample_rand=0.250000",
    ]
    sampled, dsc = start_trace(config(traces_sample_rate=None, dsn=""), T, 0.5)
    assert sampled is None
    assert dsc.split(",") == [
        f"sentry-trace_id={T}",
        "sentry-environment=production",
        "sentry-release=billing%401.4.2",
        "sentry-sample_rand=0.500000",
    ]


@pytest.mark.parametrize("draw", [0.9999999, 1 - 2**-53])
def test_start_trace_truncates_and_never_writes_one(draw: float) -> None:
    assert members(start_trace(config(), T, draw)[1])["sentry-sample_rand"] == "0.999999"


@given(st.floats(min_value=0.0, max_value=1.0, exclude_max=True), rates)
def test_start_trace_samples_by_the_written_value(draw: float, rate: float) -> None:
    sampled, dsc = start_trace(config(traces_sample_rate=rate), T, draw)
    written = members(dsc)
    assert SIX_DECIMALS.fullmatch(written["sentry-sample_rand"])
    value = float(written["sentry-sample_rand"])
    assert value <= draw < value + 1e-6 + 1e-12  # truncated, not rounded
    assert sampled is (value < rate)
    assert written["sentry-sampled"] == ("true" if sampled else "false")


def test_continue_keeps_frozen_dsc_unchanged() -> None:
    baggage = "sentry-trace_id=x,sentry-public_key=other,sentry-sample_rand=0.9,sentry-sample_rate=0.5"
    for rate in (0.0, 1.0, None):
        for flag in (True, False):
            assert continue_trace(config(traces_sample_rate=rate), incoming(baggage, flag)) == (flag, None)


def test_continue_deferred_is_decided_with_the_incoming_sample_rand() -> None:
    baggage = "sentry-public_key=other,sentry-sample_rate=0.1,sentry-sample_rand=0.300000"
    for rate, expected in ((0.5, True), (0.3, False)):
        sampled, dsc = continue_trace(config(traces_sample_rate=rate), incoming(baggage, None))
        assert sampled is expected
        assert dsc is not None
        assert dsc.split(",") == [
            "sentry-public_key=other",
            f"sentry-sample_rate={rate}",
            "sentry-sample_rand=0.300000",
        ]
    assert continue_trace(config(traces_sample_rate=None), incoming(baggage, None)) == (None, None)


def test_continue_replaces_invalid_sample_rand_in_place() -> None:
    baggage = "sentry-a=1,sentry-sample_rand=1,sentry-b=2,sentry-sample_rand=abc,sentry-sample_rate=0.5"
    sampled, dsc = continue_trace(config(), incoming(baggage, True))
    assert sampled is True
    assert dsc is not None
    written = dsc.split(",")
    assert [m.partition("=")[0] for m in written] == [
        "sentry-a",
        "sentry-sample_rand",
        "sentry-b",
        "sentry-sample_rate",
    ]
    assert 0 <= float(members(dsc)["sentry-sample_rand"]) < 0.5


@given(flags, st.one_of(st.none(), rates), st.one_of(st.none(), rates), trace_ids)
def test_continue_adds_sample_rand_that_agrees(
    flag: bool | None, incoming_rate: float | None, own_rate: float | None, trace_id: str
) -> None:
    baggage = f"sentry-sample_rate={incoming_rate!r}" if incoming_rate is not None else ""
    trace = incoming(baggage, flag, trace_id)
    sampled, dsc = continue_trace(config(traces_sample_rate=own_rate), trace)
    assert dsc is not None
    written = members(dsc)
    assert "sentry-sampled" not in written  # never added to a frozen DSC
    text = written["sentry-sample_rand"]
    assert SIX_DECIMALS.fullmatch(text)
    value = float(text)
    lo, hi = sample_rand_range(flag, incoming_rate if incoming_rate is not None else own_rate)
    assert lo / SAMPLE_RAND_GRID <= value < hi / SAMPLE_RAND_GRID
    # Deterministic per trace: every request of the trace writes the same value.
    assert continue_trace(config(traces_sample_rate=own_rate), trace) == (sampled, dsc)
    if flag is not None:
        assert sampled is flag
    elif own_rate is not None:
        assert sampled is (value < own_rate)
        assert written["sentry-sample_rate"] == config(traces_sample_rate=own_rate).sample_rate_text
    else:
        assert sampled is None
