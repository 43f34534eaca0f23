"""The fuzzer's byte mutations leave protected bytes alone: a changed host name would send a DNS query off the
machine, a changed port could reach another local server, a changed marker would mislead the attribution."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import fuzz_grammar as grammar


def protected_runs(data: bytes, mask: bytearray) -> list[bytes]:
    return [data[m.start() : m.end()] for m in re.finditer(rb"\x01+", bytes(mask))]


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.tuples(st.binary(min_size=1, max_size=8), st.booleans()), min_size=1, max_size=8),
    mutations=st.lists(grammar.mutations, max_size=6),
)
def test_mutations_keep_every_protected_run_whole_and_in_order(
    pieces: list[tuple[bytes, bool]], mutations: list[grammar.Mutation]
) -> None:
    data, mask = grammar.render([grammar.Piece(b, p) for b, p in pieces], grammar.Ports(1, 2, 3), 1, 0)
    mutated = grammar.mutate(data, mask, mutations)
    runs = protected_runs(data, mask)
    # Each run is found again, whole and in order.
    at = 0
    for run in runs:
        found = mutated.find(run, at)
        assert found >= 0, (run, mutated)
        at = found + len(run)


@settings(max_examples=200, deadline=None)
@given(request=grammar.requests(3, True), mutations=st.lists(grammar.mutations, max_size=4))
def test_a_mutated_request_keeps_its_marker_and_authority(
    request: grammar.Request, mutations: list[grammar.Mutation]
) -> None:
    data, mask = grammar.render(request.pieces, grammar.Ports(40001, 40002, 40003), 7, 2)
    mutated = grammar.mutate(data, mask, mutations)
    # Every marker the request carries survives: its own (not every target form has one) and those of the requests
    # hidden in its body (an authority-form GET can carry only those: found by Hypothesis).
    for index in (request.index, *request.inner):
        marker = grammar.marker(7, 2, index)
        if marker in data:
            assert marker in mutated, (marker, mutated)
    assert data.count(b"/fuzz/") <= mutated.count(b"/fuzz/")
    for authority in (b"127.0.0.1:40001", b"127.0.0.1:40002"):
        assert data.count(authority) <= mutated.count(authority)
