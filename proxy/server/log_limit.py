"""Log lines about what a stranger or a flood can repeat at will (refused clients, a full connection table):
at most one line per interval, the lines held back in between counted in the next, so an attack cannot fill the
disk or drown the lines that matter."""

from __future__ import annotations

import logging
from collections.abc import Callable


class RateLimitedLog:
    """`warning(...)` logs at most once per `interval` seconds of `clock`."""

    __slots__ = ("_clock", "_interval", "_logger", "_next", "suppressed")

    def __init__(self, logger: logging.Logger, interval: float, clock: Callable[[], float]) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._next = float("-inf")
        self.suppressed = 0  # lines held back since the last one logged

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if now < self._next:
            self.suppressed += 1
            return
        self._next = now + self._interval
        if self.suppressed:
            held, self.suppressed = self.suppressed, 0
            self._logger.warning(f"{message} (and {held} more like it in the last {self._interval:g}s)", *args)
        else:
            self._logger.warning(message, *args)
