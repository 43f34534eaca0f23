"""A deterministic id source for the propagation core, so that trace headers in tests are exact bytes."""

from __future__ import annotations


class CountingIds:
    """A deterministic IdSource: ids count up from 1 across trace and span ids; sample_rand is 0.25."""

    def __init__(self) -> None:
        self.n = 0

    def new_trace_id(self) -> str:
        self.n += 1
        return f"{self.n:032x}"

    def new_span_id(self) -> str:
        self.n += 1
        return f"{self.n:016x}"

    def sample_rand(self) -> float:
        return 0.25
