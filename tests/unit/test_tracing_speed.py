"""Per-request cost of ``Propagator.decide()`` (pytest-benchmark).

The project runs pytest with ``--benchmark-disable``, so in CI each benchmark body runs once as
an ordinary test; ``pytest --benchmark-enable tests/unit/test_tracing_speed.py`` measures. No
absolute time is asserted here (machines differ); ``bench/core_bench.py`` reports the figures.
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from proxy.tracing import Decision, Propagator, SystemIdSource, TraceSource
from tests.unit.tracing_support import make_config

URL = "http://orders.internal:8080/v1/orders?id=3"
TRACE_ID = "771a43a4192642f0b136d5159a501700"
CONTINUE = {
    "sentry-trace": [f"{TRACE_ID}-b2c4d5e6f7a8b9c0-1"],
    "baggage": [
        f"sentry-trace_id={TRACE_ID},sentry-public_key=49d0f7386ad645858ae85020e393bef3,"
        "sentry-sample_rate=0.5,sentry-sampled=true,sentry-sample_rand=0.123456,"
        "sentry-environment=staging,userId=alice"
    ],
}


@pytest.fixture
def propagator() -> Propagator:
    config = make_config(dsn="https://49d0f7386ad645858ae85020e393bef3@o42.ingest.sentry.io/7")
    return Propagator(config, SystemIdSource())


def test_speed_start(benchmark: BenchmarkFixture, propagator: Propagator) -> None:
    decision: Decision = benchmark(propagator.decide, URL, {})
    assert decision.source is TraceSource.NEW
    assert decision.baggage is not None
    assert len(decision.baggage.split(",")) == 8  # the full DSC of a new trace


def test_speed_continue(benchmark: BenchmarkFixture, propagator: Propagator) -> None:
    decision: Decision = benchmark(propagator.decide, URL, CONTINUE)
    assert decision.source is TraceSource.REQUEST
    assert decision.trace_id == TRACE_ID
    assert decision.baggage == CONTINUE["baggage"][0]  # already canonical: DSC first, then userId
