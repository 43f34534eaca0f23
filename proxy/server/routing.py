"""What differs between front ends: where a request goes and which trace it carries, as a router object.

A downstream connection (downstream.py) parses, queues and relays the same way for every front end; the router it
is given decides the rest. `ForwardRouter` is the forward proxy's: absolute-form targets (`GET http://host/path`),
CONNECT to the configured ports, the loop check, and the forward trace decision (made in `http1.plan_request`).
An inbound reverse-proxy listener brings its own router (origin-form targets to one configured upstream), and so
will TLS interception; connections take any object with these methods, composed rather than subclassed, so that
the compiled build (whose classes interpreted code cannot subclass) serves them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

from proxy.server.http1 import PlanCache, RequestPlan, RequestPolicy, RequestRejected, plan_connect, plan_request

Origin = tuple[str, int]
_NOTHING_DROPPED: Final[frozenset[bytes]] = frozenset()


class Router(Protocol):
    """The routing rules of one front end."""

    def plan(
        self,
        method: bytes,
        target: bytes,
        http11: bool,
        keep_alive: bool,
        upgrade: bool,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> RequestPlan:
        """The plan of a request (where it goes, the head the origin receives); RequestRejected if not served."""
        ...

    def connect(self, target: bytes) -> Origin:
        """Where a CONNECT goes; RequestRejected if this front end does not tunnel it there."""
        ...

    # The origins that are this proxy's own listener (host names and port): a request sent there would come back
    # forever. Set through `listening_on` once the listener knows its port, before it accepts a connection.
    own_origins: frozenset[Origin]

    def listening_on(self, origins: frozenset[Origin]) -> None: ...


class ForwardRouter:
    """The forward proxy's routing: absolute-form targets and CONNECT, anywhere but back into the proxy."""

    __slots__ = ("cache", "own_origins", "policy")

    def __init__(
        self, policy: RequestPolicy, cache: PlanCache | None = None, own_origins: frozenset[Origin] = frozenset()
    ) -> None:
        self.policy = policy
        self.cache = cache  # the process's (ConnectionServices.plan_cache): parsed authorities
        self.own_origins = own_origins

    def plan(
        self,
        method: bytes,
        target: bytes,
        http11: bool,
        keep_alive: bool,
        upgrade: bool,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> RequestPlan:
        return plan_request(
            method, target, http11, keep_alive, upgrade, headers, self.policy, _NOTHING_DROPPED, self.cache
        )

    def connect(self, target: bytes) -> Origin:
        host, port = plan_connect(target, self.policy.connect_ports)
        if (host, port) in self.own_origins:
            raise RequestRejected(
                508, f"CONNECT to {host}:{port} would loop back into trace-proxy", "proxy_loop_detected"
            )
        return host, port

    def listening_on(self, origins: frozenset[Origin]) -> None:
        self.own_origins = origins
