"""The facade the I/O layer uses: one :class:`Propagator`, one :meth:`~Propagator.decide` per request.

``decide`` reads the few headers that matter from a :data:`Carrier`, picks the trace source in
the order of docs/propagation.md §10 (the request's ``sentry-trace``, its ``traceparent`` when
enabled, the proxy's environment, a new trace), applies the org checks of §6, and returns the
header values to write as a :class:`Decision`. It does no I/O, so the I/O layer only removes
:attr:`~Propagator.strip_names` and adds the decided values.

It runs on every proxied request, so everything that depends only on configuration or on the
environment is computed in ``__init__``.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence
from typing import Final, NamedTuple, Protocol, TypeAlias

from proxy.tracing.baggage import parse_baggage, serialize_baggage
from proxy.tracing.context import (
    EMPTY_DSC,
    FrozenDsc,
    IncomingTrace,
    continue_trace,
    should_continue,
    start_trace,
)
from proxy.tracing.options import PropagationConfig
from proxy.tracing.sentry_trace import (
    format_sentry_trace,
    format_traceparent,
    parse_sentry_trace,
    parse_traceparent,
)

__all__ = [
    "Carrier",
    "Decision",
    "IdSource",
    "Propagator",
    "Replaced",
    "SystemIdSource",
    "TraceSource",
]

_SENTRY_TRACE: Final = "sentry-trace"
_BAGGAGE: Final = "baggage"
_TRACEPARENT: Final = "traceparent"

# Bound methods of the random module's shared generator (reseeded in forked children).
_getrandbits: Final = random.getrandbits
_random: Final = random.random


class TraceSource(enum.Enum):
    """Where the trace of a request came from: the label recorded for each decision."""

    REQUEST = "request"
    TRACEPARENT = "traceparent"
    ENVIRONMENT = "environment"
    NEW = "new"
    UNTOUCHED = "untouched"

    # Members are singletons: identity hashing is exact and, unlike Enum's own __hash__, costs no Python call
    # (counters are keyed by source on every request).
    __hash__ = object.__hash__


class Replaced(enum.Enum):
    """Why trace headers the request carried did not go out as they came (the label of each case counted).

    ``MALFORMED``: a ``sentry-trace`` (or, when read, ``traceparent``) with no valid value, or ``sentry-`` baggage
    members without a valid ``sentry-trace``: a trace was started or taken from the environment instead.
    ``ORG_MISMATCH``: a valid incoming trace failed the org checks (§6): a new trace was started. ``OVERSIZE``: the
    request's baggage is over the W3C limits (§2), so third-party members were dropped from what went out. One
    reason per request, in that order of precedence."""

    MALFORMED = "malformed"
    OVERSIZE = "oversize"
    ORG_MISMATCH = "org_mismatch"

    __hash__ = object.__hash__  # as TraceSource: counted by reason


Carrier: TypeAlias = Mapping[str, Sequence[str]]
"""Lowercase header name -> its values in order. Only the names the propagator reads
(:attr:`Propagator.strip_names`) need be present."""


class IdSource(Protocol):
    """Where new ids and the ``sample_rand`` draw of a new trace come from (injectable for tests)."""

    def new_trace_id(self) -> str:
        """32 lowercase hex digits, not all zero."""
        ...

    def new_span_id(self) -> str:
        """16 lowercase hex digits, not all zero."""
        ...

    def sample_rand(self) -> float:
        """A uniform draw in [0, 1)."""
        ...


class SystemIdSource:
    """The production :class:`IdSource`, on the ``random`` module's shared generator.

    Trace and span ids need uniqueness, not secrecy, and the module generator is several times
    faster than ``os.urandom`` while being reseeded in a forked child (an own ``Random``
    instance would not be, and two workers would then produce the same ids).
    """

    __slots__ = ()

    def new_trace_id(self) -> str:
        """A random non-zero 128-bit id as 32 lowercase hex digits."""
        value = _getrandbits(128)
        while not value:
            value = _getrandbits(128)
        return value.to_bytes(16, "big").hex()

    def new_span_id(self) -> str:
        """A random non-zero 64-bit id as 16 lowercase hex digits."""
        value = _getrandbits(64)
        while not value:
            value = _getrandbits(64)
        return value.to_bytes(8, "big").hex()

    def sample_rand(self) -> float:
        """``random.random()``: uniform in [0, 1)."""
        return _random()


class Decision(NamedTuple):
    """What to do with one request's trace headers.

    ``sampled`` ``None`` means deferred. ``baggage`` ``None`` means "write no baggage header";
    ``traceparent`` is ``None`` unless ``propagate_traceparent`` is on. For ``UNTOUCHED`` every
    other field is ``None`` and the request must be forwarded unchanged. ``replaced`` says why trace headers
    of the request were not continued as they came (:class:`Replaced`), ``None`` when they were, or when it
    had none. A NamedTuple: immutable, and built with one C call on every request.
    """

    source: TraceSource
    trace_id: str | None
    span_id: str | None
    parent_span_id: str | None
    sampled: bool | None
    sentry_trace: str | None
    baggage: str | None
    traceparent: str | None
    replaced: Replaced | None = None


class _RequestBaggage(NamedTuple):
    """A request's parsed ``baggage``, cached per header text.

    ``unchanged`` is the header to write when the request's DSC is continued as it came (the
    common case), so that it is serialised once per distinct header, not once per request.
    ``oversize`` is ``Replaced.OVERSIZE`` when writing the header back drops members (over the W3C
    limits), else ``None``.
    """

    dsc: FrozenDsc
    third_party: tuple[str, ...]
    unchanged: str | None
    oversize: Replaced | None


_new_tuple: Final = tuple.__new__
_ZERO_TRACE_ID: Final = "0" * 32
_ZERO_SPAN_ID: Final = "0" * 16
# The decision for a request whose URL the targets do not match: forwarded unchanged.
UNTOUCHED_DECISION: Final = Decision(TraceSource.UNTOUCHED, None, None, None, None, None, None, None, None)
_NO_BAGGAGE: Final = _RequestBaggage(EMPTY_DSC, (), None, None)
_MALFORMED: Final = Replaced.MALFORMED
_ORG_MISMATCH: Final = Replaced.ORG_MISMATCH
# A service sends the same baggage on every outbound call of one transaction: parse it once.
# The cache is dropped when full (cheaper than LRU bookkeeping); over-long headers, which are
# not typical, are not cached at all. Entries are immutable and plain dict operations are
# atomic, so concurrent callers at worst parse a header twice.
_CACHE_ENTRIES: Final = 512
_CACHE_MAX_HEADER: Final = 8192


class Propagator:
    """Decides, per request, which trace to propagate and the header values that carry it."""

    __slots__ = (
        "_baggage_cache",
        "_config",
        "_env",
        "_ids",
        "_system_ids",
        "_targets",
        "_traceparent",
        "match_all",
        "strip_names",
    )

    strip_names: frozenset[str]
    """Lowercase names the I/O layer removes from a request it rewrites: the ones :meth:`decide` reads from the
    carrier, since every trace header it reads it also writes anew."""
    match_all: bool
    """Every URL gets trace headers (``trace_propagation_targets`` matches everything)."""

    def __init__(self, config: PropagationConfig, ids: IdSource, environment: Carrier | None = None) -> None:
        """``environment`` is ``{"sentry-trace": [SENTRY_TRACE], "baggage": [SENTRY_BAGGAGE]}``,
        built by the caller from ``os.environ``; it is read here, once."""
        self._config = config
        self._ids = ids
        self._targets = config.targets
        self.match_all = config.targets.match_all
        self._traceparent = config.propagate_traceparent
        self._baggage_cache: dict[str, _RequestBaggage] = {}
        self._system_ids = type(ids) is SystemIdSource
        names = {_SENTRY_TRACE, _BAGGAGE}
        if config.propagate_traceparent:
            names.add(_TRACEPARENT)
        self.strip_names = frozenset(names)

        # The environment's trace is the same for every request: decide everything but the
        # span id now. One that fails the org checks (§6) is as good as none: requests without
        # a trace of their own then start new ones. Its third-party members are not forwarded
        # (an SDK never copies incoming third-party baggage; the request's own members are).
        self._env: tuple[IncomingTrace, bool | None, str, str | None] | None = None
        env_trace = self.extract(environment) if environment else None
        if env_trace is not None and should_continue(config, env_trace):
            sampled, dsc = continue_trace(config, env_trace)
            if dsc is None:
                dsc = ",".join(env_trace.dsc.members)
            self._env = (env_trace, sampled, dsc, serialize_baggage(dsc))

    @property
    def config(self) -> PropagationConfig:
        """The configuration this propagator was built with."""
        return self._config

    def matches(self, url: str) -> bool:
        """Does ``url`` get trace headers (``trace_propagation_targets``, §7)?"""
        return self.match_all or self._targets.matches(url)

    def _parse_request_baggage(self, header: str) -> _RequestBaggage:
        """Parse a request's (joined) ``baggage`` header and remember the result."""
        parsed = parse_baggage((header,))
        dsc = FrozenDsc.from_baggage(parsed)
        unchanged = serialize_baggage(",".join(dsc.members), parsed.third_party)
        # Members never contain a comma: fewer commas than members means some were dropped to fit the limits.
        members = len(dsc.members) + len(parsed.third_party)
        kept = 0 if unchanged is None else unchanged.count(",") + 1
        oversize = Replaced.OVERSIZE if kept < members else None
        entry = _RequestBaggage(dsc, parsed.third_party, unchanged, oversize)
        if len(header) <= _CACHE_MAX_HEADER:
            if len(self._baggage_cache) >= _CACHE_ENTRIES:
                self._baggage_cache.clear()
            self._baggage_cache[header] = entry
        return entry

    def _read(self, carrier: Carrier) -> tuple[IncomingTrace | None, _RequestBaggage]:
        """The carrier's trace (if any) and its parsed baggage, each header parsed once."""
        get = carrier.get
        values = get(_BAGGAGE)
        if values:
            header = values[0] if len(values) == 1 else ",".join(values)
            cached = self._baggage_cache.get(header)
            baggage = cached if cached is not None else self._parse_request_baggage(header)
        else:
            baggage = _NO_BAGGAGE
        values = get(_SENTRY_TRACE)
        trace = parse_sentry_trace(values) if values else None
        if trace is not None:
            # ``IncomingTrace(*trace, baggage.dsc)`` without the NamedTuple's Python-level
            # ``__new__`` (as ``namedtuple._make`` does): this runs on every request.
            return _new_tuple(IncomingTrace, (*trace, baggage.dsc, False)), baggage
        if self._traceparent:
            values = get(_TRACEPARENT)
            trace = parse_traceparent(values) if values else None
            if trace is not None:
                # No SDK writes a DSC for a traceparent-only caller: the DSC is frozen empty and
                # any sentry- members in the baggage belong to no trace (§5, §8).
                incoming = IncomingTrace(trace.trace_id, trace.span_id, trace.sampled, EMPTY_DSC, True)
                return incoming, baggage
        return None, baggage

    def extract(self, carrier: Carrier) -> IncomingTrace | None:
        """The trace ``carrier`` asks to continue: its valid ``sentry-trace`` with the DSC from its
        ``baggage``, else (when enabled) its ``traceparent`` with an empty DSC, else ``None``."""
        return self._read(carrier)[0]

    def decide(self, url: str, request: Carrier) -> Decision:
        """The trace headers to write on the request to ``url`` (see the module docstring)."""
        if not self.match_all and not self._targets.matches(url):
            return UNTOUCHED_DECISION
        return self.decide_matched(request)

    def decide_matched(self, request: Carrier) -> Decision:
        """:meth:`decide` for a request whose URL the caller already found in the targets (:meth:`matches`)."""
        # No trace header on the request is the usual case for a service without an SDK: nothing to read then.
        env = self._env
        if not request:
            return self._new((), None) if env is None else self._from_environment(env, _NO_BAGGAGE, None)
        incoming, baggage = self._read(request)
        if incoming is not None:
            if should_continue(self._config, incoming):
                sampled, dsc = continue_trace(self._config, incoming)
                if dsc is None and incoming.dsc is baggage.dsc:
                    out = baggage.unchanged
                else:
                    if dsc is None:
                        dsc = ",".join(incoming.dsc.members)
                    out = serialize_baggage(dsc, baggage.third_party)
                source = TraceSource.TRACEPARENT if incoming.from_traceparent else TraceSource.REQUEST
                return self._continued(source, incoming, sampled, out, baggage.oversize)
            return self._new(baggage.third_party, _ORG_MISMATCH)
        # Trace headers that gave no trace: an invalid sentry-trace (or traceparent, when read), or DSC members
        # without a sentry-trace, are dropped.
        if request.get(_SENTRY_TRACE) or baggage.dsc.members or (self._traceparent and request.get(_TRACEPARENT)):
            replaced: Replaced | None = _MALFORMED
        else:
            replaced = baggage.oversize
        if env is not None:
            return self._from_environment(env, baggage, replaced)
        return self._new(baggage.third_party, replaced)

    def _from_environment(
        self,
        env: tuple[IncomingTrace, bool | None, str, str | None],
        baggage: _RequestBaggage,
        replaced: Replaced | None,
    ) -> Decision:
        env_trace, sampled, dsc, alone = env
        out = serialize_baggage(dsc, baggage.third_party) if baggage.third_party else alone
        return self._continued(TraceSource.ENVIRONMENT, env_trace, sampled, out, replaced)

    def _continued(
        self,
        source: TraceSource,
        incoming: IncomingTrace,
        sampled: bool | None,
        baggage: str | None,
        replaced: Replaced | None,
    ) -> Decision:
        trace_id = incoming.trace_id
        span_id = self._ids.new_span_id()
        return _new_tuple(
            Decision,
            (
                source,
                trace_id,
                span_id,
                incoming.parent_span_id,
                sampled,
                format_sentry_trace(trace_id, span_id, sampled),
                baggage,
                format_traceparent(trace_id, span_id, sampled) if self._traceparent else None,
                replaced,
            ),
        )

    def _new(self, third_party: tuple[str, ...], replaced: Replaced | None) -> Decision:
        if self._system_ids:
            # SystemIdSource's three draws in two calls: both ids from one 192-bit draw (the common path).
            hexed = _getrandbits(192).to_bytes(24, "big").hex()
            trace_id = hexed[:32]
            span_id = hexed[32:]
            if trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
                trace_id = self._ids.new_trace_id()
                span_id = self._ids.new_span_id()
            draw = _random()
        else:
            ids = self._ids
            trace_id = ids.new_trace_id()
            span_id = ids.new_span_id()
            draw = ids.sample_rand()
        sampled, dsc = start_trace(self._config, trace_id, draw)
        return _new_tuple(
            Decision,
            (
                TraceSource.NEW,
                trace_id,
                span_id,
                None,
                sampled,
                format_sentry_trace(trace_id, span_id, sampled),
                serialize_baggage(dsc, third_party) if third_party else dsc,
                format_traceparent(trace_id, span_id, sampled) if self._traceparent else None,
                replaced,
            ),
        )
