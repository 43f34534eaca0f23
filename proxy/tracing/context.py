"""The trace decisions of one hop: continue or start, sampling, ``sample_rand``, and the DSC.

Pure functions over an :class:`IncomingTrace` and the :class:`PropagationConfig`; no I/O and no
randomness except what the caller passes in (a new trace's ``sample_rand``). The rules are
docs/propagation.md §3-§6:

* a continued trace keeps the incoming sampling flag whatever the proxy's own rate; a deferred
  one is decided here when a rate is configured;
* the incoming DSC is frozen: its members go out byte for byte, except that ``sample_rand`` is
  added when missing or invalid, and ``sample_rate`` is set to the proxy's rate when the proxy
  took the decision;
* a new trace gets the proxy's own DSC.

``sample_rand`` lives on a grid of 10^-6 (six decimals, truncated) and is handled as an integer
count of grid steps, so that its text never rounds up to ``1.000000`` and the sampling
comparison sees exactly the value that is written.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

from proxy.tracing.baggage import SENTRY_PREFIX, ParsedBaggage, decode_value, member_key
from proxy.tracing.options import PropagationConfig

__all__ = [
    "EMPTY_DSC",
    "SAMPLE_RAND_GRID",
    "FrozenDsc",
    "IncomingTrace",
    "continue_trace",
    "derive_sample_rand",
    "format_sample_rand",
    "parse_unit",
    "sample_rand_range",
    "should_continue",
    "start_trace",
]

SAMPLE_RAND_GRID: Final = 1_000_000
"""``sample_rand`` values are whole multiples of 1 / SAMPLE_RAND_GRID."""

_SAMPLE_RAND: Final = SENTRY_PREFIX + "sample_rand"
_SAMPLE_RATE: Final = SENTRY_PREFIX + "sample_rate"
_ORG_ID: Final = SENTRY_PREFIX + "org_id"
_TRACE_ID_MEMBER: Final = SENTRY_PREFIX + "trace_id="
_SAMPLE_RAND_MEMBER: Final = _SAMPLE_RAND + "="
# The low 52 bits of a trace id (its last 13 hex digits) are random in every id an SDK or
# OpenTelemetry generates (W3C Trace Context level 2 asks for the last 56 bits to be random).
_DERIVE_HEX_DIGITS: Final = 13
_DERIVE_BITS: Final = 4 * _DERIVE_HEX_DIGITS


class FrozenDsc(NamedTuple):
    """An incoming trace's DSC (its ``sentry-`` baggage members) and the facts read from it.

    ``members`` go out unchanged (§5). ``sample_rand`` is the incoming value when valid
    (in [0, 1)), ``sample_rate`` when valid (in [0, 1]), ``org_id`` when present and not
    empty (percent-decoded); each is ``None`` otherwise.
    """

    members: tuple[str, ...]
    sample_rand: float | None
    sample_rate: float | None
    org_id: str | None

    @classmethod
    def from_baggage(cls, baggage: ParsedBaggage) -> FrozenDsc:
        """The frozen DSC of a carrier whose ``baggage`` parsed to ``baggage``."""
        if not baggage.dsc:
            return EMPTY_DSC
        values = baggage.dsc_values
        org_id = values.get(_ORG_ID)
        return cls(
            baggage.dsc,
            parse_unit(values.get(_SAMPLE_RAND)),
            parse_unit(values.get(_SAMPLE_RATE), include_one=True),
            (decode_value(org_id) or None) if org_id else None,
        )


EMPTY_DSC: Final = FrozenDsc((), None, None, None)
"""The DSC of a trace whose carrier had no ``sentry-`` members (frozen empty, §5)."""


class IncomingTrace(NamedTuple):
    """A trace read from a carrier (request head, environment, ...), to be continued.

    ``parent_span_id`` is the sender's span id; ``sampled`` ``None`` means deferred;
    ``from_traceparent`` tells a W3C ``traceparent`` source (whose DSC is always empty) from
    a ``sentry-trace`` one.
    """

    trace_id: str
    parent_span_id: str
    sampled: bool | None
    dsc: FrozenDsc
    from_traceparent: bool = False


def format_sample_rand(steps: int) -> str:
    """``steps`` grid steps (0 ≤ steps < GRID) as the six-decimal text Sentry propagates (``0.123456``)."""
    return f"0.{steps:06d}"


def parse_unit(raw: str | None, *, include_one: bool = False) -> float | None:
    """A received DSC number in [0, 1) (or [0, 1] with ``include_one``), else ``None``.

    Accepts what the Python SDK's ``float()`` accepts, after percent-decoding; NaN, infinities
    and out-of-range values are invalid.
    """
    if raw is None:
        return None
    try:
        value = float(decode_value(raw))
    except ValueError:
        return None
    if 0.0 <= value < 1.0 or (include_one and value == 1.0):
        return value
    return None


def _grid_ceil(value: float) -> int:
    """The smallest grid step ``k`` (0 ≤ k ≤ GRID) whose value ``k / GRID`` is ≥ ``value``."""
    steps = min(max(math.ceil(value * SAMPLE_RAND_GRID), 0), SAMPLE_RAND_GRID)
    # The product above can be one ulp off; settle it with the exact comparison.
    while steps > 0 and (steps - 1) / SAMPLE_RAND_GRID >= value:
        steps -= 1
    while steps < SAMPLE_RAND_GRID and steps / SAMPLE_RAND_GRID < value:
        steps += 1
    return steps


def sample_rand_range(sampled: bool | None, sample_rate: float | None) -> tuple[int, int]:
    """The grid steps ``[lo, hi)`` a derived ``sample_rand`` must come from (§4).

    Sampled: below the rate; not sampled: at or above it; deferred or no rate: anywhere in
    [0, 1). When the incoming facts contradict each other (sampled with rate 0, not sampled
    with rate 1) no value can agree with both and the whole [0, 1) is used, as Node does.
    """
    if sampled is None or sample_rate is None:
        return 0, SAMPLE_RAND_GRID
    if sampled:
        lo, hi = 0, _grid_ceil(sample_rate)
    else:
        lo, hi = _grid_ceil(sample_rate), SAMPLE_RAND_GRID
    if lo >= hi:
        return 0, SAMPLE_RAND_GRID
    return lo, hi


def derive_sample_rand(trace_id: str, lo: int, hi: int) -> int:
    """A grid step in ``[lo, hi)`` that depends only on the trace id (``lo < hi``).

    Deterministic like the Python SDK, so every request of a trace gets the same value, but
    computed from the id's random low bits instead of seeding a Mersenne Twister (which costs
    more than the whole per-request budget).
    """
    noise = int(trace_id[-_DERIVE_HEX_DIGITS:], 16)
    return lo + ((noise * (hi - lo)) >> _DERIVE_BITS)


def should_continue(config: PropagationConfig, incoming: IncomingTrace) -> bool:
    """§6: may this hop continue ``incoming``, given the org ids on both sides?

    Two known org ids must be equal; with ``strict_trace_continuation`` both must also be
    known or both unknown. An empty ``sentry-org_id`` counts as unknown.
    """
    theirs = incoming.dsc.org_id
    ours = config.org_id
    if ours is not None and theirs is not None:
        return ours == theirs
    if config.strict_trace_continuation:
        return ours is None and theirs is None
    return True


def _replace_member(dsc: tuple[str, ...], key: str, member: str) -> tuple[str, ...]:
    """A copy of ``dsc`` where the members named ``key`` collapse into ``member`` at the first
    one's place (appended when there is none)."""
    out: list[str] = []
    placed = False
    for existing in dsc:
        if existing.startswith(key) and member_key(existing) == key:
            if not placed:
                out.append(member)
                placed = True
        else:
            out.append(existing)
    if not placed:
        out.append(member)
    return tuple(out)


