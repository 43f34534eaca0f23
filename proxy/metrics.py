"""Prometheus metrics for `GET /metrics` on the admin listener: the process's counters, read when scraped.

Nothing here runs per request. The hot path counts in plain numbers (stats.py: `Stats`, filled by the exchange
observer, the pool and the tunnels); `snapshot` reads them, with what is open now (connections, tunnels, the pool),
into plain data that JSON carries; `merge` sums the snapshots of several workers (workers.py); `ProxyCollector`
turns a snapshot into metric families for `prometheus-client`, in a registry of our own next to the library's
process collector (`process_*`: the process that serves the admin port, the parent when there are workers).

What each metric counts is in the README ("Metrics"). The `outcome` label of `trace_proxy_requests_total` maps our
`Outcome`s onto four values, in `OUTCOME_LABELS`:

    ok              complete, upgraded: the response (a 101, a CONNECT's 200) reached the client whole
    client_error    refused (the proxy answered 4xx/503/508 itself: a bad, disallowed, too slow or looping
                    request, a client not allowed), client_gone (the client left before its answer was complete):
                    the client's doing
    upstream_error  origin_failed (unreachable, refused, closed early, malformed: 502/504), broken (the response
                    began and was cut off), dropped (pipelined behind a request whose failure ended the
                    connection), internal_error (trace-proxy itself failed: its log says which)
    timeout         stalled (neither side moved for forward.idle_timeout: 504 or cut), drained (still in flight
                    when the shutdown grace ran out)

Labels are low-cardinality by construction: kinds, outcomes, trace sources, sampling, reasons and directions are
closed sets, and no URL, host or trace id ever becomes one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, TypeAlias

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from proxy import build_info
from proxy.server.connection_state import TUNNEL
from proxy.server.exchange import KINDS, Outcome
from proxy.server.listener import Listener
from proxy.server.services import ConnectionServices
from proxy.stats import CONNECT_BOUNDS, DURATION_BOUNDS, Histogram
from proxy.tracing import Replaced, TraceSource

__all__ = ["OUTCOME_LABELS", "Metrics", "ProxyCollector", "Snapshot", "empty_snapshot", "merge", "snapshot"]

OUTCOME_LABELS: Final[Mapping[Outcome, str]] = {
    Outcome.COMPLETE: "ok",
    Outcome.UPGRADED: "ok",
    Outcome.REFUSED: "client_error",
    Outcome.CLIENT_GONE: "client_error",
    Outcome.ORIGIN_FAILED: "upstream_error",
    Outcome.BROKEN: "upstream_error",
    Outcome.DROPPED: "upstream_error",
    Outcome.INTERNAL_ERROR: "upstream_error",
    Outcome.STALLED: "timeout",
    Outcome.DRAINED: "timeout",
}
_OUTCOMES: Final = ("ok", "client_error", "upstream_error", "timeout")
_SAMPLED: Final[Mapping[bool | None, str]] = {True: "true", False: "false", None: "deferred"}
_DIRECTIONS: Final = ("to_origin", "to_client")

Snapshot: TypeAlias = dict[str, Any]
"""One process's numbers, as JSON carries them: {metric: number, or {label values joined by " ": number}, or a
histogram {"counts": [per bucket], "sum": seconds}}."""


def _histogram(histogram: Histogram) -> dict[str, Any]:
    return {"counts": list(histogram.counts), "sum": histogram.sum}


def empty_snapshot() -> Snapshot:
    """Every series at zero: what `merge` starts from, so that each series is exposed before it first moves."""
    return {
        "requests": {f"{kind} {outcome}": 0 for kind in KINDS for outcome in _OUTCOMES},
        "decisions": {f"{source.value} {sampled}": 0 for source in TraceSource for sampled in _SAMPLED.values()},
        "replaced": {reason.value: 0 for reason in Replaced},
        "duration": {"counts": [0] * (len(DURATION_BOUNDS) + 1), "sum": 0.0},
        "upstream_connect": {"counts": [0] * (len(CONNECT_BOUNDS) + 1), "sum": 0.0},
        "connections": {"client": 0, "upstream": 0},
        "tunnels": 0,
        "bytes": dict.fromkeys(_DIRECTIONS, 0),
        "pool_idle": 0,
    }


def snapshot(services: ConnectionServices, listeners: Iterable[Listener]) -> Snapshot:
    """This process's numbers: the counters of `services` and what is open now on it and its `listeners`."""
    stats = services.stats
    out = empty_snapshot()
    requests = out["requests"]
    for kind, row in enumerate(stats.by_kind):
        for outcome, count in row.items():
            requests[f"{KINDS[kind]} {OUTCOME_LABELS[outcome]}"] += count
    decisions = out["decisions"]
    for source, by_sampled in stats.decisions.items():
        for sampled, count in by_sampled.items():
            decisions[f"{source.value} {_SAMPLED[sampled]}"] += count
    out["replaced"] = {reason.value: count for reason, count in stats.replaced.items()}
    out["duration"] = {"counts": list(stats.duration_counts), "sum": stats.duration_sum}
    out["upstream_connect"] = _histogram(stats.upstream_connect)
    clients = tunnels = 0
    for listener in listeners:
        clients += len(listener.connections)
        tunnels += sum(1 for conn in listener.connections if conn.state == TUNNEL)
    out["connections"] = {"client": clients, "upstream": services.pool.open_connections}
    out["tunnels"] = tunnels
    out["bytes"] = {
        "to_origin": stats.bytes_to_origin + stats.tunnel_bytes[0],
        "to_client": stats.bytes_to_client + stats.tunnel_bytes[1],
    }
    out["pool_idle"] = services.pool.idle_count()
    return out


