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
from typing import Protocol

from proxy.server.http1 import RequestPlan, RequestPolicy, RequestRejected, plan_connect, plan_request

Origin = tuple[str, int]


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

    def loops_back(self, origin: Origin) -> bool:
        """Whether `origin` is this proxy's own listener (a request sent there would come back forever)."""
        ...

    def listening_on(self, origins: frozenset[Origin]) -> None:
        """The names and port the listener is bound to, once it knows its port: what `loops_back` matches."""
        ...


class ForwardRouter:
    """The forward proxy's routing: absolute-form targets and CONNECT, anywhere but back into the proxy."""

    __slots__ = ("policy", "self_keys")

    def __init__(self, policy: RequestPolicy, self_keys: frozenset[Origin] = frozenset()) -> None:
        self.policy = policy
        self.self_keys = self_keys  # the names and port this proxy listens on

    def plan(
        self,
        method: bytes,
        target: bytes,
        http11: bool,
        keep_alive: bool,
        upgrade: bool,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> RequestPlan:
        return plan_request(method, target, http11, keep_alive, upgrade, headers, self.policy)

    def connect(self, target: bytes) -> Origin:
        host, port = plan_connect(target, self.policy.connect_ports)
        if (host, port) in self.self_keys:
            raise RequestRejected(
                508, f"CONNECT to {host}:{port} would loop back into trace-proxy", "proxy_loop_detected"
            )
        return host, port

    def loops_back(self, origin: Origin) -> bool:
        return origin in self.self_keys

    def listening_on(self, origins: frozenset[Origin]) -> None:
        self.self_keys = origins
