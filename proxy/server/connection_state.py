"""The states of a downstream (client) connection and the transitions between them, as h11's `_state.py` has them.

A connection's state says what it is doing with the bytes it reads: waiting for a request, serving exchanges,
holding bytes for a tunnel, relaying a tunnel, or dropping input after an error answer. Two facts stay beside it
because they are independent of it: `current` (the exchange in flight, which IDLE alone lacks) and whether more
requests will be read (`input_done`: the client half-closed, or its last request asked to close).

Every change of state goes through `check_transition`, so a path that reaches a state from one it never should
fails loudly (it is then answered as an internal error) instead of going on in a state nobody designed.
"""

from __future__ import annotations

from typing import Final

# The states, as small int constants rather than an enum: a connection checks its state several times per request,
# and mypyc compiles a Final int to a C constant, where reading an enum member is a Python-level lookup (about five
# times the cost of the rest of such a check). `NAMES[state]` is a state's name.
IDLE: Final = 0  # no exchange in flight: the next request's head may be on its way
ACTIVE: Final = 1  # an exchange in flight, perhaps more pipelined behind it
UPGRADING: Final = 2  # the last request asked to upgrade: what follows is held until the origin answers it
CONNECTING: Final = 3  # a CONNECT was accepted and its target is being connected to
TUNNEL: Final = 4  # bytes are relayed both ways (after CONNECT's 200, or a 101)
LINGERING: Final = 5  # an error was answered: what the client still sends is read and dropped until the close
CLOSED: Final = 6  # closed, or closing: nothing more is read

# LINGERING and CLOSED come last: `state >= LINGERING` is "answered, and closing: no request is served any more".
NAMES: Final = ("IDLE", "ACTIVE", "UPGRADING", "CONNECTING", "TUNNEL", "LINGERING", "CLOSED")
STATES: Final = tuple(range(len(NAMES)))


def _mask(*states: int) -> int:
    bits = 0
    for state in states:
        bits |= 1 << state
    return bits


# From each state (the index), the states it may change to (a bit per state). CLOSED is reachable from all.
_ALLOWED: Final[tuple[int, ...]] = (
    _mask(ACTIVE, UPGRADING, CONNECTING, LINGERING, CLOSED),  # IDLE
    _mask(IDLE, UPGRADING, LINGERING, CLOSED),  # ACTIVE
    # An ordinary answer to the Upgrade: the held bytes are parsed as requests (perhaps another Upgrade).
    _mask(IDLE, ACTIVE, UPGRADING, TUNNEL, LINGERING, CLOSED),  # UPGRADING
    _mask(TUNNEL, LINGERING, CLOSED),  # CONNECTING
    _mask(CLOSED),  # TUNNEL
    _mask(CLOSED),  # LINGERING
    _mask(CLOSED),  # CLOSED
)

# The table by name, for reading and for tests: {"IDLE": frozenset({"ACTIVE", ...}), ...}.
TRANSITIONS: Final = {NAMES[old]: frozenset(NAMES[new] for new in STATES if _ALLOWED[old] >> new & 1) for old in STATES}


class InvalidTransition(Exception):
    """A connection was about to change state along a transition the table does not have."""


def check_transition(old: int, new: int) -> None:
    if not _ALLOWED[old] >> new & 1:
        raise InvalidTransition(f"a client connection went from {NAMES[old]} to {NAMES[new]}")
