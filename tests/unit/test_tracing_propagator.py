"""The Propagator facade: sources in order (§10), environment (§9), traceparent (§8), output validity."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.tracing import (
    Decision,
    IncomingTrace,
    PropagationConfig,
    Propagator,
    Replaced,
    SystemIdSource,
    TraceSource,
)
from proxy.tracing.baggage import MAX_BAGGAGE_BYTES, MAX_BAGGAGE_MEMBERS, parse_baggage
from tests.unit.tracing_support import make_config

T = "771a43a4192642f0b136d5159a501700"
S = "b2c4d5e6f7a8b9c0"
NEW_T = "0af7651916cd43dd8448eb211c80319c"
NEW_S = "00f067aa0ba902b7"
URL = "http://orders.internal:8080/v1/orders?id=3"
SENTRY_TRACE = re.compile(r"([0-9a-f]{32})-([0-9a-f]{16})(?:-([01]))?")
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]")
DSC = (
    f"sentry-trace_id={T},sentry-public_key=other,sentry-sample_rate=0.5,"
    "sentry-sampled=true,sentry-sample_rand=0.123456"
)


class FixedIds:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def new_trace_id(self) -> str:
        self.calls.append("trace_id")
        return NEW_T

    def new_span_id(self) -> str:
        self.calls.append("span_id")
        return NEW_S

    def sample_rand(self) -> float:
        self.calls.append("sample_rand")
        return 0.25


def config(**changes: Any) -> PropagationConfig:
    return make_config(**changes)


def test_names() -> None:
    plain = Propagator(config(), FixedIds())
    assert plain.strip_names == frozenset({"sentry-trace", "baggage"})
    w3c = Propagator(config(propagate_traceparent=True), FixedIds())
    assert w3c.strip_names == frozenset({"sentry-trace", "baggage", "traceparent"})
    assert "tracestate" not in w3c.strip_names


def test_untouched_reads_and_draws_nothing() -> None:
    ids = FixedIds()
    propagator = Propagator(config(trace_propagation_targets=["^https://"]), ids)
    assert not propagator.matches(URL)
    decision = propagator.decide(URL, {"sentry-trace": [f"{T}-{S}-1"]})
    assert decision == Decision(TraceSource.UNTOUCHED, None, None, None, None, None, None, None)
    assert ids.calls == []


def test_decision_is_frozen() -> None:
    decision = Propagator(config(), SystemIdSource()).decide(URL, {})
    assert type(decision) is Decision
    with pytest.raises(AttributeError):
        decision.baggage = None  # type: ignore[misc]
    assert decision._replace() == decision
    assert hash(decision) == hash(decision._replace())


def test_extract() -> None:
    propagator = Propagator(config(propagate_traceparent=True), FixedIds())
    trace = propagator.extract({"sentry-trace": [f"{T}-{S}"], "baggage": [DSC + ",foo=bar"]})
    assert isinstance(trace, IncomingTrace)
    assert (trace.trace_id, trace.parent_span_id, trace.sampled, trace.from_traceparent) == (T, S, None, False)
    assert trace.dsc.members == tuple(DSC.split(","))
    w3c = propagator.extract({"traceparent": [f"00-{T}-{S}-01"], "baggage": [DSC]})
    assert w3c is not None
    assert (w3c.trace_id, w3c.sampled, w3c.dsc.members, w3c.from_traceparent) == (T, True, (), True)
    assert propagator.extract({"baggage": [DSC]}) is None
    assert Propagator(config(), FixedIds()).extract({"traceparent": [f"00-{T}-{S}-01"]}) is None


def test_traceparent_source_drops_request_dsc_keeps_third_party() -> None:
    propagator = Propagator(config(propagate_traceparent=True), FixedIds())
    decision = propagator.decide(URL, {"traceparent": [f"00-{T}-{S}-00"], "baggage": [DSC + ",foo=bar"]})
    assert decision.source is TraceSource.TRACEPARENT
    assert decision.parent_span_id == S
    # Deferred in W3C form, decided by the proxy's rate 1.0.
    assert decision.sentry_trace == f"{T}-{NEW_S}-1"
    assert decision.traceparent == f"00-{T}-{NEW_S}-01"
    assert decision.baggage is not None
    written = decision.baggage.split(",")
    assert written[-1] == "foo=bar"
    assert sorted(m.partition("=")[0] for m in written[:-1]) == ["sentry-sample_rand", "sentry-sample_rate"]


def test_org_mismatch_turns_a_request_trace_into_a_new_one_not_the_environment() -> None:
    env = {"sentry-trace": [f"{T}-{S}-1"], "baggage": [DSC]}
    propagator = Propagator(config(), FixedIds(), env)
    decision = propagator.decide(URL, {"sentry-trace": [f"{T}-{S}-1"], "baggage": ["sentry-org_id=99,x=1"]})
    assert decision.source is TraceSource.NEW
    assert decision.trace_id == NEW_T
    assert decision.baggage is not None
    assert decision.baggage.endswith(",x=1")
    assert "sentry-org_id=42" in decision.baggage.split(",")


class TestEnvironment:
    def test_continued_for_every_request_without_a_trace(self) -> None:
        ids = FixedIds()
        propagator = Propagator(config(), ids, {"sentry-trace": [f"{T}-{S}-0"], "baggage": [DSC + ",envparty=1"]})
        first = propagator.decide(URL, {"baggage": ["sentry-trace_id=stale,foo=bar"]})
        assert first.source is TraceSource.ENVIRONMENT
        assert (first.trace_id, first.parent_span_id, first.sampled) == (T, S, False)
        # The environment's DSC, the request's own third-party members; not the environment's
        # third-party members nor the request's stale DSC.
        assert first.baggage == DSC + ",foo=bar"
        assert propagator.decide(URL, {}).baggage == DSC
        assert ids.calls == ["span_id", "span_id"]

    def test_sample_rand_derived_once_for_all_requests(self) -> None:
        propagator = Propagator(config(traces_sample_rate=None), SystemIdSource(), {"sentry-trace": [f"{T}-{S}"]})
        decisions = [propagator.decide(URL, {}) for _ in range(3)]
        assert {d.baggage for d in decisions} == {decisions[0].baggage}
        assert len({d.span_id for d in decisions}) == 3
        assert decisions[0].baggage is not None
        assert decisions[0].baggage.startswith("sentry-sample_rand=0.")

    @pytest.mark.parametrize(
        "env",
        [
            {"sentry-trace": ["nonsense"], "baggage": [DSC]},
            {"sentry-trace": [f"{T}-{S}-1"], "baggage": ["sentry-org_id=99"]},
            {"baggage": [DSC]},
        ],
    )
    def test_unusable_environment_means_new_traces(self, env: dict[str, list[str]]) -> None:
        assert Propagator(config(), FixedIds(), env).decide(URL, {}).source is TraceSource.NEW


class TestReplaced:
    """`Decision.replaced` says why a request's trace headers did not go out as they came (the metric
    trace_proxy_trace_headers_replaced_total counts it), and stays None where nothing was replaced."""

    OVERSIZE_BAGGAGE = DSC + "," + ",".join(f"k{i}=v" for i in range(MAX_BAGGAGE_MEMBERS))

    @pytest.mark.parametrize(
        "carrier",
        [
            {},
            {"sentry-trace": [f"{T}-{S}-1"]},
            {"sentry-trace": [f"{T}-{S}-1"], "baggage": [DSC + ",foo=bar"]},
            {"baggage": ["foo=bar"]},  # third-party members alone are no trace header
            {"traceparent": ["nonsense"]},  # not read without propagate_traceparent
        ],
    )
    def test_nothing_replaced(self, carrier: dict[str, list[str]]) -> None:
        assert Propagator(config(), FixedIds()).decide(URL, carrier).replaced is None

    def test_untouched_replaces_nothing(self) -> None:
        propagator = Propagator(config(trace_propagation_targets=["^https://"]), FixedIds())
        assert propagator.decide(URL, {"sentry-trace": ["bad"]}).replaced is None

    @pytest.mark.parametrize(
        "carrier",
        [
            {"sentry-trace": ["nonsense"]},
            {"sentry-trace": [f"{T.upper()}-{S}-1"], "baggage": ["foo=bar"]},
            {"baggage": [DSC]},  # a DSC without its sentry-trace belongs to no trace
        ],
    )
    def test_malformed(self, carrier: dict[str, list[str]]) -> None:
        decision = Propagator(config(), FixedIds()).decide(URL, carrier)
        assert (decision.source, decision.replaced) == (TraceSource.NEW, Replaced.MALFORMED)
        env = {"sentry-trace": [f"{T}-{S}-1"], "baggage": [DSC]}
        from_env = Propagator(config(), FixedIds(), env).decide(URL, carrier)
        assert (from_env.source, from_env.replaced) == (TraceSource.ENVIRONMENT, Replaced.MALFORMED)

    def test_malformed_traceparent_when_read(self) -> None:
        propagator = Propagator(config(propagate_traceparent=True), FixedIds())
        assert propagator.decide(URL, {"traceparent": [f"01-{T}-{S}-01"]}).replaced is Replaced.MALFORMED
        assert propagator.decide(URL, {"traceparent": [f"00-{T}-{S}-01"]}).replaced is None

    def test_org_mismatch(self) -> None:
        carrier = {"sentry-trace": [f"{T}-{S}-1"], "baggage": ["sentry-org_id=99," + self.OVERSIZE_BAGGAGE]}
        decision = Propagator(config(), FixedIds()).decide(URL, carrier)
        assert (decision.source, decision.replaced) == (TraceSource.NEW, Replaced.ORG_MISMATCH)
        strict = Propagator(config(strict_trace_continuation=True, dsn=""), FixedIds())
        assert strict.decide(URL, {"sentry-trace": [f"{T}-{S}-1"], "baggage": [DSC]}).replaced is None
        assert strict.decide(URL, {"sentry-trace": [f"{T}-{S}-1"], "baggage": ["sentry-org_id=5"]}).replaced is (
            Replaced.ORG_MISMATCH
        )

    def test_oversize(self) -> None:
        propagator = Propagator(config(), FixedIds())
        for _ in range(2):  # parsed, then from the cache
            decision = propagator.decide(URL, {"sentry-trace": [f"{T}-{S}-1"], "baggage": [self.OVERSIZE_BAGGAGE]})
            assert (decision.source, decision.replaced) == (TraceSource.REQUEST, Replaced.OVERSIZE)
            assert decision.baggage is not None
            assert len(decision.baggage.split(",")) == MAX_BAGGAGE_MEMBERS
        large = {"baggage": ["big=" + "x" * MAX_BAGGAGE_BYTES]}
        assert propagator.decide(URL, large).replaced is Replaced.OVERSIZE
        exactly = ",".join(f"k{i}=v" for i in range(MAX_BAGGAGE_MEMBERS))
        assert propagator.decide(URL, {"baggage": [exactly]}).replaced is None


def test_repeated_baggage_gives_equal_decisions_and_cache_is_bounded() -> None:
    propagator = Propagator(config(), FixedIds())
    carrier = {"sentry-trace": [f"{T}-{S}-1"], "baggage": [DSC, "foo=bar"]}
    first = propagator.decide(URL, carrier)
    assert propagator.decide(URL, {k: [str(v) for v in vs] for k, vs in carrier.items()}) == first
    assert first.baggage == DSC + ",foo=bar"
    for i in range(2000):
        propagator.decide(URL, {"sentry-trace": [f"{T}-{S}-1"], "baggage": [f"{DSC},k={i}"]})
    assert len(propagator._baggage_cache) <= 512


def test_system_id_source() -> None:
    ids = SystemIdSource()
    trace_ids = {ids.new_trace_id() for _ in range(100)}
    span_ids = {ids.new_span_id() for _ in range(100)}
    assert len(trace_ids) == len(span_ids) == 100
    assert all(re.fullmatch("[0-9a-f]{32}", t) and t != "0" * 32 for t in trace_ids)
    assert all(re.fullmatch("[0-9a-f]{16}", s) and s != "0" * 16 for s in span_ids)
    assert all(0.0 <= ids.sample_rand() < 1.0 for _ in range(100))


header_text = st.one_of(
    st.text(max_size=80),
    st.just(f"{T}-{S}-1"),
    st.just(f"{T}-{S}"),
    st.just(f"00-{T}-{S}-01"),
    st.just(DSC),
    st.lists(
        st.sampled_from(["sentry-sample_rand=1", "sentry-org_id=42", "sentry-org_id=9", "a=b", "x y", "sentry-k=v"]),
        max_size=6,
    ).map(",".join),
)
carriers = st.dictionaries(
    st.sampled_from(["sentry-trace", "baggage", "traceparent"]), st.lists(header_text, min_size=1, max_size=2)
)


@given(carriers, st.booleans(), st.booleans(), st.sampled_from([None, 0.0, 0.5, 1.0]))
def test_decide_never_raises_and_always_writes_valid_headers(
    carrier: dict[str, list[str]], traceparent: bool, strict: bool, rate: float | None
) -> None:
    cfg = config(propagate_traceparent=traceparent, strict_trace_continuation=strict, traces_sample_rate=rate)
    decision = Propagator(cfg, SystemIdSource()).decide(URL, carrier)
    assert decision.source is not TraceSource.UNTOUCHED
    assert decision.sentry_trace is not None
    match = SENTRY_TRACE.fullmatch(decision.sentry_trace)
    assert match is not None
    assert match.group(1, 2) == (decision.trace_id, decision.span_id)
    assert decision.span_id != decision.parent_span_id
    if traceparent:
        assert decision.traceparent is not None
        assert TRACEPARENT.fullmatch(decision.traceparent)
    else:
        assert decision.traceparent is None
    assert decision.baggage is not None  # there is always at least a sample_rand
    reparsed = parse_baggage([decision.baggage])
    assert len(reparsed.dsc) + len(reparsed.third_party) == len(decision.baggage.split(","))
    assert len(decision.baggage.encode()) <= MAX_BAGGAGE_BYTES
    assert len(decision.baggage.split(",")) <= MAX_BAGGAGE_MEMBERS
    assert "sentry-sample_rand" in reparsed.dsc_values
    if decision.source is TraceSource.REQUEST:
        # The request's DSC members all go out; only sample_rand/sample_rate may differ.
        incoming = parse_baggage(carrier.get("baggage", []))
        kept = {m for m in incoming.dsc if not m.startswith(("sentry-sample_rand", "sentry-sample_rate"))}
        assert kept <= set(reparsed.dsc)
