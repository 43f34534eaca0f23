"""Counters of what the proxy did, bumped in one place per event so a metrics endpoint can read them later.

A proxied request is counted where it ends, in `ClientConnection._ended` (requests, by trace source, by status);
requests the proxy refuses and tunnels through the methods here."""

from __future__ import annotations

from proxy.tracing import TraceSource


class Stats:
    """Plain integer counters; the hot path does a few dict increments and nothing else."""

    __slots__ = ("by_source", "by_status", "rejected_by_status", "requests", "tunnels")

    def __init__(self) -> None:
        self.requests = 0
        self.tunnels = 0
        # Every key present from the start: one subscript and one store per bump, no lookup with a default.
        self.by_source: dict[TraceSource, int] = dict.fromkeys(TraceSource, 0)
        self.by_status = [0] * 1000  # index: status code (llhttp accepts three digits only)
        self.rejected_by_status: dict[int, int] = {}

    def rejected(self, status: int) -> None:
        """A request the proxy answered itself without forwarding it."""
        self.rejected_by_status[status] = self.rejected_by_status.get(status, 0) + 1

    def tunnel_opened(self) -> None:
        self.tunnels += 1

    def snapshot(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "tunnels": self.tunnels,
            "by_source": {k.value: v for k, v in self.by_source.items() if v},
            "by_status": {str(code): n for code, n in enumerate(self.by_status) if n},
            "rejected_by_status": {str(k): v for k, v in self.rejected_by_status.items()},
        }
