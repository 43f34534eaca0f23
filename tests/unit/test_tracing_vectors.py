"""Every case of the normative vectors (copied from the shared spec into tests/unit/data)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from proxy.tracing import Decision, PropagationConfig, Propagator, TraceSource

VECTORS_PATH = Path(__file__).parent / "data" / "vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = VECTORS["cases"]
DEFAULT_URL: str = VECTORS["url"]

SAMPLE_RAND_KEY = "sentry-sample_rand"
SIX_DECIMALS = re.compile(r"0\.[0-9]{6}")
SENTRY_TRACE = re.compile(r"([0-9a-f]{32})-([0-9a-f]{16})(?:-([01]))?")


class ScriptedIds:
    """An IdSource that returns a case's "random" values and records the order of use."""

    def __init__(self, random: Mapping[str, Any]) -> None:
        self._random = random
        self.calls: list[str] = []

    def new_trace_id(self) -> str:
        self.calls.append("trace_id")
        return str(self._random["trace_id"])

    def new_span_id(self) -> str:
        self.calls.append("span_id")
        return str(self._random["span_id"])

    def sample_rand(self) -> float:
        self.calls.append("sample_rand")
        return float(self._random["sample_rand"])


def _carrier(headers: Sequence[Sequence[str]]) -> dict[str, list[str]]:
    carrier: dict[str, list[str]] = {}
    for name, value in headers:
        carrier.setdefault(name.lower(), []).append(value)
    return carrier


def _environment(env: Mapping[str, str] | None) -> dict[str, list[str]] | None:
    if not env:
        return None
    carrier = {"sentry-trace": [env["SENTRY_TRACE"]]}
    if "SENTRY_BAGGAGE" in env:
        carrier["baggage"] = [env["SENTRY_BAGGAGE"]]
    return carrier


def _run(case: Mapping[str, Any]) -> tuple[Propagator, Decision, ScriptedIds]:
    config = PropagationConfig.from_options(**case["config"])
    ids = ScriptedIds(case["random"])
    propagator = Propagator(config, ids, _environment(case.get("env")))
    decision = propagator.decide(case.get("url", DEFAULT_URL), _carrier(case["headers"]))
    return propagator, decision, ids


def _split(baggage: str) -> tuple[list[str], list[str]]:
    """Written members, DSC and third-party, checking that the DSC comes first."""
    members = baggage.split(",")
    dsc = [m for m in members if m.startswith("sentry-")]
    third_party = [m for m in members if not m.startswith("sentry-")]
    assert members == dsc + third_party, "DSC members must precede third-party members"
    return dsc, third_party


def _check_sample_rand(dsc: list[str], lo: float, hi: float) -> list[str]:
    """Remove the one derived sentry-sample_rand member after checking its range and grid."""
    rands = [m for m in dsc if m.partition("=")[0] == SAMPLE_RAND_KEY]
    assert len(rands) == 1, dsc
    value = rands[0].partition("=")[2]
    assert SIX_DECIMALS.fullmatch(value), value
    assert lo <= float(value) < hi
    return [m for m in dsc if m is not rands[0]]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_vector(case: Mapping[str, Any]) -> None:
    propagator, decision, ids = _run(case)
    expect = case["expect"]
    assert decision.source is TraceSource(expect["source"])

    if decision.source is TraceSource.UNTOUCHED:
        assert expect.get("headers_unchanged") is True
        assert decision == Decision(TraceSource.UNTOUCHED, None, None, None, None, None, None, None)
        assert ids.calls == []
        return

    # Ids: used in the documented order, and consistent with the headers written.
    if decision.source is TraceSource.NEW:
        assert ids.calls == ["trace_id", "span_id", "sample_rand"]
        assert decision.parent_span_id is None
    else:
        assert ids.calls == ["span_id"]
        assert decision.parent_span_id is not None
    assert decision.sentry_trace is not None
    assert decision.sentry_trace == expect["sentry_trace"]
    match = SENTRY_TRACE.fullmatch(decision.sentry_trace)
    assert match is not None
    assert (decision.trace_id, decision.span_id) == match.group(1, 2)
    assert decision.sampled == {"1": True, "0": False, None: None}[match.group(3)]

    if "traceparent" in expect:
        assert decision.traceparent == expect["traceparent"]
    elif not case["config"]["propagate_traceparent"]:
        assert decision.traceparent is None

    assert decision.baggage is not None
    dsc, third_party = _split(decision.baggage)
    keys = [m.partition("=")[0] for m in dsc]
    assert len(keys) == len(set(keys)), f"a sentry- key written twice: {dsc}"  # readers would each pick their own
    if "baggage" in expect:
        expected = list(expect["baggage"])
        expected_dsc = [m for m in expected if m.startswith("sentry-")]
        expected_third = [m for m in expected if not m.startswith("sentry-")]
        if "sample_rand_range" in expect:
            lo, hi = expect["sample_rand_range"]
            dsc = _check_sample_rand(dsc, lo, hi)
        assert sorted(dsc) == sorted(expected_dsc)
        assert len(dsc) == len(set(dsc))
        assert third_party == expected_third
    else:
        # Oversize: the DSC is complete, the limits hold, and third-party members were dropped
        # from the end only as far as needed.
        assert sorted(dsc) == sorted(expect["baggage_prefix"])
        assert len(decision.baggage.encode()) <= expect["max_bytes"]
        assert len(dsc) + len(third_party) <= expect["max_members"]
        request_third = [m for _, v in case["headers"] for m in v.split(",") if not m.startswith("sentry-")]
        assert third_party == request_third[: len(third_party)]
        assert len(third_party) < len(request_third)
        one_more = decision.baggage + "," + request_third[len(third_party)]
        assert len(one_more.encode()) > expect["max_bytes"] or len(dsc) + len(third_party) + 1 > expect["max_members"]

    for name, _value in expect.get("other_headers_kept", []):
        assert name.lower() not in propagator.strip_names


def test_vectors_file_is_the_full_set() -> None:
    """Guard against a truncated copy: the spec's 37 cases plus the project's own (duplicate DSC keys), with distinct
    names."""
    names = [case["name"] for case in CASES]
    assert len(names) == 39
    assert len(set(names)) == len(names)