def continue_trace(config: PropagationConfig, incoming: IncomingTrace) -> tuple[bool | None, str | None]:
    """The sampling flag and DSC this hop writes when continuing ``incoming`` (§4, §5).

    The DSC comes as its members joined with ``,``, or ``None`` when ``incoming.dsc.members``
    go out unchanged (the common case, which lets the caller reuse an already written header).
    """
    sampled = incoming.sampled
    dsc = incoming.dsc
    rate = config.traces_sample_rate
    members: tuple[str, ...] | None = None

    sample_rand = dsc.sample_rand
    if sample_rand is None:
        known_rate = dsc.sample_rate if dsc.sample_rate is not None else rate
        steps = derive_sample_rand(incoming.trace_id, *sample_rand_range(sampled, known_rate))
        sample_rand = steps / SAMPLE_RAND_GRID
        members = _replace_member(dsc.members, _SAMPLE_RAND, _SAMPLE_RAND_MEMBER + format_sample_rand(steps))

    rate_member = config.sample_rate_member  # set exactly when ``rate`` is
    if sampled is None and rate is not None and rate_member is not None:
        sampled = sample_rand < rate
        members = _replace_member(dsc.members if members is None else members, _SAMPLE_RATE, rate_member)
    return sampled, None if members is None else ",".join(members)


def start_trace(config: PropagationConfig, trace_id: str, draw: float) -> tuple[bool | None, str]:
    """The sampling flag and DSC (members joined with ``,``) of a trace this hop starts (§3, §4).

    ``draw`` is a uniform random number in [0, 1) (the new ``sample_rand``); it is truncated to
    the six-decimal grid before it decides, so that ``sample_rand < rate`` holds for the value
    that is written.
    """
    steps = int(draw * SAMPLE_RAND_GRID)
    if not 0 <= steps < SAMPLE_RAND_GRID:  # a draw a hair below 1 can round up in the product
        steps = 0 if steps < 0 else SAMPLE_RAND_GRID - 1
    rate = config.traces_sample_rate
    sampled = None if rate is None else steps / SAMPLE_RAND_GRID < rate
    # str(GRID + steps)[1:] is format_sample_rand(steps)'s six digits; the rest is precomputed (this runs for
    # every request that starts a trace).
    return sampled, f"{_TRACE_ID_MEMBER}{trace_id}{config.new_dsc_tails[sampled]}{str(SAMPLE_RAND_GRID + steps)[1:]}"
