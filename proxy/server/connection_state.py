"""The states of a downstream (client) connection and the transitions between them, as h11's `_state.py` has them.

A connection's state says what it is doing with the bytes it reads: waiting for a request, serving exchanges,
holding bytes for a tunnel, relaying a tunnel, or dropping input after an error answer. Two facts stay beside it
because they are independent of it: `current` (the exchange in flight, which IDLE alone lacks) and whether more
requests will be read (`input_done`: the client half-closed, or its last request asked to close).

Every change of state goes through `check_transition`, so a path that reaches a state from one it never should
fails loudly (it is then answered as an internal error) instead of going on in a state nobody designed.
"""

from __future__ import annotations

import enum
from typing import Final


class State(enum.IntEnum):
    IDLE = 0  # no exchange in flight: the next request's head may be on its way
    ACTIVE = 1  # an exchange in flight, perhaps more pipelined behind it
    UPGRADING = 2  # the last request asked to upgrade: what follows is held until the origin answers it
    CONNECTING = 3  # a CONNECT was accepted and its target is being connected to
    TUNNEL = 4  # bytes are relayed both ways (after CONNECT's 200, or a 101)
    LINGERING = 5  # an error was answered: what the client still sends is read and dropped until the close
    CLOSED = 6  # closed, or closing: nothing more is read


def _mask(*states: State) -> int:
    bits = 0
    for state in states:
        bits |= 1 << state
    return bits


# From each state (the index), the states it may change to (a bit per state). CLOSED is reachable from all.
_ALLOWED: Final = (
    _mask(State.ACTIVE, State.UPGRADING, State.CONNECTING, State.LINGERING, State.CLOSED),  # IDLE
    _mask(State.IDLE, State.UPGRADING, State.LINGERING, State.CLOSED),  # ACTIVE
    # An ordinary answer to the Upgrade: the held bytes are parsed as requests (perhaps another Upgrade).
    _mask(State.IDLE, State.ACTIVE, State.UPGRADING, State.TUNNEL, State.LINGERING, State.CLOSED),  # UPGRADING
    _mask(State.TUNNEL, State.LINGERING, State.CLOSED),  # CONNECTING
    _mask(State.CLOSED),  # TUNNEL
    _mask(State.CLOSED),  # LINGERING
    _mask(State.CLOSED),  # CLOSED
)

TRANSITIONS: Final = {state: frozenset(target for target in State if _ALLOWED[state] >> target & 1) for state in State}


class InvalidTransition(Exception):
    """A connection was about to change state along a transition the table does not have."""


def check_transition(old: State, new: State) -> None:
    if not _ALLOWED[old] >> new & 1:
        raise InvalidTransition(f"a client connection went from {old.name} to {new.name}")
