"""A byte relay between a client and a target: a CONNECT tunnel, or a connection after an accepted Upgrade.

A tunnel exists from the moment the proxy knows the client's next bytes are not HTTP: after a CONNECT it accepted
(while the target is connected to), or after an Upgrade request's head (until the origin answers it). Until it is
open, what the client sends is held, and so is what the target sends (a target that speaks first, before the
client got its 200). Opening it flushes both ways and passes on a half-close either side made meanwhile. An open
tunnel relays each side's bytes to the other as they come, on the transports, or inside the kernel
(`splice.SpliceTunnel`) when both connections may be spliced; a TLS transport never may.

The bytes relayed each way are added to `moved`, the process's counters (`Stats.tunnel_bytes`: to the target, to
the client), as they are written (or, spliced, as they are taken from their sender).

Half-closes are relayed (each side's FIN goes to the other); the second one ends the tunnel. The tunnel does not
own the connections' protocols: the client's connection keeps its own state, and the target's connection hands its
events here while it is a relay.
"""

from __future__ import annotations

import asyncio

from proxy.server.splice import SpliceTunnel

# Bytes the client may send into a tunnel that is not open yet before its reading is paused.
MAX_HELD_BYTES = 1 << 20


class Tunnel:
    """The relay state of one tunnel, both directions."""

    __slots__ = (
        "_client_eof",
        "_eofs",
        "_held",
        "_held_size",
        "_target_closed",
        "_target_eof",
        "_target_held",
        "client",
        "moved",
        "open",
        "splice",
        "target",
    )

    def __init__(self, client: asyncio.Transport, moved: list[int]) -> None:
        self.client = client
        self.moved = moved  # [to the target, to the client], shared by every tunnel of the process
        self.target: asyncio.Transport | None = None
        self.open = False  # both sides relayed
        self.splice: SpliceTunnel | None = None  # relayed in the kernel (see splice.py)
        self._held: list[bytes] = []  # from the client, before the tunnel opened
        self._held_size = 0
        self._target_held: list[bytes] = []  # from the target, before the tunnel opened
        self._eofs = 0  # half-closes seen, from either side: two end the tunnel
        self._client_eof = False  # the client half-closed before the tunnel opened
        self._target_eof = False  # the target half-closed before the tunnel opened
        self._target_closed = False  # the target's connection was lost before the tunnel opened

    # -- the client's side ---------------------------------------------------------------------------------------

    def from_client(self, data: bytes) -> bool:
        """Relay or hold `data`; True when the bytes held are past MAX_HELD_BYTES (the client's reading should
        pause until the tunnel opens)."""
        target = self.target
        if self.open and target is not None:
            self.moved[0] += len(data)
            target.write(data)
            return False
        self._held.append(data)
        self._held_size += len(data)
        return self._held_size > MAX_HELD_BYTES

    def client_eof(self) -> bool:
        """The client half-closed: passed on (now, or when the tunnel opens). False when that ended the tunnel."""
        self._eofs += 1
        target = self.target
        if not self.open or target is None:
            self._client_eof = True
            return True
        if target.can_write_eof():
            target.write_eof()
        if self._eofs >= 2:
            self.client.close()
            return False
        return True

    def take_held(self) -> tuple[bytes, bool]:
        """What the client sent into a tunnel that will not open (a refused Upgrade), and whether it half-closed."""
        held = b"".join(self._held)
        self._held.clear()
        self._held_size = 0
        return held, self._client_eof

    # -- the target's side ---------------------------------------------------------------------------------------

    def from_target(self, data: bytes) -> None:
        if self.open:
            self.moved[1] += len(data)
            self.client.write(data)
        else:
            self._target_held.append(data)

    def target_eof(self) -> None:
        if not self.open:
            self._target_eof = True  # passed on when the tunnel opens
            return
        self._eofs += 1
        client = self.client
        if client.can_write_eof():
            client.write_eof()
        if self._eofs >= 2:
            client.close()

    def target_lost(self) -> None:
        """The target's connection is gone: so is the tunnel (once open; before, when it opens)."""
        self.target = None
        if self.open:
            self.client.close()
        else:
            self._target_closed = True

    # -- both ----------------------------------------------------------------------------------------------------

    def bind_target(self, target: asyncio.Transport) -> None:
        """The target's connection exists (its bytes are held here until `start`)."""
        self.target = target

    def start(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Open the tunnel, the client having been told (200 or 101): flush what each side held, pass on their
        half-closes, then relay; inside the kernel when `loop` is given (both connections may be spliced) and no
        side has half-closed."""
        target = self.target
        self.open = True
        if self._target_held:
            held = b"".join(self._target_held)
            self._target_held.clear()
            self.moved[1] += len(held)
            self.client.write(held)
        if self._target_closed or target is None:
            self.client.close()
            return
        if self._held:
            self.moved[0] += self._held_size
            target.write(b"".join(self._held))
            self._held.clear()
            self._held_size = 0
        if self._client_eof and target.can_write_eof():
            target.write_eof()  # the client's, and only the client's: the target's went the other way
        if self._target_eof:
            self.target_eof()  # counted now that it is passed on
        if loop is not None and not self._eofs:
            self.splice = SpliceTunnel.start(loop, self.client, target, self.moved)

    def close(self) -> None:
        """The client's connection is gone: close the target's, and stop a kernel relay."""
        if self.splice is not None:
            self.splice.close()
        target = self.target
        self.target = None
        if target is not None:
            target.close()

    def abort(self) -> None:
        """After an internal error: cut the target's connection."""
        if self.splice is not None:
            self.splice.close()
        target = self.target
        self.target = None
        if target is not None:
            target.abort()
