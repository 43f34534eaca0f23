"""Micro-benchmark of ``Propagator.decide()``, the per-request cost of the trace core.

Usage: ``python bench/core_bench.py [--json]``. Prints microseconds per call for:

* ``start``: a request without trace headers (rate 1.0 and a DSN, so the full DSC is written);
* ``continue``: ``sentry-trace`` plus a baggage of 6 ``sentry-`` members and one third-party
  member, the same headers on every call, as on the outbound calls of one transaction (the
  propagator parses a given baggage text once and caches the result);
* ``continue (cold)``: the same shape with a different trace on every call (cycling through
  more traces than the cache holds), so the baggage is parsed every time; printed as the extra
  key ``continue_cold_us`` with ``--json``.

Timing is ``timeit`` with ``SystemIdSource``; each figure is the best of many short runs, which
filters out scheduler and frequency noise on a shared machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from proxy.tracing import Carrier, PropagationConfig, Propagator, SystemIdSource

URL = "http://orders.internal:8080/v1/orders?id=3"
PARENT_SPAN = "b2c4d5e6f7a8b9c0"
SIX_MEMBER_DSC = (
    "sentry-trace_id={trace_id},sentry-public_key=49d0f7386ad645858ae85020e393bef3,"
    "sentry-sample_rate=0.5,sentry-sampled=true,sentry-sample_rand=0.123456,"
    "sentry-environment=staging"
)
THIRD_PARTY = "userId=alice"
COLD_TRACES = 4096  # more distinct baggage headers than the propagator caches


def _continue_carrier(trace_id: str) -> Carrier:
    return {
        "sentry-trace": [f"{trace_id}-{PARENT_SPAN}-1"],
        "baggage": [SIX_MEMBER_DSC.format(trace_id=trace_id) + "," + THIRD_PARTY],
    }


def _best_us(call: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def run(number: int = 2000, repeat: int = 150) -> dict[str, float]:
    """Best-of-``repeat`` microseconds per ``decide()`` call for each scenario."""
    config = PropagationConfig.from_options(
        dsn="https://49d0f7386ad645858ae85020e393bef3@o42.ingest.sentry.io/7",
        environment="production",
        release="billing@1.4.2",
        traces_sample_rate=1.0,
        trace_propagation_targets=[".*"],
        strict_trace_continuation=False,
        org_id="",
        propagate_traceparent=False,
    )
    propagator = Propagator(config, SystemIdSource())
    decide = propagator.decide

    no_headers: Carrier = {}
    warm = _continue_carrier("771a43a4192642f0b136d5159a501700")
    rng = random.Random(1)
    cold = itertools.cycle([_continue_carrier(f"{rng.getrandbits(128):032x}") for _ in range(COLD_TRACES)])

    assert decide(URL, no_headers).source.value == "new"
    assert decide(URL, warm).source.value == "request"
    return {
        "start_us": _best_us(lambda: decide(URL, no_headers), number, repeat),
        "continue_us": _best_us(lambda: decide(URL, warm), number, repeat),
        "continue_cold_us": _best_us(lambda: decide(URL, next(cold)), number, repeat),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    args = parser.parse_args(argv)
    results = run()
    if args.json:
        print(json.dumps({key: round(value, 3) for key, value in results.items()}))
    else:
        print(f"start            {results['start_us']:.2f} us/call")
        print(f"continue         {results['continue_us']:.2f} us/call")
        print(f"continue (cold)  {results['continue_cold_us']:.2f} us/call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
