"""Sans-I/O Sentry trace propagation: what ``sentry-trace`` / ``baggage`` / ``traceparent`` to write.

The I/O layer builds one :class:`Propagator` at start-up and calls :meth:`Propagator.decide`
for every outbound request; the rules are in ``docs/propagation.md``.
"""

from proxy.tracing.context import IncomingTrace
from proxy.tracing.options import Dsn, PropagationConfig, parse_dsn
from proxy.tracing.propagator import (
    UNTOUCHED_DECISION,
    Carrier,
    Decision,
    IdSource,
    Propagator,
    Replaced,
    SystemIdSource,
    TraceSource,
)

__all__ = [
    "UNTOUCHED_DECISION",
    "Carrier",
    "Decision",
    "Dsn",
    "IdSource",
    "IncomingTrace",
    "PropagationConfig",
    "Propagator",
    "Replaced",
    "SystemIdSource",
    "TraceSource",
    "parse_dsn",
]
