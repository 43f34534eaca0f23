"""``trace_propagation_targets``: which outbound URLs get trace headers (docs/propagation.md §7).

Entries are regular expressions *searched* (``re.search``, case-sensitive) in the full URL, as
in the Python SDK, so a plain host name matches anywhere in the URL. ``[".*"]`` (the default)
short-circuits to "always", since it is by far the most common setting and is checked on every
request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["MATCH_ALL", "PropagationTargets"]

MATCH_ALL: Final = ".*"
"""The default pattern: propagate to every URL."""

# Patterns that ``re.search`` finds in every string; a list containing one matches everything.
_ALWAYS: Final = frozenset({MATCH_ALL, ""})


class PropagationTargets:
    """A compiled target list; :meth:`matches` answers "propagate to this URL?"."""

    __slots__ = ("_searches", "match_all", "patterns")

    patterns: tuple[str, ...]
    match_all: bool
    _searches: tuple[Callable[[str], re.Match[str] | None], ...]

    def __init__(self, patterns: Sequence[str]) -> None:
        """Compile ``patterns``; raise ``ValueError`` naming the first invalid one."""
        if isinstance(patterns, str):
            raise TypeError("trace_propagation_targets must be a sequence of patterns, not a str")
        searches = []
        for pattern in patterns:
            try:
                searches.append(re.compile(pattern).search)
            except re.error as exc:
                raise ValueError(f"invalid trace_propagation_targets pattern {pattern!r}: {exc}") from exc
        self.patterns = tuple(patterns)
        self.match_all = any(pattern in _ALWAYS for pattern in self.patterns)
        self._searches = tuple(searches)

    def matches(self, url: str) -> bool:
        """True when some pattern is found anywhere in ``url`` (always, for ``.*``)."""
        if self.match_all:
            return True
        return any(search(url) is not None for search in self._searches)

    def __repr__(self) -> str:
        return f"PropagationTargets({list(self.patterns)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PropagationTargets):
            return NotImplemented
        return self.patterns == other.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)
