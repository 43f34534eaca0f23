"""The metrics without a running proxy: histogram bucketing, the outcome table, the snapshot of a process's
counters, the sum over workers, and the exposition the collector makes of a snapshot (parsed back with
prometheus-client's own parser)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import OUTCOME_LABELS, Metrics, Snapshot, empty_snapshot, merge, snapshot
from proxy.server.exchange import Outcome
from proxy.stats import CONNECT_BOUNDS, DURATION_BOUNDS, Histogram
from tests.helpers.metrics import Scrape
from tests.helpers.playbook import Playbook

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_histogram_buckets_are_inclusive_upper_bounds() -> None:
    histogram = Histogram((0.001, 0.01, 0.1))
    for value in (0.0, 0.001, 0.0010001, 0.01, 0.05, 0.1, 0.10001, 7.0):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 2, 2]
    assert histogram.sum == pytest.approx(0.0 + 0.001 + 0.0010001 + 0.01 + 0.05 + 0.1 + 0.10001 + 7.0)


@pytest.mark.parametrize("bounds", [DURATION_BOUNDS, CONNECT_BOUNDS])
def test_bounds_are_increasing(bounds: tuple[float, ...]) -> None:
    assert list(bounds) == sorted(set(bounds))


def test_every_outcome_has_a_label() -> None:
    assert set(OUTCOME_LABELS) == set(Outcome)
    assert set(OUTCOME_LABELS.values()) == {"ok", "client_error", "upstream_error", "timeout"}
    assert OUTCOME_LABELS[Outcome.REFUSED] == OUTCOME_LABELS[Outcome.CLIENT_GONE] == "client_error"
    assert OUTCOME_LABELS[Outcome.STALLED] == "timeout"


def render(snap: Snapshot) -> Scrape:
    async def source() -> Snapshot:
        return snap

    async def scrape() -> bytes:
        return await Metrics(source).render()

    return Scrape(asyncio.run(scrape()).decode())


def test_exposition_of_a_snapshot() -> None:
    snap = empty_snapshot()
    snap["requests"]["http ok"] = 3
    snap["requests"]["connect upstream_error"] = 1
    snap["decisions"]["new true"] = 2
    snap["decisions"]["untouched deferred"] = 1
    snap["replaced"]["oversize"] = 4
    snap["duration"]["counts"][0] = 1  # <= 1 ms
    snap["duration"]["counts"][-1] = 2  # above every bound
    snap["duration"]["sum"] = 130.0005
    snap["connections"] = {"client": 5, "upstream": 2}
    snap["tunnels"] = 1
    snap["bytes"] = {"to_origin": 100, "to_client": 2000}
    snap["pool_idle"] = 7
    result = render(snap)
    assert result.requests("http", "ok") == 3
    assert result.requests("connect", "upstream_error") == 1
    assert result.requests("upgrade", "timeout") == 0
    assert result.total("trace_proxy_requests_total") == 4
    assert result.get("trace_proxy_trace_decisions_total", source="new", sampled="true") == 2
    assert result.get("trace_proxy_trace_decisions_total", source="untouched", sampled="deferred") == 1
    assert result.get("trace_proxy_trace_headers_replaced_total", reason="oversize") == 4
    bucket = "trace_proxy_request_duration_seconds_bucket"
    assert result.get(bucket, le="0.001") == 1
    assert result.get(bucket, le="60.0") == 1  # cumulative
    assert result.get(bucket, le="+Inf") == 3
    assert result.get("trace_proxy_request_duration_seconds_count") == 3
    assert result.get("trace_proxy_request_duration_seconds_sum") == 130.0005
    assert result.get("trace_proxy_upstream_connect_seconds_count") == 0
    assert result.get("trace_proxy_connections_active", side="client") == 5
    assert result.get("trace_proxy_connections_active", side="upstream") == 2
    assert result.get("trace_proxy_tunnels_active") == 1
    assert result.get("trace_proxy_bytes_total", direction="to_client") == 2000
    assert result.get("trace_proxy_upstream_pool_idle") == 7
    assert result.types["trace_proxy_request_duration_seconds"] == "histogram"
    assert "process_cpu_seconds" in result.types
    families = {f.name for f in text_string_to_metric_families(result.text)}
    assert "trace_proxy_build_info" in families


def test_merge_adds_every_number() -> None:
    one, two = empty_snapshot(), empty_snapshot()
    one["requests"]["http ok"], two["requests"]["http ok"] = 2, 5
    one["duration"] = {"counts": [1] + [0] * len(DURATION_BOUNDS), "sum": 0.5}
    two["duration"] = {"counts": [0] * len(DURATION_BOUNDS) + [3], "sum": 200.0}
    one["connections"], two["connections"] = {"client": 1, "upstream": 2}, {"client": 10, "upstream": 20}
    one["tunnels"], two["tunnels"] = 1, 2
    total = merge([one, two])
    assert total["requests"]["http ok"] == 7
    assert total["duration"] == {"counts": [1] + [0] * (len(DURATION_BOUNDS) - 1) + [3], "sum": 200.5}
    assert total["connections"] == {"client": 11, "upstream": 22}
    assert total["tunnels"] == 3
    assert merge([]) == empty_snapshot()


def test_snapshot_of_a_process(make_pb: Callable[..., Playbook]) -> None:
    """A process's snapshot: its exchanges by kind and outcome label, its decisions, its histogram, what is open."""
    pb = make_pb(trace_targets=[".*"])
    pb.client_sends(b"GET http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\n\r\n")
    pb.tick(0.003)
    origin = pb.connect_and_respond(OK)
    pb.client_sends(b"GET /origin-form HTTP/1.1\r\nHost: origin.test\r\n\r\n")
    snap = snapshot(pb.services, (pb.server,))
    assert {key: n for key, n in snap["requests"].items() if n} == {"http ok": 1, "http client_error": 1}
    assert {key: n for key, n in snap["decisions"].items() if n} == {"new true": 1}
    assert snap["duration"]["counts"][DURATION_BOUNDS.index(0.005)] == 1
    assert snap["duration"]["sum"] == pytest.approx(0.003)
    assert snap["connections"] == {"client": 1, "upstream": 1}
    assert snap["pool_idle"] == 1
    assert snap["tunnels"] == 0
    assert snap["bytes"]["to_origin"] == len(origin.written)
    assert snap["bytes"]["to_client"] == len(pb.client.written)
