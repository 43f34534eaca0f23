"""Who may use the proxy: a client's address against `forward.allow_clients`, decided once per address.

A forward proxy that anyone who can reach it may use is an open relay into the network behind it, so the proxy
serves only the networks it is told to (loopback by default, right for a sidecar that shares its pod's network
namespace). Without I/O: the listener hands over the peer's address text and acts on the answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
"""The default: the clients a sidecar has, in the network namespace it shares with its service."""

_REMEMBERED = 4096  # distinct client addresses whose answer is kept (cleared when full)


class ClientAllowList:
    """`allows(host)`: is a client connecting from `host` (an address as the socket reports it) served?"""

    __slots__ = ("_known", "networks")

    def __init__(self, networks: Sequence[Network]) -> None:
        self.networks = tuple(networks)
        self._known: dict[str, bool] = {}  # a sidecar sees a handful of client addresses: match each once

    def allows(self, host: str) -> bool:
        known = self._known.get(host)
        if known is None:
            known = self._match(host)
            if len(self._known) >= _REMEMBERED:
                self._known.clear()
            self._known[host] = known
        return known

    def _match(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.partition("%")[0])  # an IPv6 scope (fe80::1%eth0) is not the address
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 client of a dual-stack [::] listener
        return any(address in network for network in self.networks)