def _add(total: Any, part: Any) -> Any:
    if isinstance(total, dict):
        return {key: _add(value, part[key]) if key in part else value for key, value in total.items()}
    if isinstance(total, list):
        return [a + b for a, b in zip(total, part, strict=True)]
    return total + part


def merge(snapshots: Sequence[Snapshot]) -> Snapshot:
    """The sum of several processes' snapshots (every number added: counters, histograms and gauges alike)."""
    total = empty_snapshot()
    for part in snapshots:
        total = _add(total, part)
    return total


def _buckets(bounds: Sequence[float], histogram: Mapping[str, Any]) -> list[tuple[str, float]]:
    """Prometheus' cumulative `le` buckets from per-bucket counts (the last one is +Inf)."""
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip((*bounds, None), histogram["counts"], strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound is None else repr(bound), cumulative))
    return buckets


class ProxyCollector:
    """trace-proxy's metric families, made from `snapshot` (set before each scrape) when the registry collects."""

    def __init__(self) -> None:
        self.snapshot: Snapshot = empty_snapshot()
        self.build = (build_info.version(), build_info.python_version(), "true" if build_info.compiled() else "false")

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        requests = CounterMetricFamily(
            "trace_proxy_requests", "Requests by kind and how they ended.", labels=("kind", "outcome")
        )
        for key, count in snap["requests"].items():
            requests.add_metric(key.split(" "), count)
        yield requests
        decisions = CounterMetricFamily(
            "trace_proxy_trace_decisions",
            "Trace decisions of forwarded requests, by where the trace came from and its sampling.",
            labels=("source", "sampled"),
        )
        for key, count in snap["decisions"].items():
            decisions.add_metric(key.split(" "), count)
        yield decisions
        replaced = CounterMetricFamily(
            "trace_proxy_trace_headers_replaced",
            "Forwarded requests whose trace headers did not go out as they came, by why.",
            labels=("reason",),
        )
        for reason, count in snap["replaced"].items():
            replaced.add_metric((reason,), count)
        yield replaced
        duration = snap["duration"]
        yield HistogramMetricFamily(
            "trace_proxy_request_duration_seconds",
            "Forwarded requests: from the request head received to the response head sent.",
            buckets=_buckets(DURATION_BOUNDS, duration),
            sum_value=duration["sum"],
        )
        connect = snap["upstream_connect"]
        yield HistogramMetricFamily(
            "trace_proxy_upstream_connect_seconds",
            "Connections opened to origins and tunnel targets: the time to open each.",
            buckets=_buckets(CONNECT_BOUNDS, connect),
            sum_value=connect["sum"],
        )
        connections = GaugeMetricFamily(
            "trace_proxy_connections_active", "Open connections, client and upstream side.", labels=("side",)
        )
        for side, count in snap["connections"].items():
            connections.add_metric((side,), count)
        yield connections
        yield GaugeMetricFamily(
            "trace_proxy_tunnels_active", "Open tunnels: CONNECT and accepted Upgrades.", value=snap["tunnels"]
        )
        relayed = CounterMetricFamily(
            "trace_proxy_bytes", "Bytes relayed, requests and tunnels, each way.", labels=("direction",)
        )
        for direction, count in snap["bytes"].items():
            relayed.add_metric((direction,), count)
        yield relayed
        yield GaugeMetricFamily(
            "trace_proxy_upstream_pool_idle", "Idle keep-alive origin connections in the pool.", value=snap["pool_idle"]
        )
        info = GaugeMetricFamily(
            "trace_proxy_build_info",
            "The running build: version, Python, and whether the hot path is compiled.",
            labels=("version", "python", "compiled"),
        )
        info.add_metric(self.build, 1)
        yield info


CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """What `GET /metrics` answers: the snapshot from `source` (this process's, or the workers' sum) and the
    process collector, in a registry of their own, rendered in the Prometheus text format."""

    def __init__(self, source: Callable[[], Awaitable[Snapshot]]) -> None:
        self._source = source
        self._collector = ProxyCollector()
        self.registry = CollectorRegistry()
        self.registry.register(self._collector)
        ProcessCollector(registry=self.registry)
        self._lock = asyncio.Lock()  # one scrape at a time sets the collector's snapshot and renders it

    async def render(self) -> bytes:
        async with self._lock:
            self._collector.snapshot = await self._source()
            return generate_latest(self.registry)
