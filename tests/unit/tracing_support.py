"""Shared by the tracing unit tests: the configuration most vectors use, changed per test."""

from __future__ import annotations

from typing import Any

from proxy.tracing.options import PropagationConfig

BASE_OPTIONS: dict[str, Any] = {
    "dsn": "https://pk123@o42.ingest.sentry.io/7",
    "environment": "production",
    "release": "billing@1.4.2",
    "traces_sample_rate": 1.0,
    "trace_propagation_targets": [".*"],
    "strict_trace_continuation": False,
    "org_id": "",
    "propagate_traceparent": False,
}


def make_config(**changes: Any) -> PropagationConfig:
    """The vectors' usual configuration with `changes` applied."""
    return PropagationConfig.from_options(**{**BASE_OPTIONS, **changes})
